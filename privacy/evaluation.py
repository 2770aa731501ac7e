"""DP evaluation: a site's held-out histogram (`models.histogram`) released through the Gaussian mechanism.

Under DP a site's evaluation reply is its `EvalHistogram` with Gaussian noise on every
coordinate, the same mechanism as the DP data profile (`privacy.profile`): the histogram's
blocks are grouped so that one held-out row changes each group by at most 1 in L2 norm (after
dividing a clipped sum by its bound, `models.histogram.block_scales`), so with ``G`` groups the
L2 sensitivity is ``sqrt(G)`` and each coordinate gets noise of std
``noise_multiplier * sqrt(G) * scale``:

- binary: one group (a row is in one bin of one of the two label histograms): sensitivity 1;
- multiclass: the confusion counts and each class's one-vs-rest pair: ``sqrt(1 + classes)``;
- regression: ``count``, ``abs``, ``sq`` (and, for a sequence task, ``last:count``, ``last:sq``,
  ``last:phm``): ``sqrt(3)`` (``sqrt(6)``), with residuals clipped to ``RESIDUAL_CLIP_STDS`` of
  the federation's label standard deviation (the public scaler's, never the site's own rows).

Each release is one accountant step ``(noise_multiplier, 1.0, 1)`` in the site's ledger. The
run's evaluations together cost ``EVALUATION_SHARE`` of the site's target on their own (the
profile takes ``privacy.profile.PROFILE_SHARE``, DP-SGD the rest, calibrated with both reserved);
a run that evaluates only every k rounds (`evaluation_rounds`) spends that share on fewer,
less noisy releases.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.histogram import EvalHistogram, block_scales
from privacy.accounting import calibrate_noise

__all__ = [
    "EVALUATION_SHARE",
    "RESIDUAL_CLIP_STDS",
    "EvaluationMechanism",
    "evaluation_groups",
    "evaluation_rounds",
    "evaluation_noise_multiplier",
    "release_evaluation",
]

# All of a run's evaluations together cost this share of the site's target on their own.
EVALUATION_SHARE = 0.1
# Regression residuals are clipped at this many of the federation's label standard deviations.
RESIDUAL_CLIP_STDS = 3.0


def evaluation_rounds(num_rounds: int, every: int) -> list[int]:
    """The rounds a run evaluates in: every ``every``-th round and the last (``every`` 0: the last only)."""
    if every < 0:
        raise ValueError(f"evaluate-every must be 0 (the last round only) or positive, got {every}")
    rounds = {num_rounds} | ({r for r in range(1, num_rounds + 1) if r % every == 0} if every else set())
    return sorted(r for r in rounds if r >= 1)


@functools.lru_cache(maxsize=64)
def evaluation_noise_multiplier(*, target_epsilon: float, delta: float, evaluations: int, accountant: str) -> float:
    """The noise multiplier at which `evaluations` releases cost ``EVALUATION_SHARE * target_epsilon`` alone."""
    return calibrate_noise(
        target_epsilon=EVALUATION_SHARE * target_epsilon, delta=delta, sample_rate=1.0,
        steps=max(1, evaluations), accountant=accountant,
    )  # fmt: skip


def evaluation_groups(hist: EvalHistogram) -> list[str]:
    """The groups of a histogram's blocks to each of which one held-out row adds at most 1 (L2, scaled)."""
    if hist.kind == "binary":
        return ["scores by label"]
    if hist.kind == "multiclass":
        return ["confusion", *(f"ovr:{c}" for c in range(len(hist.classes)))]
    return [name for name in ("count", "abs", "sq", "last:count", "last:sq", "last:phm") if name in hist.blocks]


@dataclass(frozen=True, kw_only=True)
class EvaluationMechanism:
    """What one evaluation release ran: the accountant's step and the parameters behind it."""

    round: int
    noise_multiplier: float
    sensitivity: float  # L2, = sqrt(groups)
    noise_std: float  # = noise_multiplier * sensitivity, per count (a clipped sum's times its bound)
    covers: list[str]
    bins: int
    clip: float | None
    evaluations: int  # the run's planned evaluations, among which EVALUATION_SHARE is split

    @property
    def step(self) -> tuple[float, float, int]:
        """The accountant's view: one Gaussian mechanism without subsampling."""
        return (self.noise_multiplier, 1.0, 1)

    def to_dict(self) -> dict[str, Any]:
        """The mechanism as the ledger and the signed report record it."""
        return {
            "mechanism": "evaluation", "round": self.round, "noise_multiplier": self.noise_multiplier,
            "sample_rate": 1.0, "steps": 1, "sensitivity": self.sensitivity, "noise_std": self.noise_std,
            "covers": list(self.covers), "bins": self.bins, "clip": self.clip, "evaluations": self.evaluations,
            "share_of_target": EVALUATION_SHARE,
        }  # fmt: skip


def release_evaluation(
    hist: EvalHistogram,
    *,
    noise_multiplier: float,
    server_round: int,
    evaluations: int,
    rng: np.random.Generator | None = None,
) -> tuple[EvalHistogram, EvaluationMechanism]:
    """The noisy histogram and the mechanism that released it (noise from OS entropy unless `rng`)."""
    groups = evaluation_groups(hist)
    sensitivity = math.sqrt(len(groups))
    std = noise_multiplier * sensitivity
    rng = rng or np.random.default_rng()
    scales = block_scales(hist)
    blocks = {k: a + rng.normal(0.0, std * scales[k], size=a.shape) for k, a in hist.blocks.items()}
    # The same bins (edges, scale) as the exact one; a score histogram's counts carry noise of std `std` each.
    noisy = dataclasses.replace(hist, blocks=blocks, noisy=True, noise_std=std if hist.bins else 0.0)
    mechanism = EvaluationMechanism(
        round=server_round, noise_multiplier=noise_multiplier, sensitivity=sensitivity, noise_std=std,
        covers=groups, bins=hist.bins, clip=hist.clip, evaluations=evaluations,
    )  # fmt: skip
    return noisy, mechanism
