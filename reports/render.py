"""Renderers for :class:`~kdbench.reports.leaderboard.Table`: terminal, Markdown, CSV.

Every renderer shows the same content: the title and the caption saying which runs the
table holds (recipe, teachers), ``mean ± std`` (``mean`` alone for one seed), the arrow
against the baseline with ``*`` when Welch's t-test finds it significant, the best method
per column in bold (ANSI bold on a terminal, `` (best)`` on a plain one, ``**`` in
Markdown, a ``best`` column flag in CSV), ``n=k/N`` for missing seeds and runs still
``running``/``pending``, ``skip``/``fail``/``n/a``, the published number beside the cell
(``--compare``), the summary columns (Δ, mean rank, ARI) when computed, then the legend,
the test and its level (or why no test was possible), notes (skip reasons) and failures
(one line each, with the run folder). :func:`render_tables` renders several tables (one
per recipe) in one text. The LaTeX, HTML and JSON renderers live in their own modules and
use the same pieces (:func:`format_cell`, :func:`significance_note`, :func:`footer_lines`).
"""
from __future__ import annotations

import csv
import io
from typing import Callable

from tabulate import tabulate

from kdbench.reports.leaderboard import REFERENCE_METHOD, WAITING, Cell, Table, one_line
from kdbench.reports.summary import summary_headers, summary_texts, summary_values

BOLD, RESET = "\033[1m", "\033[0m"
LEGEND = "↑/↓: mean above/below KD on the same pair (KD row: against the vanilla student)."
RETRY_HINT = "re-run the same command to retry"
BEST_MARK = " (best)"  # the best cell on a terminal without colour
UNTESTED_LISTED = 6  # untested arrows named in the significance note


def arrow_text(cell: Cell) -> str:
    """``↑*`` (significant), ``↑`` (not significant, or not tested), ``=``, or ``''``."""
    return cell.arrow + ("*" if cell.significant else "")


def _waiting_text(cell: Cell) -> str:
    return ", ".join(f"{cell.waiting[k]} {k}" if cell.waiting[k] > 1 else k for k in WAITING if k in cell.waiting)


def format_cell(cell: Cell, decimals: int = 2) -> str:
    """``73.41 ± 0.22 ↑*`` / ``73.41 ↑ (n=1/2, running)`` / ``running`` / ``skip`` /
    ``fail`` / ``–``, then `` (paper 73.00, Δ +0.41)`` when a published number is beside it."""
    text = _value_text(cell, decimals)
    if cell.paper is not None:
        diff = f", Δ {cell.mean - cell.paper:+.{decimals}f}" if cell.mean is not None else ""
        text += f" (paper {cell.paper:.{decimals}f}{diff})"
    return text


def _value_text(cell: Cell, decimals: int) -> str:
    if cell.status == "skipped":
        return "skip"
    if cell.status == "failed":
        return "fail"
    if cell.status == "n/a":
        return "n/a"
    if cell.mean is None:
        return _waiting_text(cell) or "–"
    text = f"{cell.mean:.{decimals}f}"
    if cell.std is not None and (cell.n > 1 or cell.status == "published"):
        text += f" ± {cell.std:.{decimals}f}"
    if cell.arrow:
        text += f" {arrow_text(cell)}"
    waiting = _waiting_text(cell)
    if cell.partial or waiting:
        text += f" (n={cell.n}/{cell.expected}{', ' + waiting if waiting else ''})"
    return text


def headers(table: Table) -> list[str]:
    return ["method", *table.columns, *summary_headers(table)]


def grid(table: Table, bold: Callable[[str], str], cell_text: Callable[[Cell], str] = format_cell) -> list[list[str]]:
    """Rows of text: the row name, its cells (the best through ``bold``), its summary."""
    out = []
    for row in table.rows:
        line = [row]
        for col in table.columns:
            cell = table.cell(row, col)
            text = cell_text(cell)
            line.append(bold(text) if cell.best else text)
        out.append(line + summary_texts(table, row))
    return out


def _legend(table: Table) -> str:
    if table.reference == REFERENCE_METHOD:
        return LEGEND
    return LEGEND.replace("below KD", f"below {table.reference}").replace("KD row", f"{table.reference} row")


def significance_note(table: Table) -> str | None:
    """What the stars mean and which test gave them, or why no arrow could be tested."""
    if table.metric == "time":
        return None
    if table.source == "published":
        return "No significance test: a published table prints no per-seed numbers."
    arrows = [(r, c, table.cell(r, c)) for r in table.rows for c in table.columns
              if table.cell(r, c).arrow in ("↑", "↓")]
    untested = [f"{r} on {c}" for r, c, cell in arrows if cell.significant is None]
    if arrows and len(untested) == len(arrows):
        return ("No significance test was possible: every arrow has one seed on a side (Welch's t-test needs "
                "at least 2 seeds in both cells).")
    level = f"{table.alpha:g}"
    text = (f"Significance: Welch's t-test (two-sided, α = {level}) of each arrow against the cell it compares "
            f"with: ↑*/↓* significant (p < {level}), ↑/↓ not significant.")
    if untested:
        named = ", ".join(untested[:UNTESTED_LISTED]) + (", …" if len(untested) > UNTESTED_LISTED else "")
        text += f" Not tested (one seed on a side): {len(untested)} arrow(s): {named}."
    return text


def legend_lines(table: Table) -> list[str]:
    """What the marks mean: arrows, the significance test (or why none), summary columns,
    published numbers beside the cells."""
    lines = []
    if table.metric != "time":
        lines.append(_legend(table))
    note = significance_note(table)
    if note:
        lines.append(note)
    if table.summary is not None:
        lines.append(_summary_legend(table))
    if table.compare:
        lines.append(f"(paper X, Δ Y): the number printed in {table.compare} for the same method and pair, "
                     f"and ours minus it.")
    return lines


def failure_lines(table: Table, bullet: str = "  ") -> list[str]:
    """One line per failed run (the error's first line, its folder) under a heading."""
    if not table.failures:
        return []
    lines = [f"{len(table.failures)} failed run(s) ({RETRY_HINT}; full errors in each run folder's result.json):"]
    for f in table.failures:
        where = f"  [{f['run_dir']}]" if f.get("run_dir") else ""
        lines.append(f"{bullet}{f['row']} on {f['pair']} seed {f['seed']}: {one_line(f['error'])}{where}")
    return lines


def footer_lines(table: Table, bullet: str = "  ") -> list[str]:
    """Legend lines, notes, failures."""
    return [*legend_lines(table), *(f"{bullet}{n}" for n in table.notes), *failure_lines(table, bullet)]


def _summary_legend(table: Table) -> str:
    unit = "s" if table.metric == "time" else "points"
    text = (f"Δ: mean over pairs of the difference to {table.reference} ({unit}); mean rank: rank among the "
            f"methods in each pair (1 = {'fastest' if table.metric == 'time' else 'best'}), averaged over pairs")
    if table.summary.ari_ref is not None and table.metric != "time":
        text += (f"; ARI: average relative improvement of {table.summary.ari_ref} over the row, "
                 f"mean over pairs of (R − X) / (X − vanilla) × 100")
    return text + "; (k/N): over k of the N pairs."


def heading(table: Table) -> list[str]:
    return [table.title, *([table.caption] if table.caption else [])]


def render_terminal(table: Table, color: bool = False) -> str:
    bold = (lambda s: f"{BOLD}{s}{RESET}") if color else (lambda s: f"{s}{BEST_MARK}")
    body = tabulate(grid(table, bold), headers=headers(table), tablefmt="simple", disable_numparse=True)
    legend = [] if color else [f"{BEST_MARK.strip()}: best method in the column."]
    return "\n".join([*heading(table), body, *footer_lines(table), *legend]) + "\n"


def render_markdown(table: Table) -> str:
    body = tabulate(grid(table, lambda s: f"**{s}**"), headers=headers(table), tablefmt="github",
                    disable_numparse=True)
    caption = [f"*{table.caption}*", ""] if table.caption else []
    footer = [f"- {ln}" for ln in [*legend_lines(table), *table.notes]]
    failures = failure_lines(table, "  - ")
    footer += [f"- {failures[0]}", *failures[1:]] if failures else []
    return "\n".join([f"### {table.title}", "", *caption, body, "", *footer]) + "\n"


CSV_HEADER = ["row", "pair", "mean", "std", "n", "expected", "arrow", "best", "status", "metric", "runs",
              "t", "df", "p", "significant", "paper", "paper_diff"]


def _num(value: float | None, decimals: int = 4) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _csv_lines(table: Table) -> list[list]:
    """One line per cell, then one per summary number (``pair`` = ``summary:delta`` …,
    the number in ``mean``, ``status`` = ``summary``)."""
    out = []
    for row in table.rows:
        for col in table.columns:
            c = table.cell(row, col)
            test = c.test
            out.append([row, col, _num(c.mean), _num(c.std), c.n, c.expected, c.arrow, int(c.best), c.status,
                        table.metric, table.caption, _num(test and test.t), _num(test and test.df),
                        _num(test and test.p, 6), "" if c.significant is None else int(c.significant),
                        _num(c.paper), _num(None if c.paper is None or c.mean is None else c.mean - c.paper)])
    if table.summary is not None:
        for row in table.rows:
            for kind, value in summary_values(table, row):
                if value is not None:
                    out.append([row, f"summary:{kind}", value if isinstance(value, str) else _num(value), "", "", "",
                                "", "", "summary", table.metric, table.caption, "", "", "", "", "", ""])
    return out


def render_csv(table: Table) -> str:
    return render_csv_tables([table])


def render_csv_tables(tables: list[Table]) -> str:
    """One CSV for several tables: one header, a line per cell; ``runs`` says which table."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_HEADER)
    for table in tables:
        writer.writerows(_csv_lines(table))
    return buf.getvalue()


RENDERERS: dict[str, Callable[[Table], str]] = {
    "terminal": render_terminal,
    "md": render_markdown,
    "csv": render_csv,
}


def render_tables(tables: list[Table], fmt: str = "terminal", color: bool = False) -> str:
    """Several tables in one text (``fmt``: terminal, md or csv); blank lines between."""
    if fmt == "csv":
        return render_csv_tables(tables)
    if fmt == "terminal":
        return "\n".join(render_terminal(t, color=color) for t in tables)
    return "\n".join(RENDERERS[fmt](t) for t in tables)
