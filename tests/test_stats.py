"""experiments/stats.py: each test statistic on a sample whose answer is known by hand."""

import math

import pytest

from experiments import stats


def test_student_t_p_and_quantile_match_the_tables():
    assert stats.t_two_sided_p(2.228, 10) == pytest.approx(0.05, abs=2e-5)  # t_{0.975, 10} = 2.228
    assert stats.t_two_sided_p(12.706, 1) == pytest.approx(0.05, abs=1e-5)
    assert stats.t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert stats.t_quantile(0.975, 29) == pytest.approx(2.045, abs=1e-3)


def test_sign_flip_p_counts_the_sign_patterns_at_least_as_extreme():
    # d = 1, 2, 3, 4: only all + and all - reach |sum| 10, so p = 2 / 16
    assert stats.sign_flip_p([1, 2, 3, 4]) == 0.125
    # d = 1, -1, 2: sums of +-1 +-1 +-2 at least |2| in absolute value: 6 of 8 patterns
    assert stats.sign_flip_p([1, -1, 2]) == 0.75
    assert stats.sign_flip_p([0.0, 0.0]) == 1.0


def test_five_seeds_can_never_give_a_sign_flip_p_below_0_0625():
    huge = [10.0, 11.0, 12.0, 13.0, 14.0]
    assert stats.sign_flip_p(huge) == stats.smallest_sign_flip_p(5) == 0.0625


def test_a_paired_summary_holds_the_differences_the_interval_and_both_p():
    s = stats.paired_summary([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])  # d = 1, 2, 3: mean 2, sd 1
    assert s["d"] == [1.0, 2.0, 3.0] and s["mean"] == 2.0
    assert s["half"] == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)
    assert s["p_t"] == pytest.approx(0.0742, abs=1e-4)  # t = 2 sqrt(3) = 3.46 on 2 df
    assert s["p"] == 0.25  # all + or all -: 2 of 8


def test_one_seed_or_a_missing_number_gives_no_interval_and_no_p():
    assert math.isnan(stats.paired_summary([0.5], [0.4])["p"])
    s = stats.paired_summary([0.5, float("nan")], [0.4, 0.3])  # e.g. KL of a beta = 0 run
    assert math.isnan(s["half"]) and math.isnan(s["p"])


def test_holm_adjusts_step_down_and_keeps_the_order():
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> raised to 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_leaves_out_what_is_not_a_test():
    adjusted = stats.holm([0.01, float("nan"), 0.02])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)
    assert math.isnan(adjusted[1])


def test_the_map_accuracy_family_of_the_issue_adjusts_as_computed_there():
    """The issue's example: the smallest raw p of 19 tests, 0.0036, becomes 19 x 0.0036 = 0.068."""
    raw = [0.0036] + [0.5] * 18
    assert stats.holm(raw)[0] == pytest.approx(0.0684)


def test_the_t_p_recovered_from_an_interval_is_the_paired_t_tests_p():
    s = stats.paired_summary([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert stats.t_p_from_interval(s["mean"], s["half"], 3) == pytest.approx(s["p_t"], rel=1e-6)
    assert stats.t_p_from_interval(0.0, 0.0, 5) == 1.0  # every seed equal: no difference at all
    assert math.isnan(stats.t_p_from_interval(0.2, float("nan"), 5))


def test_fisher_exact_gives_the_known_two_sided_p():
    assert stats.fisher_exact(3, 5, 5, 5) == pytest.approx(0.4444, abs=1e-4)
    assert stats.fisher_exact(5, 5, 0, 5) == pytest.approx(0.0079, abs=1e-4)
    assert stats.fisher_exact(1, 5, 3, 5) == pytest.approx(0.5238, abs=1e-4)
    with pytest.raises(ValueError, match="hits"):
        stats.fisher_exact(6, 5, 0, 5)


def test_mcnemar_counts_only_the_seeds_where_the_arms_disagree():
    assert stats.mcnemar_exact([1] * 5, [0] * 5) == 0.0625  # 5 discordant, all one way: 2 / 32
    assert stats.mcnemar_exact([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0  # no discordant seed
    assert stats.mcnemar_exact([1, 0, 1, 0], [0, 1, 1, 0]) == 1.0  # one each way
    with pytest.raises(ValueError, match="one outcome per seed"):
        stats.mcnemar_exact([1, 0], [1])


def test_welch_matches_a_hand_computation():
    w = stats.welch([1, 2, 3, 4], [2, 4, 6, 8, 10])  # t = -2.251 on 5.52 df
    assert w["diff"] == -3.5
    assert w["df"] == pytest.approx(5.5208, abs=1e-3)
    assert w["p"] == pytest.approx(0.0691, abs=1e-3)


def test_more_seeds_buy_more_power_and_the_planner_finds_the_fewest():
    assert stats.power_of(20, 0.1, 0.2) > stats.power_of(10, 0.1, 0.2)
    n = stats.seeds_for_power(0.1, 0.2, power=0.8)
    assert stats.power_of(n, 0.1, 0.2) >= 0.8 > stats.power_of(n - 1, 0.1, 0.2)


def test_sign_flip_p_equals_a_brute_force_count_over_every_pattern():
    import itertools

    import numpy as np

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 9):
        d = rng.normal(0.1, 1.0, n).round(2)
        sums = [abs(sum(s * x for s, x in zip(signs, d)))
                for signs in itertools.product((1, -1), repeat=n)]
        brute = sum(s >= abs(d.sum()) - 1e-9 for s in sums) / 2 ** n
        assert stats.sign_flip_p(d) == pytest.approx(brute)
    assert stats.sign_flip_p([0.1, 0.2, 0.3, -0.6]) == 1.0  # a sum of 0: every pattern ties


def test_a_p_value_in_a_table_reads_below_0_001_instead_of_rounding_to_zero():
    assert stats.p_text(0.0000076) == "<0.001"
    assert stats.p_text(0.0372) == "0.037" and stats.p_text(float("nan")) == "n/a"
