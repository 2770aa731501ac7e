"""A site's own privacy ledger: every stretch of DP-SGD on its data, kept on-site across restarts.

The ledger is the persisted state of the site's one accountant: the history of
``(noise_multiplier, sample_rate, steps)``. Before a round the site asks the ledger what
the round would cost (`plan_round`) and refuses if that exceeds its budget; after the round
it records what it spent (`record_round`). Each change is also written to the site's
hash-chained audit log next to the ledger. After a run the ledger also keeps the site's
membership-inference figure of the final model (`record_membership`), beside the epsilon and
outside the accountant's history.
"""

from __future__ import annotations

import fcntl
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy.accounting import Step, calibrate_noise, epsilon_of
from privacy.audit import AuditLog
from privacy.errors import BudgetExhausted, PolicyError
from privacy.policy import DpRequest, SitePrivacyPolicy
from sangsaeng.errors import FileIntegrityError
from sangsaeng.files import read_checked_json, write_checked_json

__all__ = ["PrivacyLedger", "RoundPlan", "ProfilePlan", "EvaluationPlan", "LocalOnlyPlan", "MIN_REMAINING"]

# A run needs at least this fraction of its target left; less buys only noise.
MIN_REMAINING = 0.02


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """How the next round runs under DP, and what it will cost.

    Keyword-only: eleven values, most of them floats (noise, sample rate, delta, epsilons), that
    a positional call could swap without any error.
    """

    run_id: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    max_grad_norm: float
    accountant: str
    budget_epsilon: float
    epsilon_before: float
    epsilon_after: float
    prior: list[Step]  # history before this run (earlier runs on the same data)


@dataclass(frozen=True, kw_only=True)
class ProfilePlan:
    """How the site releases its data profile under DP in a run, and what it costs.

    ``released``: the profile and mechanism this run already released (a resumed run, a
    repeated request); sending them again costs nothing, so nothing new is charged.
    """

    run_id: str
    noise_multiplier: float
    delta: float
    accountant: str
    budget_epsilon: float
    target_epsilon: float
    epsilon_before: float
    epsilon_after: float
    prior: list[Step]  # history before this run (earlier runs on the same data)
    released: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class EvaluationPlan:
    """How the site releases one round's evaluation histogram under DP, and what it costs.

    ``released``: the ledger entry of this run's release for this round (a repeated request);
    sending it again costs nothing.
    """

    run_id: str
    server_round: int
    noise_multiplier: float
    evaluations: int  # the run's planned evaluations
    delta: float
    accountant: str
    budget_epsilon: float
    epsilon_before: float
    epsilon_after: float
    prior: list[Step]
    released: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class LocalOnlyPlan:
    """How the site trains and scores its local-only model under DP in a run (`client.local_only`), and the cost.

    The run's own settings: DP-SGD at the run's noise multiplier and sample rate for the run's
    planned steps, then one evaluation release at the noise of the run's evaluations. Both are
    charged. ``released``: this run's two ledger entries when the site already did it (a repeated
    request); sending the result again costs nothing.
    """

    run_id: str
    server_round: int  # the run's last round: the releases come after it
    noise_multiplier: float
    sample_rate: float
    steps: int
    evaluation_noise_multiplier: float
    evaluations: int  # the run's planned evaluations (the evaluation release's calibration)
    delta: float
    max_grad_norm: float
    accountant: str
    budget_epsilon: float
    epsilon_before: float
    epsilon_after: float
    prior: list[Step]
    released: tuple[dict[str, Any], dict[str, Any]] | None = None


class PrivacyLedger:
    """The persisted accountant state of one site (a JSON file, written atomically)."""

    def __init__(self, path: str | Path, site: str):
        self.path = Path(path)
        self.site = site
        self.audit = AuditLog(self.path.with_suffix(".audit.jsonl"))

    # -- storage -------------------------------------------------------------------
    def _empty(self) -> dict[str, Any]:
        return {"site": self.site, "policy": None, "runs": {}, "entries": []}

    def load(self) -> dict[str, Any]:
        """The ledger's state; a corrupt file raises `PolicyError` (never start from zero)."""
        if not self.path.exists():
            return self._empty()
        try:
            return read_checked_json(self.path, what="privacy ledger")
        except FileIntegrityError as exc:
            # Never start from zero silently: that would forget spent budget.
            raise PolicyError(f"{exc}; restore it from backup") from None

    def _save(self, state: dict[str, Any]) -> None:
        write_checked_json(self.path, state, indent=1)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.load()
            yield state
            self._save(state)

    # -- queries -------------------------------------------------------------------
    def history(self, state: dict[str, Any] | None = None) -> list[Step]:
        """The recorded (noise_multiplier, sample_rate, steps) of every DP-SGD stretch, in order."""
        state = state or self.load()
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in state["entries"]]

    def spent(self, *, delta: float, accountant: str = "rdp") -> float:
        """Epsilon spent so far on this data at `delta`, by the named accountant."""
        return epsilon_of(self.history(), delta=delta, accountant=accountant)

    def _evaluation_reserve(
        self, state: dict[str, Any], request: DpRequest, *, target: float, delta: float, accountant: str,
        from_round: int | None = None,
    ) -> list[Step]:  # fmt: skip
        """The run's planned evaluation releases not yet made (from `from_round` on), as accountant steps."""
        from privacy.evaluation import evaluation_noise_multiplier, evaluation_rounds

        planned = evaluation_rounds(request.num_rounds, request.evaluate_every)
        done = {e["round"] for e in state["entries"]
                if e["run_id"] == request.run_id and e.get("mechanism") == "evaluation"}  # fmt: skip
        left = [r for r in planned if r not in done and (from_round is None or r >= from_round)]
        if not left:
            return []
        noise = evaluation_noise_multiplier(target_epsilon=target, delta=delta, evaluations=len(planned),
                                            accountant=accountant)  # fmt: skip
        return [(noise, 1.0, len(left))]

    # -- the two steps of a DP round ----------------------------------------------------
    def plan_round(
        self,
        policy: SitePrivacyPolicy,
        request: DpRequest,
        *,
        records: int,
        batch_size: int,
        epochs: int,
        server_round: int | None = None,
    ) -> RoundPlan | None:
        """Decide how this round trains under the site's policy; None means no DP asked or required.

        With `server_round`, the rounds still to come (``server_round .. num_rounds``) are
        checked against the run's target: when they no longer fit at the run's noise (a run
        resumed with more rounds than first planned, or a round trained again after a
        restart), the noise is recalibrated for them, so that the whole history stays within
        ``min(site budget, run target)``. Raises `BudgetExhausted` when the round would take
        the site over its budget or the run over its target.
        """
        if request.target_epsilon is None and not policy.dp_required:
            return None
        budgets = [e for e in (policy.max_epsilon, request.target_epsilon) if e is not None]
        budget = policy.max_epsilon if policy.max_epsilon is not None else float(request.target_epsilon)  # type: ignore[arg-type]  # policy: dp_required needs max_epsilon
        target = min(budgets)
        delta = policy.delta_for(records)
        accountant = policy.accountant
        clip = policy.max_grad_norm or request.max_grad_norm
        # Opacus' Poisson loader samples each record with rate 1 / (batches per epoch).
        batches = max(1, math.ceil(records / batch_size))
        sample_rate, steps = 1.0 / batches, epochs * batches
        with self._locked() as state:
            self._note_policy(state, policy)
            run = state["runs"].get(request.run_id)
            # Earlier runs on the same data; this run's profile release, if any, is its own.
            others = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in state["entries"]
                      if e["run_id"] != request.run_id]  # fmt: skip
            prior = [tuple(s) for s in run["prior"]] if run else others
            if run is None:
                spent = epsilon_of(self.history(state), delta=delta, accountant=accountant)
                if spent >= (1 - MIN_REMAINING) * target:
                    self.audit.append("refusal", site=self.site, run_id=request.run_id, spent=spent, budget=budget)
                    raise BudgetExhausted(
                        f"budget exhausted: epsilon {spent:.3f} already spent of {target:.3f}; "
                        "nothing useful is left to train with"
                    )
                # The run's evaluations are reserved: training is calibrated to what they leave.
                reserve = self._evaluation_reserve(state, request, target=target, delta=delta, accountant=accountant)
                try:
                    noise = calibrate_noise(
                        target_epsilon=target, delta=delta, sample_rate=sample_rate,
                        steps=steps * request.num_rounds, accountant=accountant, prior=[*self.history(state), *reserve],
                    )  # fmt: skip
                except PolicyError as exc:
                    spent = epsilon_of(self.history(state), delta=delta, accountant=accountant)
                    self.audit.append("refusal", site=self.site, run_id=request.run_id, spent=spent, budget=budget)
                    raise BudgetExhausted(
                        f"budget exhausted: epsilon {spent:.3f} already spent of {budget:.3f} ({exc})"
                    ) from None
                run = {"noise_multiplier": noise, "target_epsilon": target, "sample_rate": sample_rate,
                       "planned_steps": steps * request.num_rounds, "prior": [list(p) for p in prior]}  # fmt: skip
                state["runs"][request.run_id] = run
            history = self.history(state)
            if server_round is not None:
                self._replan(state, run, request, history=history, steps=steps, server_round=server_round,
                             delta=delta, accountant=accountant, budget=budget)  # fmt: skip
            before = epsilon_of(history, delta=delta, accountant=accountant)
            after = epsilon_of(
                [*history, (run["noise_multiplier"], sample_rate, steps)], delta=delta, accountant=accountant
            )
        run_target = min(budget, float(run["target_epsilon"]))
        if after > run_target * (1 + 1e-9):
            self.audit.append(
                "refusal", site=self.site, run_id=request.run_id, spent=before, would_reach=after, budget=budget
            )
            raise BudgetExhausted(
                f"budget exhausted: this round would bring epsilon from {before:.3f} to {after:.3f}, "
                + (f"over the site's budget of {budget:.3f}" if run_target == budget
                   else f"over the run's target of {run_target:.3f}")
            )  # fmt: skip
        if after > budget * (1 + 1e-9):
            self.audit.append(
                "refusal", site=self.site, run_id=request.run_id, spent=before, would_reach=after, budget=budget
            )
            raise BudgetExhausted(
                f"budget exhausted: this round would bring epsilon from {before:.3f} to {after:.3f}, "
                f"over the site's budget of {budget:.3f}"
            )
        return RoundPlan(
            run_id=request.run_id, noise_multiplier=run["noise_multiplier"], sample_rate=sample_rate, steps=steps,
            delta=delta, max_grad_norm=clip, accountant=accountant, budget_epsilon=budget, epsilon_before=before,
            epsilon_after=after, prior=[tuple(p) for p in run["prior"]],
        )  # fmt: skip

    def _replan(
        self, state: dict[str, Any], run: dict[str, Any], request: DpRequest, *, history: list[Step], steps: int,
        server_round: int, delta: float, accountant: str, budget: float,
    ) -> None:  # fmt: skip
        """Recalibrate the run's noise when its remaining rounds no longer fit in its target."""
        target = min(budget, float(run["target_epsilon"]))
        remaining = steps * max(1, request.num_rounds - server_round + 1)
        reserve = self._evaluation_reserve(state, request, target=float(run["target_epsilon"]), delta=delta,
                                           accountant=accountant, from_round=server_round)  # fmt: skip
        spent = epsilon_of(history, delta=delta, accountant=accountant)
        history = [*history, *reserve]
        projected = epsilon_of([*history, (run["noise_multiplier"], run["sample_rate"], remaining)],
                               delta=delta, accountant=accountant)  # fmt: skip
        if projected <= target * (1 + 1e-9):
            return
        try:
            try:
                noise = calibrate_noise(
                    target_epsilon=target, delta=delta, sample_rate=run["sample_rate"], steps=remaining,
                    accountant=accountant, prior=history,
                )  # fmt: skip
            except PolicyError:
                if not reserve:
                    raise
                # Training first: what is left goes to the remaining rounds, and a later evaluation that
                # no longer fits is refused on its own (`plan_evaluation`).
                noise = calibrate_noise(
                    target_epsilon=target, delta=delta, sample_rate=run["sample_rate"], steps=remaining,
                    accountant=accountant, prior=history[: len(history) - len(reserve)],
                )  # fmt: skip
        except PolicyError as exc:
            self.audit.append("refusal", site=self.site, run_id=request.run_id, spent=spent, budget=target)
            raise BudgetExhausted(
                f"budget exhausted: epsilon {spent:.3f} already spent of the run's {target:.3f}; the "
                f"{remaining} remaining step(s) of rounds {server_round}-{request.num_rounds} cannot fit ({exc})"
            ) from None
        self.audit.append(
            "noise recalibrated", site=self.site, run_id=request.run_id, round=server_round,
            old_noise_multiplier=run["noise_multiplier"], noise_multiplier=noise, remaining_steps=remaining,
            target_epsilon=target,
        )  # fmt: skip
        run["noise_multiplier"] = noise
        run["planned_steps"] = steps * (server_round - 1) + remaining

    def plan_profile(self, policy: SitePrivacyPolicy, request: DpRequest, *, records: int) -> ProfilePlan | None:
        """Decide how the data profile is released under DP in this run; None means no DP asked or required.

        The profile's noise costs ``privacy.profile.PROFILE_SHARE`` of the run's target on its
        own. Raises `BudgetExhausted` when the site's history plus the profile would leave less
        than ``MIN_REMAINING`` of the target for training (or pass its budget).
        """
        from privacy.profile import profile_noise_multiplier

        if request.target_epsilon is None and not policy.dp_required:
            return None
        budgets = [e for e in (policy.max_epsilon, request.target_epsilon) if e is not None]
        budget = max(budgets) if policy.max_epsilon is None else policy.max_epsilon
        target = min(budgets)
        delta, accountant = policy.delta_for(records), policy.accountant
        with self._locked() as state:
            self._note_policy(state, policy)
            prior = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in state["entries"]
                     if e["run_id"] != request.run_id]  # fmt: skip
            for entry in state["entries"]:
                if entry["run_id"] == request.run_id and entry.get("mechanism") == "profile":
                    before = epsilon_of(self.history(state), delta=delta, accountant=accountant)
                    return ProfilePlan(
                        run_id=request.run_id, noise_multiplier=entry["noise_multiplier"], delta=delta,
                        accountant=accountant, budget_epsilon=budget, target_epsilon=target, epsilon_before=before,
                        epsilon_after=before, prior=prior, released=entry,
                    )  # fmt: skip
            history = self.history(state)
            reserve = self._evaluation_reserve(state, request, target=target, delta=delta, accountant=accountant)
        noise = profile_noise_multiplier(target_epsilon=target, delta=delta, accountant=accountant)
        before = epsilon_of(history, delta=delta, accountant=accountant)
        after = epsilon_of([*history, (noise, 1.0, 1)], delta=delta, accountant=accountant)
        # The run's evaluations are reserved too: the profile must leave room for training after them.
        reserved = epsilon_of([*history, (noise, 1.0, 1), *reserve], delta=delta, accountant=accountant)
        if reserved >= (1 - MIN_REMAINING) * target:
            self.audit.append(
                "refusal", site=self.site, run_id=request.run_id, spent=before, would_reach=after, budget=target,
                mechanism="profile",
            )  # fmt: skip
            raise BudgetExhausted(
                f"budget exhausted: the DP data profile would bring epsilon from {before:.3f} to {after:.3f}, "
                f"leaving nothing useful of {target:.3f} to train with; the site sends no profile"
            )
        return ProfilePlan(
            run_id=request.run_id, noise_multiplier=noise, delta=delta, accountant=accountant, budget_epsilon=budget,
            target_epsilon=target, epsilon_before=before, epsilon_after=after, prior=prior,
        )  # fmt: skip

    def record_profile(self, plan: ProfilePlan, *, mechanism: dict[str, Any], profile: str) -> dict[str, Any]:
        """Charge the released profile (one Gaussian step) to the history; return the ledger entry.

        The entry keeps the released (noisy) profile, so a repeated request of the same run gets
        the same answer at no further cost.
        """
        with self._locked() as state:
            entry = {
                **mechanism, "run_id": plan.run_id, "round": 0, "noise_multiplier": plan.noise_multiplier,
                "sample_rate": 1.0, "steps": 1, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "profile": profile,
            }  # fmt: skip
            state["entries"].append(entry)
            entry["epsilon"] = epsilon_of(self.history(state), delta=plan.delta, accountant=plan.accountant)
        self.audit.append(
            "profile released", site=self.site, run_id=plan.run_id, noise_multiplier=plan.noise_multiplier,
            sensitivity=mechanism.get("sensitivity"), epsilon=entry["epsilon"],
        )  # fmt: skip
        return entry

    def plan_evaluation(
        self, policy: SitePrivacyPolicy, request: DpRequest, *, records: int, server_round: int
    ) -> EvaluationPlan | None:
        """Decide how this round's evaluation histogram is released under DP; None means no DP asked or required.

        `records`: the site's training examples (its delta is the training's). Raises
        `BudgetExhausted` when the release would take the site over its budget or the run over
        its target; a release this run already made for this round is sent again at no cost.
        """
        from privacy.evaluation import evaluation_noise_multiplier, evaluation_rounds

        if request.target_epsilon is None and not policy.dp_required:
            return None
        budgets = [e for e in (policy.max_epsilon, request.target_epsilon) if e is not None]
        budget = max(budgets) if policy.max_epsilon is None else policy.max_epsilon
        delta, accountant = policy.delta_for(records), policy.accountant
        evaluations = len(evaluation_rounds(request.num_rounds, request.evaluate_every))
        with self._locked() as state:
            self._note_policy(state, policy)
            run = state["runs"].get(request.run_id)
            target = float(run["target_epsilon"]) if run else min(budgets)
            prior = [tuple(p) for p in run["prior"]] if run else [
                (e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in state["entries"]
                if e["run_id"] != request.run_id]  # fmt: skip
            history = self.history(state)
            before = epsilon_of(history, delta=delta, accountant=accountant)
            for entry in state["entries"]:
                if (entry["run_id"], entry.get("mechanism"), entry["round"]) == (
                    request.run_id, "evaluation", server_round
                ):  # fmt: skip
                    return EvaluationPlan(
                        run_id=request.run_id, server_round=server_round, noise_multiplier=entry["noise_multiplier"],
                        evaluations=evaluations, delta=delta, accountant=accountant, budget_epsilon=budget,
                        epsilon_before=before, epsilon_after=before, prior=prior, released=entry,
                    )  # fmt: skip
        noise = evaluation_noise_multiplier(target_epsilon=target, delta=delta, evaluations=evaluations,
                                            accountant=accountant)  # fmt: skip
        after = epsilon_of([*history, (noise, 1.0, 1)], delta=delta, accountant=accountant)
        limit = min(budget, target)
        if after > limit * (1 + 1e-9):
            self.audit.append(
                "refusal", site=self.site, run_id=request.run_id, round=server_round, spent=before,
                would_reach=after, budget=limit, mechanism="evaluation",
            )  # fmt: skip
            raise BudgetExhausted(
                f"budget exhausted: evaluating round {server_round} would bring epsilon from {before:.3f} to "
                f"{after:.3f}, over {'the site budget' if limit == budget else 'the run target'} of {limit:.3f}; "
                "the site sends no evaluation"
            )
        return EvaluationPlan(
            run_id=request.run_id, server_round=server_round, noise_multiplier=noise, evaluations=evaluations,
            delta=delta, accountant=accountant, budget_epsilon=budget, epsilon_before=before, epsilon_after=after,
            prior=prior,
        )  # fmt: skip

    def record_evaluation(self, plan: EvaluationPlan, *, mechanism: dict[str, Any], histogram: str) -> dict[str, Any]:
        """Charge the released evaluation histogram (one Gaussian step); return the ledger entry, which keeps it."""
        with self._locked() as state:
            entry = {
                **mechanism, "run_id": plan.run_id, "round": plan.server_round,
                "noise_multiplier": plan.noise_multiplier, "sample_rate": 1.0, "steps": 1,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "histogram": histogram,
            }  # fmt: skip
            state["entries"].append(entry)
            entry["epsilon"] = epsilon_of(self.history(state), delta=plan.delta, accountant=plan.accountant)
        self.audit.append(
            "evaluation released", site=self.site, run_id=plan.run_id, round=plan.server_round,
            noise_multiplier=plan.noise_multiplier, sensitivity=mechanism.get("sensitivity"), epsilon=entry["epsilon"],
        )  # fmt: skip
        return entry

    def plan_local_only(
        self, policy: SitePrivacyPolicy, request: DpRequest, *, records: int, max_grad_norm: float
    ) -> LocalOnlyPlan | None:
        """Decide how the local-only model trains and is scored under DP; None means no DP asked or required.

        It copies the run's DP-SGD (noise multiplier, sample rate, planned steps) and one release at
        the noise of the run's evaluations, on top of everything already spent. Raises
        `BudgetExhausted` when that would pass the site's own budget (``max-epsilon``; without one,
        the run's target, which the run itself spends), or when the site trained no DP round this run.
        """
        from privacy.evaluation import evaluation_noise_multiplier, evaluation_rounds

        if request.target_epsilon is None and not policy.dp_required:
            return None
        delta, accountant = policy.delta_for(records), policy.accountant
        evaluations = len(evaluation_rounds(request.num_rounds, request.evaluate_every))
        with self._locked() as state:
            self._note_policy(state, policy)
            run = state["runs"].get(request.run_id)
            if run is None:
                raise BudgetExhausted(
                    f"budget exhausted: no DP round of run {request.run_id} was trained here, so there are no run "
                    "settings to train a local-only model with; the site trains none"
                )
            target = float(run["target_epsilon"])
            budget = policy.max_epsilon if policy.max_epsilon is not None else target
            history = self.history(state)
            mine = [e for e in state["entries"] if e["run_id"] == request.run_id
                    and e.get("mechanism") in ("local_only_training", "local_only_evaluation")]  # fmt: skip
        noise = float(run["noise_multiplier"])
        steps, rate = int(run["planned_steps"]), float(run["sample_rate"])
        eval_noise = evaluation_noise_multiplier(target_epsilon=target, delta=delta, evaluations=evaluations,
                                                 accountant=accountant)  # fmt: skip
        before = epsilon_of(history, delta=delta, accountant=accountant)
        released = (mine[0], mine[1]) if len(mine) == 2 else None
        after = before if released else epsilon_of(
            [*history, (noise, rate, steps), (eval_noise, 1.0, 1)], delta=delta, accountant=accountant
        )  # fmt: skip
        if after > budget * (1 + 1e-9):
            self.audit.append(
                "refusal", site=self.site, run_id=request.run_id, spent=before, would_reach=after, budget=budget,
                mechanism="local_only",
            )  # fmt: skip
            raise BudgetExhausted(
                f"budget exhausted: a local-only model at the run's settings would bring epsilon from {before:.3f} "
                f"to {after:.3f}, over the site's budget of {budget:.3f}"
                + ("" if policy.max_epsilon is not None else " (the run's target: the site sets no max-epsilon)")
                + "; the site trains none"
            )
        return LocalOnlyPlan(
            run_id=request.run_id, server_round=request.num_rounds, noise_multiplier=noise, sample_rate=rate,
            steps=steps, evaluation_noise_multiplier=eval_noise, evaluations=evaluations, delta=delta,
            max_grad_norm=max_grad_norm, accountant=accountant, budget_epsilon=budget, epsilon_before=before,
            epsilon_after=after, prior=[tuple(p) for p in run["prior"]], released=released,
        )  # fmt: skip

    def record_local_only(
        self, plan: LocalOnlyPlan, *, steps: int, mechanism: dict[str, Any], histogram: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Charge the local-only model's DP-SGD steps and its evaluation release; return the two ledger entries."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._locked() as state:
            training = {
                "mechanism": "local_only_training", "run_id": plan.run_id, "round": plan.server_round,
                "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate, "steps": steps,
                "time": when,
            }  # fmt: skip
            state["entries"].append(training)
            training["epsilon"] = epsilon_of(self.history(state), delta=plan.delta, accountant=plan.accountant)
            evaluation = {
                **mechanism, "mechanism": "local_only_evaluation", "run_id": plan.run_id, "round": plan.server_round,
                "noise_multiplier": plan.evaluation_noise_multiplier, "sample_rate": 1.0, "steps": 1, "time": when,
                "histogram": histogram,
            }  # fmt: skip
            state["entries"].append(evaluation)
            evaluation["epsilon"] = epsilon_of(self.history(state), delta=plan.delta, accountant=plan.accountant)
        self.audit.append(
            "local-only model trained and scored", site=self.site, run_id=plan.run_id, steps=steps,
            noise_multiplier=plan.noise_multiplier, evaluation_noise_multiplier=plan.evaluation_noise_multiplier,
            epsilon=evaluation["epsilon"],
        )  # fmt: skip
        return training, evaluation

    def record_round(self, plan: RoundPlan, *, server_round: int, steps: int) -> float:
        """Add the round's steps to the history; return the cumulative epsilon."""
        with self._locked() as state:
            state["entries"].append(
                {
                    "run_id": plan.run_id,
                    "round": server_round,
                    "noise_multiplier": plan.noise_multiplier,
                    "sample_rate": plan.sample_rate,
                    "steps": steps,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }  # fmt: skip
            )
            epsilon = epsilon_of(self.history(state), delta=plan.delta, accountant=plan.accountant)
            state["entries"][-1]["epsilon"] = epsilon
        self.audit.append(
            "round trained", site=self.site, run_id=plan.run_id, round=server_round, steps=steps,
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, epsilon=epsilon,
        )  # fmt: skip
        return epsilon

    def run_releases(self, run_id: str) -> list[dict[str, Any]]:
        """This run's training rounds and evaluation releases as recorded, in order, without their payloads.

        A site sends them with each DP reply (`sangsaeng.protocol.ReplyKey.DP_RUN_RELEASES`), so
        that a release whose own reply was lost (round deadline, node lost) reaches the report
        with the next reply that arrives (`privacy.report.build_report`). Each item is a training
        round (``round``, noise multiplier, sample rate, steps, cumulative ``epsilon``) or, with
        ``mechanism: "evaluation"``, an evaluation release with its mechanism's parameters.
        """
        kept = []
        for entry in self.load()["entries"]:
            if entry["run_id"] != run_id or entry.get("mechanism") not in (None, "evaluation"):
                continue
            kept.append({k: v for k, v in entry.items() if k not in ("run_id", "time", "histogram")})
        return kept

    def record_membership(self, run_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """Keep the run's membership-inference figures (`privacy.membership`); return the ledger entry.

        Kept apart from the accountant's ``entries``: the check charges no epsilon. It releases one
        figure, the attack's AUC, which one row moves by at most ``1 / n_train`` (docs/privacy.md).
        """
        with self._locked() as state:
            entry = {**result, "run_id": run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            state.setdefault("membership", []).append(entry)
        self.audit.append(
            "membership inference", site=self.site, run_id=run_id, auc=result.get("auc"),
            method=result.get("method"), n_train=result.get("n_train"), n_holdout=result.get("n_holdout"),
        )  # fmt: skip
        return entry

    def membership(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded membership-inference figures, oldest first (of one run with `run_id`)."""
        entries = self.load().get("membership", [])
        return [e for e in entries if run_id is None or e["run_id"] == run_id]

    def _note_policy(self, state: dict[str, Any], policy: SitePrivacyPolicy) -> None:
        current = {"max_epsilon": policy.max_epsilon, "delta": policy.delta, "dp_required": policy.dp_required,
                   "accountant": policy.accountant}  # fmt: skip
        if state.get("policy") != current:
            self.audit.append("budget change", site=self.site, old=state.get("policy"), new=current)
            state["policy"] = current
