"""experiments/confirm.py: the confirmation set as declared (fresh seeds, two bases, one switch per
hypothesis, the family of six) and its analysis on known numbers."""

import math

import nanorgra
from experiments import confirm, regimes


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
    return {m: value for m in regimes.MEASURES} | {"collapsed": collapsed}


def test_the_analysis_adjusts_the_six_primary_p_by_holm_and_reads_both_bases():
    measured = {}
    for h in confirm.HYPOTHESES:
        for b in confirm.BASES:
            for i, seed in enumerate(confirm.seeds_of(h)):
                on = confirm.run_name(confirm.arm_flags(b, h.on), seed)
                off = confirm.run_name(confirm.arm_flags(b, h.off), seed)
                if h.name == "KL":  # on always above off, by a different amount each seed
                    measured[on], measured[off] = fake_measures(0.5 + 0.01 * (i + 1)), \
                        fake_measures(0.5)
                else:  # alternating signs: no effect
                    sign = 1 if i % 2 else -1
                    measured[on], measured[off] = fake_measures(0.5 + sign * 0.01), \
                        fake_measures(0.5)
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
