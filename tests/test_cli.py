"""The command line: errors that help, listings, status and reports."""
import json
import shutil
import stat

import pytest

from kdbench.cli import main, make_parser, merge_global_options, with_default_command
from kdbench.store import Store, current_umask


def run_main(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_names_get_suggestions(capsys, tmp_path):
    code, _, err = run_main(capsys, "run", "--methods", "kdd", "--out", str(tmp_path))
    assert code == 2 and "unknown method 'kdd'" in err and "Did you mean 'kd'" in err
    code, _, err = run_main(capsys, "run", "--dataset", "cifar1000", "--out", str(tmp_path))
    assert code == 2 and "Did you mean 'cifar100'" in err
    code, _, err = run_main(capsys, "run", "--pairs", "resnet20->resnet9", "--out", str(tmp_path))
    assert code == 2 and "unknown model 'resnet9'" in err and "resnet8" in err


def test_missing_dataset_says_where_what_and_how(capsys, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    code, _, err = run_main(capsys, "run", "--dataset", "cifar100", "--data-root", str(empty), "--out", str(tmp_path))
    assert code == 2
    assert str(empty) in err and "cifar-100-python" in err and "--download" in err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_malformed_grid_file(capsys, tmp_path):
    g = tmp_path / "grid.yaml"
    g.write_text("datasett: digits\n")
    code, _, err = run_main(capsys, "run", "--grid", str(g), "--out", str(tmp_path))
    assert code == 2 and "unknown key(s) 'datasett' (did you mean 'dataset'?)" in err


@pytest.mark.parametrize("what,expect", [("methods", "kd"), ("models", "resnet32x4"), ("datasets", "digits"),
                                         ("pairs", "cnn2gnn"), ("runners", "inline")])
def test_list(capsys, what, expect):
    code, out, _ = run_main(capsys, "list", what)
    assert code == 0 and expect in out


def test_list_pattern(capsys):
    code, out, _ = run_main(capsys, "list", "models", "wrn_*")
    assert code == 0 and "wrn_40_2" in out and "resnet" not in out.split("also:")[0]


GRID = ["--pairs", "resnet8->resnet8", "--methods", "kd", "--epochs", "1", "--teacher-epochs", "2", "--batch-size", "128"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert main(["run", *GRID, "--seeds", "2", "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("argv,command,verbose,quiet", [
    ([], "run", 0, False),
    (["-v", "--epochs", "1"], "run", 1, False),
    (["-q", "--dry-run", "--methods", "kd"], "run", 0, True),
    (["run", "--epochs", "1", "-vv"], "run", 2, False),
    (["-v", "list", "methods", "-q"], "list", 1, True),
    (["status", "--seeds", "2"], "status", 0, False),
    (["--out", "D", "-q"], "run", 0, True),
    (["--import", "m", "-v", "list", "methods"], "list", 1, False),
])
def test_verbosity_flags_anywhere_and_run_is_the_default_command(argv, command, verbose, quiet):
    args = make_parser().parse_args(with_default_command(argv))
    assert (args.command, args.verbose, args.quiet) == (command, verbose, quiet)


def test_dry_run_after_a_leading_flag(capsys, finished):
    code, out, _ = run_main(capsys, "-q", "--dry-run", *GRID, "--seeds", "2", "--out", str(finished))
    assert code == 0 and "4 done" in out


def test_status_and_dry_run(capsys, finished):
    code, out, _ = run_main(capsys, "status", *GRID, "--seeds", "2", "--out", str(finished))
    assert code == 0 and "4 done of 4 runs" in out
    code, out, _ = run_main(capsys, "status", *GRID, "--seeds", "3", "--out", str(finished))
    assert "4 done, 2 pending of 6 runs" in out
    code, out, _ = run_main(capsys, "run", "--dry-run", *GRID, "--seeds", "3", "--out", str(finished))
    assert code == 0 and "2 pending" in out
    # the teacher's own schedule is part of the students' identity
    code, out, _ = run_main(capsys, "status", *GRID[:-4], "--batch-size", "128", "--seeds", "2", "--out", str(finished))
    assert "2 done, 2 pending of 4 runs" in out


def test_report_formats(capsys, finished, tmp_path):
    code, out, _ = run_main(capsys, "report", "--out", str(finished))
    assert code == 0 and "resnet8->resnet8" in out and "vanilla" in out and "teacher" in out
    code, out, _ = run_main(capsys, "report", "--out", str(finished), "--format", "md", "--metric", "best")
    assert code == 0 and out.startswith("### digits: top-1 accuracy (%), best epoch") and "| kd" in out
    target = tmp_path / "board.csv"
    code, _, _ = run_main(capsys, "report", "--out", str(finished), "--format", "csv", "--output", str(target))
    assert code == 0 and target.read_text().startswith("row,pair,mean,std")
    code, _, err = run_main(capsys, "report", "--out", str(tmp_path / "nothing"))
    assert code == 2 and "no results under" in err


def test_list_teachers_shows_the_trained_teacher(capsys, finished):
    code, out, _ = run_main(capsys, "list", "teachers", "--out", str(finished))
    assert code == 0 and "digits" in out and "resnet8" in out and "model.pt" in out


@pytest.mark.parametrize("argv,command,imports,out", [
    (["--import", "a", "list", "methods", "--import", "b"], "list", ["a", "b"], "kdbench-out"),
    (["--out", "D", "status"], "status", [], "D"),
    (["--out=D", "report"], "report", [], "D"),
    (["--out", "D", "report", "--out", "E"], "report", [], "E"),  # after the subcommand wins
    (["--out", "D", "--epochs", "1"], "run", [], "D"),
    (["--import", "m"], "run", ["m"], "kdbench-out"),
])
def test_global_options_before_the_subcommand(argv, command, imports, out, monkeypatch):
    monkeypatch.delenv("KDBENCH_OUT", raising=False)
    args = merge_global_options(make_parser().parse_args(with_default_command(argv)))
    assert (args.command, args.imports, args.out) == (command, imports, out)


def test_global_out_before_status_and_report(capsys, finished):
    code, out, _ = run_main(capsys, "--out", str(finished), "status", *GRID, "--seeds", "2")
    assert code == 0 and "4 done of 4 runs" in out
    code, out, _ = run_main(capsys, "--out", str(finished), "report")
    assert code == 0 and "resnet8->resnet8" in out


def test_teacher_epochs_help_says_the_real_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "epochs of the teachers' training (default: the dataset's teacher epochs, e.g. 15 for digits" in text


def test_results_are_readable_by_colleagues(finished):
    result = next(finished.glob("runs/*/*/*/*/result.json"))
    assert stat.S_IMODE(result.stat().st_mode) == 0o666 & ~current_umask()


@pytest.fixture
def damaged(finished, tmp_path):
    """A private copy of the finished folder, to damage."""
    dst = tmp_path / "copy"
    shutil.copytree(finished, dst)
    return dst


def run_dir(out, method, seed):
    return next(out.glob(f"runs/digits/*/{method}/s{seed}-*"))


def test_two_recipes_in_one_folder_are_never_averaged(capsys, damaged):
    # the folder: a 1-epoch grid (the fixture), then a 2-epoch grid into the same --out
    grid2 = [*GRID[:4], "--epochs", "2", *GRID[6:]]
    code, out, _ = run_main(capsys, "run", *grid2, "--seeds", "1", "--no-progress", "--out", str(damaged))
    assert code == 0
    board = out.split("wall time")[0]
    assert "runs with epochs 2, batch 128, lr 0.05; teachers: 2 epochs, seed 0" in board and "epochs 1" not in board
    vanilla = [ln for ln in board.splitlines() if ln.startswith("vanilla")][0]
    assert "±" not in vanilla and "n=" not in vanilla  # one seed of one recipe, not a mean over both
    code, out, err = run_main(capsys, "report", "--out", str(damaged))
    assert code == 0 and "holds runs of 2 recipes" in err
    assert out.index("runs with epochs 1, batch 128") < out.index("runs with epochs 2, batch 128")
    one_epoch = out.split("runs with epochs 2")[0]
    kd = [ln for ln in one_epoch.splitlines() if ln.startswith("kd")][0]
    assert "±" in kd and "n=" not in kd  # the 1-epoch table: both of its seeds, nothing else


def test_invalid_results_cut_metrics_and_failed_runs(capsys, damaged):
    invalid = run_dir(damaged, "kd", 1) / "result.json"
    invalid.write_text(json.dumps({"status": "done"}))
    cut = run_dir(damaged, "kd", 0) / "metrics.jsonl"
    cut.write_text("")
    failed = run_dir(damaged, "vanilla", 1) / "result.json"
    row = json.loads(failed.read_text())
    row.update(status="failed", error="RuntimeError: first line\n" + "missing key, " * 2000)
    failed.write_text(json.dumps(row))

    code, out, err = run_main(capsys, "status", *GRID, "--seeds", "2", "--out", str(damaged))  # a failed run: exit 1
    assert code == 1 and "invalid (will be redone)" in out and "2 done, 1 failed, 1 invalid of 4 runs" in out
    assert "re-run the same command to retry" in out and "missing key" not in out
    assert str(invalid) in err and str(cut) in err and "(metrics.jsonl cut short)" in out

    code, out, err = run_main(capsys, "report", "--out", str(damaged))
    assert code == 0 and str(invalid) in err and str(cut) in err
    assert "vanilla on resnet8->resnet8 seed 1: RuntimeError: first line […]" in out
    assert str(failed.parent) in out and "missing key" not in out

    code, out, _ = run_main(capsys, "run", *GRID, "--seeds", "2", "--no-progress", "--out", str(damaged))
    assert code == 0 and Store.result(invalid.parent)["top1_last"] >= 0  # redone, like the failed run
    assert Store.result(failed.parent)["status"] == "done"


def test_report_names_the_folder_and_its_datasets(capsys, finished):
    code, out, err = run_main(capsys, "report", "--dataset", "cifar100", "--out", str(finished))
    assert code == 2 and out == ""
    assert f"no results for dataset 'cifar100' in {finished}; it holds: digits" in err


def test_report_top5_shows_the_teacher_in_top5(capsys, finished):
    rows = list(Store(finished).iter_results())
    kd = next(r for r in rows if r["method"] == "kd")
    teacher = next(r for r in rows if r["run_key"] == kd["teacher_key"])
    code, out, _ = run_main(capsys, "report", "--metric", "top5", "--out", str(finished))
    assert code == 0 and out.startswith("digits: top-5 accuracy (%), last epoch")
    line = [ln for ln in out.splitlines() if ln.startswith("teacher")][0]
    assert f"{teacher['top5_last']:.2f}" in line


def test_ctrl_c_prints_what_is_finished_and_exits_130(capsys, finished, monkeypatch):
    from kdbench.runners.inline import InlineRunner

    def interrupted(self, specs, session):
        raise KeyboardInterrupt

    monkeypatch.setattr(InlineRunner, "submit", interrupted)
    code, out, err = run_main(capsys, "run", *GRID, "--seeds", "2", "--no-progress", "--out", str(finished))
    assert code == 130 and "interrupted" in err
    assert "digits: top-1 accuracy" in out and [ln for ln in out.splitlines() if ln.startswith("kd")]


def test_report_output_that_cannot_be_written(capsys, finished, tmp_path):
    code, _, err = run_main(capsys, "report", "--out", str(finished), "--output", str(tmp_path))
    assert code == 2 and f"--output {tmp_path} cannot be written (Is a directory)" in err


def test_a_global_option_without_its_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--out"])
    assert exit_.value.code == 2 and "argument --out: expected one argument" in capsys.readouterr().err


def test_status_shows_accuracies_and_keys_as_written(capsys, damaged):
    result = run_dir(damaged, "kd", 0) / "result.json"
    row = json.loads(result.read_text())
    row["top1_last"] = 10.0
    result.write_text(json.dumps(row))
    code, out, _ = run_main(capsys, "status", *GRID, "--seeds", "2", "--out", str(damaged))
    line = [ln for ln in out.splitlines() if ln.startswith("kd") and f" {row['run_key']} " in ln][0]
    assert line.rstrip().endswith("10.00")
