"""The numbers behind a report's marks: Welch's t-test, ranks and ARI.

* :func:`welch_test` — Welch's unequal-variances t-test (Welch 1947, "The generalization of
  'Student's' problem when several different population variances are involved",
  Biometrika 34): t = (m₁ − m₂) / √(s₁²/n₁ + s₂²/n₂) with the Welch–Satterthwaite degrees
  of freedom ν = (s₁²/n₁ + s₂²/n₂)² / ((s₁²/n₁)²/(n₁−1) + (s₂²/n₂)²/(n₂−1)), two-sided
  p = 2·P(T_ν > |t|). Deviation: when both cells have zero variance (identical values
  over the seeds, e.g. a deterministic run) the statistic is undefined; we return p = 0
  when the means differ and p = 1 when they are equal (t = ±inf / 0, ν = n₁ + n₂ − 2).
* :func:`t_two_sided_p` — P(|T_ν| > t) = I_{ν/(ν+t²)}(ν/2, 1/2), the regularized incomplete
  beta function (Abramowitz & Stegun 26.7.1 with 26.5.27), which :func:`betainc` evaluates
  by its continued fraction (A&S 26.5.8) with the modified Lentz algorithm (Lentz 1976;
  Thompson & Barnett 1986), using I_x(a, b) = 1 − I_{1−x}(b, a) where the fraction
  converges slowly (x > (a+1)/(a+b+2)). Written here rather than importing scipy.stats,
  whose import alone took 3–4 s on the (busy) development machine.
* :func:`fractional_ranks` — rank 1 for the best value; ties share the mean of the ranks
  they span (fractional ranking).
* :func:`ari` — average relative improvement (REFERENCE §6, as in the HKD paper, Zhou et
  al. 2021): ARI(X) = mean over pairs p of (acc_R,p − acc_X,p) / (acc_X,p − acc_student,p)
  × 100 %, R the reference method. Pairs where X equals the student (division by zero) or
  any of the three numbers is missing are left out of the mean (and counted).

Not to be confused with the adjusted Rand index (Hubert & Arabie 1985), which shares the
acronym and has nothing to do with this one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

#: Significance level of every arrow's test (two-sided).
ALPHA = 0.05


@dataclass(frozen=True)
class TestResult:
    """Welch's t-test of one cell against another: statistic, degrees of freedom, p-value."""

    t: float
    df: float
    p: float

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p < alpha


def mean_var(values: Sequence[float]) -> tuple[float, float]:
    """Mean and unbiased sample variance (n − 1 in the denominator)."""
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / (n - 1)


_TINY = 1e-300
_EPS = 1e-15
_MAX_TERMS = 10_000


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return math.exp(log_front) / a * _beta_fraction(x, a, b)


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (A&S 26.5.8), 1 / (1 + d1 / (1 + d2 / (1 + …)))
    with d_{2m+1} = −(a+m)(a+b+m)x / ((a+2m)(a+2m+1)) and d_{2m} = m(b−m)x / ((a+2m−1)(a+2m)):
    the denominator by modified Lentz (f = 1 + d1/(1 + …), C₀ = 1, D₀ = 0; tiny guards
    against division by zero), stopping when a step changes it by less than 1e-15."""
    f = 1.0
    c, d = 1.0, 0.0
    for k in range(1, _MAX_TERMS):
        if k % 2:
            m = (k - 1) // 2
            coeff = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            m = k // 2
            coeff = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coeff * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + coeff / c
        c = c if abs(c) > _TINY else _TINY
        f *= c * d
        if abs(c * d - 1.0) < _EPS:
            return 1.0 / f
    raise ArithmeticError(f"incomplete beta fraction did not converge (x={x}, a={a}, b={b})")


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| > |t|) for Student's t with ``df`` (real, > 0) degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return min(1.0, betainc(df / 2.0, 0.5, df / (df + t * t)))


def welch_test(a: Sequence[float], b: Sequence[float]) -> TestResult | None:
    """Welch's t-test of mean(a) against mean(b); ``None`` when either has fewer than two
    values (no test is possible)."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, va), (mb, vb) = mean_var(a), mean_var(b)
    qa, qb = va / len(a), vb / len(b)
    se2 = qa + qb
    if se2 == 0.0:
        diff = ma - mb
        return TestResult(math.copysign(math.inf, diff) if diff else 0.0, float(len(a) + len(b) - 2),
                          0.0 if diff else 1.0)
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / (qa ** 2 / (len(a) - 1) + qb ** 2 / (len(b) - 1))
    return TestResult(t, df, t_two_sided_p(t, df))


def fractional_ranks(values: dict[str, float], higher_is_better: bool = True) -> dict[str, float]:
    """Rank 1 for the best; tied values share the mean of their ranks."""
    order = sorted(values, key=lambda k: -values[k] if higher_is_better else values[k])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def ari(reference: Sequence[float | None], method: Sequence[float | None],
        student: Sequence[float | None]) -> tuple[float | None, int]:
    """ARI (percent) of the reference over ``method`` across pairs (aligned sequences), and
    how many pairs entered it."""
    terms = [(r - x) / (x - s) for r, x, s in zip(reference, method, student)
             if r is not None and x is not None and s is not None and x != s]
    return (100.0 * sum(terms) / len(terms) if terms else None), len(terms)
