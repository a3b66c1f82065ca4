"""The cost table: what each method of a grid cost to train and costs at inference.

One table per students' recipe (like the leaderboards), one row per method (vanilla, the
baseline, then the others), from the done rows of ``result.json``:

* runs done, wall time per run (mean over the method's runs: seeds and pairs) and summed
  over the grid (``wall_time_s``);
* student parameters (``student_params``), extra trainable parameters during training
  (``extra_params``: connectors, heads), parameters at inference (``inference_params``;
  ``+k`` when more than the student), values stored for inference
  (``inference_stored_values``, e.g. CNN2GNN's training features) and inference time per
  image (``infer_ms_per_image``, mean over runs) — where the rows carry them; a number
  that differs between pairs is shown as its range ``min–max``;
* a note on runs trained in fused columns (``own_time_s`` + ``shared_time_s`` make their
  wall time: comparable with separate runs);
* the teacher trainings the grid cost: the distinct teachers its students learnt from
  that were trained in this folder (their runs found by the teacher key), with their wall
  time, and how many came from supplied checkpoints instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdbench.reports.leaderboard import REFERENCE_METHOD, STUDENT_METHOD, ordered_methods, recipe_groups

COLUMNS = ["runs", "wall s/run", "wall s total", "student params", "extra train params", "inference params",
           "stored values", "infer ms/img"]


@dataclass
class CostTable:
    """Rows of raw numbers (``None`` where unknown; a (min, max) tuple where pairs differ)."""

    title: str
    caption: str
    rows: list[tuple[str, dict[str, Any]]]
    teachers_trained: int = 0
    teachers_wall_s: float = 0.0
    teachers_from_checkpoints: int = 0
    notes: list[str] = field(default_factory=list)


def _span(values: list[Any]) -> Any:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    return lo if lo == hi else (lo, hi)


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(vals) / len(vals) if vals else None


def _method_costs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r.get("status") == "done"]
    walls = [r.get("wall_time_s") for r in done]
    extra_inference = [r["inference_params"] - r["student_params"] for r in done
                       if isinstance(r.get("inference_params"), int) and isinstance(r.get("student_params"), int)]
    return {"runs": len(done), "runs_total": len(rows), "wall s/run": _mean(walls),
            "wall s total": sum(float(w) for w in walls if isinstance(w, (int, float))) if done else None,
            "student params": _span([r.get("student_params") for r in done]),
            "extra train params": _span([r.get("extra_params") for r in done]),
            "inference params": _span([r.get("inference_params") for r in done]),
            "extra inference params": _span(extra_inference),
            "stored values": _span([r.get("inference_stored_values") for r in done]),
            "infer ms/img": _mean([r.get("infer_ms_per_image") for r in done])}


def build_costs(records: list[dict[str, Any]], dataset: str, baseline: str = REFERENCE_METHOD) -> list[CostTable]:
    """One :class:`CostTable` per recipe with distillation runs among ``records`` (result
    rows as dicts) of ``dataset``."""
    records = [r for r in records if r.get("dataset") == dataset]
    by_key = {r.get("run_key"): r for r in records if r.get("run_key")}
    tables = []
    for rows, recipe in recipe_groups(records):
        distill = [r for r in rows if r.get("teacher") or r.get("own_student")]
        students = {r.get("student") for r in rows if r.get("teacher")}
        teacher_keys = {r.get("teacher_key") for r in rows if r.get("teacher") and r.get("teacher_key")}
        vanilla = [r for r in rows if not r.get("teacher") and r.get("method") == STUDENT_METHOD
                   and r.get("student") in students and r.get("run_key") not in teacher_keys]
        methods = [STUDENT_METHOD] + ordered_methods((r["method"] for r in distill), None, baseline)
        table_rows = [(m, _method_costs(vanilla if m == STUDENT_METHOD else [r for r in distill if r["method"] == m]))
                      for m in methods]
        trained = [by_key[k] for k in teacher_keys if k in by_key and by_key[k].get("status") == "done"]
        from_ckpt = {r.get("teacher_key") for r in rows if r.get("teacher") and r.get("teacher_ckpt")}
        table = CostTable(title=f"{dataset}: cost per method", caption=f"runs with {recipe}",
                          rows=table_rows, teachers_trained=len(trained),
                          teachers_wall_s=sum(float(r.get("wall_time_s") or 0.0) for r in trained),
                          teachers_from_checkpoints=len(from_ckpt))
        fused = [r for r in distill + vanilla if r.get("status") == "done" and r.get("fused")]
        if fused:
            own = sum(float(r.get("own_time_s") or 0.0) for r in fused)
            shared = sum(float(r.get("shared_time_s") or 0.0) for r in fused)
            table.notes.append(f"{len(fused)} run(s) trained in fused columns (--fuse): their wall time is their own "
                               f"compute plus a share of the column's batches and teacher forwards ({own:.1f} s own + "
                               f"{shared:.1f} s shared in total)")
        missing = len(teacher_keys) - len(trained) - len(from_ckpt)
        if missing > 0:
            table.notes.append(f"{missing} teacher(s) not trained in this folder (or not finished): not counted")
        tables.append(table)
    return tables


def _count(n: Any) -> str:
    if n is None:
        return "–"
    if isinstance(n, tuple):
        return f"{_count(n[0])}–{_count(n[1])}"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(int(n))


def cost_cells(values: dict[str, Any]) -> list[str]:
    """One cost row as text in :data:`COLUMNS` order."""
    runs = f"{values['runs']}" + (f"/{values['runs_total']}" if values["runs_total"] != values["runs"] else "")
    inference = _count(values["inference params"])
    extra = values["extra inference params"]
    if extra not in (None, 0):
        inference += f" (+{_count(extra)})"
    f2 = (lambda v: "–" if v is None else f"{v:.2f}")
    f1 = (lambda v: "–" if v is None else f"{v:.1f}")
    return [runs, f1(values["wall s/run"]), f1(values["wall s total"]), _count(values["student params"]),
            _count(values["extra train params"]), inference, _count(values["stored values"]),
            f2(values["infer ms/img"])]


def teacher_line(table: CostTable) -> str:
    text = f"Teacher trainings: {table.teachers_trained} ({table.teachers_wall_s:.1f} s)"
    if table.teachers_from_checkpoints:
        text += f"; {table.teachers_from_checkpoints} teacher(s) from supplied checkpoints (no training)"
    return text + "."
