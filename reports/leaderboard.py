"""Leaderboards: methods × pairs, mean ± std over seeds, ↑/↓ against KD on the same pair.

Rows are built from the store's result rows (``result.json``), never from file paths:

* ``teacher`` — the teacher's test accuracy on each pair;
* ``vanilla`` — the student alone (CE only); one vanilla run per student serves every
  pair with that student;
* one row per method, KD first. Each method's arrow compares its mean with KD's on the
  same pair (↑ higher, ↓ lower, = equal); KD's own arrow compares it with ``vanilla``.

Cells show ``n=k/N`` when only k of the N expected seeds are done, ``skip`` when the
method declined the pair (reasons are listed as notes) and ``fail`` for failed runs
(listed below the table). The best method mean per column is marked ``best``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

REFERENCE_METHOD = "kd"
STUDENT_METHOD = "vanilla"
METRICS = {"last": "top1_last", "best": "top1_best", "top5": "top5_last", "time": "wall_time_s"}


@dataclass
class Cell:
    """One table cell: statistics over the seeds of a (row, pair), plus its marks."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    expected: int = 0
    arrow: str = ""
    best: bool = False
    status: str = "done"  # done | missing | skipped | failed | reference

    @property
    def partial(self) -> bool:
        return 0 < self.n < self.expected


@dataclass
class Table:
    """A rendered-format-independent leaderboard."""

    title: str
    columns: list[str]
    rows: list[str]
    cells: dict[tuple[str, str], Cell]
    metric: str
    notes: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    unit: str = "%"

    def cell(self, row: str, col: str) -> Cell:
        return self.cells.get((row, col), Cell(status="missing"))


def rows_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Result rows as a DataFrame with the columns the reports use (missing ones as NaN)."""
    df = pd.DataFrame(list(rows))
    for col in ("dataset", "teacher", "student", "method", "seed", "status", "top1_last", "top1_best",
                "top5_last", "wall_time_s", "teacher_top1", "reason", "error", "pair"):
        if col not in df.columns:
            df[col] = None
    return df


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def ordered_methods(methods: Iterable[str], order: list[str] | None = None) -> list[str]:
    present = list(dict.fromkeys(m for m in methods if m != STUDENT_METHOD))
    first = [REFERENCE_METHOD] if REFERENCE_METHOD in present else []
    rest = [m for m in (order or []) if m in present and m not in first]
    rest += sorted(m for m in present if m not in first and m not in rest)
    return first + rest


def build_leaderboard(df: pd.DataFrame, dataset: str | None = None, metric: str = "last",
                      pairs: list[tuple[str, str]] | None = None, methods: list[str] | None = None,
                      expected_seeds: int | None = None) -> Table:
    """Aggregate result rows into a :class:`Table` (see module docstring)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    col = METRICS[metric]
    if dataset is None:
        datasets = sorted(set(df["dataset"].dropna()))
        if len(datasets) > 1:
            raise ValueError(f"results hold several datasets ({', '.join(datasets)}): choose one with --dataset")
        dataset = datasets[0] if datasets else "?"
    df = df[df["dataset"] == dataset]
    teacher_rows = df[df["teacher"].notna()]
    if pairs is None:
        pairs = list(dict.fromkeys(zip(teacher_rows["teacher"], teacher_rows["student"])))
    columns = [f"{t}->{s}" for t, s in pairs]
    method_rows = ordered_methods(teacher_rows["method"], methods)
    if expected_seeds is None:
        counts = df.groupby(["method", "teacher", "student"], dropna=False)["seed"].nunique()
        expected_seeds = int(counts.max()) if len(counts) else 0
    cells: dict[tuple[str, str], Cell] = {}
    notes: list[str] = []
    failures: list[dict[str, Any]] = []

    def gather(sub: pd.DataFrame, row: str, colname: str) -> Cell:
        done = sub[sub["status"] == "done"]
        failed = sub[sub["status"] == "failed"]
        skipped = sub[sub["status"] == "skipped"]
        for _, f in failed.iterrows():
            failures.append({"row": row, "pair": colname, "seed": f["seed"], "error": f["error"]})
        if len(done):
            mean, std = _stats(list(done[col]))
            return Cell(mean, std, n=int(done["seed"].nunique()), expected=expected_seeds)
        if len(skipped):
            reason = str(skipped.iloc[0]["reason"])
            note = f"{row} skipped on {colname}: {reason}"
            if note not in notes:
                notes.append(note)
            return Cell(status="skipped", expected=expected_seeds)
        if len(failed):
            return Cell(status="failed", expected=expected_seeds)
        return Cell(status="missing", expected=expected_seeds)

    for (t, s), name in zip(pairs, columns):
        pair_rows = df[(df["teacher"] == t) & (df["student"] == s)]
        for method in method_rows:
            cells[(method, name)] = gather(pair_rows[pair_rows["method"] == method], method, name)
        vanilla = df[(df["method"] == STUDENT_METHOD) & (df["student"] == s) & df["teacher"].isna()]
        cells[(STUDENT_METHOD, name)] = gather(vanilla, STUDENT_METHOD, name)
        teacher_acc = _teacher_accuracy(df, pair_rows, t, metric)
        cells[("teacher", name)] = Cell(teacher_acc, None, n=1 if teacher_acc is not None else 0, expected=1,
                                        status="reference" if teacher_acc is not None else "missing")
        _mark(cells, method_rows, name, timing=(metric == "time"))
    rows = ["teacher", STUDENT_METHOD, *method_rows]
    title = f"{dataset}: top-1 accuracy (%), {'last' if metric == 'last' else metric} epoch, mean ± std over seeds" \
        if metric != "time" else f"{dataset}: wall time per run (s), mean ± std over seeds"
    return Table(title=title, columns=columns, rows=rows, cells=cells, metric=metric, notes=notes,
                 failures=failures, unit="s" if metric == "time" else "%")


def _teacher_accuracy(df: pd.DataFrame, pair_rows: pd.DataFrame, teacher: str, metric: str) -> float | None:
    if metric == "time":
        own = df[(df["method"] == STUDENT_METHOD) & (df["student"] == teacher) & df["teacher"].isna()
                 & (df["status"] == "done")]
        return _stats(list(own["wall_time_s"]))[0] if len(own) else None
    recorded = pair_rows["teacher_top1"].dropna()
    if len(recorded):
        return float(recorded.iloc[0])
    return None


def _mark(cells: dict[tuple[str, str], Cell], methods: list[str], col: str, timing: bool) -> None:
    """Arrows against KD (KD against vanilla) and the best method of the column (for a
    timing table: no arrows, the fastest is best)."""
    scored = [cells[(m, col)] for m in methods if cells[(m, col)].mean is not None]
    if scored:
        best = min(c.mean for c in scored) if timing else max(c.mean for c in scored)
        for c in scored:
            c.best = abs(c.mean - best) < 1e-9
    if timing:
        return
    ref = cells.get((REFERENCE_METHOD, col))
    base = cells.get((STUDENT_METHOD, col))
    for m in methods:
        c = cells[(m, col)]
        against = base if m == REFERENCE_METHOD else ref
        if c.mean is None or against is None or against.mean is None:
            continue
        diff = round(c.mean, 2) - round(against.mean, 2)
        c.arrow = "=" if abs(diff) < 1e-9 else ("↑" if diff > 0 else "↓")
