"""Linear-probe transfer evaluation (the CRD paper's §4.3 and the HKD paper's Table 4).

A finished student is frozen; its pooled embeddings (``Outputs.embedding``) are extracted on
the train and test splits of another dataset, whose images are resized to the student's
input size (bilinear, antialiased) and normalised with the student's own training
statistics (its source dataset's mean/std); a linear classifier is trained on the train
embeddings and its top-1 on the test embeddings is the run's probe accuracy. Over seeds,
this gives mean ± std per method and pair, like every leaderboard cell.

The classifier (no reference code exists; CRD and HKD describe only "a linear classifier on
the frozen features"): multinomial logistic regression on the embeddings standardised with
the train split's per-dimension mean and std, weights and bias from zero, full-batch L-BFGS
(strong Wolfe line search, ``max_iter`` iterations) on the mean cross-entropy plus
``weight_decay/2 · ‖W‖²``. Deterministic: the same run and target give the same number.

Cached like every run: the result is written atomically to
``<run folder>/probes/<target>-<key>.json`` (:func:`probe_path`; characters other than
letters, digits, ``_.-`` in the target's name, e.g. the path of ``imagefolder:<path>``,
become ``_``), ``key`` hashing the target's full name, the probe options and
:data:`PROBE_VERSION`; a probe that exists is read back, never recomputed.

:func:`probe_store` probes every done run of a results folder on one source dataset
(teachers and vanilla students included: Table 4 lists them). ``kdbench probe`` runs it and
prints the leaderboard of the probe accuracies; ``kdbench report --metric probe:<target>``
renders them in every report format (:mod:`kdbench.reports.probes` reads the cache files).
``python -m kdbench.probe ARGS`` is ``kdbench probe ARGS``.
"""
from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import ImageData
from kdbench.models import create_model
from kdbench.spec import short_hash
from kdbench.store import MODEL, Store, atomic_write_json, read_json

log = logging.getLogger(__name__)

#: bump when the probe's computation changes (part of every probe key)
PROBE_VERSION = 1


@dataclass(frozen=True)
class ProbeConfig:
    """Options of the linear probe (all part of its cache key)."""

    weight_decay: float = 5e-4
    max_iter: int = 100
    batch_size: int = 256  # feature extraction only; does not change results

    def key_fields(self) -> dict[str, Any]:
        return {"weight_decay": self.weight_decay, "max_iter": self.max_iter}


def load_student(run_dir: Path, device: torch.device | str = "cpu") -> nn.Module:
    """The finished student of ``run_dir`` (its ``model.pt``, read weights-only), frozen."""
    saved = torch.load(Path(run_dir) / MODEL, map_location="cpu", weights_only=True)
    c, h = int(saved["input_size"][0]), int(saved["input_size"][1])
    model = create_model(saved["arch"], int(saved["num_classes"]), c, h)
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def extract_features(model: nn.Module, images: Tensor, mean: Iterable[float], std: Iterable[float], size: int,
                     batch_size: int = 256) -> Tensor:
    """``N × D`` float32 embeddings (CPU) of uint8 ``N × C × H × W`` images resized to
    ``size × size`` and normalised with ``mean``/``std``."""
    device = next(model.parameters()).device
    m = torch.tensor(list(mean), device=device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), device=device).view(1, -1, 1, 1)
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device).float() / 255.0
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(model.forward_taps((x - m) / s).embedding.float().flatten(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def fit_linear_probe(features: Tensor, labels: Tensor, num_classes: int, cfg: ProbeConfig) -> nn.Module:
    """Standardisation + ``Linear(D → classes)`` fitted by full-batch L-BFGS (module doc)."""
    mu = features.mean(0)
    sd = features.std(0, unbiased=False).clamp_min(1e-6)
    x = (features - mu) / sd
    linear = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=cfg.max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), labels) + 0.5 * cfg.weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return nn.Sequential(_Standardise(mu, sd), linear).requires_grad_(False)


class _Standardise(nn.Module):
    def __init__(self, mu: Tensor, sd: Tensor):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mu) / self.sd


def probe_key(target: str, cfg: ProbeConfig) -> str:
    return short_hash({"target": target, "probe": cfg.key_fields(), "version": PROBE_VERSION})


#: Folder of a run's probe cache files.
PROBES = "probes"


def probe_file_prefix(target: str) -> str:
    """The file-name prefix of ``target``'s probes (``imagefolder:/a/b`` -> ``imagefolder__a_b``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", target)


def probe_path(run_dir: str | Path, target: str, key: str) -> Path:
    """``<run_dir>/probes/<target>-<key>.json`` (the target's name made file-safe)."""
    return Path(run_dir) / PROBES / f"{probe_file_prefix(target)}-{key}.json"


def probe_run(run_dir: Path, source_mean: Iterable[float], source_std: Iterable[float], target: ImageData,
              cfg: ProbeConfig = ProbeConfig(), device: torch.device | str = "cpu") -> dict[str, Any]:
    """The probe of one finished run on ``target`` (read from its cache file if present)."""
    path = probe_path(run_dir, target.name, probe_key(target.name, cfg))
    cached = read_json(path)
    if isinstance(cached, dict) and "probe_top1" in cached:
        return cached
    model = load_student(run_dir, device)
    size = int(torch.load(Path(run_dir) / MODEL, map_location="cpu", weights_only=True)["input_size"][1])
    feats = {split: extract_features(model, images, source_mean, source_std, size, cfg.batch_size)
             for split, images in (("train", target.train_images), ("test", target.test_images))}
    clf = fit_linear_probe(feats["train"], target.train_labels, target.num_classes, cfg)
    with torch.no_grad():
        top1 = (clf(feats["test"]).argmax(1) == target.test_labels).float().mean().item() * 100.0
    row = {"probe_top1": round(top1, 4), "target": target.name, "num_train": len(target.train_labels),
           "num_test": len(target.test_labels), "feature_dim": feats["train"].shape[1], "image_size": size,
           "probe": cfg.key_fields(), "probe_version": PROBE_VERSION, "probe_key": probe_key(target.name, cfg)}
    atomic_write_json(path, row)
    log.info("probe %s on %s: %.2f %%", run_dir, target.name, top1)
    return row


def probe_store(out: str | Path, dataset: str, target: ImageData, cfg: ProbeConfig = ProbeConfig(),
                device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Probe every done run on ``dataset`` in the results folder ``out``: one row per run
    (its identity and ``probe_top1``). Runs whose student is not a zoo model are left out."""
    from kdbench.datasets import get_dataset
    from kdbench.registry import MODELS

    source = get_dataset(dataset)
    rows = []
    for row in Store(out).iter_results():
        if row.get("dataset") != dataset or row.get("status") != "done":
            continue
        if not (Path(row["run_dir"]) / MODEL).is_file() or row.get("student") not in MODELS:
            log.warning("probe: %s has no zoo student weights; left out", row["run_dir"])
            continue
        probe = probe_run(Path(row["run_dir"]), source.mean, source.std, target, cfg, device)
        rows.append({k: row.get(k) for k in ("method", "teacher", "student", "seed", "run_dir")} | probe)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m kdbench.probe ARGS``: the same as ``kdbench probe ARGS``."""
    from kdbench.cli import main as cli_main

    return cli_main(["probe", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
