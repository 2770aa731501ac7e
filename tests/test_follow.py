"""`coordinator run` follows a deployment run through its manifest: one line per round done."""

from __future__ import annotations

from coordinator.checkpoint import RunRecorder
from coordinator.follow import ManifestFollower


def _round(recorder: RunRecorder, rnd: int, *, epsilon: float | None = None) -> None:
    dp = {} if epsilon is None else {"dp": {"a": {"epsilon": epsilon}, "b": {"epsilon": epsilon / 2}}}
    recorder.update_round(rnd, sites_trained=["a", "b"], train_loss=0.5 / rnd, **dp)
    recorder.update_round(rnd, metrics={"roc_auc": 0.7 + 0.1 * rnd})


def test_a_round_is_shown_once_when_the_next_begins_or_the_run_ends(tmp_path):
    old = RunRecorder(tmp_path, {"sites": {}})  # an earlier run's manifest in the same directory
    _round(old, 1)
    old.set(status="completed")
    follower = ManifestFollower(tmp_path, num_rounds=3, primary_metric="roc_auc")
    assert follower.poll() == []  # unchanged since: not this run's

    recorder = RunRecorder(tmp_path, {"sites": {}})
    _round(recorder, 1, epsilon=0.8)
    assert follower.poll() == []  # round 1 may still be evaluating
    _round(recorder, 2, epsilon=1.6)
    [line] = follower.poll()
    assert line.startswith("round   1/3  sites 2") and "roc_auc 0.8000" in line and "ε so far 0.80" in line
    assert follower.poll() == []
    recorder.set(status="completed")
    [line] = follower.poll()
    assert line.startswith("round   2/3") and "train loss 0.2500" in line and "ε so far 1.60" in line
    assert follower.poll(ended=True) == []


def test_a_run_without_dp_shows_no_epsilon_and_missing_metrics_as_na(tmp_path):
    follower = ManifestFollower(tmp_path, num_rounds=1, primary_metric="f1")
    recorder = RunRecorder(tmp_path, {"sites": {}})
    _round(recorder, 1)
    [line] = follower.poll(ended=True)
    assert "f1 n/a" in line and "ε" not in line
