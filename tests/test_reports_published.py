"""Published tables through kdbench, the statistics behind the marks, and --compare.

Expected values come from the CSVs read here with the csv module (the published numbers),
from closed forms, or from numbers written out by hand — never from the code under test.
"""
import csv
import json
import math
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.reports.stats import ari, betainc, fractional_ranks, t_two_sided_p, welch_test

PAPER = Path(__file__).resolve().parents[1] / "reports" / "paper_tables"


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def published(name):
    with open(PAPER / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cnn2gnn_cifar100_arrows_are_what_the_published_numbers_imply(capsys):
    rows = {r["method"]: r for r in published("cnn2gnn_cifar100")}
    pairs = [c for c in rows["kd"] if c != "method"]
    expected = {}
    for method, r in rows.items():
        if method in ("teacher", "kd"):
            continue
        for p in pairs:
            diff = float(r[p]) - float(rows["kd"][p])
            expected[(method, p)] = "=" if diff == 0 else ("↑" if diff > 0 else "↓")
    assert len(expected) == 13 * 9 and "=" in expected.values()  # vid on vgg13->vgg8 ties with KD (57.15)
    doc = json.loads(run(capsys, "report", "--table", "cnn2gnn_cifar100", "--format", "json"))
    got = {(r["name"], p): c["arrow"] for r in doc["tables"][0]["rows"] for p, c in r["cells"].items()
           if r["name"] not in ("teacher", "kd")}
    assert got == expected
    # the same arrows in the rendered Markdown table
    md = run(capsys, "report", "--table", "cnn2gnn_cifar100", "--format", "md")
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:2 + len(pairs)]]
             for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln}
    for (method, p), arrow in expected.items():
        assert lines[method][pairs.index(p)].split()[-1].strip("*") == arrow
    assert "No significance test: a published table prints no per-seed numbers." in md


def test_hkd_ari_reproduces_the_printed_column(capsys):
    for name, tolerance in (("hkd_tiny_imagenet", 0.005), ("hkd_cifar100", 0.25)):
        printed = {r["method"]: float(r["ari_percent"]) for r in published(name) if r["ari_percent"]}
        doc = json.loads(run(capsys, "report", "--table", name, "--format", "json"))
        table = doc["tables"][0]
        assert table["ari_reference"] == "hkd+kd"
        ours = {r["name"]: r["summary"]["ari"] for r in table["rows"] if r["name"] in printed}
        assert ours.keys() == printed.keys() and len(ours) == 9
        for method, value in printed.items():
            if tolerance < 0.01:  # "to the printed precision": equal after rounding to 2 decimals
                assert round(ours[method], 2) == value, (name, method, ours[method], value)
            else:
                assert abs(ours[method] - value) <= tolerance, (name, method, ours[method], value)
        printed_col = {r["name"]: r["summary"]["printed"] for r in table["rows"] if r["name"] in printed}
        assert printed_col == printed  # shown beside ours


def test_hkd_ari_one_row_by_hand():
    # kd on HKD's Tiny-ImageNet table, R = hkd+kd, student row: the paper's 123.18
    r = [56.18, 59.31, 49.57, 53.30, 52.62]
    x = [52.28, 57.27, 45.39, 51.50, 51.34]
    s = [49.91, 50.60, 44.20, 47.00, 47.00]
    by_hand = 100 * sum((ri - xi) / (xi - si) for ri, xi, si in zip(r, x, s)) / 5
    value, n = ari(r, x, s)
    assert n == 5 and value == pytest.approx(by_hand) and round(value, 2) == 123.18


def test_published_table_in_latex_keeps_arrows_and_bold(capsys):
    tex = run(capsys, "report", "--table", "hkd_tiny_imagenet", "--format", "latex")
    line = next(ln for ln in tex.splitlines() if ln.startswith("hkd+kd &"))
    assert line.count(r"\textbf{") == 5 and r"$\uparrow$" in line and line.rstrip().endswith("& ref & -- \\\\")
    assert "vanilla & 49.91 $\\pm$ 0.16" in tex  # the paper's student row, with its printed std


def test_unknown_published_table_lists_the_known_ones(capsys):
    assert main(["report", "--table", "nope"]) == 2
    assert "available: cnn2gnn_cifar100, cnn2gnn_mini_imagenet, hkd_cifar100, hkd_tiny_imagenet" in \
        capsys.readouterr().err


# -- --compare: the published number beside each reproduced cell ----------------------------

def test_compare_puts_the_paper_beside_each_cell(capsys, tmp_path):
    root = tmp_path / "out"
    recipe = {"epochs": 1, "batch_size": 64, "lr": 0.05}
    for method, teacher, student, seed, top1 in (("vanilla", None, "vgg8", 0, 50.0), ("kd", "vgg13", "vgg8", 0, 57.0),
                                                 ("kd", "vgg13", "vgg8", 1, 58.0), ("at", "vgg13", "vgg8", 0, 55.0)):
        row = {"dataset": "cifar100", "method": method, "teacher": teacher, "student": student, "seed": seed,
               "status": "done", "recipe": recipe, "epochs": 1, "run_key": f"{method}{seed}", "top1_last": top1,
               "top1_best": top1, "top5_last": 90.0, "top5_best": 90.0, "wall_time_s": 1.0, "teacher_key": "T"}
        d = root / "runs" / "cifar100" / f"{teacher or 'none'}__{student}" / method / f"s{seed}-{method}{seed}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(row))
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "phase": "main", "test_top1": top1}) + "\n")
    text = run(capsys, "report", "--out", str(root), "--compare", "cnn2gnn_cifar100")
    kd = next(ln for ln in text.splitlines() if ln.startswith("kd "))
    at = next(ln for ln in text.splitlines() if ln.startswith("at "))
    assert "57.50 ± 0.71 ↑ (paper 57.15, Δ +0.35)" in kd  # KD's arrow: against vanilla (50.00)
    assert "55.00 ↓ (n=1/2) (paper 57.10, Δ -2.10)" in at
    assert "the number printed in cnn2gnn_cifar100" in text
    doc = json.loads(run(capsys, "report", "--out", str(root), "--compare", "cnn2gnn_cifar100", "--format", "json"))
    cell = next(r for r in doc["tables"][0]["rows"] if r["name"] == "at")["cells"]["vgg13->vgg8"]
    assert cell["paper"] == 57.10 and cell["paper_diff"] == pytest.approx(55.0 - 57.10)


# -- the statistics --------------------------------------------------------------------------

def test_welch_closed_forms():
    # nu = 2 (n = 2 each, equal variances): P(|T| > t) = 1 - t / sqrt(2 + t^2)
    res = welch_test([77.0, 78.0], [73.0, 74.0])
    t = 4 / math.sqrt(0.5)
    assert (res.t, res.df) == (pytest.approx(t), pytest.approx(2.0))
    assert res.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-12)
    # nu -> 1 when one side has no spread relative to the other: Cauchy, P(|T| > t) = 1 - 2 atan(t) / pi
    res = welch_test([0.0, 2.0], [5.0, 5.0 + 1e-9])  # t = -4
    assert res.df == pytest.approx(1.0) and res.p == pytest.approx(1 - 2 * math.atan(abs(res.t)) / math.pi)
    # the textbook 5 % critical value of t with 4 degrees of freedom is 2.776 (two-sided)
    a, b = [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]  # t = 1 / sqrt(2/3) = 1.2247, nu = 4
    res = welch_test(a, b)
    assert res.df == pytest.approx(4.0) and res.t == pytest.approx(1 / math.sqrt(2 / 3)) and res.p > 0.05
    shift = 2.776 * math.sqrt(2 / 3)  # moves the difference onto the critical value
    assert welch_test([v + shift - 1 for v in a], b).p == pytest.approx(0.05, abs=2e-4)


def test_incomplete_beta_closed_forms():
    for x in (0.0, 0.013, 0.3, 0.5, 0.77, 0.999, 1.0):
        assert betainc(1.0, 1.0, x) == pytest.approx(x, abs=1e-14)  # uniform
        assert betainc(3.5, 1.0, x) == pytest.approx(x ** 3.5, abs=1e-14)  # I_x(a, 1) = x^a
        assert betainc(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-14)  # I_x(1, b) = 1 - (1-x)^b
    for a in (0.5, 2.0, 7.3, 150.0):
        assert betainc(a, a, 0.5) == pytest.approx(0.5, abs=1e-12)  # symmetry


def test_student_t_tail_against_tables_and_scipy():
    # two-sided 5 % and 1 % critical values of Student's t (printed tables, 3 decimals)
    for df, t05, t01 in ((1, 12.706, 63.657), (2, 4.303, 9.925), (5, 2.571, 4.032), (10, 2.228, 3.169),
                         (30, 2.042, 2.750)):
        assert t_two_sided_p(t05, df) == pytest.approx(0.05, abs=3e-5)
        assert t_two_sided_p(t01, df) == pytest.approx(0.01, abs=1e-5)
    assert t_two_sided_p(1.959964, 1e7) == pytest.approx(0.05, abs=1e-6)  # the normal limit
    assert t_two_sided_p(0.0, 3.0) == 1.0 and t_two_sided_p(math.inf, 3.0) == 0.0
    from scipy.stats import t as student_t  # an independent implementation, for real degrees of freedom

    for df in (1.0, 1.0555, 1.7, 2.0, 3.3, 8.0, 27.5, 400.0):
        for t in (0.01, 0.5, 1.0, 2.2, 4.0, 9.0, 35.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * student_t.sf(t, df), rel=1e-9, abs=1e-300)


def test_welch_degenerate_and_untestable():
    assert welch_test([1.0], [2.0, 3.0]) is None and welch_test([], []) is None
    assert welch_test([2.0, 2.0], [1.0, 1.0]).p == 0.0  # no spread, different means (documented deviation)
    assert welch_test([1.0, 1.0], [1.0, 1.0]).p == 1.0


def test_ranks_and_ari_edge_cases():
    assert fractional_ranks({"a": 3.0, "b": 1.0, "c": 3.0}) == {"a": 1.5, "c": 1.5, "b": 3.0}
    assert fractional_ranks({"a": 3.0, "b": 1.0}, higher_is_better=False) == {"b": 1.0, "a": 2.0}
    # a pair where the method equals the student (division by zero) or a number is missing is left out
    value, n = ari([60.0, 70.0, 80.0], [55.0, 65.0, None], [50.0, 65.0, 70.0])
    assert n == 1 and value == pytest.approx(100.0)
    assert ari([1.0], [None], [0.0]) == (None, 0)
