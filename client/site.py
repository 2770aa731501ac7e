"""A supplier site's own settings: who it is and where its export lies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import SiteDataError
from privacy.policy import SitePrivacyPolicy

__all__ = ["SiteConfig"]


@dataclass(frozen=True)
class SiteConfig:
    """Settings of one supplier site, read from the SuperNode's `--node-config`.

    Keys: ``site`` (the site's name in the federation), ``data-path`` (its CSV/Parquet
    export), optionally ``holdout-fraction``, ``holdout-seed``, ``torch-threads``, and the
    site's privacy policy: ``max-epsilon``, ``delta``, ``dp-required``, ``accountant``,
    ``max-grad-norm``, ``ledger-path``.
    """

    name: str
    data_path: Path
    holdout_fraction: float = 0.3
    holdout_seed: int = 0
    torch_threads: int = 1
    privacy: SitePrivacyPolicy = SitePrivacyPolicy()
    ledger_path: Path | None = None

    @property
    def ledger_file(self) -> Path:
        """Where the site keeps its privacy ledger (next to its data unless configured)."""
        return self.ledger_path or self.data_path.parent / ".sangsaeng-privacy" / f"{self.name}.ledger.json"

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> SiteConfig:
        """The site's settings from its SuperNode's node config; names a missing key."""
        missing = [k for k in ("site", "data-path") if k not in node_config]
        if missing:
            raise SiteDataError(
                "node-config",
                f"SuperNode is missing node-config key(s) {missing}; start it with "
                "--node-config \"site='NAME' data-path='FILE.csv'\"",
            )
        return cls(
            name=str(node_config["site"]),
            data_path=Path(str(node_config["data-path"])),
            holdout_fraction=float(node_config.get("holdout-fraction", 0.3)),
            holdout_seed=int(node_config.get("holdout-seed", 0)),
            torch_threads=int(node_config.get("torch-threads", 1)),
            privacy=SitePrivacyPolicy.from_node_config(node_config),
            ledger_path=Path(str(node_config["ledger-path"])) if "ledger-path" in node_config else None,
        )
