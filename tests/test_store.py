"""The results store: file modes, invalid result files, cut-short metrics, the output folder."""
import json
import os
import stat

import pytest

from kdbench import store as store_mod
from kdbench.store import RESULT, Store, StoreError, atomic_write_json, row_problem


def done_row(**changes):
    row = {"run_key": "abc123", "dataset": "digits", "student": "resnet8", "teacher": None, "method": "vanilla",
           "seed": 0, "recipe": {"epochs": 2}, "status": "done", "top1_last": 50.0, "top1_best": 51.0,
           "top5_last": 90.0, "top5_best": 91.0, "epochs": 2, "wall_time_s": 1.5}
    row.update(changes)
    return row


def write_run(root, name, row, metrics_lines=None):
    run_dir = root / "runs" / "digits" / "none__resnet8" / "vanilla" / name
    run_dir.mkdir(parents=True)
    (run_dir / RESULT).write_text(json.dumps(row))
    if metrics_lines is not None:
        (run_dir / "metrics.jsonl").write_text(
            "".join(json.dumps({"phase": "main", "epoch": e}) + "\n" for e in range(1, metrics_lines + 1)))
    return run_dir


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        left = os.umask(umask)  # what the write left (read, and set back to the test's umask)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == mode
    assert left == umask  # the umask is left as it was


@pytest.mark.parametrize("row,problem", [
    ({"status": "done"}, "lacks run_key, dataset, student, method, seed, recipe, top1_last"),
    (done_row(top5_best=None), "is done but lacks top5_best"),
    (done_row(top1_last="high"), "wrong type: top1_last"),
    (done_row(status="failed"), "is failed but lacks error"),
    (done_row(status="skipped"), "is skipped but lacks reason"),
    (done_row(status="finished"), "has status 'finished'"),
    ([1, 2], "not a result row"),
])
def test_rows_lacking_what_their_status_requires_are_invalid(row, problem):
    assert problem in row_problem(row)


def test_valid_rows_pass():
    assert row_problem(done_row()) is None
    assert row_problem(done_row(status="failed", error="boom")) is None
    assert row_problem(done_row(status="skipped", reason="no preact")) is None


def test_an_invalid_result_is_absent_shown_as_invalid_and_named_by_path(tmp_path):
    store = Store(tmp_path)
    bad = write_run(tmp_path, "s0-bad", {"status": "done"})
    torn = write_run(tmp_path, "s1-torn", done_row())
    (torn / RESULT).write_text('{"status": "do')
    good = write_run(tmp_path, "s2-good", done_row(), metrics_lines=2)
    assert Store.result(bad) is None and Store.state(bad) == "invalid"
    assert Store.result(torn) is None and Store.state(torn) == "invalid"
    assert Store.result(good)["top1_last"] == 50.0 and Store.state(good) == "done"
    assert [r["run_dir"] for r in store.iter_results()] == [str(good)]
    problems = store.problems()
    assert len(problems) == 2
    assert str(bad / RESULT) in problems[0] and "lacks" in problems[0] and "will be redone" in problems[0]
    assert str(torn / RESULT) in problems[1] and "not valid JSON" in problems[1]


def test_a_done_run_with_cut_short_metrics_is_flagged(tmp_path):
    store = Store(tmp_path)
    write_run(tmp_path, "s0-ok", done_row(), metrics_lines=2)
    short = write_run(tmp_path, "s1-short", done_row(), metrics_lines=1)
    assert store.problems() == [f"{short / 'metrics.jsonl'} has 1 of 2 main-phase epoch lines (the file was cut short)"]
    # older folders name the phase 'stage'; pre-phase lines do not count
    (short / "metrics.jsonl").write_text('{"stage": "init", "epoch": 1}\n{"stage": "main", "epoch": 1}\n'
                                         '{"stage": "main", "epoch": 2}\n')
    assert store.problems() == []


def test_out_that_is_a_file_or_lies_under_one_is_refused(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        Store(target).check_writable()
    with pytest.raises(StoreError, match="cannot be written"):
        Store(target / "sub").check_writable()


def test_out_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(store_mod.tempfile, "mkstemp", refuse)
    with pytest.raises(StoreError, match=r"ro cannot be written \(Permission denied"):
        Store(tmp_path / "ro").check_writable()


def test_a_writable_out_is_created_and_left_clean(tmp_path):
    Store(tmp_path / "a" / "b").check_writable()
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
