"""Renderers for :class:`~kdbench.reports.leaderboard.Table`: terminal, Markdown, CSV.

Every renderer shows the same content: ``mean ± std`` (``mean`` alone for one seed), the
arrow against KD, the best method per column in bold (ANSI bold on a terminal, ``**`` in
Markdown, a ``best`` column flag in CSV), ``n=k/N`` for missing seeds, ``skip``/``fail``,
then notes (skip reasons) and failures.
"""
from __future__ import annotations

import csv
import io
from typing import Callable

from tabulate import tabulate

from kdbench.reports.leaderboard import Cell, Table

BOLD, RESET = "\033[1m", "\033[0m"
LEGEND = "↑/↓: mean above/below KD on the same pair (KD row: against the vanilla student)."


def format_cell(cell: Cell, decimals: int = 2) -> str:
    """``73.41 ± 0.22 ↑`` / ``73.41 ↑ (n=1/2)`` / ``skip`` / ``fail`` / ``–``."""
    if cell.status == "skipped":
        return "skip"
    if cell.status == "failed":
        return "fail"
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


def _footer(table: Table, bullet: str = "  ") -> list[str]:
    lines = []
    if table.metric != "time":
        lines.append(LEGEND)
    for note in table.notes:
        lines.append(f"{bullet}{note}")
    if table.failures:
        lines.append(f"{len(table.failures)} failed run(s):")
        for f in table.failures:
            lines.append(f"{bullet}{f['row']} on {f['pair']} seed {f['seed']}: {f['error']}")
    return lines


def render_terminal(table: Table, color: bool = False) -> str:
    bold = (lambda s: f"{BOLD}{s}{RESET}") if color else (lambda s: f"{s} *")
    body = tabulate(_grid(table, bold), headers=["method", *table.columns], tablefmt="simple",
                    disable_numparse=True)
    legend = [] if color else ["* best method in the column."]
    return "\n".join([table.title, body, *_footer(table), *legend]) + "\n"


def render_markdown(table: Table) -> str:
    body = tabulate(_grid(table, lambda s: f"**{s}**"), headers=["method", *table.columns], tablefmt="github",
                    disable_numparse=True)
    return "\n".join([f"### {table.title}", "", body, "", *_footer(table, "- ")]) + "\n"


def render_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["row", "pair", "mean", "std", "n", "expected", "arrow", "best", "status"])
    for row in table.rows:
        for col in table.columns:
            c = table.cell(row, col)
            writer.writerow([row, col, "" if c.mean is None else f"{c.mean:.4f}", "" if c.std is None else f"{c.std:.4f}",
                             c.n, c.expected, c.arrow, int(c.best), c.status])
    return buf.getvalue()


RENDERERS: dict[str, Callable[[Table], str]] = {
    "terminal": render_terminal,
    "md": render_markdown,
    "csv": render_csv,
}
