"""experiments/collapse.py, the declared test of the collapse claim: its declaration (fresh seeds,
the seeds its power calculation asks for, four tests, the runs in the declared order), the collapse
indicator, and the analysis (confirmed only when significant after Holm and in the declared
direction), on stand-in numbers."""

from pathlib import Path

import numpy as np
import pytest

from experiments import collapse, stats
from experiments.runner import run_name


def test_the_seeds_are_fresh_and_as_many_as_the_power_calculation_asks():
    assert min(collapse.SEEDS) > 1023  # above the map's 0-9 and the confirmations' 1000-1023
    assert len(collapse.SEEDS) == collapse.PLANNED_SEEDS >= 10
    assert collapse.PLANNED_POWER >= 0.8
    assert stats.smallest_sign_flip_p(len(collapse.SEEDS)) < stats.ALPHA / collapse.TESTS_IN_FAMILY


def test_the_runs_come_in_the_declared_order_whole_pairs_first(tmp_path):
    runs = collapse.collapse_runs([], tmp_path)
    assert len(runs) == 2 * len(collapse.SEEDS) * len(collapse.RATES) * len(collapse.BASES)
    first, second = runs[0].argv, runs[1].argv
    assert first[:2] == ["--base-seed", "0"] and "1e-3" in first and "--adv-sign" not in first
    # the same seed's pair, in its own directory
    assert second[:-2] == first[:-4] + ["--adv-sign", "pos"] + first[-4:-2]
    assert "--group" in first and first[first.index("--group") + 1] == "8"


def test_a_run_shrank_when_its_length_halved_or_no_group_kept_reward_variance():
    steady = [25.0] * 20
    assert not collapse.shrank(steady, [0.5] * 20)
    assert collapse.shrank([25.0] * 10 + [10.0] * 10, [0.5] * 20)  # 10 < 0.5 * 25
    assert collapse.shrank(steady, [0.5] * 15 + [1.0] * 5)  # every group alike at the end
    assert not collapse.shrank(steady, [0.5] * 15 + [1.0] * 4 + [0.9])


def stand_in(both_length, positive_length, acc=0.5):
    """Measured runs of every test: every seed's both-signs and positive-only lengths."""
    measured = {}
    rng = np.random.default_rng(0)
    for rate in collapse.RATES:
        for base in collapse.BASES:
            for seed in collapse.SEEDS:
                for sign, length in ((collapse.BOTH, both_length),
                                     (collapse.POSITIVE_ONLY, positive_length)):
                    value = length + rng.normal(0, 0.5)
                    measured[run_name(collapse.arm(rate, base, sign), seed)] = dict(
                        length=value, acc=acc, sampled_length=value, zero_var=0.3, reward=acc,
                        shrank=value < 12, lengths=[value] * 6, zero_vars=[0.3] * 6)
    return measured


def test_shorter_positive_only_completions_on_every_seed_are_confirmed_on_every_test():
    tests = collapse.analyse(stand_in(25.0, 5.0))
    assert len(tests) == 4 and all(t["outcome"] == "confirmed" for t in tests)
    assert all(t["shrank"] == [0, len(collapse.SEEDS)] for t in tests)


def test_longer_positive_only_completions_are_the_opposite_direction_never_confirmed():
    tests = collapse.analyse(stand_in(5.0, 25.0))
    assert all(t["outcome"] == "significant in the opposite direction" for t in tests)


def test_the_report_gives_each_arms_accuracy_beside_its_length_and_draws_both_trajectories(
        tmp_path):
    tests = collapse.analyse(stand_in(25.0, 5.0, acc=0.8))
    table = collapse.report_markdown(tests)
    assert table.count("| 1e-3 |") == 4 and "acc, both" in table  # 2 bases, in both tables
    collapse.plot_trajectories(tests, tmp_path / "collapse.png")
    assert Path(tmp_path / "collapse.png").stat().st_size > 10_000


def test_the_test_refuses_a_seed_or_base_given_from_outside():
    with pytest.raises(SystemExit):
        collapse.parse(["--seed", "3"])
