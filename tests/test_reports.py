"""The leaderboard from synthetic result rows; expected numbers computed by hand."""
import statistics

import pytest

from kdbench.reports.leaderboard import build_leaderboard, build_leaderboards, one_line, rows_frame
from kdbench.reports.render import format_cell, render_csv, render_markdown, render_tables, render_terminal


def row(method, teacher, student, seed, top1, status="done", **kw):
    return {"dataset": "d", "method": method, "teacher": teacher, "student": student, "seed": seed,
            "status": status, "top1_last": top1, "top1_best": None if top1 is None else top1 + 1,
            "wall_time_s": 10.0 + seed, "teacher_top1": 80.0 if teacher else None, **kw}


def synthetic():
    return rows_frame([
        row("vanilla", None, "s", 0, 70.0), row("vanilla", None, "s", 1, 72.0),
        row("kd", "t", "s", 0, 73.0), row("kd", "t", "s", 1, 74.0),
        row("at", "t", "s", 0, 75.0), row("at", "t", "s", 1, 76.0),
        row("fitnets", "t", "s", 0, 71.0),  # one seed missing
        row("sp", "t", "s", 0, None, status="failed", error="NonFiniteLoss: boom"),
        row("sp", "t", "s", 1, None, status="failed", error="NonFiniteLoss: boom"),
        row("ab", "t", "s", 0, None, status="skipped", reason="needs preact"),
        row("ab", "t", "s", 1, None, status="skipped", reason="needs preact"),
        row("kd", "t", "s2", 0, 60.0), row("vanilla", None, "s2", 0, 61.0),
    ])


def test_cells_means_stds_arrows_and_marks():
    table = build_leaderboard(synthetic(), "d", "last", expected_seeds=2)
    assert table.columns == ["t->s", "t->s2"]
    assert table.rows[:3] == ["teacher", "vanilla", "kd"]
    kd = table.cell("kd", "t->s")
    assert kd.mean == 73.5 and abs(kd.std - statistics.stdev([73.0, 74.0])) < 1e-12 and kd.arrow == "↑"
    at = table.cell("at", "t->s")
    assert at.mean == 75.5 and at.arrow == "↑" and at.best
    fit = table.cell("fitnets", "t->s")
    assert fit.arrow == "↓" and fit.partial and format_cell(fit) == "71.00 ↓ (n=1/2)"
    assert table.cell("sp", "t->s").status == "failed" and table.cell("ab", "t->s").status == "skipped"
    assert table.cell("vanilla", "t->s").mean == 71.0  # shared vanilla run of student s
    assert table.cell("teacher", "t->s").mean == 80.0
    assert table.cell("kd", "t->s2").arrow == "↓"  # KD's arrow is against vanilla
    assert any("ab skipped on t->s: needs preact" in n for n in table.notes)
    assert len(table.failures) == 2


def test_best_metric_and_time_table():
    best = build_leaderboard(synthetic(), "d", "best", expected_seeds=2)
    assert best.cell("kd", "t->s").mean == 74.5
    time = build_leaderboard(synthetic(), "d", "time", expected_seeds=2)
    assert time.cell("kd", "t->s").mean == 10.5 and time.cell("kd", "t->s").arrow == ""
    assert time.cell("fitnets", "t->s").best  # fastest (10.0)


def test_renderers_show_the_same_content():
    table = build_leaderboard(synthetic(), "d", "last", expected_seeds=2)
    term = render_terminal(table)
    assert "75.50 ± 0.71 ↑ (best)" in term and "skip" in term and "fail" in term and "2 failed run(s)" in term
    md = render_markdown(table)
    assert "**75.50 ± 0.71 ↑**" in md and md.startswith("### d: top-1")
    csv_text = render_csv(table)
    assert "at,t->s,75.5000,0.7071,2,2,↑,1,done" in csv_text


# -- never mixing what differs in the run key ----------------------------------------------

def keyed(method, teacher, student, seed, top1, epochs=2, config=None, teacher_key="T1", **kw):
    """A result row as the store holds it: recipe, resolved options and teacher key."""
    base = row(method, teacher, student, seed, top1, **kw)
    base.update(recipe={"epochs": epochs, "batch_size": 32, "lr": 0.05}, method_version=1,
                method_config=config or {}, run_key=f"{method}-{teacher}-{student}-{seed}-{epochs}-{config}",
                teacher_key=teacher_key if teacher else None, teacher_seed=0 if teacher else None)
    return base


def teacher_run(key, epochs, top1=80.0, top5=95.0):
    return {**keyed("vanilla", None, "t", 0, top1, epochs=epochs), "run_key": key, "top5_last": top5,
            "top1_best": top1 + 2}


def test_two_recipes_in_one_folder_are_two_tables_never_averaged():
    # the folder: a --epochs 2 grid, then --epochs 1 into the same --out
    df = rows_frame([teacher_run("T1", 15),
                     keyed("vanilla", None, "s", 0, 60.0, epochs=2), keyed("kd", "t", "s", 0, 62.0, epochs=2),
                     keyed("vanilla", None, "s", 0, 20.0, epochs=1), keyed("kd", "t", "s", 0, 22.0, epochs=1)])
    tables = build_leaderboards(df, "d", "last")
    assert [t.caption for t in tables] == ["runs with epochs 1, batch 32, lr 0.05; teachers: 15 epochs, seed 0",
                                           "runs with epochs 2, batch 32, lr 0.05; teachers: 15 epochs, seed 0"]
    assert [t.cell("vanilla", "t->s").mean for t in tables] == [20.0, 60.0]
    assert all(t.cell("vanilla", "t->s").n == 1 and t.cell("kd", "t->s").n == 1 for t in tables)
    with pytest.raises(ValueError, match="2 recipes"):
        build_leaderboard(df, "d", "last")
    text = render_tables(tables)
    assert "epochs 1, batch 32" in text and "epochs 2, batch 32" in text
    assert "40.00" not in text and "28.28" not in text  # the mean ± std of both recipes' vanilla runs
    csv_lines = render_tables(tables, "csv").splitlines()
    assert csv_lines[0] == "row,pair,mean,std,n,expected,arrow,best,status,metric,runs,t,df,p,significant,paper,paper_diff"
    assert "vanilla,t->s,20.0000,0.0000,1,1,,0,done,last,runs with epochs 1, batch 32" in csv_lines[2].replace('"', "")
    assert sum(line.startswith("row,") for line in csv_lines) == 1 and len(csv_lines) == 1 + 2 * 3


def test_other_options_are_other_rows_and_other_teachers_other_columns():
    df = rows_frame([teacher_run("T1", 15), teacher_run("T2", 5, top1=70.0),
                     keyed("vanilla", None, "s", 0, 60.0),
                     keyed("kd", "t", "s", 0, 62.0, config={"temperature": 4.0}),
                     keyed("kd", "t", "s", 1, 64.0, config={"temperature": 4.0}),
                     keyed("kd", "t", "s", 0, 50.0, config={"temperature": 2.0}),
                     keyed("at", "t", "s", 0, 66.0, teacher_key="T2")])
    table = build_leaderboard(df, "d", "last")
    assert table.rows == ["teacher", "vanilla", "kd [temperature=4.0]", "kd [temperature=2.0]", "at"]
    assert table.columns == ["t->s [teacher 15 epochs, seed 0]", "t->s [teacher 5 epochs, seed 0]"]
    first, second = table.columns
    assert table.cell("kd [temperature=4.0]", first).mean == 63.0  # seeds only
    assert table.cell("kd [temperature=2.0]", first).mean == 50.0
    assert table.cell("kd [temperature=2.0]", first).arrow == "↓"  # against the first kd variant
    assert table.cell("at", first).status == "missing" and table.cell("at", second).mean == 66.0
    assert table.cell("teacher", first).mean == 80.0 and table.cell("teacher", second).mean == 70.0
    assert table.reference == "kd [temperature=4.0]" and "below kd [temperature=4.0]" in render_terminal(table)


def test_top5_and_best_tables_show_the_teacher_in_the_same_metric():
    df = rows_frame([teacher_run("T1", 15, top1=80.0, top5=97.0), keyed("vanilla", None, "s", 0, 60.0),
                     {**keyed("kd", "t", "s", 0, 62.0), "top5_last": 90.0}])
    top5 = build_leaderboard(df, "d", "top5")
    assert top5.title == "d: top-5 accuracy (%), last epoch, mean ± std over seeds"
    assert top5.cell("teacher", "t->s").mean == 97.0 and top5.cell("kd", "t->s").mean == 90.0
    assert build_leaderboard(df, "d", "best").cell("teacher", "t->s").mean == 82.0
    # a supplied checkpoint has a top-1 (measured once) but no top-5
    ckpt = rows_frame([keyed("vanilla", None, "s", 0, 60.0),
                       {**keyed("kd", "t", "s", 0, 62.0, teacher_key="file-abc"), "teacher_ckpt": "/c/t.pth",
                        "top5_last": 90.0}])
    assert format_cell(build_leaderboard(ckpt, "d", "top5").cell("teacher", "t->s")) == "n/a"
    assert build_leaderboard(ckpt, "d", "last").cell("teacher", "t->s").mean == 80.0
    assert "teachers: checkpoint t.pth" in build_leaderboard(ckpt, "d", "last").caption


def test_failures_are_one_line_each_with_the_run_folder_and_the_retry_hint():
    missing = ", ".join(f'"layer{i}.conv.weight"' for i in range(600))  # the 13.5 KB missing-keys list
    error = f"RuntimeError: Error(s) in loading state_dict for ResNet:\n\tMissing key(s) in state_dict: {missing}"
    one_huge_line = "ValueError: " + "x" * 5000
    df = rows_frame([keyed("vanilla", None, "s", 0, 60.0),
                     keyed("kd", "t", "s", 0, None, status="failed", error=error, run_dir="/out/runs/d/kd/s0"),
                     keyed("at", "t", "s", 0, None, status="failed", error=one_huge_line, run_dir="/out/runs/d/at/s0")])
    text = render_terminal(build_leaderboard(df, "d", "last"))
    assert "layer1.conv" not in text and "x" * 300 not in text
    assert "2 failed run(s) (re-run the same command to retry" in text
    assert ("kd on t->s seed 0: RuntimeError: Error(s) in loading state_dict for ResNet: […]  [/out/runs/d/kd/s0]"
            in text)
    line = [ln for ln in text.splitlines() if ln.strip().startswith("at on")][0]
    assert line.endswith("[/out/runs/d/at/s0]") and len(line) < 260
    assert one_line(error) == "RuntimeError: Error(s) in loading state_dict for ResNet: […]"
    assert len(one_line(one_huge_line)) <= 200
