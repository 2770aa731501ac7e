"""Privacy accounting with Opacus' accountants, by name.

A *history* is the list of ``(noise_multiplier, sample_rate, steps)`` of every stretch of
DP-SGD a site ran on its data, in order; its epsilon at a given delta is what the named
accountant (``"rdp"``: Mironov 2017, Rényi DP of the subsampled Gaussian; ``"prv"``:
Gopi et al. 2021, privacy random variables) reports for the whole history. One history per
site, kept across rounds and restarts: a fresh accountant per round would report one round's
epsilon and understate the total.

>>> round(epsilon_of([(1.0, 0.01, 1000)], delta=1e-5, accountant="rdp"), 3)
2.101
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from opacus.accountants import create_accountant

from privacy.errors import PolicyError

__all__ = ["ACCOUNTANTS", "Step", "epsilon_of", "calibrate_noise"]

ACCOUNTANTS = ("rdp", "prv")
Step = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


def epsilon_of(history: Sequence[Step], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of a whole DP-SGD history at `delta` under the named Opacus accountant."""
    if accountant not in ACCOUNTANTS:
        raise PolicyError(f"unknown accountant '{accountant}' (choose from {list(ACCOUNTANTS)})")
    if not 0 < delta < 1:
        raise PolicyError(f"delta must lie in (0, 1), got {delta}")
    history = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    prior: Sequence[Step] = (),
    tolerance: float = 0.005,
) -> float:
    """The smallest noise multiplier whose `steps` more steps keep the history within target.

    Bisection on the accountant itself, so the result never overshoots: the returned noise
    gives ``epsilon_of(prior + [(noise, sample_rate, steps)]) <= target_epsilon``.
    """
    if target_epsilon <= 0:
        raise PolicyError(f"target epsilon must be positive, got {target_epsilon}")
    if epsilon_of(prior, delta=delta, accountant=accountant) >= target_epsilon:
        raise PolicyError(f"prior spending already reaches epsilon {target_epsilon}")

    def eps(sigma: float) -> float:
        return epsilon_of([*prior, (sigma, sample_rate, steps)], delta=delta, accountant=accountant)

    low, high = 0.1, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise PolicyError(f"no noise level reaches epsilon {target_epsilon} in {steps} steps")
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    assert eps(high) <= target_epsilon or math.isclose(eps(high), target_epsilon)
    return high
