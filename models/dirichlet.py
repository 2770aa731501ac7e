"""A seeded Dirichlet split of one table into N synthetic supplier sites (label-skewed sizes and classes).

Used by ``sangsaeng simulate --sites N --dirichlet ALPHA`` to build large federations from the
embedded sample data. Each site draws

- its share of the rows from a symmetric Dirichlet(alpha) over sites (plus a floor of
  `min_rows`, so every site can hold out rows and train), and
- its class mix from a Dirichlet(alpha x the table's class frequencies), the usual
  label-skew partition of Hsu et al. 2019 ("Measuring the effects of non-identical data
  distribution"): a small alpha gives few large sites and sites that see mostly one class,
  a large alpha sites that look like the whole table.

Rows are drawn **with replacement** from the table's rows of each class, so N sites may
together hold more rows than the table (AI4I's 10,000 rows become 10,000 sites of about
30 rows); sites share copies of the same source rows, as suppliers of one anchor producing
similar parts would. A site is generated only when asked for (`iter_sites`), so writing
10,000 files never holds them all in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import TaskSpecError
from models.tasks import TaskSpec

__all__ = ["DirichletSplit", "write_dirichlet_sites"]


@dataclass(frozen=True)
class DirichletSplit:
    """The plan of a seeded Dirichlet split: each site's row count and class mix, drawn once.

    `sizes[i]` rows for site i, of which the share `mix[i, k]` of class `classes[k]`.
    Deterministic in (table, label, n_sites, alpha, seed, rows_per_site, min_rows).
    """

    classes: np.ndarray
    sizes: np.ndarray
    mix: np.ndarray
    seed: int
    names: list[str] = field(default_factory=list)

    @classmethod
    def plan(
        cls,
        labels: pd.Series,
        *,
        n_sites: int,
        alpha: float,
        seed: int = 0,
        rows_per_site: int | None = None,
        min_rows: int = 20,
    ) -> DirichletSplit:
        """Draw the sizes and class mixes of `n_sites` sites from a table's `labels`.

        `rows_per_site`: the mean rows of a site (default: the table's rows / n_sites, at
        least `min_rows` + 10, so small sites still train).
        """
        if n_sites < 1:
            raise TaskSpecError(f"a Dirichlet split needs at least 1 site, not {n_sites}")
        if not alpha > 0:
            raise TaskSpecError(f"the Dirichlet concentration alpha must be positive, not {alpha}")
        classes, counts = np.unique(labels.to_numpy(), return_counts=True)
        if len(classes) == 0:
            raise TaskSpecError("a Dirichlet split needs a table with rows")
        mean = rows_per_site or max(len(labels) // n_sites, min_rows + 10)
        if mean < min_rows:
            raise TaskSpecError(f"rows_per_site {mean} is under the floor of {min_rows} rows a site gets")
        rng = np.random.default_rng(seed)
        extra = n_sites * (mean - min_rows)
        shares = rng.dirichlet(np.full(n_sites, alpha)) if n_sites > 1 else np.ones(1)
        sizes = min_rows + rng.multinomial(extra, shares)
        prior = counts / counts.sum()
        # Floor the prior so a rare class (AI4I's 3 % failures) still reaches some sites at small alpha.
        mix = rng.dirichlet(np.maximum(alpha * prior * len(classes), 1e-3), size=n_sites)
        width = len(str(n_sites - 1))
        names = [f"site-{i:0{width}d}" for i in range(n_sites)]
        return cls(classes=classes, sizes=sizes, mix=mix, seed=seed, names=names)

    def iter_sites(self, frame: pd.DataFrame, label: str) -> Iterator[tuple[str, pd.DataFrame]]:
        """Each site's rows in turn, drawn with replacement from `frame`'s rows of each class."""
        by_class = [np.flatnonzero(frame[label].to_numpy() == c) for c in self.classes]
        for i, name in enumerate(self.names):
            rng = np.random.default_rng([self.seed, i])  # one stream per site: site i alone is reproducible
            per_class = rng.multinomial(int(self.sizes[i]), self.mix[i])
            rows = np.concatenate([rng.choice(pool, n) for pool, n in zip(by_class, per_class, strict=True) if n > 0])
            yield name, frame.iloc[rng.permutation(rows)].reset_index(drop=True)


def write_dirichlet_sites(
    frame: pd.DataFrame,
    spec: TaskSpec,
    out_dir: Path,
    *,
    n_sites: int,
    alpha: float,
    seed: int = 0,
    rows_per_site: int | None = None,
) -> tuple[dict[str, Path], DirichletSplit]:
    """Write one CSV per site under `out_dir/sites/`, one site at a time; returns the paths and the plan.

    The plan (sizes and class mixes) goes to `out_dir/sites/dirichlet.json`; a site file that
    is already there with the same plan is kept, so a re-run does not write 10,000 files again.
    """
    import json

    spec.check_columns(list(frame.columns), source="data")
    plan = DirichletSplit.plan(frame[spec.label], n_sites=n_sites, alpha=alpha, seed=seed, rows_per_site=rows_per_site)
    site_dir = Path(out_dir) / "sites"
    site_dir.mkdir(parents=True, exist_ok=True)
    stamp = {"n_sites": n_sites, "alpha": alpha, "seed": seed, "rows": int(plan.sizes.sum()), "source_rows": len(frame)}
    stamp_path = site_dir / "dirichlet.json"
    same = (
        stamp_path.exists()
        and json.loads(stamp_path.read_text(encoding="utf-8")) == stamp
        and all((site_dir / f"{n}.csv").exists() for n in plan.names)
    )
    paths: dict[str, Path] = {}
    stamp_path.unlink(missing_ok=True)  # written last: a split interrupted half way is not taken as whole
    for name, part in plan.iter_sites(frame, spec.label) if not same else ((n, None) for n in plan.names):
        paths[name] = site_dir / f"{name}.csv"
        if part is not None:
            part.to_csv(paths[name], index=False)
    stamp_path.write_text(json.dumps(stamp), encoding="utf-8")
    return paths, plan
