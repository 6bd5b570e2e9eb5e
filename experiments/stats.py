"""
experiments/stats.py: the statistics every experiment reads its runs with, decided before the runs.

    paired_summary(on, off)   per-seed differences d = on - off: mean, 95% t interval, the paired t
                              p and the exact sign-flip p (the test the readings use)
    holm(p_values)            Holm's step-down adjustment over one family of tests
    mcnemar_exact(on, off)    collapse counts of two arms that share their seeds (paired)
    fisher_exact(...)         collapse counts of two arms that do not share seeds
    welch(x, y)               two independent samples (the study's fine-tunes)
    mean_ci95, mean_interval  a mean over seeds and its 95% interval; mean_text and
                              interval_text write them in the tables

Why an exact sign-flip test: under "the switch changes nothing", each seed's difference is as
likely to be +d as -d, so the 2^n ways of flipping the signs are equally likely; p is the share of
them whose mean is at least as far from 0 as the observed one. It assumes no normal distribution,
which five to twenty seeds cannot check. Its smallest possible p is 2 / 2^n: with 5 seeds 0.0625,
so a cell of 5 seeds can never be separable at 5% by it, however large its effect.

Why Holm: a table of 19 tests at 5% finds about one "effect" by chance. Holm's adjustment keeps the
chance of any false finding in a family at 5%; "separable" means an adjusted p below 0.05.

No scipy: Student's t distribution comes from the regularised incomplete beta function below.
"""

import math

import numpy as np

ALPHA = 0.05
MAX_EXACT_SEEDS = 40  # 2^20 partial sums per half: a second of sorting and searching

# -----------------------------------------------------------------------------
# Student's t distribution


def incomplete_beta(a, b, x):
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz's
    method), used on the side where it converges fast."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the other side converges faster: I_x(a, b) = 1 - I_1-x(b, a)
        return 1.0 - incomplete_beta(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log(1 - x) - math.log(a) - log_beta(a, b)
    return math.exp(log_front) * beta_continued_fraction(a, b, x)


def log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_continued_fraction(a, b, x, tiny=1e-300, tolerance=1e-15):
    """The continued fraction of I_x(a, b) (Numerical Recipes' betacf), to double precision."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 1000):
        for term in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                     -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + term * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + term / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < tolerance:
            break
    return f


def t_two_sided_p(t, df):
    """P(|T| >= |t|) for Student's T with df degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_quantile(q, df):
    """The q-quantile of Student's T (q > 0.5), by bisection on t_two_sided_p."""
    low, high = 0.0, 1e3
    for _ in range(200):
        mid = (low + high) / 2
        if t_two_sided_p(mid, df) / 2 > 1 - q:
            low = mid
        else:
            high = mid
    return (low + high) / 2


# -----------------------------------------------------------------------------
# A mean over seeds with its 95% interval, and how the tables write one

T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]  # Student's t, 0.975 quantile, 1 to 30 degrees of freedom


def mean_ci95(values):
    """Mean and half-width of its 95% confidence interval over seeds,
    t_{0.975, n-1} * sample std / sqrt(n), t from the table T_975 (1.96 beyond 30 seeds): the
    sweep's and the study's tables. One value has no interval (nan)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else math.nan), math.nan
    t = T_975[len(x) - 2] if len(x) - 1 <= len(T_975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


def mean_interval(values):
    """Mean and 95% half-width of per-seed values as mean_ci95, with t_quantile's exact t: the
    figures of the regime map and the confirmations. Below two values the half-width is nan."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), math.nan
    t = t_quantile(0.975, len(values) - 1)
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


def mean_text(mean_and_half, digits=3):
    """ "0.683 ± 0.111"; the mean alone where there is no interval; "n/a" where there is no
    number."""
    mean, half = mean_and_half
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def interval_text(mean, half, digits=3):
    """A signed difference with its interval: "+0.156 [+0.009, +0.303]"; the difference alone
    where there is no interval; "n/a" where there is no number."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(half):
        return f"{mean:+.{digits}f}"
    low, high = mean - half, mean + half
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


# -----------------------------------------------------------------------------
# Paired differences


def sign_flip_p(d):
    """Exact two-sided sign-flip p of the differences d: the share of the 2^n sign patterns whose
    |sum| is at least the observed |sum| (to a tolerance of float rounding). 1.0 for no data or
    all zeros; a ValueError above MAX_EXACT_SEEDS differences.

    Counted without listing the 2^n sums: split d in two halves, list the 2^(n/2) signed sums of
    each, sort one list, and for each sum a of the other count the sums b with a + b >= |observed|
    or a + b <= -|observed| by binary search (meet in the middle)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0 or not np.any(d):
        return 1.0
    if n > MAX_EXACT_SEEDS:
        raise ValueError(f"an exact sign-flip test counts 2^n patterns; n = {n} is more than "
                         f"{MAX_EXACT_SEEDS}")
    tolerance = 1e-9 * max(1.0, float(np.abs(d).sum()))  # sums equal but for float rounding tie
    if abs(d.sum()) <= tolerance:  # every pattern is at least as far from 0 as a sum of 0
        return 1.0
    observed = abs(d.sum()) - tolerance
    left = signed_sums(d[: n // 2])  # (2^(n//2),)
    right = np.sort(signed_sums(d[n // 2:]))  # (2^(n - n//2),)
    high = len(right) - np.searchsorted(right, observed - left, side="left")  # a + b >= observed
    low = np.searchsorted(right, -observed - left, side="right")  # a + b <= -observed
    return float((high + low).sum()) / 2 ** n


def signed_sums(d):
    """The 2^len(d) sums +-d_0 +-d_1 ... (one element, 0, for an empty d)."""
    sums = np.zeros(1)
    for x in d:
        sums = np.concatenate([sums + x, sums - x])
    return sums


def paired_summary(on, off):
    """on, off: one number per seed, the same seeds in the same order. Returns the per-seed
    differences d = on - off, their mean, the half-width of its 95% interval
    t_{0.975, n-1} sd(d) / sqrt(n), the paired t test's p, and the exact sign-flip p. Below two
    seeds, or where a number is missing (nan), there is no interval and no p (nan)."""
    d = np.asarray(on, dtype=float) - np.asarray(off, dtype=float)
    summary = dict(d=[float(x) for x in d], mean=float(d.mean()) if len(d) else math.nan,
                   half=math.nan, p_t=math.nan, p=math.nan)
    if len(d) < 2 or np.isnan(d).any():
        return summary
    n, sd = len(d), float(d.std(ddof=1))
    summary["half"] = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    t = summary["mean"] / (sd / math.sqrt(n)) if sd > 0 else (0.0 if d.mean() == 0 else math.inf)
    summary["p_t"] = t_two_sided_p(t, n - 1)
    summary["p"] = sign_flip_p(d)
    return summary


def effect_text(summary):
    """ "+0.123 (p 0.456)" of a paired_summary, its raw p; "n/a" where it has no p."""
    if math.isnan(summary["p"]):
        return "n/a"
    return f"{summary['mean']:+.3f} (p {p_text(summary['p'])})"


def exploratory_table(heads, rows, measures):
    """Markdown lines of a table of exploratory effects (raw p): heads, the leading columns'
    names; rows, per test (its leading cells, its {measure: paired_summary})."""
    lines = ["| " + " | ".join(list(heads) + list(measures)) + " |",
             "|" + " --- |" * (len(heads) + len(measures))]
    for cells, effects in rows:
        shown = list(cells) + [effect_text(effects[m]) for m in measures]
        lines.append("| " + " | ".join(shown) + " |")
    return lines


def holm(p_values):
    """Holm's step-down adjustment of a family's p values (nan: not a test, left out; its
    adjusted p is nan). Sorted ascending, the k-th smallest p (k from 0) becomes
    max over j <= k of min(1, (m - j) p_(j)), m the number of tests."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), math.nan)
    order = tested[np.argsort(p[tested], kind="stable")]
    m, running = len(order), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def p_text(p):
    """A p value for a table: three decimals, "<0.001" below that, "n/a" where there is none."""
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def t_p_from_interval(mean, half, n):
    """The paired t test's two-sided p recovered from a mean difference and the half-width of its
    95% interval over n seeds (half = t_{0.975, n-1} sd / sqrt(n), so t = mean t_{0.975} / half):
    for results saved before the per-seed values were kept. nan where there is no interval."""
    if n < 2 or math.isnan(mean) or math.isnan(half):
        return math.nan
    if half == 0:
        return 1.0 if mean == 0 else 0.0
    return t_two_sided_p(mean * t_quantile(0.975, n - 1) / half, n - 1)


# -----------------------------------------------------------------------------
# Counts: how many runs of an arm collapsed


def mcnemar_exact(on, off):
    """on, off: per seed, whether the run collapsed (the same seeds in the same order). Exact
    McNemar test: under "no difference", of the discordant seeds (one arm collapsed, the other
    not) each is as likely one way as the other, so their split is Binomial(n, 1/2). Two-sided p;
    1.0 when no seed is discordant."""
    if len(on) != len(off):
        raise ValueError(f"expected one outcome per seed in each arm, got {len(on)} and {len(off)}")
    only_on = sum(bool(a) and not bool(b) for a, b in zip(on, off))
    only_off = sum(bool(b) and not bool(a) for a, b in zip(on, off))
    n = only_on + only_off
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_on, only_off) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def fisher_exact(hits_a, n_a, hits_b, n_b):
    """Fisher's exact test of hits_a of n_a against hits_b of n_b, two-sided: the probability,
    with the margins fixed, of every table no more likely than the one observed."""
    for hits, n in ((hits_a, n_a), (hits_b, n_b)):
        if not 0 <= hits <= n:
            raise ValueError(f"expected 0 <= hits <= n, got {hits} of {n}")
    hits = hits_a + hits_b

    def chance(k):  # k hits in arm a, the margins fixed (hypergeometric)
        return math.comb(n_a, k) * math.comb(n_b, hits - k) / math.comb(n_a + n_b, hits)

    observed = chance(hits_a)
    possible = range(max(0, hits - n_b), min(hits, n_a) + 1)
    return min(1.0, sum(chance(k) for k in possible if chance(k) <= observed * (1 + 1e-9)))


# -----------------------------------------------------------------------------
# Two independent samples


def welch(x, y):
    """Welch's t test of mean(x) - mean(y), no equal variances assumed: the difference, the
    half-width of its 95% interval and the two-sided p, with the Welch-Satterthwaite degrees of
    freedom. nan where either sample has fewer than two values."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return dict(diff=diff, half=math.nan, p=math.nan, df=math.nan)
    vx, vy = float(x.var(ddof=1)) / len(x), float(y.var(ddof=1)) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return dict(diff=diff, half=0.0, p=1.0 if diff == 0 else 0.0, df=math.nan)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = t_quantile(0.975, df) * se
    return dict(diff=diff, half=half, p=t_two_sided_p(diff / se, df), df=float(df))


# -----------------------------------------------------------------------------
# Planning: how many seeds a paired comparison needs


def power_of(n, effect, sd, alpha=ALPHA):
    """The chance that a paired t test of level alpha (two-sided) on n seeds detects a true mean
    difference `effect` when the per-seed differences spread with standard deviation sd, by the
    normal approximation of the noncentral t: Phi(|effect| sqrt(n) / sd - t_{1-alpha/2, n-1}).
    The exact sign-flip test has a little less power than this."""
    shift = abs(effect) * math.sqrt(n) / sd
    return normal_cdf(shift - t_quantile(1 - alpha / 2, n - 1))


def seeds_for_power(effect, sd, alpha=ALPHA, power=0.8, most=200):
    """The fewest seeds (at least 2, at most `most`) at which power_of reaches `power`."""
    return next((n for n in range(2, most + 1) if power_of(n, effect, sd, alpha) >= power), most)


def normal_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def smallest_sign_flip_p(n):
    """The smallest p an exact two-sided sign-flip test of n differences can give: 2 / 2^n."""
    return min(1.0, 2 / 2 ** n)

