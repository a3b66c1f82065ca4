"""``kdbench probe`` and ``kdbench report --metric probe:<target>``: a digits grid probed on a
small STL-10 set in its genuine binary format (only the expected image counts shrunk), the
printed and reported numbers checked against the cached probe files, every report format,
partial and ambiguous probes, and the errors."""
import contextlib
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from kdbench import probe
from kdbench.cli import main
from kdbench.datasets.stl10 import STL10

from fake_datasets import write_imagefolder, write_stl10

N_TRAIN, N_TEST = 30, 12


def shrink_stl10(mp: pytest.MonkeyPatch) -> None:
    """The registered stl10 expects 30/12 images instead of 5000/8000."""
    init = STL10.__init__
    mp.setattr(STL10, "__init__", lambda self, expected_train=N_TRAIN, expected_test=N_TEST:
               init(self, expected_train, expected_test))


def call(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """A digits folder (teacher resnet8, 2 epochs; vanilla and kd, 2 seeds, 1 epoch)
    probed on STL-10 by the CLI: (folder, data root, exit code, stdout)."""
    base = tmp_path_factory.mktemp("probe")
    out, data = base / "out", base / "data"
    code, _, err = call("-q", "run", "--methods", "kd", "--pairs", "resnet8->resnet8", "--epochs", "1",
                        "--teacher-epochs", "2", "--seeds", "2", "--batch-size", "128", "--no-progress",
                        "--out", str(out))
    assert code == 0, err
    write_stl10(data, n_train=N_TRAIN, n_test=N_TEST)
    with pytest.MonkeyPatch.context() as mp:
        shrink_stl10(mp)
        code, printed, err = call("probe", "--out", str(out), "--target", "stl10", "--data-root", str(data),
                                  "--max-iter", "15")
    return out, data, code, printed, err


def probe_values(out: Path, method: str, target: str = "stl10") -> list[float]:
    """The cached probe accuracies of ``method``'s student runs, read from the files."""
    values = []
    for f in sorted(out.glob(f"runs/digits/*/{method}/*/probes/{target}-*.json")):
        if method != "vanilla" or f.parts[-5].startswith("none__"):
            values.append(json.loads(f.read_text())["probe_top1"])
    return values


def row_line(text: str, row: str) -> str:
    return next(line for line in text.splitlines() if line.split() and line.split()[0] == row)


def cell(mean_std: list[float]) -> str:
    return f"{statistics.fmean(mean_std):.2f} ± {statistics.stdev(mean_std):.2f}"


def test_probe_prints_the_probe_leaderboard_from_the_cached_files(probed):
    out, _, code, printed, err = probed
    assert code == 0, err
    files = sorted(out.glob("runs/digits/*/*/*/probes/stl10-*.json"))
    assert len(files) == 5  # teacher, 2 vanilla, 2 kd: one probe each
    rows = [json.loads(f.read_text()) for f in files]
    assert {(r["num_train"], r["num_test"], r["image_size"], r["target"]) for r in rows} == \
        {(N_TRAIN, N_TEST, 32, "stl10")}
    assert "digits: linear-probe top-1 accuracy (%) on stl10, mean ± std over seeds" in printed
    by_run = {}  # (seed, epochs) -> probe accuracy of the resnet8 runs without a teacher
    for run in out.glob("runs/digits/none__resnet8/vanilla/*"):
        row = json.loads((run / "result.json").read_text())
        by_run[(row["seed"], row["recipe"]["epochs"])] = json.loads(
            next((run / "probes").glob("stl10-*.json")).read_text())["probe_top1"]
    assert sorted(by_run) == [(0, 1), (0, 2), (1, 1)]  # the vanilla students and the teacher (2 epochs)
    kd = probe_values(out, "kd")
    assert len(kd) == 2 and cell(kd) in row_line(printed, "kd")
    assert cell([by_run[(0, 1)], by_run[(1, 1)]]) in row_line(printed, "vanilla")
    assert row_line(printed, "teacher").split()[1] == f"{by_run[(0, 2)]:.2f}"


def test_a_second_probe_reads_the_cache(probed, monkeypatch):
    out, data, _, printed, _ = probed

    def refit(*args, **kwargs):
        raise AssertionError("a cached probe was recomputed")

    monkeypatch.setattr(probe, "fit_linear_probe", refit)
    shrink_stl10(monkeypatch)
    code, again, err = call("probe", "--out", str(out), "--target", "stl10", "--data-root", str(data),
                            "--max-iter", "15")
    assert code == 0, err
    assert again == printed
    # python -m kdbench.probe is the same command
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert probe.main(["--out", str(out), "--target", "stl10", "--data-root", str(data), "--max-iter", "15"]) == 0
    assert buf.getvalue() == printed


@pytest.mark.parametrize("fmt", ["terminal", "md", "latex", "html", "csv", "json"])
def test_report_shows_the_probe_metric_in_every_format(probed, fmt):
    out, _, _, printed, _ = probed
    code, text, err = call("report", "--out", str(out), "--metric", "probe:stl10", "--format", fmt)
    assert code == 0, err
    kd = probe_values(out, "kd")
    mean, std = statistics.fmean(kd), statistics.stdev(kd)
    if fmt == "terminal":  # the probe command prints the report's own leaderboard
        assert text.startswith(printed.rstrip("\n"))
    elif fmt == "md":
        assert "### digits: linear-probe top-1 accuracy (%) on stl10" in text and f"{mean:.2f} ± {std:.2f}" in text
    elif fmt == "latex":
        assert "linear-probe top-1 accuracy (\\%) on stl10" in text and f"{mean:.2f} $\\pm$ {std:.2f}" in text
    elif fmt == "html":
        assert "linear-probe top-1 accuracy (%) on stl10" in text and f"{mean:.2f} ± {std:.2f}" in text
    elif fmt == "csv":
        line = next(ln for ln in text.splitlines() if ln.startswith("kd,resnet8->resnet8,"))
        fields = line.split(",")
        assert float(fields[2]) == pytest.approx(mean, abs=1e-4) and float(fields[3]) == pytest.approx(std, abs=1e-4)
        assert fields[4] == "2" and fields[9] == "probe:stl10"
    else:
        table = json.loads(text)["tables"][0]
        assert table["metric"] == "probe:stl10" and table["unit"] == "%"
        kd_cell = next(r for r in table["rows"] if r["name"] == "kd")["cells"]["resnet8->resnet8"]
        assert kd_cell["mean"] == pytest.approx(mean, rel=1e-9) and kd_cell["n"] == 2
        assert sorted(kd_cell["values"]) == sorted(kd)
        assert kd_cell["arrow"] in ("↑", "↓", "=")


def test_missing_and_partial_probes_say_which_command_adds_them(probed, tmp_path):
    out, _, _, _, _ = probed
    code, _, err = call("report", "--out", str(out), "--metric", "probe:tiny_imagenet")
    assert code == 2 and "no linear probes on tiny_imagenet" in err
    assert f"kdbench probe --out {out} --dataset digits --target tiny_imagenet" in err and "Traceback" not in err
    code, _, err = call("report", "--out", str(out), "--metric", "probe:stl1O")
    assert code == 2 and "Did you mean 'stl10'" in err
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    dropped = sorted(copy.glob("runs/digits/*/kd/*/probes/stl10-*.json"))[0]
    kept = json.loads(sorted(copy.glob("runs/digits/*/kd/*/probes/stl10-*.json"))[1].read_text())["probe_top1"]
    dropped.unlink()
    code, text, err = call("report", "--out", str(copy), "--metric", "probe:stl10", "--format", "md")
    assert code == 0, err
    assert f"{kept:.2f} ↑ (n=1/2)" in text or f"{kept:.2f} ↓ (n=1/2)" in text or f"{kept:.2f} = (n=1/2)" in text
    assert "1 done run(s) have no probe on stl10" in text and f"kdbench probe --out {copy} --dataset digits" in text


def test_probes_of_two_settings_are_never_averaged(probed, tmp_path, monkeypatch):
    out, data, _, _, _ = probed
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shrink_stl10(monkeypatch)
    code, printed, err = call("probe", "--out", str(copy), "--target", "stl10", "--data-root", str(data),
                              "--max-iter", "15", "--weight-decay", "0.01")
    assert code == 0, err and "linear-probe" in printed  # the command shows its own setting's table
    code, _, err = call("report", "--out", str(copy), "--metric", "probe:stl10")
    assert code == 2 and "2 settings, never averaged together" in err and "weight_decay=0.01" in err
    key = probe.probe_key("stl10", probe.ProbeConfig(weight_decay=0.01, max_iter=15))
    code, text, err = call("report", "--out", str(copy), "--metric", f"probe:stl10@{key}")
    assert code == 0, err
    assert text.startswith(printed.rstrip("\n"))
    code, _, err = call("report", "--out", str(copy), "--metric", "probe:stl10@000000000000")
    assert code == 2 and "no probes with key '000000000000'" in err


def test_an_imagefolder_target_goes_through_the_real_loader(probed, tmp_path):
    out, data, _, _, _ = probed
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    images = tmp_path / "my set"
    write_imagefolder(images, per_class=6, split=True, test_per_class=3, size=(16, 16))
    name = f"imagefolder:{images}"
    code, printed, err = call("-q", "probe", "--out", str(copy), "--target", name, "--max-iter", "10")
    assert code == 0, err
    assert f"linear-probe top-1 accuracy (%) on {name}" in printed
    files = list(copy.glob("runs/digits/*/*/*/probes/imagefolder_*.json"))
    assert len(files) == 5 and all(json.loads(f.read_text())["num_test"] == 9 for f in files)
    code, text, err = call("report", "--out", str(copy), "--metric", f"probe:{name}", "--format", "csv")
    assert code == 0 and f"probe:{name}" in text, err
    with pytest.MonkeyPatch.context() as mp:  # several targets: comma list and repeated flag, one table each
        shrink_stl10(mp)
        code, both, err = call("probe", "--out", str(copy), "--target", f"stl10,{name}", "--target", "stl10",
                               "--data-root", str(data), "--max-iter", "10")
    assert code == 0, err
    assert [line for line in both.splitlines() if "linear-probe top-1" in line] == [
        "digits: linear-probe top-1 accuracy (%) on stl10, mean ± std over seeds",
        f"digits: linear-probe top-1 accuracy (%) on {name}, mean ± std over seeds"]


def test_probe_errors_exit_2_with_one_clear_line(probed, tmp_path):
    out, data, _, _, _ = probed
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--target", "stl1O"], "unknown dataset 'stl1O'. Did you mean 'stl10'?"),
        (["--target", "stl10", "--dataset", "digit"], "Did you mean 'digits'?"),
        (["--target", "stl10", "--dataset", "cifar100"], "no done runs on dataset cifar100 in"),
        (["--target", "stl10", "--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
        (["--target", "stl10", "--max-iter", "0"], "--max-iter must be >= 1"),
        (["--target", "stl10", "--device", "tpu"], "--device 'tpu' is not a device"),
        (["--target", ","], "--target: name at least one dataset"),
    ]
    for extra, message in cases:
        code, _, err = call("probe", "--out", str(out), *extra)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
    assert "it holds done runs on: digits" in call("probe", "--out", str(out), "--target", "stl10", "--dataset",
                                                   "cifar100")[2]
    code, _, err = call("probe", "--out", str(tmp_path / "nothing"), "--target", "stl10")
    assert code == 2 and "no done runs in" in err and "kdbench run" in err
    assert not (tmp_path / "nothing").exists()
    before = sorted(p.name for p in out.glob("runs/digits/*/*/*/probes/*"))
    code, _, err = call("probe", "--out", str(out), "--target", "stl10", "--data-root", str(empty))
    assert code == 2 and str(empty) in err and "stl10_binary" in err and "Traceback" not in err
    assert sorted(p.name for p in out.glob("runs/digits/*/*/*/probes/*")) == before
