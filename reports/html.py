"""A self-contained HTML page: every table and plot of a report in one file.

Nothing is fetched to view it: the style sheet and the small table-sorting script are
inline, the plots are PNGs embedded as ``data:image/png;base64`` URIs, and the page links
to nothing. Top to bottom: the title and where the numbers come from; then per table
(one per recipe, or the published table): the leaderboard (arrows green ↑ / red ↓, ``*``
significant, best in bold; a click on a column header sorts the method rows, teacher and
vanilla stay on top), its legend, test and notes, failed runs, the cost table, and the
plots. Once loaded, the page sets ``data-images-loaded="k/n"`` on ``<body>``: how many of
its n images decoded (what the browser test reads).
"""
from __future__ import annotations

import base64
from html import escape
from typing import Any

from kdbench.reports.cost import COLUMNS, CostTable, cost_cells, teacher_line
from kdbench.reports.leaderboard import Table
from kdbench.reports.render import arrow_text, failure_lines, format_cell, headers, legend_lines
from kdbench.reports.summary import summary_texts

PLOT_CAPTIONS = {
    "accuracy_vs_time.png": "Accuracy vs wall time per run: one point per method.",
    "accuracy_vs_params.png": "Accuracy vs parameters at inference: one point per method and pair.",
    "pair_bars.png": "Per pair: mean over seeds, error bars one std.",
    "training_curves.png": "Training curves: test top-1 per epoch, mean over seeds.",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { border-bottom: 2px solid #444; cursor: pointer; background: #f6f6f6; }
td:first-child, th:first-child { text-align: left; }
tbody.fixed tr:last-child td { border-bottom: 2px solid #999; }
.up { color: #1a7f37; font-weight: bold; } .down { color: #cf222e; font-weight: bold; }
.caption, .notes { color: #555; font-size: 0.9em; }
figure { display: inline-block; vertical-align: top; margin: 0.5em 1em 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
"""

SCRIPT = """
window.addEventListener("load", function () {  // for checks: how many plots decoded
  var ok = 0;
  for (var i = 0; i < document.images.length; i++) {
    if (document.images[i].complete && document.images[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + document.images.length);
});
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.querySelector("tbody.methods");
      var rows = Array.prototype.slice.call(body.rows);
      var key = function (r) { var v = parseFloat(r.cells[col].textContent.replace("\u2212", "-"));
                               return isNaN(v) ? null : v; };
      var dir = th.dataset.dir === "desc" ? 1 : -1;
      th.dataset.dir = dir === 1 ? "asc" : "desc";
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (col === 0) { return dir * (a.cells[0].textContent < b.cells[0].textContent ? 1 : -1); }
        if (x === null) { return 1; } if (y === null) { return -1; }
        return dir * (y - x);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _cell_html(cell: Any) -> str:
    text = escape(format_cell(cell))
    arrow = arrow_text(cell)
    if arrow in ("↑", "↑*", "↓", "↓*"):
        cls = "up" if arrow.startswith("↑") else "down"
        text = text.replace(f" {arrow}", f' <span class="{cls}">{arrow}</span>', 1)
    return f"<b>{text}</b>" if cell.best else text


def _row(cells: list[str], head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def leaderboard_html(table: Table) -> list[str]:
    fixed = [r for r in table.rows if r in ("teacher", table.base)]
    methods = [r for r in table.rows if r not in fixed]

    def line(row: str) -> str:
        return _row([escape(row), *(_cell_html(table.cell(row, c)) for c in table.columns),
                     *(escape(t) for t in summary_texts(table, row))])

    out = [f"<h2>{escape(table.title)}</h2>"]
    if table.caption:
        out.append(f'<p class="caption">{escape(table.caption)}</p>')
    out += ['<table class="sortable">', "<thead>" + _row([escape(h) for h in headers(table)], head=True) + "</thead>",
            '<tbody class="fixed">' + "".join(line(r) for r in fixed) + "</tbody>",
            '<tbody class="methods">' + "".join(line(r) for r in methods) + "</tbody>", "</table>"]
    notes = [*legend_lines(table), *table.notes]
    out.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    failures = failure_lines(table, "")
    if failures:
        out.append(f"<p>{escape(failures[0])}</p><ul>" + "".join(f"<li>{escape(f)}</li>" for f in failures[1:])
                   + "</ul>")
    return out


def cost_html(cost: CostTable) -> list[str]:
    body = "".join(_row([escape(name), *(escape(t) for t in cost_cells(values))]) for name, values in cost.rows)
    notes = [teacher_line(cost), *cost.notes]
    return [f"<h3>{escape(cost.title)}</h3>", f'<p class="caption">{escape(cost.caption)}</p>',
            "<table><thead>" + _row(["method", *(escape(c) for c in COLUMNS)], head=True) + f"</thead><tbody>{body}"
            "</tbody></table>", '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"]


def plots_html(plots: dict[str, bytes]) -> list[str]:
    out = []
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        caption = PLOT_CAPTIONS.get(name, name)
        out.append(f'<figure><img alt="{escape(name)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{escape(caption)}</figcaption></figure>")
    return out


def render_html(title: str, source: str, sections: list[dict[str, Any]], notes: list[str]) -> str:
    """The page: ``sections`` hold ``table``, optional ``cost`` and ``plots``."""
    body = [f"<h1>{escape(title)}</h1>", f'<p class="caption">numbers from {escape(source)}</p>']
    body += [f'<p class="notes">{escape(n)}</p>' for n in notes]
    for section in sections:
        body += ["<section>", *leaderboard_html(section["table"])]
        if section.get("cost") is not None:
            body += cost_html(section["cost"])
        if section.get("plots"):
            body += ["<h3>Plots</h3>", *plots_html(section["plots"])]
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n")
