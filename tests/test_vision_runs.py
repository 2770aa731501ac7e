"""Image runs under the rest of a run's machinery (issue 14 item 6): a robust aggregation
(fedmedian) resumed from its checkpoint, and supplier-level DP whose clipping covers the cnn's
convolutions and whose accounting carries across a resume.

Three sites of small generated cells (16x16 grayscale PNGs, brighter when defective). The runs
are whole `run_experiment` calls with the real ServerApp and ClientApps through `tests.loopback`
(Flower's message loop in this process, no Ray): seconds each. The deployed runtime trains an
image task in tests/test_deployment.py; SecAgg+ on one in tests/test_vision.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import flwr.simulation
import numpy as np
import pytest

from coordinator.config import FederationConfig
from coordinator.simulation import run_experiment
from models.architectures import weight_shapes
from models.nets import build_model, get_weights
from privacy.central import CentralDP
from privacy.report import verify_report
from tests.factories import image_manifest, image_task
from tests.loopback import run_in_process

SPEC = image_task("solar-cell-inspection", size=(16, 16))  # binary: defective or not
HIDDEN = (4, 8)


@pytest.fixture(scope="module")
def site_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three sites' manifests of 40 generated cells each (their decode caches shared by the module's runs)."""
    root = tmp_path_factory.mktemp("cells")
    return {name: image_manifest(root / name, 40, seed=i, size=(16, 16)) for i, name in enumerate(("a", "b", "c"))}


@pytest.fixture(autouse=True)
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flwr.simulation, "run_simulation", run_in_process)


def _config(out: Path, **changes: object) -> FederationConfig:
    return FederationConfig(task=SPEC, min_sites=3, out_dir=out, hidden=HIDDEN, batch_size=16, local_epochs=1,
                            lr=0.05, key_dir=out.parent / "keys").replace(**changes)  # fmt: skip


def _checkpoint(out: Path, server_round: int) -> list[np.ndarray]:
    with np.load(out / "checkpoints" / f"round_{server_round:03d}.npz") as npz:
        names = sorted((k for k in npz.files if k.startswith("w")), key=lambda k: int(k[1:]))
        return [npz[k] for k in names]


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _norm(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(((x.astype(np.float64) - y) ** 2).sum() for x, y in zip(a, b, strict=True))))


def test_a_fedmedian_image_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(site_files, tmp_path):
    straight = run_experiment(SPEC, site_files, _config(tmp_path / "straight", num_rounds=2, strategy="fedmedian"))
    out = tmp_path / "resumed"
    run_experiment(SPEC, site_files, _config(out, num_rounds=1, strategy="fedmedian"))
    before = _manifest(out)

    resumed = run_experiment(SPEC, site_files, _config(out, num_rounds=2, strategy="fedmedian", resume=True))

    after = _manifest(out)
    assert after["run_id"] == before["run_id"] and after["config"]["strategy"] == "fedmedian"
    assert [r["round"] for r in after["rounds"]] == [1, 2]
    assert after["rounds"][:1] == before["rounds"]  # round 1 is not trained again
    assert after["scaler"] == before["scaler"]  # the pixel normalisation the checkpoint was trained with
    # Without DP training is deterministic given the seed: round 2 from the checkpoint and the
    # scaler in the manifest is the uninterrupted run's round 2, array for array (4-D convolutions too).
    resumed_weights, straight_weights = _checkpoint(out, 2), _checkpoint(tmp_path / "straight", 2)
    assert [w.shape for w in resumed_weights] == weight_shapes("cnn", 1, HIDDEN, 1)
    for got, want in zip(resumed_weights, straight_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert resumed["federated"]["global"] == pytest.approx(straight["federated"]["global"])
    assert resumed["federated"]["global"]["roc_auc"] > resumed["initial"]["roc_auc"] + 0.3  # it learnt
    assert resumed["site_images"] == {s: {"images": 40, "skipped": 0, "first_skipped": [], "converted": {}}
                                      for s in site_files}  # fmt: skip


def test_supplier_level_dp_clips_the_cnns_whole_update_and_accounts_across_a_resume(site_files, tmp_path):
    out = tmp_path / "central"
    clip, noise = 0.05, 0.1  # a clip far below a round's update (> 1 unclipped), noise small beside it
    run_experiment(SPEC, site_files, _config(out, num_rounds=1, central_dp_noise=noise, central_dp_clip=clip))
    results = run_experiment(
        SPEC, site_files, _config(out, num_rounds=2, central_dp_noise=noise, central_dp_clip=clip, resume=True)
    )

    # Each round moved the global model by the mean of updates clipped to `clip` (all arrays,
    # the convolutions included) plus noise of standard deviation noise * clip / 3 per weight.
    initial = get_weights(build_model(1, name="cnn", hidden=HIDDEN, outputs=1, seed=0))
    weights = [initial, _checkpoint(out, 1), _checkpoint(out, 2)]
    parameters = sum(w.size for w in initial)
    bound = clip + 2 * noise * clip / 3 * np.sqrt(parameters)
    assert all(0 < _norm(b, a) <= bound for a, b in zip(weights[:-1], weights[1:], strict=True)), bound
    # The resumed run went on accounting round 1: round 2's epsilon is that of two rounds.
    expected = CentralDP(noise_multiplier=noise, clipping_norm=clip, delta=1e-3, suppliers=3)
    records = [r["central_dp"] for r in _manifest(out)["rounds"]]
    assert [r["sampled"] for r in records] == [3, 3] and {r["clipping_norm"] for r in records} == {clip}
    for record in records:
        assert record["epsilon"] == pytest.approx(expected.account_round(3)["epsilon"], rel=1e-9)
    assert results["privacy"]["central_dp"]["epsilon"] == pytest.approx(records[-1]["epsilon"], rel=1e-12)
    report = verify_report(out / "privacy" / "report.json", out / "privacy" / "coordinator.pub.pem")
    assert report["central_dp"]["epsilon"] == pytest.approx(records[-1]["epsilon"], rel=1e-12)


def test_secagg_sums_the_cnns_arrays_as_plain_aggregation_averages_them(site_files, tmp_path):
    # On generated cells, so that it runs without the ELPV extra (tests/test_vision.py has SecAgg+ on ELPV).
    plain = tmp_path / "plain"
    run_experiment(SPEC, site_files, _config(plain, num_rounds=1))
    secure = tmp_path / "secagg"
    results = run_experiment(SPEC, site_files, _config(secure, num_rounds=1, secagg=True))

    assert "Secure aggregation completed" in (secure / "flower.log").read_text()
    assert results["rounds"][0]["sites_trained"] == sorted(site_files)
    masked, averaged = _checkpoint(secure, 1), _checkpoint(plain, 1)
    assert [w.shape for w in masked] == weight_shapes("cnn", 1, HIDDEN, 1)
    for got, want in zip(masked, averaged, strict=True):  # SecAgg+ quantises to 16 / 2**22 per unit
        np.testing.assert_allclose(got, want, atol=5e-5, rtol=0)
    assert not np.array_equal(masked[0], get_weights(build_model(1, name="cnn", hidden=HIDDEN, seed=0))[0])
