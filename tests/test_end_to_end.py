"""Every registered method end to end through `kdbench run` on `digits`."""
import json
import math
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.registry import METHODS
from kdbench.store import Store

# the training phases before "main" of each method at its defaults, one epoch each in a 1-epoch run
PRE_PHASES = {"ab": ["init"], "ft": ["paraphraser"]}


@pytest.fixture(scope="module")
def one_epoch_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    # a teacher trained for 5 epochs: a 1-epoch teacher is at chance and its features are wild
    code = main(["run", "--methods", "all", "--epochs", "1", "--teacher-epochs", "5", "--seeds", "1", "--no-progress",
                 "--out", str(out)])
    return out, code


@pytest.mark.parametrize("name", METHODS.list())
def test_every_method_runs_one_epoch_on_digits_phases_included(one_epoch_grid, name):
    out, code = one_epoch_grid
    student = METHODS.get(name).student_name(METHODS.get(name).Config()) or "resnet8"  # gnn, cnn2gnn: their own
    rows = [r for r in Store(out).iter_results() if r["method"] == name and r["student"] == student]
    assert rows, f"{name} has no result"
    row = rows[0]
    assert row["status"] == "done", row.get("error") or row.get("reason")
    assert 0 <= row["top1_last"] <= 100 and row["epochs"] == 1
    history = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    cls = METHODS.get(name)
    # with 1 main epoch each pre-phase (30 of 240 main epochs, at least 1) scales to 1 epoch;
    # FitNets' hint pre-phase is off by default (hint_phase_epochs=0)
    assert [h["phase"] for h in history] == PRE_PHASES.get(name, []) + ["main"]
    assert all("loss" in h and math.isfinite(h["loss"]) for h in history)  # finite, recorded per epoch
    if cls.needs().teacher:
        assert row["teacher_top1"] is not None


def test_the_grid_exit_status_is_zero(one_epoch_grid):
    assert one_epoch_grid[1] == 0


@pytest.mark.slow
def test_the_demo_grid_gives_a_sensible_leaderboard(tmp_path, capsys):
    """`make demo`'s command: all methods, digits, 2 seeds, the dataset's full recipe."""
    assert main(["run", "--no-progress", "--out", str(tmp_path)]) == 0
    board = capsys.readouterr().out.split("wall time")[0]
    lines = {ln.split()[0]: ln for ln in board.splitlines() if ln and ln.split()[0] in {*METHODS.list(), "teacher"}}
    teacher = float(lines["teacher"].split()[1])
    vanilla = float(lines["vanilla"].split()[1])
    assert teacher > vanilla, board
    for name in METHODS.list():
        if name != "vanilla":
            assert any(a in lines[name] for a in "↑↓="), f"{name} row has no arrow:\n{board}"
