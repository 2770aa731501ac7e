"""A supplier site's own settings: who it is and where its export lies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

from models.errors import SiteDataError
from privacy.policy import SitePrivacyPolicy

__all__ = ["SiteConfig", "SiteRoster"]


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


class SiteRoster(Sequence[SiteConfig]):
    """The settings of every simulated site, kept in a JSON file: what a simulation's ClientApp looks sites up in.

    Flower's simulation engine pickles the ClientApp, and everything it holds, with every
    message it hands to a worker: a list of 10,000 `SiteConfig` went along with each of them
    (718 KB pickled, measured, and unpickled per message). A roster pickles as its file's path and a
    token; each worker process reads the file once, on its first message, and keeps it.
    """

    def __init__(self, sites: Iterable[SiteConfig], path: Path):
        self.path = Path(path)
        self._sites = list(sites)
        self.token = uuid.uuid4().hex  # a new roster at the same path is not mistaken for an old one
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{**asdict(s), "data_path": str(s.data_path), "ledger_path": _text(s.ledger_path)} for s in self._sites]
        self.path.write_text(json.dumps({"token": self.token, "sites": rows}), encoding="utf-8")
        _ROSTERS[self.token] = self._sites

    @overload
    def __getitem__(self, index: int) -> SiteConfig: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SiteConfig]: ...
    def __getitem__(self, index: int | slice) -> SiteConfig | Sequence[SiteConfig]:
        """Site `index` (the simulated node's partition id)."""
        return self._sites[index]

    def __len__(self) -> int:
        """How many sites the roster holds."""
        return len(self._sites)

    def __iter__(self) -> Iterator[SiteConfig]:
        """The sites in partition order."""
        return iter(self._sites)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        """Pickle as (path, token): the worker reads the file itself, once."""
        return (_open_roster, (str(self.path), self.token))


_ROSTERS: dict[str, list[SiteConfig]] = {}  # by token, in each process that has read or written one


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _open_roster(path: str, token: str) -> SiteRoster:
    """The roster written at `path` (read once per process, by its token)."""
    sites = _ROSTERS.get(token)
    if sites is None:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("token") != token:
            raise SiteDataError(path, "the site roster was rewritten by another simulation while this one ran")
        sites = [
            SiteConfig(
                **{**row, "data_path": Path(row["data_path"]),
                   "ledger_path": Path(row["ledger_path"]) if row["ledger_path"] is not None else None,
                   "privacy": SitePrivacyPolicy(**row["privacy"])}
            )
            for row in data["sites"]
        ]  # fmt: skip
        _ROSTERS[token] = sites
    roster = SiteRoster.__new__(SiteRoster)
    roster.path, roster.token, roster._sites = Path(path), token, sites
    return roster
