"""The teacher cache: frozen teacher models for student runs, trained on demand.

A teacher is the ``vanilla`` run of the teacher architecture with the grid's
``teacher_seed`` and the dataset's recipe (``RunSpec.teacher_spec``), so it is trained once
per (dataset, architecture, recipe, seed), stored like every other run and reused by every
student of the grid; its run key is part of each student's key. A user-supplied checkpoint
replaces training: its SHA-256 becomes the teacher key, and its accuracy is measured once.
Loaded teachers are kept per process (the inline runner trains many students in a row).

The cache knows nothing of sessions or runs: it is given how to load a dataset and how to
train a teacher (``kdbench.run.Session`` passes its own ``execute``), so the dependency
goes one way only (run → teachers).

Every weights file is read with ``weights_only=True`` and checked against the architecture
(:mod:`kdbench.teachers.checkpoints`): a file that cannot be used is a
:class:`TeacherUnavailable` naming the teacher, the file and what to do, in one bounded
message (it becomes the failed rows' error).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from kdbench.data import EvalData, ImageData
from kdbench.models import create_model
from kdbench.spec import ResolvedSpec, RunSpec
from kdbench.store import MODEL
from kdbench.teachers.checkpoints import CheckpointError, load_checkpoint
from kdbench.train import topk_correct

if TYPE_CHECKING:
    from kdbench.train import Env

log = logging.getLogger(__name__)


class TeacherUnavailable(RuntimeError):
    """The teacher could not be trained or loaded."""


class TeacherCache:
    """Frozen teachers on ``env``'s device, by teacher key.

    ``load_dataset(name)`` returns a loaded dataset; ``train(spec)`` executes a teacher's
    training run and returns its result row (status ``done``, ``failed``, or ``running``
    when another process holds it, in which case the cache waits and asks again).
    """

    def __init__(self, env: "Env", load_dataset: Callable[[str], ImageData],
                 train: Callable[[RunSpec], dict[str, Any]], wait_seconds: float = 10.0):
        self.env = env
        self.load_dataset = load_dataset
        self.train = train
        self.wait_seconds = wait_seconds
        self._models: dict[str, tuple[nn.Module, dict[str, Any]]] = {}

    def get(self, spec: RunSpec, resolved: ResolvedSpec) -> tuple[nn.Module, dict[str, Any]]:
        """The frozen teacher of ``spec`` and its row (``top1_last`` is its test accuracy)."""
        key = resolved.teacher_key
        if key is None or spec.teacher is None:
            raise ValueError(f"run {spec.method} {spec.pair} has no teacher")
        if key not in self._models:
            env = self.env
            data = self.load_dataset(spec.dataset).for_recipe(spec.recipe)  # the recipe's normalisation
            model = create_model(spec.teacher, data.num_classes, data.input_size[0], data.input_size[1])
            if spec.teacher_ckpt:
                load_supplied(model, spec)
                row: dict[str, Any] = {"status": "done", "source": str(spec.teacher_ckpt)}
            else:
                row = self._trained(spec.teacher_spec())
                load_trained(model, spec, Path(row["run_dir"]))
            model.to(env.torch_device, memory_format=spec.recipe.memory_format).eval().requires_grad_(False)
            if spec.teacher_ckpt:
                top1, top5 = evaluate_plain(model, data, env, spec.recipe.memory_format)
                row.update(top1_last=top1, top1_best=top1, top5_last=top5, top5_best=top5)
                log.info("teacher %s from %s: top1 %.2f on %s", spec.teacher, spec.teacher_ckpt, row["top1_last"],
                         spec.dataset)
            self._models[key] = (model, row)
        return self._models[key]

    def _trained(self, tspec: RunSpec | None) -> dict[str, Any]:
        assert tspec is not None
        while True:
            row = self.train(tspec)
            if row["status"] == "done":
                return row
            if row["status"] != "running":
                raise TeacherUnavailable(f"teacher {tspec.student} ({tspec.dataset}, seed {tspec.seed}) "
                                         f"{row['status']}: {row.get('error') or row.get('reason')}")
            log.info("teacher %s is being trained by another process; waiting", tspec.student)
            time.sleep(self.wait_seconds)


def load_supplied(model: nn.Module, spec: RunSpec) -> None:
    """Load the user's checkpoint ``spec.teacher_ckpt`` into ``model`` (architecture
    ``spec.teacher``), or raise :class:`TeacherUnavailable` saying what does not fit."""
    try:
        load_checkpoint(model, spec.teacher_ckpt, arch=spec.teacher, dataset=spec.dataset, what="teacher checkpoint")
    except CheckpointError as exc:
        raise TeacherUnavailable(f"teacher {spec.teacher}: {exc}") from None


def load_trained(model: nn.Module, spec: RunSpec, run_dir: Path) -> None:
    """Load the weights kdbench saved for the trained teacher in ``run_dir`` into
    ``model``; a truncated, unreadable or mismatching file is a :class:`TeacherUnavailable`
    naming the teacher, the file and the way out (delete the run folder, re-run)."""
    path = run_dir / MODEL
    what = f"teacher {spec.teacher} ({spec.dataset}, seed {spec.teacher_seed}): its trained weights"
    try:
        load_checkpoint(model, path, arch=spec.teacher, dataset=spec.dataset, what=what)
    except CheckpointError as exc:
        raise TeacherUnavailable(f"{str(exc).rstrip('.')}. To train this teacher again, delete its run folder "
                                 f"{run_dir} and re-run the same command.") from None


@torch.no_grad()
def evaluate_plain(model: nn.Module, data: ImageData, env: "Env",
                   memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """Top-1 and top-5 (%) of a plain forward on the test split."""
    model.eval()
    ev = EvalData(data.test_images, data.test_labels, data.mean, data.std, env.torch_device, env.eval_batch_size,
                  memory_format)
    hits = [topk_correct(model(b.x).float(), b.y) for b in ev]
    return tuple(100.0 * sum(int(h[k]) for h in hits) / len(ev) for k in (0, 1))  # type: ignore[return-value]


def catalogue(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Teachers available in a store: the done ``vanilla`` runs that some student used as
    teacher (dataset, architecture, seed, recipe, key, accuracy)."""
    used = {r.get("teacher_key") for r in rows if r.get("teacher_key")}
    return [
        {"dataset": r["dataset"], "arch": r["student"], "seed": r["seed"], "key": r["run_key"],
         "epochs": r["recipe"]["epochs"], "top1": r.get("top1_last"), "model": str(Path(r["run_dir"]) / MODEL)}
        for r in rows if r.get("method") == "vanilla" and r.get("status") == "done" and r.get("run_key") in used
    ]
