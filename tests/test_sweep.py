"""experiments/sweep.py: the intervals of its table, the variants, and the whole command (its
--quick form) on a tiny model, including resuming a sweep without redoing its runs. The runner it
shares with the other experiments (the collapse rule among it) is tests/test_runner.py's."""

import json
import math
import shlex
from dataclasses import asdict

import pytest

import nanorgra
from experiments import runner, stats, sweep

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--skill-steps", "3",
        "--habit-steps", "2", "--warm-batch", "8", "--steps", "3", "--prompts", "2", "--group", "2",
        "--eval-n", "4", "--pass-n", "2", "--pass-k", "2", "--max-new-tokens", "24",
        "--eval-every", "2", "--ckpt-every", "1", "--device", "cpu"]


def sweep_argv(tmp_path, *extra):
    return ["--quick", *TINY, "--base-dir", str(tmp_path / "bases"),
            "--sweep-dir", str(tmp_path / "sweep"), *extra]


def test_ci95_of_known_numbers_uses_student_t():
    mean, half = stats.mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-6)  # sample std of 1,2,3 is 1
    assert stats.mean_ci95([0.5, 0.5, 0.5, 0.5]) == (0.5, 0.0)


def test_ci95_of_one_seed_has_no_interval():
    mean, half = stats.mean_ci95([0.7])
    assert mean == 0.7 and math.isnan(half)


def test_the_table_writes_a_mean_with_its_interval_the_mean_alone_or_n_a():
    assert stats.mean_text((0.6834, 0.1111)) == "0.683 ± 0.111"
    assert stats.mean_text((0.6834, math.nan), 2) == "0.68"
    assert stats.mean_text((math.nan, math.nan)) == "n/a"


@pytest.mark.parametrize("variant,changed", [
    ("rgra", {}), ("grpo", {"ratio": True, "clip": True}),
    ("grpo_pos", {"ratio": True, "clip": True, "adv_sign": "pos"}),
    ("grpo_neg", {"ratio": True, "clip": True, "adv_sign": "neg"}), ("rgra_nokl", {"beta": 0.0}),
    ("rgra_nostd", {"std_norm": False}), ("grpo_mu4", {"ratio": True, "clip": True, "mu": 4}),
    ("grpo_mu4_noclip", {"ratio": True, "mu": 4}), ("rgra_lr", {}), ("rgra_lr_nokl", {"beta": 0.0}),
])
def test_each_variant_changes_the_rgra_run_where_its_name_says(variant, changed):
    rgra, args = asdict(nanorgra.parse_args([]).loss), nanorgra.parse_args(sweep.VARIANTS[variant])
    got = {k: v for k, v in asdict(args.loss).items() if v != rgra[k]}
    assert got == changed
    assert (args.lr > nanorgra.parse_args([]).lr) == variant.startswith("rgra_lr")


def test_each_run_gets_the_sweeps_flags_its_variant_its_seed_and_its_own_directory(tmp_path):
    run = sweep.sweep_run("grpo_neg", 1, ["--steps", "5"], tmp_path)
    args = nanorgra.parse_args(run.argv)
    got = (args.steps, args.seed, args.loss.adv_sign, args.out_dir)
    assert got == (5, 1, "neg", str(tmp_path / "grpo_neg-seed1"))
    assert (run.name, sweep.variant_of(run.name)) == ("grpo_neg-seed1", "grpo_neg")


def test_tiny_quick_sweep_writes_its_table_json_curves_and_plots(tmp_path):
    rows = sweep.main(sweep_argv(tmp_path, "--seeds", "2", "--variants", "rgra,grpo_neg",
                                 "--jobs", "2"))
    out = tmp_path / "sweep"
    results = json.loads((out / "results.json").read_text())
    variants = [r["variant"] for r in results["rows"]]
    assert variants == ["rgra", "grpo_neg"] == [r["variant"] for r in rows]
    command = results["command"]
    assert command.startswith("python experiments/sweep.py --quick") and results["seconds"] > 0
    row = results["rows"][0]
    for key in ("acc", "gain", "ood_acc", "length", "entropy", "kl", "clip_frac"):
        assert len(row[key]) == 2  # mean and 95% half-width over seeds
    styles = {"careful", "left-to-right", "bare"}
    assert set(row["pass_at_k"]) == {"1", "2"} and set(row["styles"]) >= styles
    assert row["seeds"] == 2 and 0 <= row["collapsed"] <= 2
    curves = json.loads((out / "curves.json").read_text())
    assert curves["rgra"]["acc"]["x"] == [0, 2, 3]  # the base, the mid-run evaluation, the end
    assert all(len(y) == 2 for y in curves["rgra"]["reward"]["y"])  # each step: mean and half-width
    table = (out / "results.md").read_text()
    assert "| grpo_neg | 2 |" in table and "gain over base" in table
    (test,) = results["against_rgra"]  # grpo_neg against rgra, seeds 0 and 1
    assert test["variant"] == "grpo_neg" and test["seeds"] == [0, 1]
    assert "paired by seed" in table
    for name in ("acc", "reward", "pass_at_k", "rgra_styles", "length"):
        assert (out / f"sweep_{name}.png").exists()


def test_a_rerun_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path, monkeypatch):
    argv = sweep_argv(tmp_path, "--seeds", "2", "--variants", "rgra")
    first = sweep.main(argv)
    # as if stopped after its last checkpoint: not finished, so no record either
    (tmp_path / "sweep" / "rgra-seed1" / "summary.json").unlink()
    runner.record_path(tmp_path / "sweep" / "rgra-seed1").unlink()
    calls = []
    real_train = nanorgra.train

    def recording_train(args, log=print):
        calls.append(args)
        return real_train(args, log)

    monkeypatch.setattr(nanorgra, "train", recording_train)
    assert sweep.main(argv) == first
    resumed = str(tmp_path / "sweep" / "rgra-seed1")
    assert [(a.out_dir, a.resume) for a in calls] == [(resumed, True)]


def test_finished_runs_made_with_other_settings_are_refused(tmp_path):
    sweep.main(sweep_argv(tmp_path, "--seeds", "2", "--variants", "rgra"))
    # e.g. a full sweep over a quick sweep's directory
    with pytest.raises(SystemExit, match="other settings"):
        sweep.main(sweep_argv(tmp_path, "--seeds", "2", "--variants", "rgra", "--steps", "4"))


def parsed(*argv):
    """The sweep's folder, its runs, and the steps of its first run, as parse makes them."""
    _, _, experiment = sweep.parse(list(argv))
    runs = experiment.runs
    return str(experiment.out), len(runs), nanorgra.parse_args(runs[0].argv).steps


def test_quick_and_full_sweeps_default_to_different_directories_and_step_counts():
    assert parsed("--quick", "--variants", "rgra") == ("runs/sweep-quick", 3, 30)
    assert parsed("--variants", "rgra") == ("runs/sweep", 3, 60)
    # a flag given wins over --quick's
    assert parsed("--quick", "--steps", "7", "--variants", "rgra") == ("runs/sweep-quick", 3, 7)


@pytest.mark.parametrize("flags,word", [(["--variants", "rgra,ppo"], "ppo"),
                                        (["--seeds", "1"], "--seeds"),
                                        (["--jobs", "0"], "--jobs"),
                                        (["--lr", "nan"], "--lr")])
def test_bad_sweep_flags_are_refused_before_any_run(tmp_path, capsys, flags, word):
    with pytest.raises(SystemExit):
        sweep.main(sweep_argv(tmp_path, *flags))
    assert word in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "bases").exists()


# -----------------------------------------------------------------------------
# Beyond one machine: the commands printed one a line, and the tables collected from their runs


def printed_commands(capsys):
    """The lines --print-commands printed (comments left out), as argument lists of sweep.py."""
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert all(line.startswith("python experiments/sweep.py ") for line in lines)
    return [shlex.split(line)[2:] for line in lines]


def test_print_commands_gives_the_warm_start_then_one_command_per_run_and_runs_nothing(
        tmp_path, capsys):
    sweep.main(sweep_argv(tmp_path, "--seeds", "2", "--variants", "rgra,grpo_neg",
                          "--print-commands"))
    commands = printed_commands(capsys)
    names = [argv[argv.index("--run") + 1] for argv in commands]
    assert names == ["warm-start", "rgra-seed0", "rgra-seed1", "grpo_neg-seed0", "grpo_neg-seed1"]
    assert all("--print-commands" not in argv and "--quick" in argv for argv in commands)
    assert not (tmp_path / "bases").exists() and not (tmp_path / "sweep").exists()


def test_the_printed_commands_run_the_sweep_and_collect_makes_its_tables_without_training(
        tmp_path, capsys, monkeypatch):
    argv = sweep_argv(tmp_path, "--seeds", "2", "--variants", "rgra,grpo_neg")
    sweep.main(argv + ["--print-commands"])
    for command in printed_commands(capsys):  # as a scheduler would run them, one by one
        sweep.main(command)
    monkeypatch.setattr(nanorgra, "train", lambda *a, **k: pytest.fail("--collect trained a run"))
    rows = sweep.main(argv + ["--collect"])
    assert [r["variant"] for r in rows] == ["rgra", "grpo_neg"] and rows[0]["seeds"] == 2
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert results["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "sweep" / "sweep_acc.png").exists()


def test_collect_refuses_while_runs_are_missing_and_names_them(tmp_path):
    argv = sweep_argv(tmp_path, "--seeds", "2", "--variants", "rgra")
    sweep.main(argv + ["--run", "rgra-seed0"])
    with pytest.raises(SystemExit, match="rgra-seed1"):
        sweep.main(argv + ["--collect"])


def test_a_run_name_that_is_not_in_the_sweep_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main(sweep_argv(tmp_path, "--variants", "rgra", "--run", "grpo-seed0"))
    assert "grpo-seed0" in capsys.readouterr().err


def paired_row(variant, seeds, acc):
    return dict(variant=variant, per_seed=dict(seed=seeds, acc=acc))


def test_each_variant_is_set_against_rgra_paired_by_seed_with_holm_over_the_variants():
    rows = [paired_row("rgra", [0, 1, 2, 3], [0.70, 0.60, 0.80, 0.50]),
            paired_row("grpo", [0, 1, 2, 3], [0.70, 0.60, 0.80, 0.50]),  # equal, run by run
            paired_row("sft", [3, 1, 0, 2], [0.95, 0.85, 0.90, 0.92]),  # another seed order
            paired_row("grpo_neg", [0, 1, 2, 3], [0.30, 0.50, 0.20, 0.40])]
    grpo, sft, neg = sweep.against_rgra(rows)
    assert grpo["d"] == [0.0] * 4 and grpo["p_t"] == 1.0 and not grpo["separable"]
    assert sft["seeds"] == [0, 1, 2, 3]
    assert sft["d"] == pytest.approx([0.20, 0.25, 0.12, 0.45])  # seed by seed, not by position
    assert neg["d"] == pytest.approx([-0.40, -0.10, -0.60, -0.10])
    expected = stats.holm([grpo["p_t"], sft["p_t"], neg["p_t"]])
    assert [t["p_t_adjusted"] for t in (grpo, sft, neg)] == expected
    assert sft["p_t_adjusted"] > sft["p_t"]  # corrected for the three variants compared
    assert sft["separable"] == (sft["p_t_adjusted"] < stats.ALPHA)
    assert sft["p"] == stats.sign_flip_p(sft["d"]) == 2 / 2 ** 4  # the exact test's floor


def test_a_variant_without_rgras_seeds_is_refused_and_no_rgra_means_no_comparison():
    rows = [paired_row("rgra", [0, 1, 2], [0.7, 0.6, 0.8]), paired_row("sft", [0, 1], [0.9, 0.9])]
    with pytest.raises(ValueError, match=r"sft ran seeds \[0, 1\], rgra \[0, 1, 2\]"):
        sweep.against_rgra(rows)
    assert sweep.against_rgra(rows[1:]) == []
