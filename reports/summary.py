"""Summary columns of a leaderboard: mean Δ against the baseline, mean rank over pairs, ARI.

* Δ: the mean over pairs of (row mean − baseline mean), over the pairs where both exist
  (the vanilla row too: what distillation adds).
* rank: methods (not teacher, not vanilla) are ranked in each pair by their mean (1 = best;
  fastest for a time table; ties share the mean rank), then ranks are averaged over the
  pairs where the method has a number.
* ARI of a reference method R over each other method (REFERENCE §6;
  :func:`kdbench.reports.stats.ari`), the vanilla row as the student. Not for time tables.

Where a row's number covers fewer pairs than the table has, ``counts`` says how many.
:func:`sort_rows` orders the method rows by one of them, best first; teacher and vanilla
stay on top, rows without the number go last (the ARI reference sorts as ARI 0, its value
over itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kdbench.reports.leaderboard import Table
from kdbench.reports.stats import ari, fractional_ranks

SORT_KEYS = ("delta", "rank", "ari")


@dataclass
class Summary:
    """Per-row summary numbers (``None`` where none could be computed)."""

    delta: dict[str, float | None] = field(default_factory=dict)
    rank: dict[str, float | None] = field(default_factory=dict)
    ari: dict[str, float | None] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (column, row) -> pairs it covers
    ari_ref: str | None = None  # the row ARI is computed for (R)
    published_ari: dict[str, float] = field(default_factory=dict)  # a published table's own ARI column
    pairs: int = 0

    def coverage(self, what: str, row: str) -> str:
        """``''`` when the number covers every pair, else ``' (k/N)'``."""
        k = self.counts.get((what, row), 0)
        return "" if k == self.pairs else f" ({k}/{self.pairs})"


def method_rows(table: Table) -> list[str]:
    return [r for r in table.rows if r not in ("teacher", table.base)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def resolve_row(table: Table, name: str | None) -> str | None:
    """The row for a method name (its first variant) or an exact row name."""
    if name is None:
        return None
    if name in table.rows:
        return name
    return next((r for r in table.rows if table.row_methods.get(r) == name), None)


def compute_summary(table: Table, ari_ref: str | None = None) -> Summary:
    """Δ, rank and ARI of every row of ``table`` (ARI only when ``ari_ref`` is a row)."""
    s = Summary(pairs=len(table.columns))
    timing = table.metric == "time"
    rows = [r for r in (table.base, table.reference) if r not in table.rows] + table.rows  # a table may lack them
    means = {(r, c): table.cell(r, c).mean for r in rows for c in table.columns}
    for row in [r for r in (table.base, *method_rows(table)) if r in table.rows]:
        diffs = [means[(row, c)] - means[(table.reference, c)] for c in table.columns
                 if means[(row, c)] is not None and means[(table.reference, c)] is not None]
        s.delta[row], s.counts[("delta", row)] = _mean(diffs), len(diffs)
    ranks: dict[str, list[float]] = {r: [] for r in method_rows(table)}
    for c in table.columns:
        present = {r: means[(r, c)] for r in ranks if means[(r, c)] is not None}
        for r, k in fractional_ranks(present, higher_is_better=not timing).items():
            ranks[r].append(k)
    for r, ks in ranks.items():
        s.rank[r], s.counts[("rank", r)] = _mean(ks), len(ks)
    s.ari_ref = resolve_row(table, ari_ref)
    if s.ari_ref is not None and not timing:
        ref = [means[(s.ari_ref, c)] for c in table.columns]
        student = [means[(table.base, c)] for c in table.columns]
        for r in method_rows(table):
            if r != s.ari_ref:
                s.ari[r], s.counts[("ari", r)] = ari(ref, [means[(r, c)] for c in table.columns], student)
    return s


def sort_rows(table: Table, summary: Summary, key: str) -> list[str]:
    """Table rows with the method rows ordered by ``key`` (delta, rank or ari), best first."""
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}; choose from {', '.join(SORT_KEYS)}")
    values = getattr(summary, key)
    sign = -1.0 if key == "delta" and table.metric != "time" else 1.0  # larger Δ first; rank and ARI: smaller

    def order(row: str) -> tuple:
        v = 0.0 if key == "ari" and row == summary.ari_ref else values.get(row)  # ARI(R) over itself is 0
        return (v is None, 0.0 if v is None else sign * v)

    head = [r for r in table.rows if r in ("teacher", table.base)]
    return head + sorted(method_rows(table), key=order)


def _kinds(table: Table) -> list[str]:
    s: Summary | None = table.summary
    if s is None:
        return []
    return ["delta", "rank"] + (["ari"] if s.ari_ref is not None and table.metric != "time" else []) + \
        (["printed"] if s.published_ari else [])


def summary_headers(table: Table) -> list[str]:
    """Headers of the summary columns a renderer appends ([] without a summary)."""
    unit = " (s)" if table.metric == "time" else ""
    names = {"delta": f"Δ vs {table.reference}{unit}", "rank": "mean rank",
             "ari": f"ARI of {table.summary.ari_ref if table.summary else ''} (%)", "printed": "ARI printed (%)"}
    return [names[k] for k in _kinds(table)]


def summary_values(table: Table, row: str) -> list[tuple[str, float | str | None]]:
    """``(kind, number)`` of ``row`` in :func:`summary_headers` order; the ARI reference's
    own ARI is ``"ref"``."""
    s: Summary | None = table.summary
    values = {"delta": lambda: s.delta.get(row), "rank": lambda: s.rank.get(row),
              "ari": lambda: "ref" if row == s.ari_ref else s.ari.get(row),
              "printed": lambda: s.published_ari.get(row)}
    return [(k, values[k]()) for k in _kinds(table)]


def summary_texts(table: Table, row: str) -> list[str]:
    """:func:`summary_values` as text: ``+1.23``, ``2.50``, ``12.34 (3/5)``; ``–`` where a
    number could not be computed, empty for the teacher and the baseline's Δ."""
    texts = []
    for kind, value in summary_values(table, row):
        if value is None:
            texts.append("" if row == "teacher" or (row == table.base and kind != "delta") else "–")
        elif isinstance(value, str):
            texts.append(value)
        else:
            text = f"{value:+.2f}" if kind == "delta" else f"{value:.2f}"
            texts.append(text + ("" if kind == "printed" else table.summary.coverage(kind, row)))
    return texts
