"""``kdbench report``: a results folder (or a published table) to a report in one format.

:func:`build_report` reads the folder (:mod:`~kdbench.reports.loader`, read only), builds
the leaderboards of the chosen metric (one per recipe; ``probe:<target>``: the linear-probe
accuracies cached by ``kdbench probe``, :mod:`~kdbench.reports.probes`) with their tests, the
summary columns (Δ, mean rank, ARI against ``ari_ref``), optionally sorted, the published numbers
beside the cells (``compare``), the wall-time tables and cost tables, and — for the
formats that show them — the plots. :func:`build_published_report` does the same for a
published table alone (no costs; bars only). :func:`render` writes one format:
terminal, md, csv (leaderboard cells and summary lines only), latex, html, json.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.reports.cost import COLUMNS, CostTable, build_costs, cost_cells, teacher_line
from kdbench.reports.leaderboard import (REFERENCE_METHOD, Table, build_leaderboards, choose_dataset, probe_target,
                                        rows_frame)
from kdbench.reports.stats import ALPHA
from kdbench.reports.summary import compute_summary, sort_rows

log = logging.getLogger(__name__)

FORMATS = ("terminal", "md", "latex", "html", "csv", "json")
PLOT_FORMATS = ("html",)


@dataclass
class Options:
    """What a report shows (the ``kdbench report`` flags)."""

    dataset: str | None = None
    metric: str = "last"
    baseline: str = REFERENCE_METHOD
    ari_ref: str | None = None
    compare: str | None = None
    sort: str | None = None
    alpha: float = ALPHA
    plots: bool = False


@dataclass
class Section:
    table: Table
    cost: CostTable | None = None
    time: Table | None = None
    plots: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Report:
    title: str
    source: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)


def _finish(table: Table, opts: Options, ari_ref: str | None, printed: dict[str, float] | None = None) -> None:
    """Summary columns, sorting, published numbers beside the cells."""
    table.summary = compute_summary(table, ari_ref)
    if ari_ref is not None and table.summary.ari_ref is None:
        log.warning("--ari-ref %s: no such method in %s; no ARI column", ari_ref, table.title)
    if printed:
        table.summary.published_ari = printed
    if opts.sort:
        table.rows = sort_rows(table, table.summary, opts.sort)
    if opts.compare and table.metric not in ("last", "best"):
        log.warning("--compare %s: published tables hold top-1 accuracies; not shown beside a %s table",
                    opts.compare, table.metric)
    elif opts.compare:
        from kdbench.reports.paper import attach_published, load_published

        attach_published(table, load_published(opts.compare, opts.baseline)[0])


class NoDistillationRuns(ValueError):
    """The rows hold no run with a teacher (only teachers or vanilla students)."""


def from_folder(out: str | Path, opts: Options) -> Report:
    """The report of a results folder (``--out``): warns about suspicious files and
    several recipes; a folder without results, or without the dataset asked for, is an
    error naming the folder (and the datasets it holds)."""
    from kdbench.reports.loader import load_rows, queued_runs
    from kdbench.store import Store

    store = Store(out)
    for problem in store.problems():
        log.warning("%s", problem)
    rows = load_rows(store)
    if not rows:
        raise ValueError(f"no results under {store.root / 'runs'}; run `kdbench run --out {out}` first")
    held = sorted({r["dataset"] for r in rows if r.get("dataset")})
    if opts.dataset is not None and opts.dataset not in held:
        raise ValueError(f"no results for dataset {opts.dataset!r} in {store.root}; it holds: {', '.join(held)}")
    try:
        report = build_report(rows, str(store.root), opts, queued_runs(store))
    except NoDistillationRuns:
        raise ValueError(f"no distillation runs for {opts.dataset or held[0]} in {store.root} (only teacher or "
                         f"vanilla runs); it holds: {', '.join(held)}") from None
    if len(report.sections) > 1:
        log.warning("%s holds runs of %d recipes: one table per recipe, never averaged together", store.root,
                    len(report.sections))
    return report


def build_report(records: list[dict[str, Any]], source: str, opts: Options, queued: int = 0) -> Report:
    """The report of result rows (and waiting runs' rows) ``records``."""
    df = rows_frame(records)
    notes = []
    board = df
    if probe_target(opts.metric):  # probe accuracies read from the runs' probe files
        from kdbench.reports.probes import with_probes

        dataset = choose_dataset((r.get("dataset") for r in records), opts.dataset)
        probed, notes = with_probes(records, opts.metric, source, dataset)
        board = rows_frame(probed)
    tables = build_leaderboards(board, opts.dataset, opts.metric, baseline=opts.baseline, alpha=opts.alpha)
    if not tables:
        raise NoDistillationRuns(f"no distillation runs for {opts.dataset or 'the dataset'} in {source}")
    times = tables if opts.metric == "time" else build_leaderboards(df, opts.dataset, "time", baseline=opts.baseline)
    dataset = tables[0].dataset
    costs = build_costs(records, dataset, opts.baseline)
    sections = []
    for table, time, cost in zip(tables, times, costs):
        _finish(table, opts, opts.ari_ref)
        section = Section(table, cost=cost, time=time)
        if opts.plots:
            from kdbench.reports.plots import report_plots

            section.plots = report_plots(table, time)
        sections.append(section)
    if queued:
        notes.append(f"{queued} submitted run(s) have not started yet (no spec.json, so not placed in the table); "
                     f"`kdbench status` with the grid's flags names them.")
    if len(tables) > 1:
        notes.append(f"{len(tables)} recipes in this folder: one table each, never averaged together.")
    return Report(title=f"kdbench report: {dataset}", source=source, sections=sections, notes=notes)


def build_published_report(name: str, opts: Options) -> Report:
    """A published table alone: arrows against the baseline, summary columns, ARI (the
    table's own reference unless ``ari_ref``), its printed ARI beside ours."""
    from kdbench.reports.paper import load_published

    table, printed, ref = load_published(name, opts.baseline)
    ari_ref = opts.ari_ref or ref
    if opts.compare:
        log.warning("--compare is for results folders; ignored with --table")
    # the printed ARI column only beside ours when both have the paper's reference
    _finish(table, Options(**{**opts.__dict__, "compare": None}), ari_ref, printed if ari_ref == ref else None)
    section = Section(table)
    if opts.plots:
        from kdbench.reports.plots import report_plots

        section.plots = report_plots(table)
    return Report(title=f"kdbench: published table {name}", source=f"reports/paper_tables/{name}.csv",
                  sections=[section])


def _text_costs(report: Report, fmt: str) -> list[str]:
    from tabulate import tabulate

    out = []
    for s in report.sections:
        if s.cost is None:
            continue
        body = tabulate([[name, *cost_cells(v)] for name, v in s.cost.rows], headers=["method", *COLUMNS],
                        tablefmt="github" if fmt == "md" else "simple", disable_numparse=True)
        title = f"### {s.cost.title}\n\n*{s.cost.caption}*\n" if fmt == "md" else f"{s.cost.title}\n{s.cost.caption}"
        out.append("\n".join([title, body, *(["", teacher_line(s.cost)] if fmt == "md" else [teacher_line(s.cost)]),
                              *s.cost.notes]) + "\n")
    return out


def render(report: Report, fmt: str, color: bool = False) -> str:
    """``report`` in ``fmt`` (see :data:`FORMATS`)."""
    tables = [s.table for s in report.sections]
    if fmt == "csv":
        from kdbench.reports.render import render_csv_tables

        return render_csv_tables(tables)
    if fmt == "json":
        from kdbench.reports.jsonout import render_json

        return render_json(tables, [s.cost for s in report.sections if s.cost], report.notes)
    if fmt == "html":
        from kdbench.reports.html import render_html

        return render_html(report.title, report.source,
                           [{"table": s.table, "cost": s.cost, "plots": s.plots} for s in report.sections], report.notes)
    if fmt == "latex":
        from kdbench.reports.latex import render_latex_cost, render_latex_table, tex

        parts = [f"% {tex(n)}" for n in report.notes]
        for s in report.sections:
            parts.append(render_latex_table(s.table))
            if s.cost is not None:
                parts.append(render_latex_cost(s.cost))
        return "\n".join(parts)
    if fmt in ("terminal", "md"):
        from kdbench.reports.render import render_tables

        text = render_tables(tables, fmt, color=color)
        notes = [f"{'- ' if fmt == 'md' else ''}{n}" for n in report.notes]
        return "\n".join([text, *_text_costs(report, fmt), *notes]) + ("\n" if notes else "")
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def check_outside(folder: str | Path, paths: dict[str, str | None]) -> None:
    """Raise ``ValueError`` when a path to write (by flag) lies in the results folder
    (resolved, symlinks followed): a report never writes into the results."""
    root = Path(folder).expanduser().resolve()
    for flag, path in paths.items():
        if path:
            p = Path(path).expanduser().resolve()
            if p == root or root in p.parents:
                raise ValueError(f"{flag} {path} is inside the results folder {folder}: a report never writes "
                                 f"there; choose a path outside it")


def write_plots(report: Report, folder: Path) -> list[Path]:
    """The report's plots as PNG files in ``folder`` (``recipeK_`` prefixes when the
    report has several tables)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, section in enumerate(report.sections, 1):
        prefix = f"recipe{k}_" if len(report.sections) > 1 else ""
        for name, png in section.plots.items():
            path = folder / f"{prefix}{name}"
            path.write_bytes(png)
            written.append(path)
    log.info("wrote %d plot(s) into %s", len(written), folder)
    return written
