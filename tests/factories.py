"""Factories shared by the privacy and portal tests."""

from __future__ import annotations

from privacy.accounting import epsilon_of


def dp_manifest(run_id: str = "abc123", sites: tuple[str, ...] = ("plant-a",), rounds: int = 3) -> dict:
    """A run manifest whose per-round DP records are consistent with the RDP accountant."""
    records, history = [], []
    for r in range(1, rounds + 1):
        history.append((1.2, 0.05, 40))
        dp = {
            "epsilon": epsilon_of(history, delta=1e-5), "noise_multiplier": 1.2, "sample_rate": 0.05, "steps": 40,
            "delta": 1e-5, "max_grad_norm": 1.0, "budget_epsilon": 4.0, "accountant": "rdp", "records": 2000,
            "prior_history": [],
        }  # fmt: skip
        records.append({"round": r, "dp": {site: dict(dp) for site in sites}, "failures": []})
    return {
        "run_id": run_id,
        "task": {"name": "predictive-maintenance"},
        "config": {"dp_epsilon": 3.0},
        "rounds": records,
    }
