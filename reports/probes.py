"""Linear-probe accuracies as a leaderboard metric: ``kdbench report --metric probe:<target>``.

``kdbench probe`` (:mod:`kdbench.probe`) caches each done run's probe accuracy on a target
dataset in ``<run folder>/probes/<target>-<key>.json``, ``key`` hashing the probe's settings
(weight decay, iterations, version). :func:`with_probes` reads those files (read only) and
gives the report rows with the accuracy under the metric's name, so the leaderboard builds
its cells — mean ± std over seeds, arrows with Welch's tests, best, summary columns — exactly
as for the training metrics:

* only probes of one setting are ever averaged together: a folder holding probes of several
  settings for the target is an error listing them (``probe:<target>@<key>`` picks one);
* a done run without a probe of that setting is left out of its cell (the cell shows
  ``n=k/N``) and a note names how many and the ``kdbench probe`` command that adds them;
  runs of a method that trains its own student (not a zoo model, e.g. ``gnn``) are never
  probed, and the note says so;
* no probe at all for the target is an error with that command.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdbench.reports.leaderboard import probe_setting, probe_target
from kdbench.store import read_json

#: Status given to a done run's row that has no probe: counted nowhere in the cells.
UNPROBED = "unprobed"


def read_probes(run_dir: str | Path | None, target: str) -> dict[str, dict[str, Any]]:
    """``{probe key: cached probe row}`` of one run on ``target`` (valid files only)."""
    from kdbench.probe import PROBES, probe_file_prefix

    if not run_dir:
        return {}
    folder = Path(run_dir) / PROBES
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob(f"{probe_file_prefix(target)}-*.json")):
        row = read_json(path)
        value = row.get("probe_top1") if isinstance(row, dict) else None
        if row and row.get("target") == target and isinstance(value, (int, float)) and math.isfinite(value):
            out[path.stem.rsplit("-", 1)[1]] = row
    return out


def _setting(row: dict[str, Any]) -> str:
    options = row.get("probe") if isinstance(row.get("probe"), dict) else {}
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + f", version {row.get('probe_version')}"


def probe_command(out: str, dataset: str | None, target: str, options: dict[str, Any] | None = None) -> str:
    """The ``kdbench probe`` command line that writes the probes a report lacks (with the
    options of the chosen setting where they are not the defaults)."""
    from kdbench.probe import ProbeConfig

    default = ProbeConfig().key_fields()
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in (options or {}).items() if default.get(k) != v)
    return f"kdbench probe --out {out}{f' --dataset {dataset}' if dataset else ''} --target {target}{flags}"


def with_probes(records: list[dict[str, Any]], metric: str, out: str,
                dataset: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Copies of ``records`` (rows of ``dataset``, or of all datasets) carrying each done
    run's probe accuracy under ``metric`` (``probe:<target>[@key]``), and the report notes
    (see the module docstring). ``out`` is the folder named in hints."""
    target = probe_target(metric)
    if target is None:
        raise ValueError(f"{metric!r} is not a probe metric (probe:<target>)")
    wanted = probe_setting(metric)
    done = [r for r in records if r.get("status") == "done" and (dataset is None or r.get("dataset") == dataset)]
    found = {r.get("run_dir"): read_probes(r.get("run_dir"), target) for r in done}
    settings: dict[str, tuple[str, int]] = {}
    for probes in found.values():
        for key, row in probes.items():
            settings[key] = (_setting(row), settings.get(key, ("", 0))[1] + 1)
    if not settings:
        raise ValueError(f"no linear probes on {target} for the done runs{f' on {dataset}' if dataset else ''} in "
                         f"{out}; run `{probe_command(out, dataset, target)}` first")
    listed = "; ".join(f"{k} ({text}; {n} run(s))" for k, (text, n) in sorted(settings.items()))
    if wanted is not None and wanted not in settings:
        raise ValueError(f"--metric {metric}: no probes with key {wanted!r} on {target}; the runs hold: {listed}")
    if wanted is None and len(settings) > 1:
        raise ValueError(f"the runs hold probes on {target} with {len(settings)} settings, never averaged together: "
                         f"{listed}; choose one with --metric probe:{target}@KEY")
    key = wanted or next(iter(settings))
    chosen = next(p[key] for p in found.values() if key in p)
    rows, unprobed, own = [], 0, set()
    for r in records:
        r = dict(r)
        if r.get("status") == "done" and (dataset is None or r.get("dataset") == dataset):
            probe = found.get(r.get("run_dir"), {}).get(key)
            if probe is not None:
                r[metric] = float(probe["probe_top1"])
            else:
                r["status"] = UNPROBED
                if r.get("own_student"):
                    own.add(str(r.get("method")))
                else:
                    unprobed += 1
        rows.append(r)
    notes = []
    if unprobed:
        notes.append(f"{unprobed} done run(s) have no probe on {target} (left out of their cells); "
                     f"`{probe_command(out, dataset, target, chosen.get('probe'))}` adds them.")
    if own:
        notes.append(f"{', '.join(sorted(own))}: train their own student (not a zoo model), which is not probed.")
    return rows, notes
