"""The leaderboard from synthetic result rows; expected numbers computed by hand."""
import statistics

from kdbench.reports.leaderboard import build_leaderboard, rows_frame
from kdbench.reports.render import format_cell, render_csv, render_markdown, render_terminal


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
    assert "75.50 ± 0.71 ↑ *" in term and "skip" in term and "fail" in term and "2 failed run(s)" in term
    md = render_markdown(table)
    assert "**75.50 ± 0.71 ↑**" in md and md.startswith("### d: top-1")
    csv_text = render_csv(table)
    assert "at,t->s,75.5000,0.7071,2,2,↑,1,done" in csv_text
