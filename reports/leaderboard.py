"""Leaderboards: methods × pairs, mean ± std over seeds, ↑/↓ against KD on the same pair.

Rows are built from the store's result rows (``result.json``), never from file paths:

* ``teacher`` — the teacher's accuracy on each pair, in the table's metric (its own run's
  top-5 in a top-5 table; ``n/a`` where a supplied checkpoint has no such number);
* ``vanilla`` — the student alone (CE only); one vanilla run per student serves every
  pair with that student;
* one row per method, KD first. Each method's arrow compares its mean with KD's on the
  same pair (↑ higher, ↓ lower, = equal); KD's own arrow compares it with ``vanilla``.
* a method that trains its own student type (``own_student`` rows, e.g. CNN2GNN's GNN)
  sits in every column of its teacher (every column when it has none), with a note that
  the column's CNN student is not used.

Nothing that differs in the run key is ever averaged together, only seeds are:

* one table per students' recipe (a folder holding a 2-epoch and a 1-epoch grid gives two
  tables, each captioned with its recipe, e.g. ``epochs 2, batch 32, lr 0.05``);
* within a table, a method run with other options or another version gets a row per
  variant, labelled with what differs (``kd [temperature=2.0]``);
* a pair whose students learnt from different teachers (teacher epochs, seed or
  checkpoint) gets a column per teacher (``t->s [teacher 15 epochs, seed 0]``).

Cells show ``n=k/N`` when only k of the N expected seeds are done, ``skip`` when the
method declined the pair (reasons are listed as notes) and ``fail`` for failed runs
(listed below the table, one line each); runs without a result yet (rows the loader makes
from their ``spec.json``: ``running``, ``interrupted``, ``pending``) are counted in the
cell (``n=1/2, 1 running``) or shown alone. The best method mean per column is marked
``best``.

Every arrow with at least two seeds on both sides is tested (Welch's t-test, two-sided, at
``alpha``; :mod:`kdbench.reports.stats`): ``Cell.significant`` is ``True``/``False``, and
``None`` where no test was possible. The baseline (``kd`` by default, ``--baseline``) is
the row the arrows compare with; its own arrow is against the vanilla student.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from kdbench.reports.stats import ALPHA, TestResult, welch_test

REFERENCE_METHOD = "kd"
STUDENT_METHOD = "vanilla"
METRICS = {"last": "top1_last", "best": "top1_best", "top5": "top5_last", "time": "wall_time_s"}
METRIC_TITLES = {"last": "top-1 accuracy (%), last epoch", "best": "top-1 accuracy (%), best epoch",
                 "top5": "top-5 accuracy (%), last epoch", "time": "wall time per run (s)"}
#: A linear-probe metric: ``probe:<target>`` (``probe:<target>@<probe key>`` picks one probe
#: setting); rows carry the probe accuracy under the metric's own name (kdbench.reports.probes).
PROBE_PREFIX = "probe:"


def probe_target(metric: str) -> str | None:
    """The target dataset of a probe metric (``None`` for the other metrics)."""
    if not metric.startswith(PROBE_PREFIX):
        return None
    return metric[len(PROBE_PREFIX):].partition("@")[0] or None


def probe_setting(metric: str) -> str | None:
    """The probe key a probe metric names after ``@`` (``None``: not named, or not a probe metric)."""
    if not metric.startswith(PROBE_PREFIX):
        return None
    return metric[len(PROBE_PREFIX):].partition("@")[2] or None


def metric_column(metric: str) -> str:
    """The result-row field a leaderboard of ``metric`` shows."""
    if metric in METRICS:
        return METRICS[metric]
    if probe_target(metric) is not None:
        return metric
    raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)} or {PROBE_PREFIX}<target dataset>")


def metric_title(metric: str) -> str:
    target = probe_target(metric)
    return f"linear-probe top-1 accuracy (%) on {target}" if target else METRIC_TITLES[metric]


#: Recipe fields every caption shows; the others only when tables of a folder differ in them.
CAPTION_FIELDS = ("epochs", "batch_size", "lr")
#: Longest error text a leaderboard footer shows per failed run (the run folder has it all).
ERROR_CHARS = 200
ANY_TEACHER = "*"  # column of a pair with no rows yet: its teacher is not known
_INT_FIELDS = ("seed", "teacher_seed", "method_version", "epochs")  # pandas turns them into floats
#: States of runs that have no result yet (rows made from spec.json by the loader).
WAITING = ("running", "interrupted", "pending")


@dataclass
class Cell:
    """One table cell: statistics over the seeds of a (row, pair), plus its marks."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    expected: int = 0
    arrow: str = ""
    best: bool = False
    status: str = "done"  # done | missing | skipped | failed | reference | n/a | published | running | …
    values: list[float] = field(default_factory=list)  # one per done seed: what the test compares
    test: TestResult | None = None  # Welch's t-test of the arrow (None: not tested)
    significant: bool | None = None  # None: no test possible (fewer than 2 seeds on a side)
    waiting: dict[str, int] = field(default_factory=dict)  # runs without a result: {"running": 1}
    paper: float | None = None  # the published number beside it (--compare)
    params: float | None = None  # parameters at inference (mean over the done runs; the plots)
    run_dirs: list[str] = field(default_factory=list)  # the done runs' folders (training curves)

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
    caption: str = ""  # what the table shows: recipe, teachers
    reference: str = REFERENCE_METHOD  # the row the arrows compare with (the baseline)
    base: str = STUDENT_METHOD  # the vanilla student's row (the baseline's arrow, ARI)
    alpha: float = ALPHA  # level of the arrows' tests
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # column -> (teacher, student)
    row_methods: dict[str, str] = field(default_factory=dict)  # row -> method (variants share one)
    dataset: str = ""
    source: str = "results"  # results | published
    compare: str = ""  # the published table beside the cells (--compare)
    summary: Any = None  # kdbench.reports.summary.Summary: the summary columns, when computed

    def cell(self, row: str, col: str) -> Cell:
        return self.cells.get((row, col), Cell(status="missing"))


@dataclass(frozen=True)
class Column:
    """A leaderboard column: a pair, and which teacher its students learnt from."""

    name: str
    teacher: str
    student: str
    teacher_key: str | None = ANY_TEACHER


@dataclass(frozen=True)
class RowVariant:
    """A leaderboard row: a method at one (version, options)."""

    name: str
    method: str
    variant: str


def rows_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Result rows as a DataFrame with the columns the reports use (missing ones as NaN)."""
    df = pd.DataFrame(list(rows))
    for col in ("dataset", "teacher", "student", "method", "seed", "status", "top1_last", "top1_best",
                "top5_last", "top5_best", "wall_time_s", "teacher_top1", "reason", "error", "pair", "recipe",
                "method_config", "method_version", "teacher_key", "teacher_seed", "teacher_ckpt", "run_key",
                "run_dir"):
        if col not in df.columns:
            df[col] = None
    return df


def one_line(text: Any, limit: int = ERROR_CHARS) -> str:
    """The first non-empty line of ``text``, at most ``limit`` characters; ``[…]`` marks
    that more was left out."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if len(first) > limit:
        return first[:limit - 4].rstrip() + " […]"
    return first + (" […]" if len(lines) > 1 else "")


def _clean(value: Any) -> Any:
    """``None`` for pandas' NaN; whole floats of integer fields stay as they are."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    records = []
    for raw in df.to_dict("records"):
        r = {k: _clean(v) for k, v in raw.items()}
        for k in _INT_FIELDS:
            if isinstance(r.get(k), float) and r[k].is_integer():
                r[k] = int(r[k])
        records.append(r)
    return records


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def ordered_methods(methods: Iterable[str], order: list[str] | None = None,
                    baseline: str = REFERENCE_METHOD) -> list[str]:
    present = list(dict.fromkeys(m for m in methods if m != STUDENT_METHOD))
    first = [baseline] if baseline in present else []
    rest = [m for m in (order or []) if m in present and m not in first]
    rest += sorted(m for m in present if m not in first and m not in rest)
    return first + rest


def choose_dataset(datasets: Iterable[str], dataset: str | None) -> str:
    """``dataset`` if given, else the only dataset present (several are an error)."""
    present = sorted(set(d for d in datasets if d))
    if dataset is not None:
        return dataset
    if len(present) > 1:
        raise ValueError(f"results hold several datasets ({', '.join(present)}): choose one with --dataset")
    return present[0] if present else "?"


# -- setups: what one table holds ---------------------------------------------------------

def recipe_id(row: dict[str, Any]) -> str:
    """The table a row belongs to: its students' recipe (canonical JSON)."""
    recipe = row.get("recipe")
    return _canonical(recipe) if isinstance(recipe, dict) else ""


def recipe_order(recipe: dict[str, Any] | None) -> tuple:
    recipe = recipe or {}
    return tuple(recipe.get(k) if isinstance(recipe.get(k), (int, float)) else 0 for k in CAPTION_FIELDS) + \
        (_canonical(recipe),)


def describe_recipe(recipe: dict[str, Any] | None, others: list[dict[str, Any]]) -> str:
    """``epochs 2, batch 32, lr 0.05``, plus every field in which ``others`` differ."""
    if not recipe:
        return "recipe not recorded"
    names = list(CAPTION_FIELDS) + sorted(k for k in recipe if k not in CAPTION_FIELDS
                                          and any((o or {}).get(k) != recipe.get(k) for o in others))
    label = {"batch_size": "batch"}
    return ", ".join(f"{label.get(k, k).replace('_', ' ')} {recipe.get(k)}" for k in names if k in recipe)


def teacher_description(row: dict[str, Any], by_key: dict[str, dict[str, Any]]) -> str:
    """How the teacher of a student row was made: a checkpoint file, or its trained run's
    epochs and seed (looked up by the teacher key)."""
    if row.get("teacher_ckpt"):
        return f"checkpoint {Path(str(row['teacher_ckpt'])).name}"
    own = by_key.get(row.get("teacher_key") or "")
    seed = row.get("teacher_seed")
    if own and isinstance(own.get("recipe"), dict):
        epochs = own["recipe"].get("epochs")
        return f"{epochs} epoch{'' if epochs == 1 else 's'}, seed {seed}"
    return f"seed {seed}, run {str(row.get('teacher_key'))[:8]} not in this folder"


def variant_id(row: dict[str, Any]) -> str:
    """What makes two runs of one method differ besides the seed: version and options."""
    return _canonical([row.get("method_version"), row.get("method_config")])


def variant_labels(method: str, variants: list[str]) -> dict[str, str]:
    """Row names for the variants of ``method``: the bare name for a single variant, else
    the name with what differs (``kd [temperature=2.0]``, ``kd [v2]``)."""
    if len(variants) == 1:
        return {variants[0]: method}
    parsed = {v: json.loads(v) for v in variants}
    versions = {p[0] for p in parsed.values()}
    configs = {v: (p[1] if isinstance(p[1], dict) else {}) for v, p in parsed.items()}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({_canonical(c.get(k)) for c in configs.values()}) > 1]
    labels = {}
    for v in variants:
        parts = ([f"v{parsed[v][0]}"] if len(versions) > 1 else []) + \
            [f"{k}={configs[v].get(k)}" for k in differing]
        labels[v] = f"{method} [{', '.join(parts) or 'options not recorded'}]"
    return labels


# -- building -----------------------------------------------------------------------------

def build_leaderboards(df: pd.DataFrame, dataset: str | None = None, metric: str = "last",
                       pairs: list[tuple[str, str]] | None = None, methods: list[str] | None = None,
                       expected_seeds: int | None = None, baseline: str = REFERENCE_METHOD,
                       alpha: float = ALPHA) -> list[Table]:
    """One :class:`Table` per students' recipe among the rows of ``dataset`` that hold a
    distillation run (see the module docstring), ordered by epochs, batch size, lr; arrows
    against ``baseline``, tested at ``alpha``."""
    metric_column(metric)  # an unknown metric is an error
    records = _records(df)
    dataset = choose_dataset((r.get("dataset") for r in records), dataset)
    records = [r for r in records if r.get("dataset") == dataset]
    by_key = {r["run_key"]: r for r in records if r.get("run_key")}
    return [_build_table(rows, by_key, dataset, metric, pairs, methods, expected_seeds, caption, baseline=baseline,
                         alpha=alpha) for rows, caption in recipe_groups(records)]


def recipe_groups(records: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], str]]:
    """The rows of each students' recipe that holds a distillation run, with the recipe's
    description (``epochs 2, batch 32, lr 0.05`` and whatever differs from the others),
    ordered by epochs, batch size, lr."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(recipe_id(r), []).append(r)
    shown = {rid: rows for rid, rows in groups.items() if any(r.get("teacher") for r in rows)}
    recipes = {rid: rows[0].get("recipe") for rid, rows in shown.items()}
    return [(shown[rid], describe_recipe(recipes[rid], [r for k, r in recipes.items() if k != rid]))
            for rid in sorted(shown, key=lambda k: recipe_order(recipes[k]))]


def build_leaderboard(df: pd.DataFrame, dataset: str | None = None, metric: str = "last",
                      pairs: list[tuple[str, str]] | None = None, methods: list[str] | None = None,
                      expected_seeds: int | None = None) -> Table:
    """The leaderboard of rows that share one recipe; rows of several recipes are an error
    (use :func:`build_leaderboards`, which gives one table per recipe)."""
    tables = build_leaderboards(df, dataset, metric, pairs, methods, expected_seeds)
    if len(tables) != 1:
        raise ValueError(f"the rows hold {len(tables)} recipes with distillation runs; one table needs exactly one "
                         f"(build_leaderboards gives one table per recipe)")
    return tables[0]


def _columns(teacher_rows: list[dict[str, Any]], pairs: list[tuple[str, str]] | None,
             by_key: dict[str, dict[str, Any]]) -> list[Column]:
    """One column per pair, or per (pair, teacher) where students learnt from several."""
    if pairs is None:
        pairs = list(dict.fromkeys((r["teacher"], r["student"]) for r in teacher_rows))
    columns = []
    for t, s in pairs:
        own = [r for r in teacher_rows if r["teacher"] == t and r["student"] == s]
        keys = list(dict.fromkeys(r.get("teacher_key") for r in own))
        if len(keys) <= 1:
            columns.append(Column(f"{t}->{s}", t, s, keys[0] if keys else ANY_TEACHER))
            continue
        labels = {k: teacher_description(next(r for r in own if r.get("teacher_key") == k), by_key) for k in keys}
        for k in keys:
            same = [o for o in keys if labels[o] == labels[k]]
            label = labels[k] + (f", key {str(k)[:8]}" if len(same) > 1 else "")
            columns.append(Column(f"{t}->{s} [teacher {label}]", t, s, k))
    return columns


def _row_variants(method_rows: list[dict[str, Any]], order: list[str] | None, baseline: str) -> list[RowVariant]:
    """Rows of the table: vanilla first, then methods (the baseline first), one per variant."""
    out = []
    for method in [STUDENT_METHOD, *ordered_methods((r["method"] for r in method_rows), order, baseline)]:
        rows = [r for r in method_rows if r["method"] == method]
        counts: dict[str, int] = {}
        for r in rows:
            counts[variant_id(r)] = counts.get(variant_id(r), 0) + 1
        variants = sorted(counts, key=lambda v: (-counts[v], v)) or [variant_id({})]
        labels = variant_labels(method, variants)
        out.extend(RowVariant(labels[v], method, v) for v in variants)
    return out


def _build_table(rows: list[dict[str, Any]], by_key: dict[str, dict[str, Any]], dataset: str, metric: str,
                 pairs: list[tuple[str, str]] | None, methods: list[str] | None, expected_seeds: int | None,
                 caption: str, baseline: str = REFERENCE_METHOD, alpha: float = ALPHA) -> Table:
    """The table of one recipe's rows."""
    col = metric_column(metric)
    own_rows = [r for r in rows if r.get("own_student")]
    teacher_rows = [r for r in rows if r.get("teacher") and not r.get("own_student")]
    columns = _columns(teacher_rows, pairs, by_key)
    students = {c.student for c in columns}
    vanilla_rows = [r for r in rows if not r.get("teacher") and r.get("method") == STUDENT_METHOD
                    and r.get("student") in students]
    variants = _row_variants(teacher_rows + vanilla_rows + own_rows, methods, baseline)
    own_methods = {r["method"]: r.get("student_arch") or r.get("student") for r in own_rows}
    notes: list[str] = [f"{m}: trains its own student ({s}); the column's CNN student is not used"
                        for m, s in own_methods.items()]
    failures: list[dict[str, Any]] = []
    cells: dict[tuple[str, str], Cell] = {}
    seen_seeds: list[int] = []
    for c in columns:
        for v in variants:
            if v.method == STUDENT_METHOD:
                sub = [r for r in vanilla_rows if r["student"] == c.student and variant_id(r) == v.variant]
            elif v.method in own_methods:
                sub = [r for r in own_rows if r["method"] == v.method and variant_id(r) == v.variant
                       and (not r.get("teacher") or (r["teacher"] == c.teacher and (
                           c.teacher_key == ANY_TEACHER or r.get("teacher_key") == c.teacher_key)))]
            else:
                sub = [r for r in teacher_rows if r["method"] == v.method and variant_id(r) == v.variant
                       and r["teacher"] == c.teacher and r["student"] == c.student
                       and (c.teacher_key == ANY_TEACHER or r.get("teacher_key") == c.teacher_key)]
            cells[(v.name, c.name)] = _gather(sub, col, v.name, c.name, notes, failures)
            seen_seeds.append(len({r["seed"] for r in sub}))
        own = [r for r in teacher_rows if r["teacher"] == c.teacher and r["student"] == c.student
               and (c.teacher_key == ANY_TEACHER or r.get("teacher_key") == c.teacher_key)]
        cells[("teacher", c.name)] = _teacher_cell(own, by_key, metric)
    expected = expected_seeds if expected_seeds is not None else max(seen_seeds, default=0)
    for (row, _), cell in cells.items():
        if row != "teacher":
            cell.expected = expected
    names = [v.name for v in variants]
    reference = next((v.name for v in variants if v.method == baseline), baseline)
    base = next(v.name for v in variants if v.method == STUDENT_METHOD)
    method_names = [v.name for v in variants if v.method != STUDENT_METHOD]
    for c in columns:
        mark_column(cells, method_names, c.name, reference, base, timing=(metric == "time"), alpha=alpha)
    title = f"{dataset}: {metric_title(metric)}, mean ± std over seeds"
    teachers = sorted({teacher_description(r, by_key) for r in teacher_rows})
    full_caption = f"runs with {caption}" + (f"; teachers: {' | '.join(teachers)}" if teachers else "")
    return Table(title=title, columns=[c.name for c in columns], rows=["teacher", *names], cells=cells,
                 metric=metric, notes=notes, failures=failures, unit="s" if metric == "time" else "%",
                 caption=full_caption, reference=reference, base=base, alpha=alpha,
                 pairs={c.name: (c.teacher, c.student) for c in columns},
                 row_methods={"teacher": "teacher", **{v.name: v.method for v in variants}}, dataset=dataset)


def _gather(sub: list[dict[str, Any]], col: str, row: str, colname: str, notes: list[str],
            failures: list[dict[str, Any]]) -> Cell:
    """The cell of one (row, column) from its runs; records skip notes and failures."""
    done = [r for r in sub if r.get("status") == "done"]
    failed = [r for r in sub if r.get("status") == "failed"]
    skipped = [r for r in sub if r.get("status") == "skipped"]
    for f in failed:
        failures.append({"row": row, "pair": colname, "seed": f["seed"], "error": f.get("error"),
                         "run_dir": f.get("run_dir")})
    waiting: dict[str, int] = {}
    for r in sub:
        if r.get("status") in WAITING:
            waiting[r["status"]] = waiting.get(r["status"], 0) + 1
    if done:
        values = [float(v) for v in (r.get(col) for r in done) if v is not None and not
                  (isinstance(v, float) and math.isnan(v))]
        mean, std = _stats(values)
        params = [r.get("inference_params") or r.get("student_params") for r in done]
        return Cell(mean, std, n=len({r["seed"] for r in done}), values=values, waiting=waiting,
                    params=_stats([p for p in params if isinstance(p, (int, float))])[0],
                    run_dirs=[r["run_dir"] for r in done if r.get("run_dir")])
    if skipped:
        note = f"{row} skipped on {colname}: {skipped[0].get('reason')}"
        if note not in notes:
            notes.append(note)
        return Cell(status="skipped")
    if failed:
        return Cell(status="failed")
    state = next((s for s in WAITING if s in waiting), "missing")
    return Cell(status=state, waiting=waiting)


def _teacher_cell(pair_rows: list[dict[str, Any]], by_key: dict[str, dict[str, Any]], metric: str) -> Cell:
    """The teacher's number in the table's metric: from the teacher's own run (found by the
    teacher key), else the accuracy the students recorded (top-1 only); ``n/a`` for a
    supplied checkpoint, which has no top-5 or training time."""
    keys = [r.get("teacher_key") for r in pair_rows if r.get("teacher_key")]
    own = next((by_key[k] for k in keys if k in by_key and by_key[k].get("status") == "done"), None)
    value = own.get(metric_column(metric)) if own else None
    from_checkpoint = any(r.get("teacher_ckpt") for r in pair_rows)
    if value is None and (metric == "last" or (metric == "best" and from_checkpoint)):
        value = next((r["teacher_top1"] for r in pair_rows if r.get("teacher_top1") is not None), None)
    if value is not None:
        return Cell(float(value), None, n=1, expected=1, status="reference")
    waiting = next((by_key[k]["status"] for k in keys if by_key.get(k, {}).get("status") in WAITING), None)
    return Cell(status="n/a" if from_checkpoint else (waiting or "missing"), expected=1)


def mark_column(cells: dict[tuple[str, str], Cell], methods: list[str], col: str, reference: str, base: str,
          timing: bool, alpha: float = ALPHA) -> None:
    """Arrows against the reference (KD; KD against vanilla), each tested (Welch's t-test
    at ``alpha``, where both cells have two seeds or more), and the best method of the
    column (for a timing table: no arrows, the fastest is best)."""
    scored = [cells[(m, col)] for m in methods if cells[(m, col)].mean is not None]
    if scored:
        best = min(c.mean for c in scored) if timing else max(c.mean for c in scored)
        for c in scored:
            c.best = abs(c.mean - best) < 1e-9
    if timing:
        return
    for m in methods:
        c = cells[(m, col)]
        against = cells.get((base if m == reference else reference, col))
        if c.mean is None or against is None or against.mean is None:
            continue
        diff = round(c.mean, 2) - round(against.mean, 2)
        c.arrow = "=" if abs(diff) < 1e-9 else ("↑" if diff > 0 else "↓")
        if c.arrow != "=":
            c.test = welch_test(c.values, against.values)
            c.significant = None if c.test is None else c.test.significant(alpha)
