"""Membership inference on a site's own rows: the empirical check beside the epsilon.

After the last round each site attacks the final model itself: can a threshold on the
model's loss tell the rows it trained on (members) from its held-out rows (non-members)?
The attack's ROC-AUC is the figure: 0.5 means the model reveals nothing a loss threshold can
read about who was in the training set, 1.0 that it gives every member away. The site
computes it on-site and sends only the figure (and the sample sizes), never a row or a loss.

Pure: per-row losses (and labels) in, `MembershipResult` out (NumPy and scikit-learn only);
the losses come from the client (`client.membership`). Methods, by name in `METHODS`:

- ``loss`` (Yeom et al. 2018): a row with a lower loss is more likely a member;
- ``calibrated-loss``: the log-loss of each row standardised by the held-out rows' log-loss
  mean and spread *of its own label* — an offline likelihood-ratio test (Carlini et al. 2022,
  "LiRA" offline) with one Gaussian of non-member losses per label rather than per row (no
  shadow models: cheap). On imbalanced data (rare defects) it keeps the minority class's
  higher losses from masking its members. Classification tasks only.

The reported ``auc`` is the highest of the methods run: an auditor's figure is the strongest
attack tried, not the average. Both samples have the same size ``n = min(training rows,
held-out rows, max_rows)``, drawn without replacement, so an AUC of 0.5 is what chance
gives; ``null_sd`` is the standard deviation of the AUC of a model that reveals nothing at
that ``n`` (Hanley and McNeil 1982, ``sqrt((2n + 1) / (12 n^2))``).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> result = membership_inference(rng.exponential(0.5, 400), rng.exponential(1.0, 400), seed=0)
    >>> round(result.auc, 2), result.method, result.n_train  # in theory 2/3: P(Exp(2) < Exp(1))
    (0.63, 'loss', 400)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from privacy.errors import MembershipCheckError

__all__ = [
    "MembershipResult",
    "METHODS",
    "MAX_ROWS",
    "balanced_sample",
    "attack_auc",
    "loss_scores",
    "calibrated_loss_scores",
    "membership_inference",
    "null_sd",
]

MAX_ROWS = 20_000  # per side: the AUC's spread is ~0.002 there, more rows only cost forward passes
MIN_ROWS = 2  # per side: below this there is no ranking to measure
# A label with fewer held-out rows than this is calibrated with the statistics of all held-out rows.
_MIN_REFERENCE = 5
_EPS = 1e-12


def null_sd(n_train: int, n_holdout: int) -> float:
    """The AUC's standard deviation when members and non-members score alike (Hanley and McNeil 1982)."""
    return math.sqrt((n_train + n_holdout + 1) / (12 * n_train * n_holdout))


@dataclass(frozen=True, kw_only=True)
class MembershipResult:
    """One site's membership-inference figure on the final model: figures only, never rows.

    Attributes:
        auc: the ROC-AUC of the strongest method (0.5: chance; 1.0: every member found).
        method: the method that gave it (a name in `METHODS`).
        n_train: the training rows attacked (members), as sampled.
        n_holdout: the held-out rows attacked (non-members), as sampled; equal to `n_train`.
        by_method: the AUC of each method run.
        null_sd: the AUC's standard deviation at these sizes for a model that reveals nothing.
    """

    auc: float
    method: str
    n_train: int
    n_holdout: int
    by_method: dict[str, float] = field(default_factory=dict)
    null_sd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: what the site's ledger keeps and its reply carries."""
        return {
            "auc": self.auc, "method": self.method, "n_train": self.n_train, "n_holdout": self.n_holdout,
            "by_method": dict(self.by_method), "null_sd": self.null_sd,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "membership result") -> MembershipResult:
        """Read back `to_dict`'s form; raises `MembershipCheckError` naming `source` and what is wrong."""
        try:
            result = cls(
                auc=float(data["auc"]), method=str(data["method"]), n_train=int(data["n_train"]),
                n_holdout=int(data["n_holdout"]),
                by_method={str(k): float(v) for k, v in dict(data.get("by_method", {})).items()},
                null_sd=float(data.get("null_sd", 0.0)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise MembershipCheckError(f"{source}: not a membership result ({type(exc).__name__} {exc})") from None
        problem = result.problem()
        if problem:
            raise MembershipCheckError(f"{source}: {problem}")
        return result

    def problem(self) -> str | None:
        """Why these figures do not hang together (an AUC outside [0, 1], unequal samples, ...), or None."""
        if not 0.0 <= self.auc <= 1.0:
            return f"AUC {self.auc} is not in [0, 1]"
        if self.method not in METHODS:
            return f"unknown method {self.method!r} (known: {', '.join(METHODS)})"
        if self.n_train < MIN_ROWS or self.n_train != self.n_holdout:
            return f"the samples must be equal and of at least {MIN_ROWS} rows, not {self.n_train} and {self.n_holdout}"
        if self.by_method and not math.isclose(self.by_method.get(self.method, -1.0), self.auc, abs_tol=1e-12):
            return f"AUC {self.auc} is not its method {self.method!r}'s {self.by_method.get(self.method)}"
        if self.by_method and self.auc < max(self.by_method.values()) - 1e-12:
            return f"AUC {self.auc} is not the highest of its methods' {self.by_method}"
        return None


def balanced_sample(
    n_members: int, n_nonmembers: int, *, max_rows: int = MAX_ROWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of equal-size samples, without replacement: ``min(n_members, n_nonmembers, max_rows)`` of each.

    With unequal sides an AUC is still 0.5 by chance, but a balanced pair keeps the attack's
    accuracy (and a TPR at a low FPR) meaningful as well, and caps the cost on a large site.
    """
    n = min(n_members, n_nonmembers, max_rows)
    if n < MIN_ROWS:
        raise MembershipCheckError(
            f"membership inference needs at least {MIN_ROWS} training and {MIN_ROWS} held-out rows, "
            f"got {n_members} and {n_nonmembers}"
        )
    rng = np.random.default_rng(seed)
    members = np.sort(rng.choice(n_members, size=n, replace=False))
    nonmembers = np.sort(rng.choice(n_nonmembers, size=n, replace=False))
    return members, nonmembers


def attack_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC-AUC of scores where higher means "member" (ties count half)."""
    scores = np.concatenate([np.asarray(member_scores, float), np.asarray(nonmember_scores, float)])
    if not np.all(np.isfinite(scores)):
        raise MembershipCheckError(f"{int(np.sum(~np.isfinite(scores)))} attack score(s) are not finite")
    truth = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    return float(roc_auc_score(truth, scores))


def loss_scores(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, **_: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    """The loss attack's scores (Yeom et al. 2018): minus each row's loss."""
    return -np.asarray(member_losses, float), -np.asarray(nonmember_losses, float)


def calibrated_loss_scores(
    member_losses: np.ndarray,
    nonmember_losses: np.ndarray,
    *,
    member_labels: np.ndarray | None = None,
    nonmember_labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Label-calibrated scores: minus the z-score of each row's log-loss among the held-out rows of its label.

    None without labels (regression: there is no label to calibrate by). A label with fewer
    than five held-out rows is calibrated by all held-out rows.
    """
    if member_labels is None or nonmember_labels is None:
        return None
    member_log = np.log(np.asarray(member_losses, float) + _EPS)
    nonmember_log = np.log(np.asarray(nonmember_losses, float) + _EPS)
    member_labels, nonmember_labels = np.asarray(member_labels), np.asarray(nonmember_labels)

    def moments(values: np.ndarray) -> tuple[float, float]:
        return float(values.mean()), max(float(values.std()), 1e-6)

    pooled = moments(nonmember_log)
    by_label = {
        label: moments(nonmember_log[nonmember_labels == label]) if np.sum(nonmember_labels == label) >= _MIN_REFERENCE
        else pooled
        for label in np.unique(np.concatenate([member_labels, nonmember_labels]))
    }  # fmt: skip

    def score(log_losses: np.ndarray, labels: np.ndarray) -> np.ndarray:
        mean = np.array([by_label[label][0] for label in labels])
        std = np.array([by_label[label][1] for label in labels])
        return -(log_losses - mean) / std

    return score(member_log, member_labels), score(nonmember_log, nonmember_labels)


Scorer = Callable[..., "tuple[np.ndarray, np.ndarray] | None"]
METHODS: dict[str, Scorer] = {"loss": loss_scores, "calibrated-loss": calibrated_loss_scores}
"""The attacks by name: each maps (member losses, non-member losses, labels) to scores, or None if it does not apply."""


def membership_inference(
    member_losses: np.ndarray,
    nonmember_losses: np.ndarray,
    *,
    member_labels: np.ndarray | None = None,
    nonmember_labels: np.ndarray | None = None,
    methods: tuple[str, ...] = tuple(METHODS),
    max_rows: int = MAX_ROWS,
    seed: int = 0,
) -> MembershipResult:
    """Attack the per-row losses of training rows (members) against held-out rows (non-members).

    Draws equal-size samples of both (`balanced_sample`), runs each of `methods` that applies
    (the calibrated one needs labels: pass them for classification tasks), and reports the
    highest AUC. Raises `MembershipCheckError` with fewer than two rows on a side, non-finite
    losses or an unknown method.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MembershipCheckError(f"unknown membership-inference method(s) {unknown} (known: {', '.join(METHODS)})")
    member_losses, nonmember_losses = np.asarray(member_losses, float), np.asarray(nonmember_losses, float)
    members, nonmembers = balanced_sample(len(member_losses), len(nonmember_losses), max_rows=max_rows, seed=seed)
    labelled = member_labels is not None and nonmember_labels is not None
    by_method: dict[str, float] = {}
    for name in methods:
        scores = METHODS[name](
            member_losses[members], nonmember_losses[nonmembers],
            member_labels=np.asarray(member_labels)[members] if labelled else None,
            nonmember_labels=np.asarray(nonmember_labels)[nonmembers] if labelled else None,
        )  # fmt: skip
        if scores is not None:
            by_method[name] = attack_auc(*scores)
    if not by_method:
        raise MembershipCheckError(f"none of the methods {list(methods)} applies (the calibrated one needs labels)")
    best = max(by_method, key=lambda name: by_method[name])
    n = len(members)
    return MembershipResult(
        auc=by_method[best], method=best, n_train=n, n_holdout=len(nonmembers), by_method=by_method,
        null_sd=null_sd(n, len(nonmembers)),
    )  # fmt: skip
