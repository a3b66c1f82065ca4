"""The engine end to end on `digits`: resume after SIGKILL, idempotent re-runs, failed and
skipped rows, teachers trained once or supplied, CPU flags."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TESTS, kdbench_cli
from kdbench import cli as kdbench_main
from kdbench.store import Store

FAST = ["--dataset", "digits", "--seeds", "1", "--no-progress", "--batch-size", "128", "--teacher-epochs", "2"]


def rows(out: Path) -> list[dict]:
    return list(Store(out).iter_results())


def only(rs: list[dict], **match) -> dict:
    found = [r for r in rs if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_sigkill_mid_training_resumes_and_matches_an_uninterrupted_run(tmp_path):
    args = [*FAST, "--pairs", "resnet8->resnet8", "--methods", "kd", "--epochs", "5"]
    kdbench_cli("run", *args, "--out", str(tmp_path / "a"), check=True)

    out_b = tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": str(TESTS / "toy_plugins")}
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", *args, "--out", str(out_b)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        metrics = list(out_b.glob("runs/digits/resnet8__resnet8/kd/*/metrics.jsonl"))
        if metrics and len(metrics[0].read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGKILL)
            killed_after = len(metrics[0].read_text().splitlines())
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_after is not None and killed_after < 5, "the run must be killed mid-training"
    assert not list(out_b.glob("runs/digits/resnet8__resnet8/kd/*/result.json"))

    kdbench_cli("run", *args, "--out", str(out_b), check=True)
    a = only(rows(tmp_path / "a"), method="kd")
    b = only(rows(out_b), method="kd")
    assert b["resumed_from"] is not None and b["resumed_from"][1] >= 2
    assert a["resumed_from"] is None
    assert b["top1_last"] == a["top1_last"] and b["top1_best"] == a["top1_best"]
    wa = torch.load(Path(a["run_dir"]) / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(Path(b["run_dir"]) / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = (Path(a["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    mb = (Path(b["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k not in ("wall_time", "eval_time_s")} for x in lines]
    assert strip(ma) == strip(mb)


def test_rerunning_a_finished_grid_trains_nothing(tmp_path, monkeypatch, capsys):
    args = ["run", *FAST, "--pairs", "resnet8->resnet8", "--epochs", "1", "--methods", "kd", "--out", str(tmp_path)]
    assert kdbench_main.main(args) == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("result.json")}
    assert len(before) == 3  # teacher (vanilla resnet8, 2 epochs), vanilla resnet8 (1 epoch), kd
    from kdbench import train

    def refuse(self):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train.Trainer, "fit", refuse)
    capsys.readouterr()
    assert kdbench_main.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("result.json")} == before
    assert "kd" in capsys.readouterr().out  # the leaderboard is still printed


def test_nonfinite_loss_fails_the_run_and_the_grid_goes_on_and_skips_are_rows(tmp_path):
    proc = kdbench_cli("run", *FAST, "--pairs", "resnet8->resnet8", "--epochs", "2", "--import", "kdbench_toys",
                       "--methods", "toy_nan,toy_decline", "--out", str(tmp_path))
    assert proc.returncode == 1, proc.stderr  # failed runs make the exit status non-zero
    rs = rows(tmp_path)
    nan = only(rs, method="toy_nan")
    assert nan["status"] == "failed" and "non-finite" in nan["error"] and "epoch 2" in nan["error"]
    assert only(rs, method="kd")["status"] == "done"
    dec = only(rs, method="toy_decline")
    assert dec["status"] == "skipped" and "serves no pair" in dec["reason"]
    assert "fail" in proc.stdout and "toy_decline skipped on resnet8->resnet8" in proc.stdout
    assert nan["imports"] == ["kdbench_toys"]


def test_teacher_is_trained_once_per_grid_and_reused(tmp_path):
    args = ["run", *FAST, "--pairs", "resnet14->resnet8,resnet14->resnet14", "--epochs", "1", "--methods", "kd",
            "--out", str(tmp_path)]
    assert kdbench_main.main(args) == 0
    rs = rows(tmp_path)
    teacher_runs = [r for r in rs if r["method"] == "vanilla" and r["student"] == "resnet14" and r["epochs"] == 2]
    assert len(teacher_runs) == 1  # one teacher (2 epochs) for both pairs
    kd_rows = [r for r in rs if r["method"] == "kd"]
    assert len(kd_rows) == 2 and {r["teacher_key"] for r in kd_rows} == {teacher_runs[0]["run_key"]}
    assert all(r["teacher_top1"] == teacher_runs[0]["top1_last"] for r in kd_rows)


def test_a_supplied_teacher_checkpoint_is_used_instead_of_training(tmp_path):
    from kdbench.models import create_model

    torch.manual_seed(1)
    ckpt = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet14", 10).state_dict()}, ckpt)  # RepDistiller's format
    args = ["run", *FAST, "--pairs", "resnet14->resnet8", "--epochs", "1", "--methods", "kd",
            "--teacher-ckpt", f"resnet14={ckpt}", "--out", str(tmp_path / "out")]
    assert kdbench_main.main(args) == 0
    rs = rows(tmp_path / "out")
    assert not [r for r in rs if r["student"] == "resnet14"], "no teacher may be trained"
    kd = only(rs, method="kd")
    assert kd["teacher_key"].startswith("file-") and kd["teacher_ckpt"] == str(ckpt)
    assert kd["teacher_top1"] is not None and 0 <= kd["teacher_top1"] <= 100


def test_amp_and_channels_last_work_on_cpu_and_are_part_of_the_run_key(tmp_path):
    base = ["run", *FAST, "--pairs", "resnet8->resnet8", "--epochs", "1", "--methods", "kd", "--device", "cpu"]
    assert kdbench_main.main([*base, "--amp", "--channels-last", "--out", str(tmp_path)]) == 0
    kd = only(rows(tmp_path), method="kd")
    assert kd["status"] == "done" and kd["recipe"]["amp"] is True and kd["recipe"]["channels_last"] is True
    assert kd["memory_format"] == "channels_last" and kd["device"] == "cpu"
    from kdbench.grid import build_grid
    from kdbench.run import resolve

    def kd_key(**flags):
        grid = build_grid(dataset="digits", methods="kd", pairs="resnet8->resnet8", seeds="1", epochs=1, **flags)
        return resolve([s for s in grid.expand() if s.method == "kd"][0]).key

    plain = kd_key()
    assert kd["run_key"] not in (plain, kd_key(recipe={"amp": True}), kd_key(recipe={"channels_last": True}))
    assert kd_key(recipe={"channels_last": True}) != plain != kd_key(recipe={"amp": True})


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code = kdbench_main.main(["run", *FAST, "--device", "cuda", "--epochs", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--device cuda is not available here" in err and "cpu" in err


def test_main_stage_sees_the_same_batches_whether_or_not_a_pre_stage_ran(tmp_path, monkeypatch):
    """At one seed, FitNets' main stage after a hint stage draws KD's orders and crops."""
    from kdbench.column import Column
    from kdbench.data import TrainData

    seen: dict[tuple[str, str], list[torch.Tensor]] = {}
    where: list[tuple[str, str]] = []
    real_epoch, real_batch = Column.train_epoch, TrainData.base_batch

    def spy_epoch(self, group, progress):
        m = group[0]
        where.append((m.method.name, m.phase_list[m.next_phase].name))
        try:
            return real_epoch(self, group, progress)
        finally:
            where.pop()

    def spy_batch(self, idx_cpu, gen):
        batch = real_batch(self, idx_cpu, gen)
        if where:
            seen.setdefault(where[-1], []).append(batch.x.detach().clone())
        return batch

    monkeypatch.setattr(Column, "train_epoch", spy_epoch)
    monkeypatch.setattr(TrainData, "base_batch", spy_batch)
    args = [*FAST, "--pairs", "resnet8->resnet8", "--methods", "fitnets", "--epochs", "1",
            "--set", "fitnets.hint_phase_epochs=1", "--out", str(tmp_path)]
    assert kdbench_main.main(["run", *args]) == 0
    kd, hint, main = seen[("kd", "main")], seen[("fitnets", "hint")], seen[("fitnets", "main")]
    assert len(kd) == len(main) == len(hint) > 1
    assert all(torch.equal(a, b) for a, b in zip(kd, main))
    assert not torch.equal(hint[0], main[0])  # the pre-stage has a stream of its own


def test_a_pre_stage_named_main_is_refused():
    from harness import build
    from kdbench.method import Phase
    from kdbench.train import phase_plan

    method = build("fitnets", overrides={"hint_phase_epochs": 1}).method
    method.phases = lambda: [Phase(name="main", epochs=1, loss=method.loss)]
    with pytest.raises(ValueError, match="unique names other than 'main'"):
        phase_plan(method, 2)
