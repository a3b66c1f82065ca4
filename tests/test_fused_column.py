"""Fused columns (kdbench.column, ``--fuse``): every method of a grid column trained in one
pass gives bit-identical weights, metrics and accuracies to separate runs; a SIGKILL of
the fused process resumes every member exactly; a failing member leaves the column alone;
the grouping of runs into columns; the runners."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TESTS, kdbench_cli
from kdbench.column import column_groups
from kdbench.grid import GridError, build_grid, parse_fuse
from kdbench.registry import METHODS
from kdbench.store import Store

FAST = ["--dataset", "digits", "--seeds", "1", "--no-progress", "--batch-size", "128", "--teacher-epochs", "2"]
#: what may differ between a fused and a separate run of the same key: timings and where it ran
TIMING = {"wall_time", "eval_time_s"}


def rows(out: Path) -> dict[tuple, dict]:
    return {(r["method"], r["teacher"], r["student"], r["seed"]): r for r in Store(out).iter_results()}


def weights(row: dict) -> dict[str, torch.Tensor]:
    return torch.load(Path(row["run_dir"]) / "model.pt", weights_only=True)["state_dict"]


def history(row: dict) -> list[dict]:
    lines = (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def copy_teachers(src: Path, dst: Path) -> None:
    """Give ``dst`` the trained teachers of ``src`` (their run folders), so both compare
    students of the very same teacher without training it twice."""
    for row in Store(src).iter_results():
        if row["method"] == "vanilla" and row["teacher"] is None and row["student"] == "resnet20":
            run_dir = Path(row["run_dir"])
            shutil.copytree(run_dir, dst / run_dir.relative_to(src))


def assert_same_runs(separate: Path, fused: Path, expect_fused: int) -> None:
    a, b = rows(separate), rows(fused)
    assert set(a) == set(b)
    n_fused = 0
    for key in sorted(a, key=str):
        ra, rb = a[key], b[key]
        assert rb["status"] == ra["status"] == "done", (key, rb.get("error"))
        assert rb["run_key"] == ra["run_key"]
        for field in ("top1_last", "top1_best", "top5_last", "best_epoch"):
            assert rb[field] == ra[field], (key, field)
        assert history(rb) == history(ra), key
        wa, wb = weights(ra), weights(rb)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), key
        if rb["fused"]:
            n_fused += 1
            assert rb["shared_time_s"] > 0 and rb["own_time_s"] > 0
            assert rb["wall_time_s"] == pytest.approx(rb["own_time_s"] + rb["shared_time_s"], abs=0.01)
        assert ra["fused"] is False and ra["shared_time_s"] == 0
    assert n_fused == expect_fused


def test_every_method_fused_equals_separate_runs(tmp_path):
    """A column of every registered method (plus vanilla; pre-phases of AB, FT and FitNets
    included) on digits: fused and separately, identical weights, metrics and accuracies."""
    common = [*FAST, "--methods", "all", "--epochs", "1", "--set", "fitnets.hint_phase_epochs=1"]
    kdbench_cli("run", *common, "--out", str(tmp_path / "separate"), check=True)
    copy_teachers(tmp_path / "separate", tmp_path / "fused")
    proc = kdbench_cli("run", *common, "--fuse", "--out", str(tmp_path / "fused"), check=True)
    assert "fused column" in proc.stderr
    members = len(METHODS.list())  # every registered method (vanilla and gnn among them), each once
    assert_same_runs(tmp_path / "separate", tmp_path / "fused", expect_fused=members)
    fused = rows(tmp_path / "fused")
    assert {r["column_size"] for r in fused.values() if r["fused"]} == {members}


SUBSET = [*FAST, "--methods", "crd,ccd,ab,fitnets", "--epochs", "2", "--set", "fitnets.hint_phase_epochs=1"]


@pytest.mark.slow
def test_a_killed_fused_column_resumes_every_member_exactly(tmp_path):
    """SIGKILL of the fused process after some members checkpointed an epoch: a re-run
    resumes each member from its own checkpoint (members at different epochs catch up
    alone, then train together) and ends with the separate runs' results."""
    kdbench_cli("run", *SUBSET, "--out", str(tmp_path / "separate"), check=True)
    out = tmp_path / "fused"
    copy_teachers(tmp_path / "separate", out)
    env = {**os.environ, "PYTHONPATH": str(TESTS / "toy_plugins")}
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", *SUBSET, "--fuse", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None:
        main_lines = [sum('"main"' in line for line in p.read_text().splitlines())
                      for p in out.glob("runs/digits/resnet20__resnet8/*/*/metrics.jsonl")]
        if any(n >= 1 for n in main_lines):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait()
    assert killed, "the fused run must be killed mid-training"
    assert not list(out.glob("runs/digits/resnet20__resnet8/*/*/result.json"))
    checkpoints = list(out.glob("runs/digits/*/*/*/ckpt.pt"))
    assert len(checkpoints) >= 2
    kdbench_cli("run", *SUBSET, "--fuse", "--out", str(out), check=True)
    assert_same_runs(tmp_path / "separate", out, expect_fused=6)  # 4 methods + kd + vanilla
    resumed = [r for r in rows(out).values() if r.get("resumed_from")]
    assert len(resumed) >= 2


def test_a_failing_member_fails_alone_and_the_others_finish(tmp_path):
    proc = kdbench_cli("run", *FAST, "--epochs", "2", "--import", "kdbench_toys", "--methods", "toy_raise,toy_nan,at",
                       "--fuse", "--out", str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    by_method = {k[0]: r for k, r in rows(tmp_path).items() if k[1] is not None or k[2] == "resnet8"}
    assert by_method["toy_raise"]["status"] == "failed" and "toy_raise: this method always raises" in \
        by_method["toy_raise"]["error"] and "in loss" in by_method["toy_raise"]["traceback"]
    assert by_method["toy_nan"]["status"] == "failed" and "NonFiniteLoss" in by_method["toy_nan"]["error"]
    for name in ("vanilla", "kd", "at"):
        assert by_method[name]["status"] == "done" and by_method[name]["fused"] and by_method[name]["epochs"] == 2


# -- grouping -----------------------------------------------------------------------------

def specs(pairs: str, methods: str, seeds: str = "2"):
    return build_grid({}, dataset="digits", pairs=pairs, methods=methods, seeds=seeds, epochs=1,
                      teacher_epochs=1).expand()


def describe(column) -> list[str]:
    return [f"{s.method} {s.pair} s{s.seed}" for s in column]


def test_columns_are_one_per_seed_and_teacher_with_vanilla_joining_the_first():
    grid = specs("resnet20->resnet8,resnet20->resnet14,resnet32->resnet8", "kd,at")
    columns = column_groups(grid)
    assert [describe(c) for c in columns] == [
        ["vanilla resnet8 s0", "vanilla resnet14 s0", "kd resnet20->resnet8 s0", "at resnet20->resnet8 s0",
         "kd resnet20->resnet14 s0", "at resnet20->resnet14 s0"],
        ["kd resnet32->resnet8 s0", "at resnet32->resnet8 s0"],
        ["vanilla resnet8 s1", "vanilla resnet14 s1", "kd resnet20->resnet8 s1", "at resnet20->resnet8 s1",
         "kd resnet20->resnet14 s1", "at resnet20->resnet14 s1"],
        ["kd resnet32->resnet8 s1", "at resnet32->resnet8 s1"],
    ]
    assert sorted(describe(s for c in columns for s in c)) == sorted(describe(grid))  # every run exactly once
    capped = column_groups(grid, max_members=4)
    assert max(map(len, capped)) == 4 and sum(map(len, capped)) == len(grid)
    with pytest.raises(ValueError, match="at least one run"):
        column_groups(grid, max_members=0)


def test_fuse_option_values():
    assert parse_fuse(None) == (False, None) and parse_fuse(True) == (True, None) and parse_fuse(6) == (True, 6)
    assert parse_fuse(False, 3) == (True, 3)
    for bad in ("yes", 0, -2, 1.5):
        with pytest.raises(GridError, match="fuse must be true, false or the most runs per fused pass"):
            parse_fuse(bad)
    with pytest.raises(GridError, match="--fuse-max"):
        parse_fuse(None, 0)


def test_local_runner_runs_a_fused_column_as_one_job(tmp_path):
    args = [*FAST, "--methods", "kd,at", "--epochs", "1"]
    kdbench_cli("run", *args, "--out", str(tmp_path / "inline"), check=True)
    copy_teachers(tmp_path / "inline", tmp_path / "local")
    kdbench_cli("run", *args, "--runner", "local", "--max-parallel", "1", "--cpus-per-job",
                str(torch.get_num_threads()), "--fuse", "--out", str(tmp_path / "local"), check=True)
    assert_same_runs(tmp_path / "inline", tmp_path / "local", expect_fused=3)
    jobs = {json.loads((Path(r["run_dir"]) / "job.json").read_text())["job_id"]
            for r in rows(tmp_path / "local").values() if r["fused"]}
    assert len(jobs) == 1


def test_the_cost_table_says_which_runs_were_fused():
    from kdbench.reports.cost import build_costs

    def row(method, fused, teacher="resnet20"):
        return {"dataset": "digits", "method": method, "teacher": teacher, "student": "resnet8", "status": "done",
                "run_key": method, "teacher_key": "t", "recipe": {"epochs": 1}, "wall_time_s": 3.0,
                "own_time_s": 2.5 if fused else 3.0, "shared_time_s": 0.5 if fused else 0.0, "fused": fused}

    [table] = build_costs([row("kd", True), row("at", True), row("dkd", False)], "digits")
    assert any("2 run(s) trained in fused columns" in n and "5.0 s own + 1.0 s shared" in n for n in table.notes)
    [plain] = build_costs([row("kd", False)], "digits")
    assert not any("fused" in n for n in plain.notes)
