"""experiments/regimes.py: the paired statistics, the cells and their shared runs, and the whole
command on a tiny map: every run runs once, a finished run is reused and a stopped one resumed."""

import json
import math

import pytest

import nanorgra
from experiments import regimes, runner

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--skill-steps", "3",
        "--habit-steps", "2", "--warm-batch", "8", "--steps", "3", "--prompts", "2", "--group", "2",
        "--eval-n", "4", "--pass-n", "2", "--pass-k", "2", "--max-new-tokens", "24",
        "--eval-every", "2", "--ckpt-every", "1", "--device", "cpu"]


# -----------------------------------------------------------------------------
# Paired statistics


def measured_runs(cell, on_values, off_values, collapsed_on=(), collapsed_off=()):
    """Stand-in measures of a cell's runs: every measure of seed s's run is the given value."""
    measured = {}
    for s, (a, b) in enumerate(zip(on_values, off_values)):
        for flags, value, down in ((cell.on, a, collapsed_on), (cell.off, b, collapsed_off)):
            measured[runner.run_name(flags, s)] = {m: value for m in runner.MEASURES} | {
                "collapsed": s in down}
    return measured


def cell(n, name="c"):
    return regimes.Cell("KL", name, "l", 1e-3, ("--beta", "0.05", "--x", name), ("--beta", "0"), n)


def test_a_cell_keeps_every_seeds_value_the_paired_interval_and_the_sign_flip_p():
    c = cell(3)
    result = regimes.cell_result(c, measured_runs(c, [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]))
    d = result["diff"]["acc"]
    assert d["d"] == [1.0, 2.0, 3.0] and d["mean"] == 2.0
    assert d["half"] == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)  # t_{0.975, 2} sd / sqrt(3)
    assert d["p"] == 0.25  # all three signs agree: 2 of the 8 sign patterns
    assert result["arms"]["on"]["acc"] == [1.0, 2.0, 3.0]


def test_a_cell_is_separable_only_when_holms_adjusted_p_in_its_family_is_below_5_percent():
    # ten seeds that all move the same way: sign-flip p = 2 / 1024
    strong, weak = cell(10, "strong"), cell(10, "weak")
    measured = measured_runs(strong, [0.5 + 0.01 * i for i in range(10)], [0.4] * 10)
    measured |= measured_runs(weak, [0.5, 0.3] * 5, [0.4] * 10)  # no effect
    results = regimes.adjust_by_family([regimes.cell_result(strong, measured),
                                        regimes.cell_result(weak, measured)])
    acc = [r["diff"]["acc"] for r in results]
    assert acc[0]["family"] == "primary" and acc[0]["p"] == pytest.approx(2 / 1024)
    assert acc[0]["p_adjusted"] == pytest.approx(2 * 2 / 1024) and acc[0]["separable"]
    assert not acc[1]["separable"]
    assert results[0]["diff"]["atoms"]["family"] == "secondary"
    assert results[0]["diff"]["entropy"]["family"] == "exploratory"


def test_a_first_round_map_is_reread_with_t_p_from_its_intervals_holm_and_fisher():
    """The issue's numbers: CISPO against PPO's clip, -0.412 +- 0.186 over 5 seeds, raw p 0.0036;
    with 18 null cells beside it Holm makes it 19 x 0.0036 = 0.068; 5 of 5 collapsed against 0 of
    5 gives Fisher's p 0.008."""
    def old_cell(mean, half, collapsed_on=0, collapsed_off=0):
        diff = {m: dict(mean=0.0, half=0.1, separable=False) for m in runner.MEASURES}
        diff["acc"] = dict(mean=mean, half=half, separable=True)
        return dict(component="KL", pair="p", line="the paper's conditions, lr 1e-3", x=1.0,
                    seeds=5, on=[], off=[], diff=diff, means=dict(on=dict(acc=0.0),
                                                                  off=dict(acc=0.0)),
                    collapsed_on=collapsed_on, collapsed_off=collapsed_off)
    payload = dict(cells=[old_cell(-0.412, 0.186, 5, 0)] + [old_cell(0.0, 0.1)] * 18)
    results = regimes.reread(payload)
    acc = results[0]["diff"]["acc"]
    assert acc["p"] == pytest.approx(0.0036, abs=2e-4)
    assert acc["p_adjusted"] == pytest.approx(19 * acc["p"]) and not acc["separable"]
    assert results[0]["collapse"]["p"] == pytest.approx(2 / 252)  # Fisher: 5/5 against 0/5
    assert results[0]["line"] == "the paper's reward, G = 4, lr 1e-3"
    assert "Fisher" in regimes.results_markdown(results, regimes.REREAD_LEGEND)


def test_five_seeds_can_never_make_a_cell_separable_by_the_exact_test():
    c = cell(5)
    results = regimes.adjust_by_family([regimes.cell_result(c, measured_runs(
        c, [0.9, 0.91, 0.92, 0.93, 0.94], [0.1] * 5))])
    assert results[0]["diff"]["acc"]["p"] == 0.0625 and not results[0]["diff"]["acc"]["separable"]


def test_the_clip_fraction_is_no_test_it_is_0_without_clipping_by_construction():
    c = cell(10)
    results = regimes.adjust_by_family([regimes.cell_result(c, measured_runs(
        c, [0.01 * (i + 1) for i in range(10)], [0.0] * 10))])
    clip = results[0]["diff"]["clip_frac"]
    assert clip["family"] is None and math.isnan(clip["p_adjusted"]) and not clip["separable"]


def test_collapse_counts_of_arms_that_share_seeds_get_mcnemars_exact_p():
    c = cell(5)
    result = regimes.cell_result(c, measured_runs(c, [0.1] * 5, [0.5] * 5,
                                                  collapsed_on=range(5)))
    assert (result["collapsed_on"], result["collapsed_off"]) == (5, 0)
    assert result["collapse"]["p"] == 0.0625  # 5 discordant seeds, all one way


# -----------------------------------------------------------------------------
# Cells and runs


def test_every_component_has_cells_whose_arms_differ_and_whose_flags_parse():
    cells = regimes.full_map()
    assert {c.component for c in cells} == {"ratio and clipping", "KL", "negative feedback",
                                            "std and aggregation"}
    for cell in cells:
        assert cell.on != cell.off and cell.seeds >= 5
        for arm in (cell.on, cell.off):
            nanorgra.parse_args(list(arm))


def test_the_quick_map_is_one_cell_of_each_component_of_the_full_map():
    quick = regimes.quick_map()
    assert sorted(c.component for c in quick) == sorted({c.component for c in regimes.full_map()})


def test_a_run_two_cells_share_is_run_once(tmp_path):
    shared = ("--preset", "grpo", "--mu", "4")
    cells = [regimes.Cell("c", "a vs b", "l", 1, shared, shared + ("--no-clip",), 2),
             regimes.Cell("c", "a vs rgra", "l", 1, shared, ("--preset", "rgra", "--mu", "4"), 2)]
    runs = regimes.map_runs(cells, [], tmp_path)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 6  # 3 settings x 2 seeds, the shared one once
    assert "preset-grpo_mu-4-seed1" in names


def test_the_full_map_names_a_run_at_default_flags_once_for_every_cell_that_needs_it():
    cells = regimes.full_map()
    users = {}
    for cell in cells:
        for flags in (cell.on, cell.off):
            users.setdefault(runner.run_name(flags, 0), set()).add(cell.component)
    assert users["preset-rgra-seed0"] == {"negative feedback", "std and aggregation"}
    stale_grpo = ("--preset", "grpo", "--lr", "3e-4", "--minibatches", "8")
    assert sum(stale_grpo in (cell.on, cell.off) for cell in cells) == 4  # one run, four cells


# -----------------------------------------------------------------------------
# The command on a tiny map


def tiny_map(seeds=2):
    return [regimes.Cell("KL", "beta 0.05 vs 0", "beta 0.05", 1e-4,
                         ("--beta", "0.05"), ("--beta", "0"), seeds),
            regimes.Cell("negative feedback", "both vs pos", "default", 0,
                         ("--beta", "0"), ("--beta", "0", "--adv-sign", "pos"), seeds)]


def map_argv(tmp_path, *extra):
    return [*TINY, "--base-dir", str(tmp_path / "bases"), "--regimes-dir", str(tmp_path / "map"),
            *extra]


def test_tiny_map_writes_tables_and_figures_and_a_rerun_reuses_or_resumes_runs(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setattr(regimes, "full_map", tiny_map)
    first = regimes.main(map_argv(tmp_path))
    out = tmp_path / "map"
    results = json.loads((out / "results.json").read_text())
    assert results["runs"] == 6 and results["command"].startswith("python experiments/regimes.py")
    assert [c["pair"] for c in results["cells"]] == ["beta 0.05 vs 0", "both vs pos"]
    assert set(first[0]["diff"]) == set(runner.MEASURES)
    assert "### KL" in (out / "results.md").read_text()
    for slug in ("KL", "negative_feedback"):
        assert (out / f"regimes_{slug}.png").exists()
        assert (out / f"regimes_{slug}_trajectories.png").exists()

    calls = []
    real_train = nanorgra.train

    def recording_train(args, log=print):
        calls.append((args.out_dir, args.resume))
        return real_train(args, log)

    monkeypatch.setattr(nanorgra, "train", recording_train)
    def same(results):  # as JSON: a NaN (KL where beta = 0) equals itself there
        return json.dumps(results) == json.dumps(first)

    assert same(regimes.main(map_argv(tmp_path)))  # every run reused: nothing trained
    assert calls == []
    (out / "beta-0-seed1" / "summary.json").unlink()  # as if stopped after its last checkpoint
    runner.record_path(out / "beta-0-seed1").unlink()  # so not finished: no record either
    assert same(regimes.main(map_argv(tmp_path)))
    assert calls == [(str(out / "beta-0-seed1"), True)]  # resumed, and only that run


def test_collect_refuses_while_runs_are_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(regimes, "full_map", tiny_map)
    with pytest.raises(SystemExit, match="not finished yet"):
        regimes.main(map_argv(tmp_path, "--collect"))
