"""Published tables (``reports/paper_tables/*.csv``) as leaderboards, alone or beside ours.

A CSV holds one row per method (``teacher``, ``student`` — shown as ``vanilla`` — and the
methods) and one column per pair: ``t->s`` (the CNN2GNN tables) or ``t->s_mean`` and
``t->s_std`` (the HKD tables, which also carry the paper's ARI column ``ari_percent``).
:func:`load_published` turns one into a :class:`~kdbench.reports.leaderboard.Table` marked
like ours (arrows against the baseline, best in bold; no test: a paper prints no per-seed
numbers); its ARI reference is the method whose ARI cell is empty (the HKD paper's
HKD+KD). :func:`attach_published` puts the published number beside each of our cells
(``--compare``): rows are matched by method (``student`` ↔ ``vanilla``), columns by pair.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from kdbench.reports.leaderboard import REFERENCE_METHOD, STUDENT_METHOD, Cell, Table, mark_column

log = logging.getLogger(__name__)

PAPER_DIR = Path(__file__).resolve().parent / "paper_tables"
CITATIONS = {"cnn2gnn": "Jiao, Zhang, Li 2024 (CNN2GNN)", "hkd": "Zhou et al., ICCV 2021 (HKD)"}
ARI_COLUMN = "ari_percent"


def published_names() -> list[str]:
    return sorted(p.stem for p in PAPER_DIR.glob("*.csv"))


def _number(value: object) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def load_published(name: str, baseline: str = REFERENCE_METHOD) -> tuple[Table, dict[str, float], str | None]:
    """The published table ``name``, its printed ARI column (row -> percent) and the ARI
    reference row (``None`` when the table has no ARI column)."""
    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        raise ValueError(f"no published table {name!r}; available: {', '.join(published_names())}")
    df = pd.read_csv(path).set_index("method").rename(index={"student": STUDENT_METHOD})
    pair_cols = [c for c in df.columns if c != ARI_COLUMN and not c.endswith("_std")]
    columns = [c.removesuffix("_mean") for c in pair_cols]
    cells = {}
    for row in df.index:
        for col, src in zip(columns, pair_cols):
            mean, std = _number(df.at[row, src]), _number(df.get(f"{col}_std", pd.Series(dtype=float)).get(row))
            cells[(row, col)] = Cell(mean, std, status="reference" if row == "teacher" else "published") \
                if mean is not None else Cell(status="missing")
    methods = [r for r in df.index if r not in ("teacher", STUDENT_METHOD)]
    reference = baseline if baseline in methods else REFERENCE_METHOD
    for col in columns:
        mark_column(cells, methods, col, reference, STUDENT_METHOD, timing=False)
    printed, ari_ref = {}, None
    if ARI_COLUMN in df.columns:
        printed = {r: float(v) for r, v in df[ARI_COLUMN].items() if _number(v) is not None}
        ari_ref = next((r for r in methods if r not in printed), None)
    prefix, _, dataset = name.partition("_")
    citation = CITATIONS.get(prefix, prefix)
    student_note = "; the paper's student row is shown as vanilla" if STUDENT_METHOD in df.index else ""
    table = Table(title=f"{name}: published top-1 accuracy (%), {citation}", columns=columns, rows=list(df.index),
                  cells=cells, metric="last", caption=f"numbers as printed in the paper{student_note}",
                  reference=reference, pairs={c: tuple(c.split("->", 1)) for c in columns},
                  row_methods={r: r for r in df.index}, dataset=dataset, source="published")
    return table, printed, ari_ref


def attach_published(table: Table, published: Table) -> int:
    """Set ``Cell.paper`` on every cell of ``table`` the published table has a number for
    (same method and pair); returns how many cells matched."""
    if published.dataset and table.dataset and published.dataset != table.dataset:
        log.warning("comparing %s results with a published %s table", table.dataset, published.dataset)
    by_pair = {f"{t}->{s}": col for col, (t, s) in published.pairs.items()}
    matched = 0
    for row in table.rows:
        method = table.row_methods.get(row, row)
        for col in table.columns:
            t, s = table.pairs.get(col, ("", ""))
            theirs = published.cells.get((method, by_pair.get(f"{t}->{s}", "")))
            if theirs is not None and theirs.mean is not None:
                table.cells.setdefault((row, col), Cell(status="missing")).paper = theirs.mean
                matched += 1
    table.compare = published.title.split(":")[0]
    if not matched:
        log.warning("no cell of %s matches %s: it has pairs %s and rows %s", table.title, table.compare,
                    ", ".join(published.columns), ", ".join(published.rows))
    return matched
