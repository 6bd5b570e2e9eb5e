"""experiments/confirm.py: the confirmation set as declared (fresh seeds, two bases, one switch per
hypothesis, the family of six) and its analysis on known numbers."""

import json
import math
from pathlib import Path

import nanorgra
from experiments import confirm, regimes, runner

ROOT = Path(__file__).resolve().parent.parent


def test_every_hypothesis_runs_on_fresh_seeds_on_two_bases_with_enough_seeds():
    assert confirm.BASES == (0, 1)
    for h in confirm.HYPOTHESES:
        seeds = confirm.seeds_of(h)
        assert min(seeds) > 9, "the regime map used seeds 0-9"
        assert 10 <= len(seeds) <= confirm.MOST_SEEDS
        assert len(set(seeds)) == len(seeds)


def test_each_hypothesis_changes_only_the_switch_it_names():
    changed = {"negative feedback": {"adv_sign"}, "ratio and clipping": {"ratio", "clip"},
               "KL": {"beta"}}
    for h in confirm.HYPOTHESES:
        on = nanorgra.parse_args(list(h.on))
        off = nanorgra.parse_args(list(h.off))
        differ = {k for k, v in vars(on.loss).items() if getattr(off.loss, k) != v}
        assert differ == changed[h.name], h.name
        others = {k for k in vars(on) if k not in ("loss", "out_dir", "preset")}
        assert all(getattr(on, k) == getattr(off, k) for k in others), h.name


def test_the_negative_feedback_arms_use_the_papers_reward_and_group():
    h = next(h for h in confirm.HYPOTHESES if h.name == "negative feedback")
    args = nanorgra.parse_args(list(h.on))
    assert (args.format_reward, args.group, args.lr, args.steps) == (0.1, 8, 3e-4, 120)


def test_the_set_names_each_run_once_and_every_run_parses(tmp_path):
    runs = confirm.confirmation_runs(regimes.MAP_FLAGS, tmp_path)
    expected = sum(2 * len(confirm.BASES) * len(confirm.seeds_of(h)) for h in confirm.HYPOTHESES)
    assert len(runs) == len({r.name for r in runs}) == expected
    for run in runs[:: max(1, len(runs) // 10)]:
        args = nanorgra.parse_args(run.argv)
        assert args.base_seed in confirm.BASES and args.seed >= confirm.SEED_OFFSET


def fake_measures(value, collapsed=False):
    return {m: value for m in runner.MEASURES} | {"collapsed": collapsed}


def test_the_analysis_adjusts_the_six_primary_p_by_holm_and_reads_both_bases():
    rising = lambda i: 0.01 * (i + 1)  # noqa: E731 - on above off, by a different amount each seed
    alternating = lambda i: 0.01 if i % 2 else -0.01  # noqa: E731 - no effect
    effects = {(h.name, b): rising if h.name == "KL" else alternating
               for h in confirm.HYPOTHESES for b in confirm.BASES}
    measured = measured_with(effects)
    tests, verdicts = confirm.analyse(measured)
    assert len(tests) == 6
    kl = [t for t in tests if t["hypothesis"] == "KL"]
    n = len(confirm.seeds_of(confirm.HYPOTHESES[2]))
    assert all(t["primary"]["p"] == 2 / 2 ** n for t in kl)
    assert all(t["p_adjusted"] <= 6 * 2 / 2 ** n and t["confirmed"] for t in kl)
    assert verdicts["KL"].startswith("confirmed on every base")
    assert verdicts["negative feedback"] == "not confirmed on any base"
    assert all(not math.isnan(t["p_adjusted"]) for t in tests)
    assert "| KL | 1 |" in confirm.report_markdown(tests, verdicts)


def measured_with(effects):
    """Every run of the set, with on - off per seed of effects[(hypothesis, base)] (a function of
    the seed's index; 0 where not given)."""
    measured = {}
    for h in confirm.HYPOTHESES:
        for b in confirm.BASES:
            effect = effects.get((h.name, b), lambda i: 0.0)
            for i, seed in enumerate(confirm.seeds_of(h)):
                on = runner.run_name(confirm.arm_flags(b, h.on), seed)
                off = runner.run_name(confirm.arm_flags(b, h.off), seed)
                measured[on], measured[off] = fake_measures(0.5 + effect(i)), fake_measures(0.5)
    return measured


def test_every_hypothesis_declares_the_direction_its_claim_names():
    assert all(h.direction == 1 for h in confirm.HYPOTHESES)  # "beats", "keeps more": on > off


def test_an_effect_in_the_declared_direction_on_both_bases_is_confirmed():
    rising = lambda i: 0.01 * (i + 1)  # noqa: E731 - on above off on every seed
    tests, verdicts = confirm.analyse(measured_with({("KL", 0): rising, ("KL", 1): rising}))
    kl = [t for t in tests if t["hypothesis"] == "KL"]
    assert all(t["significant"] and t["in_direction"] and t["confirmed"] for t in kl)
    assert all(t["outcome"] == "confirmed" for t in kl)
    assert verdicts["KL"] == "confirmed on every base"
    assert "| KL | 0 | 10 | atoms |" in confirm.report_markdown(tests, verdicts)


def test_a_significant_effect_against_the_declared_direction_is_not_confirmed_and_says_so():
    falling = lambda i: -0.01 * (i + 1)  # noqa: E731 - off above on on every seed
    tests, verdicts = confirm.analyse(measured_with({("KL", 0): falling, ("KL", 1): falling}))
    kl = [t for t in tests if t["hypothesis"] == "KL"]
    assert all(t["significant"] and not t["in_direction"] and not t["confirmed"] for t in kl)
    assert all(t["outcome"] == "significant in the opposite direction" for t in kl)
    assert verdicts["KL"] == "significant in the opposite direction on every base"
    table = confirm.report_markdown(tests, verdicts)
    kl_rows = [line for line in table.splitlines() if line.startswith("| KL | ")][:2]
    assert all("| on > off | no: opposite direction |" in row for row in kl_rows)


def test_bases_that_disagree_give_a_verdict_for_each_base_not_a_confirmation():
    rising, falling = (lambda i: 0.01 * (i + 1)), (lambda i: -0.01 * (i + 1))
    tests, verdicts = confirm.analyse(measured_with({("KL", 0): rising, ("KL", 1): falling}))
    assert verdicts["KL"] == "confirmed on base 0; significant in the opposite direction on base 1"
    tests, verdicts = confirm.analyse(measured_with({("KL", 1): rising}))
    assert verdicts["KL"] == "confirmed on base 1; not significant on base 0"


def test_rereading_the_stored_confirmations_keeps_their_verdicts_and_mends_the_collapses(
        tmp_path):
    """data/results/confirm.json re-read from its per-seed values, as --reread does: the same
    tests (the declared claims were met in their direction), and the two positive-only runs that
    the old collapse rule flagged by their length alone (accuracy 0.906 and 0.872) no longer
    counted."""
    stored = json.loads((ROOT / "data/results/confirm.json").read_text())
    tests, verdicts = confirm.analyse(confirm.measured_from(stored))
    assert [t["primary"]["p"] for t in tests] == [t["primary"]["p"] for t in stored["tests"]]
    assert [t["confirmed"] for t in tests] == [False, False, True, True, True, True]
    assert verdicts["ratio and clipping"] == verdicts["KL"] == "confirmed on every base"
    negative = [t for t in tests if t["hypothesis"] == "negative feedback"]
    assert [(t["collapsed_on"], t["collapsed_off"]) for t in negative] == [(0, 0), (0, 0)]
    before = [sum(t["arms"]["off"]["collapsed_before_mend"]) for t in negative]
    assert before == [1, 1]


def test_the_mended_rule_keeps_the_flag_of_a_run_that_did_not_learn():
    flags = confirm.HYPOTHESES[2].on
    run = fake_measures(0.1) | {"acc": 0.06, "gain": -0.11, "reward": 0.05}
    assert confirm.collapse_after_mend(run, True, flags)
    assert not confirm.collapse_after_mend(run, False, flags)
    # its accuracy rose a little, its reward ended below the base's level: the flag stays
    assert confirm.collapse_after_mend(run | {"acc": 0.176, "gain": 0.002, "reward": 0.114}, True,
                                       flags)
