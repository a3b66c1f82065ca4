"""Renderers for :class:`~kdbench.reports.leaderboard.Table`: terminal, Markdown, CSV.

Every renderer shows the same content: the title and the caption saying which runs the
table holds (recipe, teachers), ``mean ± std`` (``mean`` alone for one seed), the arrow
against KD, the best method per column in bold (ANSI bold on a terminal, ``**`` in
Markdown, a ``best`` column flag in CSV), ``n=k/N`` for missing seeds, ``skip``/``fail``/
``n/a``, then notes (skip reasons) and failures (one line each, with the run folder).
:func:`render_tables` renders several tables (one per recipe) in one text.
"""
from __future__ import annotations

import csv
import io
from typing import Callable

from tabulate import tabulate

from kdbench.reports.leaderboard import REFERENCE_METHOD, Cell, Table, one_line

BOLD, RESET = "\033[1m", "\033[0m"
LEGEND = "↑/↓: mean above/below KD on the same pair (KD row: against the vanilla student)."
RETRY_HINT = "re-run the same command to retry"


def format_cell(cell: Cell, decimals: int = 2) -> str:
    """``73.41 ± 0.22 ↑`` / ``73.41 ↑ (n=1/2)`` / ``skip`` / ``fail`` / ``–``."""
    if cell.status == "skipped":
        return "skip"
    if cell.status == "failed":
        return "fail"
    if cell.status == "n/a":
        return "n/a"
    if cell.mean is None:
        return "–"
    text = f"{cell.mean:.{decimals}f}"
    if cell.std is not None and cell.n > 1:
        text += f" ± {cell.std:.{decimals}f}"
    if cell.arrow:
        text += f" {cell.arrow}"
    if cell.partial:
        text += f" (n={cell.n}/{cell.expected})"
    return text


def _grid(table: Table, bold: Callable[[str], str]) -> list[list[str]]:
    out = []
    for row in table.rows:
        line = [row]
        for col in table.columns:
            cell = table.cell(row, col)
            text = format_cell(cell)
            line.append(bold(text) if cell.best else text)
        out.append(line)
    return out


def _legend(table: Table) -> str:
    if table.reference == REFERENCE_METHOD:
        return LEGEND
    return LEGEND.replace("below KD", f"below {table.reference}").replace("KD row", f"{table.reference} row")


def _footer(table: Table, bullet: str = "  ") -> list[str]:
    """Legend, notes, and one line per failed run (the error's first line, its folder)."""
    lines = []
    if table.metric != "time":
        lines.append(_legend(table))
    for note in table.notes:
        lines.append(f"{bullet}{note}")
    if table.failures:
        lines.append(f"{len(table.failures)} failed run(s) ({RETRY_HINT}; full errors in each run folder's "
                     f"result.json):")
        for f in table.failures:
            where = f"  [{f['run_dir']}]" if f.get("run_dir") else ""
            lines.append(f"{bullet}{f['row']} on {f['pair']} seed {f['seed']}: {one_line(f['error'])}{where}")
    return lines


def _heading(table: Table) -> list[str]:
    return [table.title, *([table.caption] if table.caption else [])]


def render_terminal(table: Table, color: bool = False) -> str:
    bold = (lambda s: f"{BOLD}{s}{RESET}") if color else (lambda s: f"{s} *")
    body = tabulate(_grid(table, bold), headers=["method", *table.columns], tablefmt="simple",
                    disable_numparse=True)
    legend = [] if color else ["* best method in the column."]
    return "\n".join([*_heading(table), body, *_footer(table), *legend]) + "\n"


def render_markdown(table: Table) -> str:
    body = tabulate(_grid(table, lambda s: f"**{s}**"), headers=["method", *table.columns], tablefmt="github",
                    disable_numparse=True)
    caption = [f"*{table.caption}*", ""] if table.caption else []
    return "\n".join([f"### {table.title}", "", *caption, body, "", *_footer(table, "- ")]) + "\n"


CSV_HEADER = ["row", "pair", "mean", "std", "n", "expected", "arrow", "best", "status", "metric", "runs"]


def _csv_lines(table: Table) -> list[list]:
    out = []
    for row in table.rows:
        for col in table.columns:
            c = table.cell(row, col)
            out.append([row, col, "" if c.mean is None else f"{c.mean:.4f}", "" if c.std is None else f"{c.std:.4f}",
                        c.n, c.expected, c.arrow, int(c.best), c.status, table.metric, table.caption])
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
