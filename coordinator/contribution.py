"""Contribution scores: what each supplier's data and updates did for the federated model.

Pure functions over a round's updates, their weights and a ``score(models) -> list[float]``
callback (the metric of each model on held-out data), so the math is testable without Flower;
`coordinator.contribution_grid` supplies the callback that asks the sites.

- *Data and participation share*: a site's training rows x the rounds whose update was
  aggregated, over the federation's total (refused, failed and rejected rounds count zero).
- *Utility*: GTG-Shapley (Liu et al. 2022, "GTG-Shapley: Efficient and Accurate Participant
  Contribution Evaluation in Federated Learning", ACM TIST 13(4)). Per round, the coalition
  model of a set S of sites is reconstructed, without retraining, as the round's global model
  plus the example-weighted mean of S's updates (FedAvg's rule; the empty coalition is the
  round's global model, the grand coalition the next one). A round's Shapley values split the
  round's gain ``u(grand) - u(global)`` among the sites that trained; a site's utility is the
  sum over rounds. Where the budget (`budget`: coalitions evaluated per round) covers every
  coalition the round's values are exact; otherwise they are Monte-Carlo over permutations
  sampled with GTG's guidance (permutation k starts with site k mod n, so every site is
  sampled first as often as any other) and *within-round truncation* (once the remaining gain
  of a permutation is below `within`, its later sites get zero). *Between-round truncation*:
  a round whose total gain is below `between` gives every site zero.
  Every coalition of a round goes to the sites in one batched evaluation, so truncation here
  decides which marginal contributions count, not which models are evaluated: the cost is
  bounded by the budget.
- *Leave-one-out* (federations of at most `LOO_MAX_SITES` sites): ``u(grand) - u(grand - i)``
  per round, summed, from the same reconstructed models.

Utilities are in units of the task's primary metric, signed so that positive helps: for an
error metric (RMSE) a site that lowers the error has positive utility. Efficiency: the
utilities of a run sum to its total gain within ``rounds x max(within, between)``.

A *free rider* (a site that sends back the model it received, or noise) is flagged when its
utility is below `FREE_RIDER_FRACTION` of an equal share of a positive total gain.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_TRUNCATION",
    "FREE_RIDER_FRACTION",
    "LOO_MAX_SITES",
    "SECAGG_REASON",
    "RoundContribution",
    "ScoreFn",
    "coalition_model",
    "plan_coalitions",
    "round_contribution",
    "data_shares",
    "contribution_result",
]

ScoreFn = Callable[[Sequence[list[np.ndarray]]], Sequence[float]]
"""Scores each model (a list of weight arrays) in one call, in the task's primary metric."""

DEFAULT_BUDGET = 64  # coalitions per round: exact Shapley up to 6 sites
DEFAULT_TRUNCATION = 1e-3  # metric units, within and between rounds
LOO_MAX_SITES = 6
FREE_RIDER_FRACTION = 0.1
SECAGG_REASON = "secure aggregation hides single updates: only their sum reaches the coordinator"

Coalition = frozenset[int]


def coalition_model(
    global_weights: Sequence[np.ndarray],
    updates: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float],
    members: Sequence[int],
) -> list[np.ndarray]:
    """The round's model had only `members` trained: their updates' weighted mean (the global model if none)."""
    if not members:
        return [np.array(a, copy=True) for a in global_weights]
    total = float(sum(weights[i] for i in members))
    if total <= 0:
        raise ValueError("a coalition's updates must have a positive total weight")
    out = []
    for layer, array in enumerate(global_weights):
        mean = np.zeros(np.shape(array), dtype=np.float64)
        for i in members:
            mean += (weights[i] / total) * np.asarray(updates[i][layer], dtype=np.float64)
        out.append(mean.astype(np.asarray(array).dtype))
    return out


def _permutations(n: int, count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """GTG's guided sampling: permutation k starts with site k mod n, the rest in random order."""
    out = []
    for k in range(count):
        first = k % n
        rest = [i for i in range(n) if i != first]
        rng.shuffle(rest)
        out.append((first, *rest))
    return out


def plan_coalitions(
    n: int, *, budget: int, seed: int, leave_one_out: bool
) -> tuple[list[Coalition], list[tuple[int, ...]] | None]:
    """The coalitions to evaluate in a round of `n` sites, at most `budget` of them.

    Returns (coalitions, permutations): permutations is None when every coalition fits (exact
    Shapley). The empty and the grand coalition always come first; with `leave_one_out` the
    grand coalition minus each site next; then the prefixes of whole guided permutations
    while they fit.
    """
    everyone = frozenset(range(n))
    if 2**n <= budget:
        subsets = [frozenset(c) for size in range(n + 1) for c in itertools.combinations(range(n), size)]
        return subsets, None
    planned: dict[Coalition, None] = {frozenset(): None, everyone: None}
    if leave_one_out:
        planned.update({everyone - {i}: None for i in range(n)})
    if len(planned) + n - 1 > budget:
        raise ValueError(
            f"a budget of {budget} coalitions per round cannot cover one permutation of {n} sites "
            f"(needs at least {len(planned) + n - 1})"
        )
    rng = np.random.default_rng(seed)
    permutations: list[tuple[int, ...]] = []
    # Enough candidates to fill any budget: each permutation adds at most n - 1 new coalitions.
    for perm in _permutations(n, budget, rng):
        prefixes = [frozenset(perm[:j]) for j in range(1, n)]
        new = [p for p in prefixes if p not in planned]
        if len(planned) + len(new) > budget:
            break
        planned.update({p: None for p in new})
        permutations.append(perm)
    return list(planned), permutations


@dataclass(frozen=True)
class RoundContribution:
    """One round's contribution values, by position of the round's sites.

    Attributes:
        initial: the metric of the round's global model (the empty coalition).
        grand: the metric of the grand coalition's model (FedAvg: the next global model).
        gain: ``grand - initial``, signed so that positive is better.
        utilities: each site's Shapley value this round (metric units, positive helps).
        leave_one_out: each site's ``u(grand) - u(grand without it)``, or None when not computed.
        coalitions_evaluated: models scored this round.
        exact: True when every coalition was evaluated (exact Shapley for this round).
        truncated: True when the round's gain was below the between-round threshold.
        permutations: the sampled permutations (empty when exact).
    """

    initial: float
    grand: float
    gain: float
    utilities: list[float]
    leave_one_out: list[float] | None
    coalitions_evaluated: int
    exact: bool
    truncated: bool
    permutations: list[tuple[int, ...]] = field(default_factory=list)


def _utility(value: float, higher_is_better: bool) -> float:
    return value if higher_is_better else -value


def round_contribution(
    global_weights: Sequence[np.ndarray],
    updates: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float],
    score: ScoreFn,
    *,
    higher_is_better: bool = True,
    budget: int = DEFAULT_BUDGET,
    seed: int = 0,
    within: float = DEFAULT_TRUNCATION,
    between: float = DEFAULT_TRUNCATION,
    leave_one_out: bool | None = None,
) -> RoundContribution:
    """GTG-Shapley values of one round's updates, all coalition models scored in one `score` call.

    `updates[i]` is site i's trained weights, `weights[i]` its aggregation weight (examples).
    `leave_one_out` defaults to ``len(updates) <= LOO_MAX_SITES``. A coalition whose metric is
    undefined (NaN) counts as the round's global model.
    """
    n = len(updates)
    if n == 0:
        raise ValueError("a round without updates has no contributions")
    if len(weights) != n:
        raise ValueError(f"{n} updates but {len(weights)} weights")
    loo = n <= LOO_MAX_SITES if leave_one_out is None else leave_one_out
    coalitions, permutations = plan_coalitions(n, budget=budget, seed=seed, leave_one_out=loo)
    models = [coalition_model(global_weights, updates, weights, sorted(c)) for c in coalitions]
    scored = [float(v) for v in score(models)]
    if len(scored) != len(models):
        raise ValueError(f"the score function returned {len(scored)} values for {len(models)} models")
    raw = dict(zip(coalitions, scored, strict=True))
    empty, everyone = frozenset[int](), frozenset(range(n))
    base = _utility(raw[empty], higher_is_better)
    if math.isnan(base):
        base = 0.0
    v = {c: (base if math.isnan(x) else _utility(x, higher_is_better)) for c, x in raw.items()}
    gain = v[everyone] - v[empty]
    loo_values = [v[everyone] - v[everyone - {i}] for i in range(n)] if loo and n > 1 else ([gain] if loo else None)
    if abs(gain) < between:
        return RoundContribution(
            raw[empty], raw[everyone], gain, [0.0] * n, loo_values, len(models), permutations is None, True,
            permutations or [],
        )  # fmt: skip
    if permutations is None:
        utilities = _exact_shapley(n, v)
    else:
        utilities = _monte_carlo(n, v, permutations, within=within)
    return RoundContribution(
        raw[empty], raw[everyone], gain, utilities, loo_values, len(models), permutations is None, False,
        permutations or [],
    )  # fmt: skip


def _exact_shapley(n: int, v: Mapping[Coalition, float]) -> list[float]:
    out = [0.0] * n
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for c in itertools.combinations(others, size):
                s = frozenset(c)
                out[i] += weight * (v[s | {i}] - v[s])
    return out


def _monte_carlo(
    n: int, v: Mapping[Coalition, float], permutations: Sequence[tuple[int, ...]], *, within: float
) -> list[float]:
    grand = v[frozenset(range(n))]
    totals = [0.0] * n
    for perm in permutations:
        previous = v[frozenset()]
        for j, site in enumerate(perm):
            if abs(grand - previous) < within:
                break  # within-round truncation: the rest of this permutation adds (about) nothing
            value = v[frozenset(perm[: j + 1])]
            totals[site] += value - previous
            previous = value
    return [t / len(permutations) for t in totals]


def data_shares(records: Mapping[str, int], rounds_trained: Mapping[str, int]) -> dict[str, float]:
    """Each site's records x rounds trained over the federation's total (zeros when nobody trained)."""
    amounts = {site: records[site] * rounds_trained.get(site, 0) for site in records}
    total = sum(amounts.values())
    return {site: (amount / total if total else 0.0) for site, amount in amounts.items()}


def contribution_result(
    *,
    metric: str,
    records: Mapping[str, int],
    rounds_trained: Mapping[str, int],
    rounds: Sequence[Mapping[str, Any]],
    inputs: Mapping[str, Any],
    not_available: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """results.json's ``"contribution"`` from the per-round records (`RoundContribution` as recorded).

    Each record of `rounds` has ``sites`` (names, in the order of its values), ``initial``,
    ``grand``, ``gain``, ``utilities``, ``leave_one_out`` (or None) and ``coalitions_evaluated``.
    Without any round record (secure aggregation, utility switched off) only the data shares are
    given and `not_available` says why.
    """
    missing = dict(not_available or {})
    shares = data_shares(records, rounds_trained)
    utility: dict[str, float] | None = None
    loo: dict[str, float] | None = None
    total_gain: float | None = None
    if rounds:
        utility = {site: 0.0 for site in records}
        loo = {site: 0.0 for site in records}
        for record in rounds:
            for site, value in zip(record["sites"], record["utilities"], strict=True):
                utility[site] = utility.get(site, 0.0) + float(value)
            if record.get("leave_one_out") is None:
                loo = None
            elif loo is not None:
                for site, value in zip(record["sites"], record["leave_one_out"], strict=True):
                    loo[site] = loo.get(site, 0.0) + float(value)
        total_gain = float(sum(float(r["gain"]) for r in rounds))
        if loo is None:
            missing.setdefault("leave_one_out", f"only computed for federations of at most {LOO_MAX_SITES} sites")
    fair = total_gain / len(records) if total_gain is not None and records else 0.0
    per_site = {}
    for site in sorted(records):
        u = utility.get(site) if utility is not None else None
        flagged = u is not None and fair > 0 and u < FREE_RIDER_FRACTION * fair
        per_site[site] = {
            "records": int(records[site]),
            "rounds_trained": int(rounds_trained.get(site, 0)),
            "data_share": shares[site],
            "utility": u,
            "utility_share": (u / total_gain) if u is not None and total_gain else None,
            "leave_one_out": loo.get(site) if loo is not None else None,
            "flag": "free_rider" if flagged else None,
        }
    full_inputs = {
        **inputs,
        "coalitions_evaluated": int(sum(int(r["coalitions_evaluated"]) for r in rounds)),
        "initial_metric": float(rounds[0]["initial"]) if rounds else None,
        "final_metric": float(rounds[-1]["grand"]) if rounds else None,
        "free_rider_below": f"{FREE_RIDER_FRACTION:g} x an equal share of the total gain",
    }
    return {
        "method": "gtg-shapley" if rounds else None,
        "metric": metric,
        "inputs": full_inputs,
        "total_gain": total_gain,
        "not_available": missing,
        "per_site": per_site,
    }
