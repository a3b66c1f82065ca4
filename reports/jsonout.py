"""JSON of a report's aggregated numbers (``--format json``), for scripts and notebooks.

One object: ``tables`` (per leaderboard: title, caption, dataset, metric, unit, baseline,
test, alpha, columns, and per row its method, cells and summary numbers), ``costs`` (per
cost table: its rows' raw numbers and the teacher trainings) and ``notes``. A cell holds
mean, std, n, expected, the per-seed values, arrow, best, status, the runs still waiting,
Welch's t, df and p with ``significant`` (``null``: not tested), and, with ``--compare``,
the published number and our difference to it. Numbers are not rounded; missing ones are
``null``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from kdbench.reports.cost import CostTable
from kdbench.reports.leaderboard import Cell, Table
from kdbench.reports.summary import summary_headers, summary_values

FORMAT_VERSION = 1


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def cell_json(cell: Cell) -> dict[str, Any]:
    test = cell.test
    return {"mean": cell.mean, "std": cell.std, "n": cell.n, "expected": cell.expected, "values": cell.values,
            "arrow": cell.arrow, "best": cell.best, "status": cell.status, "waiting": cell.waiting,
            "t": _finite(test.t) if test else None, "df": test.df if test else None, "p": test.p if test else None,
            "significant": cell.significant, "params": cell.params, "paper": cell.paper,
            "paper_diff": None if cell.paper is None or cell.mean is None else cell.mean - cell.paper}


def table_json(table: Table) -> dict[str, Any]:
    rows = []
    for row in table.rows:
        rows.append({"name": row, "method": table.row_methods.get(row, row),
                     "cells": {c: cell_json(table.cell(row, c)) for c in table.columns},
                     "summary": {k: v for k, v in summary_values(table, row)}})
    return {"title": table.title, "caption": table.caption, "dataset": table.dataset, "metric": table.metric,
            "unit": table.unit, "source": table.source, "baseline": table.reference, "student_row": table.base,
            "test": None if table.source == "published" or table.metric == "time" else "welch-two-sided",
            "alpha": table.alpha, "columns": table.columns,
            "pairs": {c: list(p) for c, p in table.pairs.items()}, "summary_columns": summary_headers(table),
            "ari_reference": table.summary.ari_ref if table.summary else None, "compare": table.compare or None,
            "rows": rows, "notes": table.notes, "failures": table.failures}


def cost_json(cost: CostTable) -> dict[str, Any]:
    data = asdict(cost)
    data["rows"] = [{"method": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}
                    for name, values in cost.rows]
    return data


def render_json(tables: list[Table], costs: list[CostTable], notes: list[str]) -> str:
    doc = {"kdbench_report": FORMAT_VERSION, "tables": [table_json(t) for t in tables],
           "costs": [cost_json(c) for c in costs], "notes": notes}
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
