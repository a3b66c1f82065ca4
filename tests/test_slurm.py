"""The Slurm runner on a real Slurm cluster (``scripts/slurm-test-cluster.sh up``; CI brings
one up with ``CPUS=8 FAKE_GPUS=2``).

These tests run whenever a cluster answers ``scontrol ping``; otherwise they are skipped —
unless ``KDBENCH_REQUIRE_SLURM=1`` (set by CI), which turns the skip into a failure.
Every wait has its own deadline (submitit's ``result()`` has none).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.runners.jobs import read_job_record
from kdbench.runners.scheduler import slurm_available, slurm_states
from kdbench.store import Store

TESTS = Path(__file__).resolve().parent
TOYS = str(TESTS / "toy_plugins")
THREADS = str(torch.get_num_threads())  # jobs get as many CPUs: their numbers equal the inline runner's


@pytest.fixture(scope="module")
def cluster():
    if not slurm_available():
        message = "no Slurm cluster answers `scontrol ping` (bring one up: scripts/slurm-test-cluster.sh up)"
        if os.environ.get("KDBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"KDBENCH_REQUIRE_SLURM=1 but {message}")
        pytest.skip(message)


def slurm_grid(tmp_path: Path, **runner) -> Path:
    """A grid file whose ``runner:`` block selects Slurm (tests poll every second)."""
    block = {"name": "slurm", "poll_s": 1, "wait_timeout_min": 8, "cpus_per_job": int(THREADS), **runner}
    path = tmp_path / "slurm.yaml"
    path.write_text("runner:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in block.items()))
    return path


def sacct(job_ids: list[str], fields: str = "JobID,JobName,State,Start,End", duplicates: bool = False) -> list[dict]:
    arrays = sorted({j.split("_")[0] for j in job_ids})
    cmd = ["sacct", "-X", "-n", "-P", "-o", fields, "-j", ",".join(arrays)] + (["-D"] if duplicates else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    names = fields.split(",")
    return [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def rows_by_key(out: Path) -> dict[str, dict]:
    return {r["run_key"]: r for r in Store(out).iter_results()}


def accuracy_tables(report: str) -> str:
    """The accuracy part of a terminal report (the cost table after it holds wall times,
    which differ from run to run)."""
    return report.split(": cost per method")[0]


def same_weights(a: dict, b: dict) -> bool:
    wa = torch.load(Path(a["run_dir"]) / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(Path(b["run_dir"]) / "model.pt", weights_only=True)["state_dict"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


KD_ONE_EPOCH = ["--methods", "kd", "--seeds", "1", "--epochs", "1", "--teacher-epochs", "1", "--no-progress"]


def test_slurm_grid_gives_the_inline_results_with_dependent_arrays(cluster, tmp_path, capsys):
    """Teacher array first, students after it (afterok), and the same keys, numbers and
    leaderboard as the inline runner."""
    grid = slurm_grid(tmp_path, wait=True)
    assert main(["run", "--grid", str(grid), *KD_ONE_EPOCH, "--out", str(tmp_path / "slurm")]) == 0
    assert main(["run", *KD_ONE_EPOCH, "--out", str(tmp_path / "inline")]) == 0
    slurm, inline = rows_by_key(tmp_path / "slurm"), rows_by_key(tmp_path / "inline")
    assert set(slurm) == set(inline) and len(slurm) == 3
    for key, row in slurm.items():
        assert row["top1_last"] == inline[key]["top1_last"] and same_weights(row, inline[key])
        assert row["submitted"]["runner"] == "slurm" and row["submitted"]["job_id"]
        assert row["submitted"]["git_sha"] == row["versions"]["git_sha"]
    records = {r["method"]: read_job_record(Path(r["run_dir"])) for r in slurm.values() if r["method"] != "vanilla"}
    teacher_run = next(r for r in slurm.values() if r["method"] == "vanilla" and r["student"] == "resnet20")
    teacher_job = read_job_record(Path(teacher_run["run_dir"]))["job_id"]
    kd_record = records["kd"]
    assert kd_record["dependency"] == teacher_job and Path(kd_record["stderr"]).exists()
    jobs = {j["JobID"]: j for j in sacct([teacher_job, kd_record["job_id"]])}
    assert jobs[teacher_job]["JobName"] == "kdbench-teachers"
    assert jobs[kd_record["job_id"]]["JobName"] == f"kdbench-students-after-{teacher_job}"
    assert jobs[kd_record["job_id"]]["Start"] >= jobs[teacher_job]["End"]  # ISO times sort as strings
    capsys.readouterr()
    main(["report", "--out", str(tmp_path / "slurm")])
    from_slurm = accuracy_tables(capsys.readouterr().out)
    main(["report", "--out", str(tmp_path / "inline")])
    assert from_slurm == accuracy_tables(capsys.readouterr().out) and "top-1 accuracy" in from_slurm


def test_a_fused_column_is_one_slurm_job_with_the_inline_results(cluster, tmp_path):
    """``--fuse``: the students of the teacher's column (vanilla joins it only where it
    shares the dependency: it has none, so it is its own job) run as one array element,
    with the separate inline runs' numbers and weights."""
    grid = slurm_grid(tmp_path, wait=True)
    args = ["--methods", "kd,at", *KD_ONE_EPOCH[2:]]
    assert main(["run", "--grid", str(grid), *args, "--fuse", "--out", str(tmp_path / "slurm")]) == 0
    assert main(["run", *args, "--out", str(tmp_path / "inline")]) == 0
    slurm, inline = rows_by_key(tmp_path / "slurm"), rows_by_key(tmp_path / "inline")
    assert set(slurm) == set(inline) and len(slurm) == 4
    for key, row in slurm.items():
        assert row["top1_last"] == inline[key]["top1_last"] and same_weights(row, inline[key])
    fused = [r for r in slurm.values() if r["method"] in ("kd", "at")]
    assert all(r["fused"] and r["column_size"] == 2 for r in fused)
    assert len({r["submitted"]["job_id"] for r in fused}) == 1


def test_a_preempted_student_resumes_from_its_checkpoint_with_the_same_result(cluster, tmp_path):
    """Preemption as submitit simulates it (SIGTERM, then USR2) in the middle of epoch 2 or
    later: the job is requeued, resumes from its epoch checkpoint, and ends with the
    weights and accuracy of an uninterrupted run.

    The jobs' `scontrol` lingers 2 s after it requeued the job, so the SIGTERM that Slurm
    sends every process of a job it requeues always reaches it (on CI it once did by
    chance: the run was recorded failed). Fails if either half of the fix is undone: the
    ignored SIGTERM (scontrol dies, the log shows CalledProcessError) or the engine's
    requeue flag (a failed row)."""
    args = ["--methods", "kd", "--seeds", "1", "--epochs", "6", "--teacher-epochs", "1", "--no-progress"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\n{shutil.which("scontrol")} "$@"\nrc=$?\nsleep 2\nexit $rc\n')
    (bin_dir / "scontrol").chmod(0o755)
    grid = slurm_grid(tmp_path, setup=[f"export PATH={bin_dir}:$PATH"])
    out = tmp_path / "slurm"
    assert main(["run", "--grid", str(grid), *args, "--out", str(out)]) == 0
    kd_dir = wait_for(lambda: next((p for p in (out / "runs").glob("digits/resnet20__resnet8/kd/*")
                                    if (p / "job.json").exists()), None), 30, "the kd run folder")
    job_id = read_job_record(kd_dir)["job_id"]

    def after_first_epoch():
        lines = (kd_dir / "metrics.jsonl").read_text().splitlines() if (kd_dir / "metrics.jsonl").exists() else []
        return len(lines) >= 1 and (kd_dir / "ckpt.pt").exists() and not (kd_dir / "result.json").exists()

    wait_for(after_first_epoch, 240, "the kd job's first epoch checkpoint", every=0.2)
    subprocess.run(["scancel", job_id, "--signal", "SIGTERM"], check=True)
    subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
    wait_for(lambda: Store.result(kd_dir), 300, "the requeued kd job's result", every=2)
    row = Store.result(kd_dir)
    assert row["status"] == "done" and row["resumed_from"] is not None, row
    history = sacct([job_id], "JobID,State", duplicates=True)
    assert any(h["State"] in ("REQUEUED", "PREEMPTED") for h in history), history
    job_log = "".join(p.read_text() for p in (out / "jobs").rglob("*_log.err"))
    assert job_log and "CalledProcessError" not in job_log, job_log[-2000:]  # scontrol survived its SIGTERM
    assert main(["run", *args, "--out", str(tmp_path / "inline")]) == 0
    inline = next(r for r in Store(tmp_path / "inline").iter_results() if r["method"] == "kd")
    assert inline["run_key"] == row["run_key"] and inline["top1_last"] == row["top1_last"]
    assert same_weights({**row, "run_dir": str(kd_dir)}, inline)


def test_a_failing_run_is_a_failed_row_and_a_rerun_submits_only_it(cluster, tmp_path, cli):
    """toy_raise raises in its loss: a failed row with its traceback; the rest of the
    grid finishes; `status` shows the failure with the log's tail and exits 1; the
    re-run submits that one run again and nothing else."""
    grid = slurm_grid(tmp_path, wait=True)
    args = ["--import", "kdbench_toys", "--methods", "toy_raise", *KD_ONE_EPOCH[2:-1], "--out", str(tmp_path / "o")]
    first = cli("run", "--grid", str(grid), "--no-progress", *args)
    assert first.returncode == 1, first.stderr
    rows = {r["method"]: r for r in Store(tmp_path / "o").iter_results()}
    assert rows["toy_raise"]["status"] == "failed" and "in loss" in rows["toy_raise"]["traceback"]
    assert rows["kd"]["status"] == "done" and rows["vanilla"]["status"] == "done"
    status = cli("status", *args)
    assert status.returncode == 1 and "1 failed" in status.stdout, status.stdout
    assert "RunFailed: toy_raise resnet20->resnet8 s0 failed" in status.stdout  # the tail of the job's log
    again = cli("run", "--grid", str(slurm_grid(tmp_path, hold=True)), *args)
    assert "submitted 1 run(s) in 1 sbatch call(s)" in again.stderr, again.stderr
    toy_dir = Path(rows["toy_raise"]["run_dir"])
    record = read_job_record(toy_dir)
    assert record["previous"] and record["job_id"] != record["previous"][-1]["job_id"]
    subprocess.run(["scancel", record["job_id"]], check=True)


def test_two_fake_gpus_run_at_most_two_one_gpu_jobs_at_once(cluster, tmp_path, monkeypatch):
    """The runner asks Slurm for --gpus-per-node=1 per job: with 2 GPUs on the node (and
    cores to spare) never more than 2 of 4 jobs run together, each sees its own GPU."""
    from kdbench.runners.slurm import SlurmRunner

    info = subprocess.run(["sinfo", "-h", "-o", "%c %G"], capture_output=True, text=True, check=True).stdout.split()
    if int(info[0]) < 4 or "gpu:2" not in info[1]:
        pytest.skip(f"needs a node with >= 4 CPUs and gpu:2 (CPUS=8 FAKE_GPUS=2 scripts/slurm-test-cluster.sh up); "
                    f"this one: {info}")
    monkeypatch.setenv("PYTHONPATH", TOYS)
    monkeypatch.syspath_prepend(TOYS)
    from kdbench_sleepers import sleep_and_record

    def run_four(gpus: int, marks: Path) -> list:
        marks.mkdir()
        executor = SlurmRunner(gpus_per_job=gpus, cpus_per_job=1, timeout_min=5).executor(tmp_path / f"jobs{gpus}")
        with executor.batch():
            jobs = [executor.submit(sleep_and_record, str(marks), f"j{i}", 4.0) for i in range(4)]
        wait_for(lambda: len(list(marks.iterdir())) == 4, 180, f"four sleeping jobs (gpus={gpus})")
        return [json.loads(p.read_text()) for p in marks.iterdir()]

    from test_runners import max_overlap

    with_gpus = run_four(1, tmp_path / "gpu")
    assert max_overlap([(s, e) for s, e, _ in with_gpus]) == 2
    assert {g for _, _, g in with_gpus} <= {"0", "1"}
    without = run_four(0, tmp_path / "cpu")
    assert max_overlap([(s, e) for s, e, _ in without]) > 2  # the cores alone would let more run


def test_the_paper_grid_is_a_handful_of_sbatch_calls_and_a_rerun_submits_nothing(cluster, tmp_path, monkeypatch,
                                                                                 capsys):
    """The 9-pair CNN2GNN-paper grid of 13 methods x 3 seeds (360 runs + 8 teachers) is
    submitted held, counted through an sbatch wrapper, then cancelled; a second `kdbench
    run` while it is queued submits nothing."""
    sys.path.insert(0, str(TESTS))
    from fake_datasets import write_cifar100

    data = tmp_path / "data"
    write_cifar100(data)
    # a 20-image CIFAR-100 passes the submit-time dataset check (the held jobs never run)
    monkeypatch.setattr("kdbench.datasets.cifar.expect_count", lambda *args, **kwargs: None)
    shim = tmp_path / "bin"
    shim.mkdir()
    calls = tmp_path / "sbatch.calls"
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    (shim / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexec {real} \"$@\"\n")
    (shim / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    methods = "kd,fitnets,at,sp,vid,rkd,pkt,ab,ft,crd,ccd,dkd,cnn2gnn"
    args = ["--grid", str(slurm_grid(tmp_path, hold=True)), "--dataset", "cifar100", "--data-root", str(data),
            "--pairs", "cnn2gnn", "--methods", methods, "--seeds", "3", "--out", str(tmp_path / "o")]
    t0 = time.perf_counter()
    code = main(["run", *args])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    n_calls = len(calls.read_text().splitlines()) if calls.exists() else 0
    assert code == 0, err
    records = [read_job_record(p) for p in (tmp_path / "o" / "runs").glob("*/*/*/*")]
    arrays = sorted({r["job_id"].split("_")[0] for r in records if r})
    try:
        assert code == 0 and len(records) == 368 and all(records)
        assert n_calls == len(arrays) <= 12, (n_calls, arrays)
        states = slurm_states(r["job_id"] for r in records)
        assert set(states.values()) == {"PENDING"}
        calls.write_text("")
        assert main(["run", *args]) == 0 and calls.read_text() == ""
        assert "nothing to submit" in capsys.readouterr().err
    finally:
        subprocess.run(["scancel", *arrays], check=False)
    print(f"\n368 runs submitted held in {n_calls} sbatch calls, {seconds:.1f} s")
    m = re.search(r"submitted (\d+) run\(s\) in (\d+) sbatch call", err)
    assert m and int(m.group(1)) == 368 and int(m.group(2)) == n_calls


def first_checkpoint_of(run_dir_glob: str, out: Path, timeout: float = 300) -> tuple[Path, str]:
    """Wait until the run matching ``run_dir_glob`` under ``out/runs`` has written an epoch
    checkpoint and no result; return its folder and its job id."""
    def ready():
        for run_dir in (out / "runs").glob(run_dir_glob):
            lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
            if lines and (run_dir / "ckpt.pt").exists() and (run_dir / "job.json").exists():
                return run_dir
        return None

    run_dir = wait_for(ready, timeout, f"an epoch checkpoint of {run_dir_glob}", every=0.2)
    return run_dir, read_job_record(run_dir)["job_id"]


@pytest.mark.slow
def test_time_limits_requeue_from_the_checkpoint_up_to_the_configured_count(cluster, tmp_path):
    """What Slurm sends before a job's time limit (USR2, --signal=USR2@delay) is sent after
    the first epoch checkpoint. With a time limit of at most 10 minutes submitit counts every
    USR2 as a time-out. max_requeues 2: the job is requeued and resumes, ending identical to
    an uninterrupted run. max_requeues 0: it is not requeued and the run is a failed row."""
    import shutil

    args = ["--methods", "kd", "--epochs", "6", "--teacher-epochs", "1", "--no-progress"]
    assert main(["run", *args, "--seeds", "1", "--out", str(tmp_path / "inline")]) == 0  # the reference, seed 0
    out = tmp_path / "slurm"
    teacher = Path("runs/digits/none__resnet20")
    shutil.copytree(tmp_path / "inline" / teacher, out / teacher)  # trained beforehand

    assert main(["run", "--grid", str(slurm_grid(tmp_path, timeout_min=10, max_requeues=2)), *args, "--seeds", "1",
                 "--out", str(out)]) == 0
    kd_dir, job_id = first_checkpoint_of("digits/resnet20__resnet8/kd/s0-*", out)
    subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
    wait_for(lambda: Store.result(kd_dir), 600, "the requeued kd job's result", every=2)
    done = {**Store.result(kd_dir), "run_dir": str(kd_dir)}
    assert done["status"] == "done" and done["resumed_from"] is not None, done
    history = [h for h in sacct([job_id], "JobID,State", duplicates=True) if h["JobID"] == job_id]
    assert history and history[0]["State"] == "REQUEUED", history  # its first incarnation was requeued
    inline = next(r for r in Store(tmp_path / "inline").iter_results() if r["method"] == "kd")
    assert inline["top1_last"] == done["top1_last"] and same_weights(done, inline)

    (tmp_path / "strict").mkdir()
    strict = slurm_grid(tmp_path / "strict", timeout_min=10, max_requeues=0)
    assert main(["run", "--grid", str(strict), *args, "--seeds", "0,1", "--out", str(out)]) == 0
    kd1_dir, job1 = first_checkpoint_of("digits/resnet20__resnet8/kd/s1-*", out)
    subprocess.run(["scancel", job1, "--signal", "USR2"], check=True)
    wait_for(lambda: Store.result(kd1_dir), 300, "the kd seed-1 job's result", every=2)
    failed = Store.result(kd1_dir)
    assert failed["status"] == "failed" and "timed-out too many times" in failed["error"], failed


@pytest.mark.slurm_long  # ~10 min on an idle 2-core machine; run with `pytest -m slurm_long`
def test_the_whole_digits_grid_on_slurm_gives_the_inline_leaderboard(cluster, tmp_path, capsys):
    """Every registered method, 2 seeds (1-epoch schedule to bound the time): the Slurm
    runner and the inline runner give the same keys, accuracies and leaderboard."""
    args = ["--methods", "all", "--seeds", "2", "--epochs", "1", "--teacher-epochs", "1", "--no-progress"]
    assert main(["run", "--grid", str(slurm_grid(tmp_path, wait=True, wait_timeout_min=25)), *args,
                 "--out", str(tmp_path / "slurm")]) == 0
    assert main(["run", *args, "--out", str(tmp_path / "inline")]) == 0
    slurm, inline = rows_by_key(tmp_path / "slurm"), rows_by_key(tmp_path / "inline")
    assert set(slurm) == set(inline) and len(slurm) >= 30
    assert {k: r["top1_last"] for k, r in slurm.items()} == {k: r["top1_last"] for k, r in inline.items()}
    capsys.readouterr()
    main(["report", "--out", str(tmp_path / "slurm")])
    from_slurm = accuracy_tables(capsys.readouterr().out)
    main(["report", "--out", str(tmp_path / "inline")])
    assert from_slurm == accuracy_tables(capsys.readouterr().out) and "top-1 accuracy" in from_slurm
