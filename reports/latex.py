"""LaTeX output: one booktabs ``table`` per leaderboard and per cost table.

Needs only ``\\usepackage{booktabs}`` in the paper (said in the first comment line). Cells
keep the marks of the other formats: the best cell in ``\\textbf``, arrows as
``$\\uparrow$``/``$\\downarrow$``, significant ones with ``^{*}``; the legend and the test
below the tabular in ``\\footnotesize``. Failed runs and their folders are LaTeX comments
(``%``), not printed text. Every text goes through :func:`tex` (escapes ``\\ & % $ # _ { }
~ ^``, writes a negative number's sign as ``$-$`` and maps the report's Unicode — arrows, ±,
α, Δ, dashes — to LaTeX).
"""
from __future__ import annotations

import re

from kdbench.reports.cost import COLUMNS, CostTable, cost_cells, teacher_line
from kdbench.reports.leaderboard import Table, one_line
from kdbench.reports.render import arrow_text, format_cell, legend_lines
from kdbench.reports.summary import summary_headers, summary_texts

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_UNICODE = {"↑*": r"$\uparrow^{*}$", "↓*": r"$\downarrow^{*}$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
            "±": r"$\pm$", "α": r"$\alpha$", "Δ": r"$\Delta$", "–": "--", "—": "---", "…": r"\ldots{}",
            "×": r"$\times$", "−": r"$-$", "->": r"$\to$", "<": r"$<$", ">": r"$>$", "≈": r"$\approx$"}


def tex(text: str) -> str:
    """``text`` safe in a LaTeX document (see the module docstring)."""
    out = "".join(_ESCAPES.get(ch, ch) for ch in str(text))
    out = re.sub(r"(?<![\w.-])-(?=\d)", r"$-$", out)  # a negative number gets a minus sign, not a hyphen
    for uni, rep in sorted(_UNICODE.items(), key=lambda kv: -len(kv[0])):
        out = out.replace(uni, rep)
    return out


def _cell(cell) -> str:
    text = format_cell(cell)
    arrow = arrow_text(cell)
    if cell.best and arrow and f" {arrow}" in text:  # bold the number, not the arrow
        value, _, rest = text.partition(f" {arrow}")
        return rf"\textbf{{{tex(value)}}} {tex(arrow)}{tex(rest)}"
    return rf"\textbf{{{tex(text)}}}" if cell.best else tex(text)


def _tabular(head: list[str], body: list[list[str]], rule_after: int, align: str) -> list[str]:
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for i, row in enumerate(body):
        lines.append(" & ".join(row) + r" \\")
        if i + 1 == rule_after and i + 1 < len(body):
            lines.append(r"\midrule")
    return lines + [r"\bottomrule", r"\end{tabular}"]


def render_latex_table(table: Table) -> str:
    heads = ["Method", *table.columns, *summary_headers(table)]
    body = [[tex(row), *(_cell(table.cell(row, c)) for c in table.columns), *(tex(t) for t in summary_texts(table, row))]
            for row in table.rows]
    fixed = sum(1 for r in table.rows if r in ("teacher", table.base))
    align = "l" + "c" * len(table.columns) + "r" * len(summary_headers(table))
    notes = [*legend_lines(table), *table.notes]
    comments = [f"% failed: {one_line(f['error'], 160)} [{f.get('run_dir')}]".replace("\n", " ")
                for f in table.failures]
    lines = [r"% kdbench report; needs \usepackage{booktabs}", *comments, r"\begin{table}[t]", r"\centering",
             r"\small", r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{tex(table.title)}{'. ' + tex(table.caption) if table.caption else ''}}}",
             *_tabular([tex(h) for h in heads], body, fixed, align),
             r"\par\smallskip", r"{\footnotesize " + r" \\ ".join(tex(n) for n in notes) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_latex_cost(cost: CostTable) -> str:
    body = [[tex(name), *(tex(t) for t in cost_cells(values))] for name, values in cost.rows]
    notes = [teacher_line(cost), *cost.notes]
    lines = [r"% kdbench cost table; needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex(cost.title)}. {tex(cost.caption)}}}",
             *_tabular(["Method", *(tex(c) for c in COLUMNS)], body, 1, "l" + "r" * len(COLUMNS)),
             r"\par\smallskip", r"{\footnotesize " + r" \\ ".join(tex(n) for n in notes) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"
