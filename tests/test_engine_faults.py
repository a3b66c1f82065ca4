"""Faults and what the engine says about them: the loss term that broke first, failed runs
retried by a plain re-run, one log line per epoch in log files, each run reported once
under one name, Ctrl-C, and checkpoints that are read weights-only."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTS, kdbench_cli
from kdbench import cli as kdbench_main
from kdbench.grid import build_grid
from kdbench.run import resolve, run_dir_of
from kdbench.store import Store

FAST = ["--dataset", "digits", "--seeds", "1", "--no-progress", "--batch-size", "128", "--teacher-epochs", "1",
        "--pairs", "resnet8->resnet8"]


def rows_of(out: Path, method: str) -> list[dict]:
    return [r for r in Store(out).iter_results() if r["method"] == method]


def test_a_nan_names_the_term_that_broke_first_and_a_plain_rerun_retries_the_failed_run(tmp_path):
    args = ["run", *FAST, "--epochs", "2", "--import", "kdbench_toys", "--methods", "toy_nan", "--out", str(tmp_path)]
    assert kdbench_cli(*args).returncode == 1
    [row] = rows_of(tmp_path, "toy_nan")
    # toy_nan multiplies loss_kd by NaN from epoch 2 on; CE turns NaN one step later (poisoned weights)
    assert row["status"] == "failed"
    assert row["error"].startswith("NonFiniteLoss: loss_kd became non-finite first, in phase 'main', epoch 2, step 1")
    assert "then loss_ce" in row["error"]

    # --keep-failed keeps it; a plain re-run after the cause is fixed retries it
    fixed = {"KDBENCH_TOY_NAN_FIXED": "1"}
    assert kdbench_cli(*args, "--keep-failed", env=fixed).returncode == 1
    assert rows_of(tmp_path, "toy_nan")[0]["status"] == "failed"
    proc = kdbench_cli(*args, env=fixed)
    assert proc.returncode == 0, proc.stderr
    [row] = rows_of(tmp_path, "toy_nan")
    assert row["status"] == "done" and row["epochs"] == 2


def test_log_files_get_one_line_per_epoch_and_each_run_is_reported_once_under_one_name(tmp_path):
    proc = kdbench_cli("run", *FAST, "--epochs", "2", "--methods", "kd", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr  # not a terminal: no progress bar, so one INFO line per epoch
    lines = err.splitlines()
    # the teacher (1 epoch) and the vanilla student (2 epochs) are both vanilla runs of resnet8
    for label, epochs in (("teacher resnet8 s0", 1), ("vanilla resnet8 s0", 2), ("kd resnet8->resnet8 s0", 2)):
        per_epoch = [line for line in lines if f"] {label}" not in line and f"{label} | main " in line]
        assert len(per_epoch) == epochs, (label, err)
        assert all("loss" in line and "test" in line and "ETA" in line for line in per_epoch), per_epoch
        announced = [line for line in lines if line.endswith(f"] {label}")]
        finished = [line for line in lines if f"] {label}: done, top1" in line]
        assert len(announced) == 1 and len(finished) == 1, (label, err)
    assert "done vanilla" not in err and "done kd" not in err  # the engine no longer reports a second time


class _Exploit:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hostile file is pickled with protocol 4
def test_an_engine_checkpoint_is_read_weights_only_and_a_hostile_one_is_ignored(tmp_path, capsys):
    out = tmp_path / "out"
    grid = build_grid(dataset="digits", methods="kd", pairs="resnet8->resnet8", seeds="1", epochs=1, teacher_epochs=1,
                      recipe={"batch_size": 128})  # the grid of FAST
    [kd] = [s for s in grid.expand() if s.method == "kd"]
    run_dir = run_dir_of(Store(out), resolve(kd))
    run_dir.mkdir(parents=True)
    pwned = tmp_path / "pwned"
    (run_dir / "ckpt.pt").write_bytes(pickle.dumps({"phase_idx": 0, "payload": _Exploit(pwned)}))
    args = ["run", *FAST, "--epochs", "1", "--methods", "kd", "--out", str(out)]
    assert kdbench_main.main(args) == 0
    assert not pwned.exists(), "a checkpoint file ran code"
    [row] = rows_of(out, "kd")
    assert row["status"] == "done" and row["resumed_from"] is None
    err = capsys.readouterr().err
    assert "ignoring unreadable checkpoint" in err and str(run_dir) in err


def test_ctrl_c_stops_the_grid_promptly_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "kdbench", "run", *FAST, "--epochs", "40", "--methods", "kd", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(TESTS / "toy_plugins")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(m.read_text().count("\n") >= 1 for m in out.glob("runs/digits/*/*/*/metrics.jsonl")
               if "none__" in str(m) and "vanilla" in str(m)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("Ctrl-C did not stop kdbench within 60 s")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "re-run the same command to resume" in err
    assert not list(out.glob("runs/*/*/*/*/lock")), "the interrupted run must release its lock"
    states = [Store.state(p.parent) for p in out.glob("runs/*/*/*/*/spec.json")]
    assert states and "running" not in states
