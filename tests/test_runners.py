"""Runners without a cluster: the picklable job, the local runner (throttling, same results
as inline), runner options, job records, Slurm-aware lock staleness and status states.
The Slurm runner on a real cluster is tested in test_slurm.py."""
import dataclasses
import json
import os
import pickle
import socket
import time
from pathlib import Path

import pytest
import submitit
import torch

from kdbench.cli import main
from kdbench.grid import GridError
from kdbench.runners.jobs import JobOptions, RunJob, RunFailed, read_job_record, write_job_record
from kdbench.runners.local import Throttle
from kdbench.runners.options import runner_from_options
from kdbench.spec import Recipe, RunSpec
from kdbench.store import LOCK, RunLock, Store

TOYS = str(Path(__file__).resolve().parent / "toy_plugins")
ONE_EPOCH = ["--methods", "kd", "--seeds", "1", "--epochs", "1", "--teacher-epochs", "1", "--no-progress", "-q"]


@pytest.fixture
def toy_methods(monkeypatch):
    """The toy plugins registered in this process for one test only: the method registry
    and ``sys.modules`` are restored afterwards, so later tests (e.g. ``--methods all``
    counts) never see toy_raise and friends."""
    import sys

    from kdbench.registry import METHODS, import_user_modules

    METHODS.list()  # built-ins loaded before the snapshot
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_meta", dict(METHODS._meta))
    monkeypatch.syspath_prepend(TOYS)
    import_user_modules(["kdbench_toys"])
    yield
    sys.modules.pop("kdbench_toys", None)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (a sweep over start/end events)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_max_overlap_counts_by_hand():
    assert max_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1  # one ends as the next starts
    assert max_overlap([(0, 5), (1, 2), (1.5, 3)]) == 3


def test_local_executor_jobs_never_exceed_max_parallel(tmp_path, monkeypatch):
    """Five real LocalExecutor jobs sleeping 1.5 s, at most two at a time: they overlap
    (two run together) but never three."""
    monkeypatch.syspath_prepend(TOYS)
    monkeypatch.setenv("PYTHONPATH", TOYS)
    from kdbench_sleepers import sleep_and_record

    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=2)
    marks = tmp_path / "marks"
    marks.mkdir()
    seen = []

    def start(i, slot):
        return executor.submit(sleep_and_record, str(marks), f"job{i}", 1.5)

    Throttle(2, poll_s=0.05).run(range(5), start, lambda i, job: seen.append((i, job.result())))
    intervals = [tuple(json.loads(p.read_text())[:2]) for p in marks.iterdir()]
    assert len(intervals) == 5 and sorted(i for i, _ in seen) == list(range(5))
    assert max_overlap(intervals) == 2


def test_local_jobs_running_together_get_different_gpus(tmp_path, monkeypatch):
    """With GPUs 0 and 1 and two slots, each LocalExecutor job sees exactly its slot's GPU
    in CUDA_VISIBLE_DEVICES, so two jobs running at once never share one."""
    from kdbench.runners.local import LocalRunner

    monkeypatch.setenv("PYTHONPATH", TOYS)
    monkeypatch.syspath_prepend(TOYS)
    from kdbench_sleepers import sleep_and_record

    runner = LocalRunner(max_parallel=2, timeout_min=3)
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    marks = tmp_path / "marks"
    marks.mkdir()

    def start(i, slot):
        executor.update_parameters(**runner.job_parameters(slot, [0, 1]))
        return executor.submit(sleep_and_record, str(marks), f"job{i}", 1.0)

    Throttle(2, poll_s=0.05).run(range(4), start)
    runs = [json.loads(p.read_text()) for p in marks.iterdir()]
    assert len(runs) == 4 and {gpu for _, _, gpu in runs} == {"0", "1"}
    for a in runs:
        for b in runs:
            if a is not b and a[0] < b[1] and b[0] < a[1]:  # ran at the same time
                assert a[2] != b[2]


def test_throttle_hands_each_running_job_its_own_slot():
    class Soon:
        def __init__(self):
            self.polls = 0

        def done(self):
            self.polls += 1
            return self.polls > 2

    slot_of, in_use, peak = {}, set(), []

    def start(item, slot):
        assert slot not in in_use and 0 <= slot < 3
        in_use.add(slot)
        slot_of[item] = slot
        peak.append(len(in_use))
        return Soon()

    Throttle(3, poll_s=0).run(range(10), start, lambda item, job: in_use.remove(slot_of[item]))
    assert max(peak) == 3 and len(slot_of) == 10 and not in_use


def test_runner_options_errors_name_the_option_and_the_valid_ones():
    with pytest.raises(GridError, match=r"the inline runner has no option --max-parallel \(an option of the local "
                                        r"runner: add --runner local\); it takes: no options"):
        runner_from_options("inline", {"max_parallel": 2})
    with pytest.raises(GridError, match="the slurm runner has no option --gpu; it takes: partition, gpus_per_job"):
        runner_from_options("slurm", {"gpu": 1})
    with pytest.raises(GridError, match=r"has no option --gpus-per-jobs \(did you mean gpus_per_job\?\)"):
        runner_from_options("slurm", {"gpus_per_jobs": 1})
    with pytest.raises(GridError, match="runner local: .*--max-parallel must be at least 1, not 0"):
        runner_from_options("local", {"max_parallel": 0})
    slurm = runner_from_options("slurm", {"sbatch": ["account=proj", "exclusive"], "qos": "high"})
    assert slurm.sbatch == {"account": "proj", "exclusive": True, "qos": "high"}


def test_grid_file_runner_block_and_flags(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("runner:\n  name: local\n  max-parallel: 0\n")
    code = main(["run", "--grid", str(grid), "--out", str(tmp_path / "o"), "-q"])
    assert code == 2 and "--max-parallel must be at least 1, not 0" in capsys.readouterr().err
    code = main(["run", "--grid", str(grid), "--max-parallel", "1", "--runner", "inline", "--out", str(tmp_path / "o")])
    assert code == 2 and "the inline runner has no option --max-parallel" in capsys.readouterr().err


def _spec(method="kd", epochs=1, seed=0) -> RunSpec:
    from kdbench.grid import build_grid

    grid = build_grid({}, dataset="digits", methods=method, pairs="resnet20->resnet8", seeds=str(seed + 1),
                      epochs=epochs, teacher_seed=0, teacher_epochs=1)
    return next(s for s in grid.expand() if s.method == method and s.seed == seed)


def test_a_job_is_small_and_picklable():
    job = RunJob(_spec(), JobOptions(out="/nonexistent/out", imports=("kdbench_toys",)))
    blob = pickle.dumps(job)
    assert len(blob) < 8000  # the spec and options, no data, no models
    again = pickle.loads(blob)
    assert again.spec == job.spec and again.options == job.options


def test_a_failing_run_writes_its_row_then_fails_the_job(tmp_path, monkeypatch):
    """A job (in its own process) whose run raises writes the failed row with its
    traceback, then fails, so the scheduler marks the job failed (a failed teacher's
    students never start)."""
    monkeypatch.setenv("PYTHONPATH", TOYS)
    spec = dataclasses.replace(_spec("kd"), method="toy_raise")  # the toy plugin is imported by the job only
    options = JobOptions(out=str(tmp_path), imports=("kdbench_toys",), progress=False, log_level=30)
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=5)
    job = executor.submit(RunJob(spec, options))
    with pytest.raises(submitit.core.utils.FailedJobError, match="RunFailed: toy_raise resnet20->resnet8 s0 failed: "
                                                                  "RuntimeError: toy_raise: this method always raises"):
        job.result()
    rows = list(Store(tmp_path).iter_results())
    failed = [r for r in rows if r["method"] == "toy_raise"]
    assert len(failed) == 1 and failed[0]["status"] == "failed"
    assert "RuntimeError: toy_raise" in failed[0]["error"] and "in loss" in failed[0]["traceback"]
    teacher = [r for r in rows if r["method"] == "vanilla"]
    assert teacher and teacher[0]["status"] == "done"  # trained by the job, as inline would


def test_local_runner_gives_the_inline_results(tmp_path, capsys):
    """Same keys, same accuracies and same weights as the inline runner (one job at a time,
    with the inline process's thread count)."""
    threads = str(torch.get_num_threads())
    assert main(["run", *ONE_EPOCH, "--out", str(tmp_path / "inline")]) == 0
    assert main(["run", *ONE_EPOCH, "--runner", "local", "--max-parallel", "1", "--cpus-per-job", threads,
                 "--out", str(tmp_path / "local")]) == 0
    inline = {r["run_key"]: r for r in Store(tmp_path / "inline").iter_results()}
    local = {r["run_key"]: r for r in Store(tmp_path / "local").iter_results()}
    assert set(inline) == set(local) and len(local) == 3  # teacher, vanilla, kd
    for key, row in local.items():
        assert row["top1_last"] == inline[key]["top1_last"] and row["num_threads"] == inline[key]["num_threads"]
        assert row["submitted"]["runner"] == "local" and row["submitted"]["job_id"]
        a = torch.load(Path(row["run_dir"]) / "model.pt", weights_only=True)["state_dict"]
        b = torch.load(Path(inline[key]["run_dir"]) / "model.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        record = read_job_record(Path(row["run_dir"]))
        assert record["runner"] == "local" and Path(record["stderr"]).exists()
    capsys.readouterr()
    assert main(["status", *ONE_EPOCH[:-2], "--out", str(tmp_path / "local")]) == 0
    assert "local " in capsys.readouterr().out
    # a re-run starts no job
    jobs_before = sorted((tmp_path / "local" / "jobs" / "local").iterdir())
    assert main(["run", *ONE_EPOCH, "--runner", "local", "--out", str(tmp_path / "local")]) == 0
    assert sorted((tmp_path / "local" / "jobs" / "local").iterdir()) == jobs_before


def test_job_records_keep_earlier_submissions(tmp_path):
    write_job_record(tmp_path, "slurm", "12_3", {"stderr": "/x.err"}, git_sha="abc")
    write_job_record(tmp_path, "slurm", "40_0", {"stderr": "/y.err"}, git_sha="abc")
    record = read_job_record(tmp_path)
    assert record["job_id"] == "40_0" and record["stderr"] == "/y.err"
    assert [p["job_id"] for p in record["previous"]] == ["12_3"]


def _foreign_lock(run_dir: Path, **owner) -> RunLock:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK).write_text(json.dumps({"host": "another-node", "pid": 1, "since": time.time(), **owner}))
    return RunLock(run_dir)


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    """After a requeue the job keeps its id and may land on another node: the lock of its
    earlier incarnation is stale at once; another job's live lock is not."""
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setattr("kdbench.store.slurm_job_alive", lambda job: True)
    lock = _foreign_lock(tmp_path / "a", slurm_job="77_5")
    lock.acquire()
    assert json.loads((tmp_path / "a" / LOCK).read_text())["slurm_job"] == "77_5"
    lock.release()
    from kdbench.store import LockHeld

    with pytest.raises(LockHeld) as held:
        _foreign_lock(tmp_path / "b", slurm_job="78_0").acquire()
    assert held.value.owner["slurm_job"] == "78_0"


def test_the_lock_of_an_ended_slurm_job_is_stale(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setattr("kdbench.store.slurm_job_alive", lambda job: False)
    lock = _foreign_lock(tmp_path / "c", slurm_job="90")
    lock.acquire()
    assert lock.held and json.loads((tmp_path / "c" / LOCK).read_text())["host"] == socket.gethostname()


def test_status_reads_slurm_states_of_queued_and_dead_jobs(tmp_path, capsys, monkeypatch):
    """Runs without results show their job's state: a queued job is pending, a job that
    died is failed with its log's tail, a student cancelled because its teacher failed says so."""
    from kdbench.grid import build_grid
    from kdbench.run import resolve, run_dir_of

    grid = build_grid({}, dataset="digits", methods="kd", pairs="resnet20->resnet8", seeds="1", epochs=1,
                      teacher_seed=0, teacher_epochs=1)
    specs = grid.expand()
    store = Store(tmp_path)
    dirs = {s.method: run_dir_of(store, resolve(s)) for s in specs}
    log = tmp_path / "9_0_log.err"
    log.write_text("line 1\nslurmstepd: error: Detected 1 oom_kill event\n")
    write_job_record(dirs["vanilla"], "slurm", "9_0", {"stderr": str(log)})
    write_job_record(dirs["kd"], "slurm", "11_0", {"stderr": str(tmp_path / "none.err")}, dependency="8_0")
    states = {"9_0": "OUT_OF_MEMORY", "11_0": "CANCELLED", "8_0": "FAILED"}
    monkeypatch.setattr("kdbench.runners.scheduler.slurm_states", lambda ids: {i: states[i] for i in ids if i in states})
    code = main(["status", *ONE_EPOCH[:-2], "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and "2 failed of 2 runs" in out
    assert "slurm 9_0 OUT_OF_MEMORY" in out and "job 9_0 ended out_of_memory without a result" in out
    assert "oom_kill event" in out  # the log's tail
    assert "cancelled: its teacher's job 8_0 failed" in out
    states.update({"9_0": "RUNNING", "11_0": "PENDING", "8_0": "RUNNING"})
    code = main(["status", *ONE_EPOCH[:-2], "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "1 pending, 1 running of 2 runs" in out and "queued (pending)" in out


def test_the_slurm_runner_without_slurm_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol, squeue, sbatch
    code = main(["run", "--runner", "slurm", *ONE_EPOCH[:-1], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "`scontrol` is not on PATH: run on a Slurm login node, or use --runner local" in err
    assert "Traceback" not in err and not (tmp_path / "o" / "runs").exists()


REQUEUE_IN_A_JOB = """
import signal, sys
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.slurm.slurm import SlurmJobEnvironment
from kdbench.runners.jobs import JobOptions, RunJob
from kdbench.spec import RunSpec

job = RunJob(RunSpec.from_json({spec!r}), JobOptions(out={out!r}))
delayed = DelayedSubmission(job)
delayed.set_timeout(60, 3)
paths = JobPaths({folder!r}, job_id="4242")
paths.folder.mkdir(parents=True, exist_ok=True)
SignalHandler(SlurmJobEnvironment(), paths, delayed).checkpoint_and_try_requeue(signal.SIGUSR2)
"""


def test_the_requeue_survives_the_sigterm_slurm_sends_when_it_requeues(tmp_path):
    """On preemption submitit checkpoints the job and runs `scontrol requeue`; the requeue
    makes Slurm SIGTERM every process of the job, `scontrol` too if it has not exited yet
    (seen on CI: the run was then recorded failed). Here a fake `scontrol` gets that SIGTERM
    while it requeues: it must survive, and the job must leave as submitit's handler does
    after a successful requeue (exit code 255, the checkpointed call pickled)."""
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/sh\nkill -TERM $$\necho "$@" >> "{calls}"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="4242", SLURM_PROCID="0", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    script = REQUEUE_IN_A_JOB.format(spec=_spec().to_json(), out=str(tmp_path / "out"), folder=str(tmp_path / "jobs"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 255, proc.stderr
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "CalledProcessError" not in proc.stderr
    assert (tmp_path / "jobs" / "4242_submitted.pkl").exists()


def test_an_exception_after_a_requeue_request_interrupts_runs_and_writes_no_failed_row(tmp_path, monkeypatch, toy_methods):
    """Once the job is being requeued, an exception (alone or in a fused column) ends the
    job without a result row: the requeued job resumes the runs, a failed row would stop
    `kdbench status` from waiting for them."""
    from kdbench import preemption
    from kdbench.run import execute, execute_column

    session = JobOptions(out=str(tmp_path), imports=("kdbench_toys",), progress=False).session()
    spec = dataclasses.replace(_spec("kd"), method="toy_raise", imports=("kdbench_toys",))
    monkeypatch.setattr(preemption, "_requested", True)
    with pytest.raises(RuntimeError, match="toy_raise: this method always raises"):
        execute(spec, session)
    kd = dataclasses.replace(_spec("kd"), imports=("kdbench_toys",))
    with pytest.raises(RuntimeError, match="toy_raise: this method always raises"):
        execute_column([kd, spec], session)
    assert not [r for r in Store(tmp_path).iter_results() if r["method"] != "vanilla"]


def test_a_requeue_that_submitit_declines_ends_every_unfinished_member_as_a_failed_row(tmp_path, monkeypatch, toy_methods):
    """After checkpointing, submitit may still decline the requeue (timed out more often than
    max_requeues allow) and raises UncompletedJobError into the running code: that is the
    end of the run, so it is a failed row with submitit's reason — for a single run and for
    every member of a fused column (the column stops; the job is at its time limit)."""
    from submitit.core.utils import UncompletedJobError

    from kdbench import preemption
    from kdbench.run import execute, execute_column
    from kdbench_toys import ToyRaise

    def declined(self, s, t, batch, step):
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    monkeypatch.setattr(ToyRaise, "loss", declined)
    session = JobOptions(out=str(tmp_path), imports=("kdbench_toys",), progress=False).session()
    spec = dataclasses.replace(_spec("kd"), method="toy_raise", imports=("kdbench_toys",))
    monkeypatch.setattr(preemption, "_requested", True)
    row = execute(spec, session)
    assert row["status"] == "failed" and "timed-out too many times" in row["error"], row
    kd = dataclasses.replace(_spec("kd"), imports=("kdbench_toys",))
    rows = {r["method"]: r for r in execute_column([kd, spec], session, keep_failed=False)}
    assert set(rows) == {"kd", "toy_raise"}
    assert all(r["status"] == "failed" and "timed-out too many times" in r["error"] for r in rows.values()), rows
