"""The air-gap setting: factories are air-gapped, so Flower and Ray must not phone home.

Every role that starts Flower (the coordinator's SuperLink and simulation, a supplier's
SuperNode, the tests and benchmarks) applies `AIRGAP_ENV` before Flower is imported:
`apply()` in this process, or the mapping merged into a child process's environment.
"""

from __future__ import annotations

import os

__all__ = ["AIRGAP_ENV", "apply"]

AIRGAP_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a Ray warning about GPUs we never use
}


def apply() -> None:
    """Set the air-gap defaults in this process (and so in the Ray workers it starts)."""
    for key, value in AIRGAP_ENV.items():
        os.environ.setdefault(key, value)
