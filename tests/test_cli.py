"""The command line: errors that help, listings, status and reports."""
import pytest

from kdbench.cli import main, make_parser, with_default_command


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
