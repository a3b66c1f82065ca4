"""Golden files for every text format of ``kdbench report`` on a small results folder
written by hand in the store layout, and the numbers behind them checked independently.

The folder (:func:`make_folder`, dataset ``d``, 2 seeds, recipe: 2 epochs) holds:

* pair ``t->s``: vanilla [70, 71]; kd [73, 74]; at [77, 78] (↑, significant: t = 4/√0.5,
  ν = 2, p = 1 − t/√(2 + t²) = 0.0299); fitnets [74, 75] (↑, NOT significant: t = 1/√0.5,
  ν = 2, p = 0.293); sp [70, 76] (↓, unequal variances: Welch's ν = 1.06, p by numerical
  integration of the t density); ab one seed [75] (↑, not tested); crd one seed done [76]
  and one running (live lock held by this process); dkd two runs pending (spec.json only);
* pair ``t->s2``: vanilla [60, 62]; kd [64, 66]; at [65, 67]; fitnets failed; sp skipped;
* a teacher run (``T1``) and one submitted run that has not started (job.json only).

The golden files live in ``tests/data/report_golden/``; the folder's path is written as
``<out>`` and the embedded PNGs of the HTML page as ``<png>`` (the PNGs are checked apart).
Set ``KDBENCH_REGEN_GOLDEN=1`` to rewrite them after a deliberate change, then read the
diff: every number in them is checked below against values computed by hand.
"""
import base64
import json
import math
import os
import re
import socket
from pathlib import Path

import pytest

from kdbench.cli import main

GOLDEN = Path(__file__).parent / "data" / "report_golden"
RECIPE = {"epochs": 2, "batch_size": 32, "lr": 0.05}
TEACHER_RECIPE = {"epochs": 5, "batch_size": 32, "lr": 0.05}


def result_row(method, teacher, student, seed, top1, status="done", key=None, recipe=RECIPE, **kw):
    row = {"dataset": "d", "method": method, "teacher": teacher, "student": student, "seed": seed,
           "status": status, "recipe": recipe, "epochs": recipe["epochs"], "method_version": 1,
           "method_config": {}, "run_key": key or f"{method}-{teacher}-{student}-{seed}",
           "teacher_key": "T1" if teacher else None, "teacher_seed": 0 if teacher else None,
           "pair": f"{teacher}->{student}" if teacher else None}
    if status == "done":
        row.update(top1_last=top1, top1_best=top1 + 0.5, top5_last=99.0, top5_best=99.5, teacher_top1=80.0,
                   wall_time_s=10.0 * (seed + 1), student_params=1000 if student == "s" else 2000,
                   extra_params=50 if method == "crd" else 0, inference_params=1000 if student == "s" else 2000,
                   inference_stored_values=0, infer_ms_per_image=0.5)
    return {**row, **kw}


def write_run(root, row, files=("result.json",)):
    pair = f"{row['teacher'] or 'none'}__{row['student']}"
    run_dir = root / "runs" / "d" / pair / row["method"] / f"s{row['seed']}-{row['run_key']}"
    run_dir.mkdir(parents=True)
    if "result.json" in files:
        (run_dir / "result.json").write_text(json.dumps(row))
        if row["status"] == "done":
            top1, epochs = row["top1_last"], row["epochs"]
            lines = [{"epoch": e, "phase": "main", "test_top1": top1 - 10.0 * (epochs - e)} for e in range(1, epochs + 1)]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if "spec.json" in files:
        ident = {k: row[k] for k in ("dataset", "method", "method_config", "method_version", "recipe", "seed",
                                     "student", "teacher", "teacher_key")}
        (run_dir / "spec.json").write_text(json.dumps({"key": row["run_key"], "identity": ident,
                                                       "spec": {"teacher_seed": 0, "teacher_ckpt": None}}))
    if "lock" in files:
        (run_dir / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    if "job.json" in files:
        (run_dir / "job.json").write_text(json.dumps({"runner": "slurm", "job_id": "7_0"}))
    return run_dir


SEEDS = {("vanilla", "s"): [70.0, 71.0], ("kd", "s"): [73.0, 74.0], ("at", "s"): [77.0, 78.0],
         ("fitnets", "s"): [74.0, 75.0], ("sp", "s"): [70.0, 76.0], ("ab", "s"): [75.0],
         ("vanilla", "s2"): [60.0, 62.0], ("kd", "s2"): [64.0, 66.0], ("at", "s2"): [65.0, 67.0]}


def make_folder(root):
    write_run(root, result_row("vanilla", None, "t", 0, 80.0, key="T1", recipe=TEACHER_RECIPE, wall_time_s=100.0))
    for (method, student), values in SEEDS.items():
        for seed, top1 in enumerate(values):
            write_run(root, result_row(method, None if method == "vanilla" else "t", student, seed, top1))
    write_run(root, result_row("crd", "t", "s", 1, 76.0))
    write_run(root, result_row("crd", "t", "s", 0, None, status="running"), files=("spec.json", "lock"))
    for seed in (0, 1):
        write_run(root, result_row("dkd", "t", "s", seed, None, status="pending"), files=("spec.json",))
        write_run(root, result_row("fitnets", "t", "s2", seed, None, status="failed",
                                   error="NonFiniteLoss: loss is nan\ntraceback…"))
        write_run(root, result_row("sp", "t", "s2", seed, None, status="skipped", reason="needs a wider student"))
    write_run(root, result_row("ft", "t", "s", 0, None, status="pending"), files=("job.json",))
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "out")


def snapshot(root):
    """Every file under ``root`` with its bytes and mtime: a report must change nothing."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def report(capsys, folder, *args):
    code = main(["report", "--out", str(folder), *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def normalise(text, folder):
    text = text.replace(str(folder), "<out>")
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,<png>", text)


def rounded(obj):
    """JSON with floats to 10 significant digits (p-values may differ in the last bits
    between scipy versions)."""
    if isinstance(obj, float):
        return float(f"{obj:.10g}")
    if isinstance(obj, list):
        return [rounded(x) for x in obj]
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    return obj


def check_golden(name, text):
    path = GOLDEN / name
    if os.environ.get("KDBENCH_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    golden = path.read_bytes().decode()
    if name.endswith(".json"):
        text, golden = rounded(json.loads(text)), rounded(json.loads(golden))
    assert text == golden, f"{name} differs from the golden file (KDBENCH_REGEN_GOLDEN=1 rewrites it)"


FORMATS = {"terminal": "terminal.txt", "md": "report.md", "latex": "report.tex", "csv": "report.csv",
           "json": "report.json", "html": "report.html"}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_golden_file_per_format(capsys, folder, tmp_path, fmt):
    before = snapshot(folder)
    if fmt == "html":
        target = tmp_path / "report.html"
        report(capsys, folder, "--format", fmt, "--ari-ref", "at", "--output", str(target))
        text = target.read_text()
    else:
        text = report(capsys, folder, "--format", fmt, "--ari-ref", "at")
    check_golden(FORMATS[fmt], normalise(text, folder))
    assert snapshot(folder) == before  # nothing under the results folder was written or touched


# -- the numbers in the golden files, computed by hand -------------------------------------

def t_two_sided_p(t, df, steps=20000):
    """Two-sided p of Student's t by Simpson's rule on the density (independent of scipy)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    f = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = abs(t) / steps
    area = f(0) + f(abs(t)) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return 1 - 2 * area * h / 3


def welch_by_hand(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    qa, qb = va / len(a), vb / len(b)
    return (ma - mb) / math.sqrt(qa + qb), (qa + qb) ** 2 / (qa ** 2 / (len(a) - 1) + qb ** 2 / (len(b) - 1))


def json_report(capsys, folder):
    doc = json.loads(report(capsys, folder, "--format", "json", "--ari-ref", "at"))
    (table,) = doc["tables"]
    return doc, {r["name"]: r for r in table["rows"]}, table


def test_significant_and_not_significant_arrows(capsys, folder):
    _, rows, table = json_report(capsys, folder)
    at, fitnets, sp = (rows[m]["cells"]["t->s"] for m in ("at", "fitnets", "sp"))
    # at [77, 78] vs kd [73, 74]: equal variances 0.5, n = 2 each -> t = 4 / sqrt(0.5), Welch's nu = 2,
    # and for nu = 2 the t distribution has the closed form P(|T| > t) = 1 - t / sqrt(2 + t^2)
    t = 4 / math.sqrt(0.5)
    assert at["t"] == pytest.approx(t) and at["df"] == pytest.approx(2.0)
    assert at["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9) and at["p"] == pytest.approx(0.02986, abs=1e-5)
    assert at["arrow"] == "↑" and at["significant"] is True
    t = 1 / math.sqrt(0.5)  # fitnets [74, 75]: p = 1 - 1.414 / 2 = 0.293
    assert fitnets["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9) and fitnets["p"] == pytest.approx(0.29289, abs=1e-5)
    assert fitnets["arrow"] == "↑" and fitnets["significant"] is False
    # sp [70, 76] vs kd [73, 74]: unequal variances (18 and 0.5), nu = 9.25^2 / (9^2 + 0.25^2) = 1.0555
    t, df = welch_by_hand([70.0, 76.0], [73.0, 74.0])
    assert (t, df) == (pytest.approx(-0.5 / math.sqrt(9.25)), pytest.approx(9.25 ** 2 / (81 + 0.0625)))
    assert sp["t"] == pytest.approx(t) and sp["df"] == pytest.approx(df)
    assert sp["p"] == pytest.approx(t_two_sided_p(t, df), abs=1e-7) and sp["significant"] is False
    # one seed: ab [75] -> arrow, no test; kd's arrow is against vanilla [70, 71]: t = 3 / sqrt(0.5), nu = 2
    assert rows["ab"]["cells"]["t->s"]["significant"] is None and rows["ab"]["cells"]["t->s"]["arrow"] == "↑"
    kd = rows["kd"]["cells"]["t->s"]
    assert kd["p"] == pytest.approx(1 - (3 / math.sqrt(0.5)) / math.sqrt(2 + 18), rel=1e-9)
    assert table["test"] == "welch-two-sided" and table["alpha"] == 0.05


def test_the_text_formats_show_the_same_marks(capsys, folder):
    term = report(capsys, folder)
    line = {}
    for ln in term.split("cost per method")[0].splitlines():
        if ln.split():
            line.setdefault(ln.split()[0], ln)  # the table's row, not a failure line naming the method
    assert "77.50 ± 0.71 ↑*" in line["at"] and "74.50 ± 0.71 ↑ " in line["fitnets"] + " "
    assert "73.00 ± 4.24 ↓ " in line["sp"] and "75.00 ↑ (n=1/2)" in line["ab"]
    assert "76.00 ↑ (n=1/2, running)" in line["crd"] and "2 pending" in line["dkd"]
    assert "Welch's t-test (two-sided, α = 0.05)" in term and "Not tested (one seed on a side): 2 arrow(s)" in term
    assert "1 submitted run(s) have not started yet" in term
    md = report(capsys, folder, "--format", "md")
    assert "| at       | **77.50 ± 0.71 ↑***" in md
    tex = report(capsys, folder, "--format", "latex")
    assert r"\textbf{77.50 $\pm$ 0.71} $\uparrow^{*}$" in tex and r"74.50 $\pm$ 0.71 $\uparrow$ &" in tex


def test_one_seed_says_no_test_was_possible(capsys, tmp_path):
    root = tmp_path / "one"
    for method, top1 in (("vanilla", 70.0), ("kd", 73.0), ("at", 75.0)):
        write_run(root, result_row(method, None if method == "vanilla" else "t", "s", 0, top1))
    for fmt in ("terminal", "md", "latex"):
        text = " ".join(report(capsys, root, "--format", fmt).split())
        assert "No significance test was possible" in text and "Welch's t-test needs at least 2 seeds" in text
    doc = json.loads(report(capsys, root, "--format", "json"))
    assert all(c["significant"] is None for r in doc["tables"][0]["rows"] for c in r["cells"].values())


def test_summary_columns_by_hand(capsys, folder):
    _, rows, table = json_report(capsys, folder)
    assert table["summary_columns"] == ["Δ vs kd", "mean rank", "ARI of at (%)"]
    # delta: mean over pairs of (row - kd); at: (77.5 - 73.5 + 66 - 65) / 2
    assert rows["at"]["summary"]["delta"] == pytest.approx((4.0 + 1.0) / 2)
    assert rows["vanilla"]["summary"]["delta"] == pytest.approx((70.5 - 73.5 + 61 - 65) / 2)
    # ranks on t->s among methods with a number: at 77.5, crd 76, ab 75, fitnets 74.5, kd 73.5, sp 73
    # on t->s2: at 66, kd 65
    assert rows["at"]["summary"]["rank"] == pytest.approx(1.0)
    assert rows["kd"]["summary"]["rank"] == pytest.approx((5 + 2) / 2)
    assert rows["sp"]["summary"]["rank"] == pytest.approx(6.0)
    # ARI of at over kd: mean of (77.5 - 73.5) / (73.5 - 70.5) and (66 - 65) / (65 - 61), in %
    assert rows["kd"]["summary"]["ari"] == pytest.approx(100 * (4 / 3 + 1 / 4) / 2)
    assert rows["fitnets"]["summary"]["ari"] == pytest.approx(100 * (3 / 4))  # only t->s
    assert rows["at"]["summary"]["ari"] == "ref"


def test_sorting_by_each_summary_column(capsys, folder):
    def order(key):
        doc = json.loads(report(capsys, folder, "--format", "json", "--ari-ref", "at", "--sort", key))
        return [r["name"] for r in doc["tables"][0]["rows"]]

    # fixed rows first; then best first; rows without the number last
    assert order("rank") == ["teacher", "vanilla", "at", "crd", "ab", "kd", "fitnets", "sp", "dkd"]
    assert order("delta")[:5] == ["teacher", "vanilla", "at", "crd", "ab"]
    assert order("ari")[2:5] == ["at", "crd", "ab"]  # at is the reference: ARI over itself 0


def test_cost_table_by_hand(capsys, folder):
    doc, _, _ = json_report(capsys, folder)
    (cost,) = doc["costs"]
    rows = {r["method"]: r for r in cost["rows"]}
    assert rows["kd"]["runs"] == 4 and rows["kd"]["wall s/run"] == pytest.approx(15.0)  # seeds 0, 1: 10 s, 20 s
    assert rows["kd"]["wall s total"] == pytest.approx(60.0) and rows["kd"]["student params"] == [1000, 2000]
    assert rows["crd"]["extra train params"] == 50 and rows["crd"]["runs"] == 1 and rows["crd"]["runs_total"] == 2
    assert rows["dkd"]["runs"] == 0 and rows["fitnets"]["runs"] == 2 and rows["fitnets"]["runs_total"] == 4
    assert cost["teachers_trained"] == 1 and cost["teachers_wall_s"] == 100.0


def test_html_page_is_self_contained_with_the_plots(capsys, folder, tmp_path):
    from PIL import Image
    import io

    target = tmp_path / "r.html"
    report(capsys, folder, "--format", "html", "--output", str(target), "--plots", str(tmp_path / "png"))
    page = target.read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page and "@import" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for src in srcs:
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and img.size[0] > 200 and sum(1 for c in img.convert("L").histogram() if c) > 10
    assert '<span class="up">↑*</span>' in page and '<span class="down">↓</span>' in page
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "accuracy_vs_params.png", "accuracy_vs_time.png", "pair_bars.png", "training_curves.png"]


def test_never_writes_into_the_results_folder(capsys, folder):
    for flag in ("--output", "--plots"):
        code = main(["report", "--out", str(folder), "--format", "html", flag, str(folder / "report.html")])
        assert code == 2 and "inside the results folder" in capsys.readouterr().err
    assert not (folder / "report.html").exists()


LATEX_SPECIALS = re.compile(r"(?<!\\)[%&_#]")


def test_latex_structure(capsys, folder):
    """No LaTeX engine is installed here (pdflatex absent), so the test checks what makes a
    booktabs table compile: the rules in order, balanced braces and math, one & per column
    gap, and every %, &, _ and # outside commands escaped."""
    tex = report(capsys, folder, "--format", "latex", "--ari-ref", "at")
    tables = tex.split(r"\end{table}")[:-1]
    assert len(tables) == 2  # the leaderboard and the cost table
    for t in tables:
        body = "\n".join(ln for ln in t.splitlines() if not ln.lstrip().startswith("%"))
        assert body.index(r"\toprule") < body.index(r"\midrule") < body.index(r"\bottomrule")
        assert body.count("{") == body.count("}") and body.count("$") % 2 == 0
        ncols = len(re.search(r"\\begin\{tabular\}\{([lcr]+)\}", body).group(1))
        rows = [ln for ln in body.splitlines() if ln.endswith(r"\\") and "&" in ln]
        assert rows and all(len(re.findall(r"(?<!\\)&", ln)) == ncols - 1 for ln in rows)
        for ln in body.splitlines():
            assert not LATEX_SPECIALS.search(ln.replace("&", "")), ln


@pytest.mark.slow
def test_html_page_in_headless_chromium(capsys, folder, tmp_path):
    """Debian's ``chromium`` opens the page from disk: the screenshot is not blank (many
    colours, the green and red arrows among them) and the page's own check says every
    plot decoded."""
    import shutil
    import subprocess

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    page = tmp_path / "r.html"
    report(capsys, folder, "--format", "html", "--output", str(page))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,2400",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-loaded="4/4"' in dom
    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200  # text, tables, four plots: far from a blank page
    present = {c for _, c in colours}
    assert (0x1a, 0x7f, 0x37) in present and (0xcf, 0x22, 0x2e) in present  # green ↑ and red ↓


def test_latex_compiles_where_an_engine_is_installed(capsys, folder, tmp_path):
    import shutil
    import subprocess

    engine = shutil.which("pdflatex")
    if engine is None:
        pytest.skip("no pdflatex here (TeX Live is not installed; test_latex_structure checks what compiling needs)")
    tex = report(capsys, folder, "--format", "latex", "--ari-ref", "at")
    doc = tmp_path / "paper.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex + "\\end{document}\n")
    done = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "paper.pdf").exists(), done.stdout[-2000:]
