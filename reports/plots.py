"""Report figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas (no
pyplot, no display, no global state):

* accuracy vs wall time — one point per method: its mean accuracy over the pairs against
  its mean wall time per run (the performance–efficiency figure of the papers);
* accuracy vs parameters at inference — one point per (method, pair) cell;
* per-pair bars — one group per pair, one bar per method (vanilla first), error bars =
  std over seeds (published tables: their printed std);
* training curves — test top-1 per epoch from each run's ``metrics.jsonl``, mean over the
  seeds of a cell, one panel per pair (at most :data:`MAX_PANELS`), one line per method.

:func:`report_plots` returns the figures a table supports, by file name.
"""
from __future__ import annotations

import io
import logging
import math

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdbench.reports.leaderboard import Table, probe_target
from kdbench.reports.loader import read_curve

log = logging.getLogger(__name__)

MAX_PANELS = 9
DPI = 100


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _rows(table: Table) -> list[str]:
    return [r for r in table.rows if r != "teacher"]


def _colors(table: Table) -> dict[str, tuple]:
    """One colour per row, the same in every figure: tab20's ten dark hues first, then
    its ten light ones."""
    cmap = colormaps["tab20"]
    return {row: cmap((2 * k) % 20 + (k // 10) % 2) for k, row in enumerate(_rows(table))}


def _legend_below(ax, n: int) -> None:
    ax.legend(fontsize=7, ncol=min(6, max(1, n)), loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def accuracy_vs_time(acc: Table, time: Table) -> bytes | None:
    points = []
    for row in _rows(acc):
        both = [(acc.cell(row, c).mean, time.cell(row, c).mean) for c in acc.columns]
        both = [(a, t) for a, t in both if a is not None and t is not None]
        if both:
            points.append((row, _mean([t for _, t in both]), _mean([a for a, _ in both])))
    if not points:
        return None
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    colors = _colors(acc)
    for row, x, y in points:
        ax.scatter([x], [y], s=30, color=colors[row])
        ax.annotate(row, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("wall time per run (s), mean over pairs and seeds")
    ax.set_ylabel(f"{_metric_label(acc)}, mean over pairs")
    ax.set_title("accuracy vs training time")
    ax.grid(alpha=0.3)
    return _png(fig)


def _metric_label(table: Table) -> str:
    target = probe_target(table.metric)
    if target:
        return f"probe top-1 on {target} (%)"
    return {"best": "top-1 best (%)", "top5": "top-5 (%)"}.get(table.metric, "top-1 (%)")


def accuracy_vs_params(acc: Table) -> bytes | None:
    series = {}
    for row in _rows(acc):
        pts = [(acc.cell(row, c).params, acc.cell(row, c).mean) for c in acc.columns]
        pts = [(p, a) for p, a in pts if p is not None and a is not None]
        if pts:
            series[row] = pts
    if not series:
        return None
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    colors = _colors(acc)
    for row, pts in series.items():
        ax.scatter([p for p, _ in pts], [a for _, a in pts], label=row, s=30, color=colors[row])
    ax.set_xscale("log")
    ax.set_xlabel("parameters at inference (log scale)")
    ax.set_ylabel(_metric_label(acc))
    ax.set_title("accuracy vs parameters (one point per method and pair)")
    _legend_below(ax, len(series))
    ax.grid(alpha=0.3)
    return _png(fig)


def pair_bars(acc: Table) -> bytes | None:
    rows = [r for r in _rows(acc) if any(acc.cell(r, c).mean is not None for c in acc.columns)]
    if not rows:
        return None
    width = 0.8 / len(rows)
    fig = Figure(figsize=(max(6.0, 1.2 * len(acc.columns) * max(1.0, len(rows) / 6)), 4.5))
    ax = fig.subplots()
    lows, colors = [], _colors(acc)
    for i, row in enumerate(rows):
        cells = [acc.cell(row, c) for c in acc.columns]
        means = [c.mean if c.mean is not None else math.nan for c in cells]
        errs = [c.std if c.std is not None else 0.0 for c in cells]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(cells))]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=row, color=colors[row])
        lows += [m - e for m, e in zip(means, errs) if not math.isnan(m)]
    ax.set_xticks(range(len(acc.columns)), acc.columns, rotation=30 if len(acc.columns) > 1 else 0,
                  ha="right" if len(acc.columns) > 1 else "center", fontsize=8)
    ax.set_ylim(bottom=max(0.0, min(lows) - 5))
    ax.set_ylabel(_metric_label(acc))
    ax.set_title("per pair: mean ± std over seeds")
    _legend_below(ax, len(rows))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _mean_curve(run_dirs: list[str]) -> list[tuple[int, float]]:
    by_epoch: dict[int, list[float]] = {}
    for d in run_dirs:
        for epoch, value in read_curve(d):
            by_epoch.setdefault(epoch, []).append(value)
    return [(e, sum(v) / len(v)) for e, v in sorted(by_epoch.items())]


def training_curves(acc: Table) -> bytes | None:
    columns = acc.columns[:MAX_PANELS]
    curves = {(r, c): _mean_curve(acc.cell(r, c).run_dirs) for r in _rows(acc) for c in columns}
    if not any(curves.values()):
        return None
    if len(acc.columns) > MAX_PANELS:
        log.info("training curves: the first %d of %d pairs", MAX_PANELS, len(acc.columns))
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = _colors(acc)
    for k, col in enumerate(columns):
        ax = axes[k // ncols][k % ncols]
        for row in _rows(acc):
            pts = curves[(row, col)]
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], label=row, linewidth=1.2, color=colors[row])
        ax.set_title(col, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    for k in range(len(columns), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=min(6, len(labels)), loc="upper center",
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.suptitle("training curves: mean over seeds")
    return _png(fig)


def report_plots(acc: Table, time: Table | None = None) -> dict[str, bytes]:
    """``{file name: PNG}`` for the figures ``acc`` supports (published tables: bars)."""
    makers = {"pair_bars.png": lambda: pair_bars(acc)}
    if acc.source == "results" and acc.metric != "time":
        makers = {"accuracy_vs_time.png": lambda: accuracy_vs_time(acc, time) if time else None,
                  "accuracy_vs_params.png": lambda: accuracy_vs_params(acc), **makers,
                  "training_curves.png": lambda: training_curves(acc)}
    out = {}
    for name, make in makers.items():
        png = make()
        if png is not None:
            out[name] = png
    return out
