"""experiments/mismatch.py, the declared cell of the mismatch lab: its declaration (fresh seeds,
enough of them for the exact test to pass Holm's strictest level, every arm of a seed together),
and the analysis (confirmed only when significant after Holm and in the declared direction), on
stand-in numbers."""

import numpy as np

from experiments import mismatch, stats
from experiments.runner import run_name


def test_the_seeds_are_fresh_and_enough_for_the_exact_test_to_pass_holm():
    assert min(mismatch.SEEDS) > 2999  # above the map, the confirmations' and collapse's seeds
    tests = len(mismatch.TESTS)
    assert stats.smallest_sign_flip_p(len(mismatch.SEEDS)) < stats.ALPHA / tests


def test_the_runs_come_seed_by_seed_every_arm_of_a_seed_together(tmp_path):
    runs = mismatch.mismatch_runs([], tmp_path)
    assert len(runs) == len(mismatch.ARMS) * len(mismatch.SEEDS)
    first_seed = runs[:len(mismatch.ARMS)]
    seed_of = [r.argv[r.argv.index("--seed") + 1] for r in first_seed]
    assert seed_of == [str(mismatch.SEEDS[0])] * len(mismatch.ARMS)
    assert all("--preset" in r.argv and "grpo" in r.argv for r in runs)
    tis = next(r.argv for r in first_seed if "tis" in r.argv)
    assert tis[tis.index("--old-logprobs") + 1] == "trainer"  # TIS needs the trainer's pi_old


def stand_in(acc_of):
    """Measured runs of every arm and seed: acc_of[arm] plus a little noise a seed."""
    rng = np.random.default_rng(0)
    measured = {}
    for seed in mismatch.SEEDS:
        for arm in mismatch.ARMS:
            acc = acc_of[arm] + rng.normal(0, 0.005)
            measured[run_name(mismatch.arm_flags(arm), seed)] = dict(
                acc=acc, ood=0.03, atoms=0.9, clip_frac=0.0, mismatch_kl_k3=1e-6,
                mismatch_max=1e-3)
    return measured


def test_a_bf16_sampler_that_loses_accuracy_everywhere_is_confirmed_as_costly_and_repaired():
    tests, arms = mismatch.analyse(stand_in({"fp32": 0.9, "bf16": 0.8, "bf16+tis": 0.9,
                                             "fp16": 0.9}))
    assert [t["outcome"] for t in tests] == ["confirmed"] * 3
    assert set(arms) == set(mismatch.ARMS) and len(arms["bf16"]["acc"]) == len(mismatch.SEEDS)


def test_a_bf16_sampler_that_wins_is_reported_as_the_opposite_direction_never_confirmed():
    tests, _ = mismatch.analyse(stand_in({"fp32": 0.8, "bf16": 0.9, "bf16+tis": 0.9,
                                          "fp16": 0.9}))
    by_name = {t["name"]: t for t in tests}
    costly = by_name["the mismatch costs accuracy"]
    assert costly["significant"] and not costly["confirmed"]
    assert costly["outcome"] != "confirmed"
    assert not by_name["TIS repairs it"]["significant"]  # equal arms: a null, its interval


def test_the_report_has_each_test_and_each_arms_mismatch():
    tests, arms = mismatch.analyse(stand_in({"fp32": 0.9, "bf16": 0.9, "bf16+tis": 0.9,
                                             "fp16": 0.9}))
    report = mismatch.report_markdown(tests, arms)
    for name, _, _ in mismatch.TESTS:
        assert name in report
    for arm in mismatch.ARMS:
        assert f"| {arm} |" in report
