"""The sweep's bookkeeping: interval arithmetic, the collapse rule, and resuming a sweep without redoing runs."""

import json
import math

import pytest

import nanorgra

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--sft-steps", "3", "--sft-batch", "8", "--steps", "3",
        "--prompts", "2", "--group", "2", "--eval-n", "4", "--pass-n", "2", "--pass-k", "2", "--max-new-tokens", "8",
        "--eval-every", "100", "--ckpt-every", "1", "--device", "cpu"]


def test_ci95_of_known_numbers_uses_student_t():
    mean, half = nanorgra.mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-6)  # sample std of 1,2,3 is 1
    mean, half = nanorgra.mean_ci95([0.5, 0.5, 0.5, 0.5])
    assert (mean, half) == (0.5, 0.0)


def test_ci95_of_one_seed_has_no_interval():
    mean, half = nanorgra.mean_ci95([0.7])
    assert mean == 0.7 and math.isnan(half)


def test_collapse_rule_flags_falling_reward_and_shrinking_length():
    flat_len = [30.0] * 20
    assert nanorgra.collapsed([0.4] * 10 + [0.05] * 10, flat_len)  # reward fell below half its start
    assert nanorgra.collapsed([0.4] * 20, [30.0] * 10 + [10.0] * 10)  # length fell below half its start
    assert nanorgra.collapsed([0.0] * 20, [30.0] * 10 + [2.0] * 10)  # degenerate, very short outputs


def test_collapse_rule_spares_healthy_and_noisy_runs():
    assert not nanorgra.collapsed([0.3, 0.4, 0.35, 0.5, 0.45] * 4, [30.0] * 20)  # rising, noisy reward
    assert not nanorgra.collapsed([0.0] * 20, [30.0] * 20)  # never learned, but did not collapse
    assert not nanorgra.collapsed([0.4, 0.0], [30.0, 1.0])  # too short to judge


def test_run_argv_drops_the_sweeps_own_flags():
    argv = ["--sweep", "--quick", "--sweep-seeds", "2", "--steps", "5", "--sweep-dir=x", "--lr", "1e-4"]
    assert nanorgra.run_argv(argv) == ["--steps", "5", "--lr", "1e-4"]


def test_sweep_runs_give_each_variant_its_flags_and_own_directory(tmp_path):
    runs = nanorgra.sweep_runs(["--steps", "5"], ["grpo", "rgra_nokl"], [0, 1], tmp_path)
    assert len(runs) == 4
    variant, seed, argv = runs[1]
    args = nanorgra.resolve_switches(nanorgra.build_parser().parse_args(argv))
    assert (variant, seed, args.seed, args.steps, args.ratio, args.clip) == ("grpo", 1, 1, 5, True, True)
    assert args.out_dir == str(tmp_path / "grpo-seed1")
    args = nanorgra.resolve_switches(nanorgra.build_parser().parse_args(runs[2][2]))
    assert (args.preset, args.beta, args.ratio) == ("rgra", 0.0, False)


def test_sweep_skips_finished_runs_and_resumes_partial_ones(tmp_path, monkeypatch):
    argv = TINY + ["--base-dir", str(tmp_path / "bases"), "--sweep", "--sweep-dir", str(tmp_path / "sweep"),
                   "--sweep-seeds", "2", "--sweep-variants", "rgra,grpo"]
    nanorgra.main(argv)
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [r["variant"] for r in results["rows"]] == ["rgra", "grpo"]
    assert (tmp_path / "sweep" / "results.md").exists() and (tmp_path / "sweep" / "reward.png").exists()

    # Make one run look interrupted: its summary is gone, its checkpoint is still there.
    (tmp_path / "sweep" / "grpo-seed1" / "summary.json").unlink()
    calls = []
    real_train = nanorgra.train
    monkeypatch.setattr(nanorgra, "train", lambda args, log=print: calls.append(args) or real_train(args, log))
    nanorgra.main(argv)
    assert [(a.out_dir, a.resume) for a in calls] == [(str(tmp_path / "sweep" / "grpo-seed1"), True)]
    assert json.loads((tmp_path / "sweep" / "results.json").read_text())["rows"] == results["rows"]


def test_sweep_refuses_to_reuse_finished_runs_made_with_other_settings(tmp_path):
    argv = TINY + ["--base-dir", str(tmp_path / "bases"), "--sweep", "--sweep-dir", str(tmp_path / "sweep"),
                   "--sweep-seeds", "1", "--sweep-variants", "rgra"]
    nanorgra.main(argv)
    with pytest.raises(SystemExit, match="settings differ"):  # e.g. a full sweep over a quick sweep's directory
        nanorgra.main(argv + ["--steps", "4"])


def test_quick_and_full_sweeps_default_to_different_directories():
    parse = lambda argv: nanorgra.resolve_switches(nanorgra.build_parser().parse_args(argv))
    assert parse(["--sweep"]).sweep_dir != parse(["--sweep", "--quick"]).sweep_dir


def test_unknown_sweep_variant_is_refused_with_the_allowed_names(tmp_path, capsys):
    with pytest.raises(SystemExit):
        nanorgra.main(TINY + ["--sweep", "--sweep-dir", str(tmp_path), "--sweep-variants", "rgra,ppo"])
    assert "ppo" in capsys.readouterr().err
