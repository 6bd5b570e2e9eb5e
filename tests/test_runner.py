"""experiments/runner.py, what the sweep, the regime map and the confirmations share: a run's name,
directory and command line, the modes of their command lines (checked before any work, the commands
printed one a line), reading finished runs back, and the collapse rule. The runs themselves run in
the experiments' tests (tests/test_sweep.py, tests/test_regimes.py)."""

import argparse
import json
import shlex
from pathlib import Path

import pytest
import torch

import nanorgra
from experiments import runner
from rundir import run_settings

# -----------------------------------------------------------------------------
# A run


def test_a_seeded_run_is_its_flags_then_its_seed_and_its_own_directory(tmp_path):
    run = runner.seeded_run("rgra-seed1", ["--steps", "5", "--preset", "rgra"], 1, tmp_path)
    assert (run.name, run.dir) == ("rgra-seed1", tmp_path / "rgra-seed1")
    assert run.argv == ["--steps", "5", "--preset", "rgra", "--seed", "1", "--out-dir",
                        str(tmp_path / "rgra-seed1")]
    args = nanorgra.parse_args(run.argv)
    assert (args.steps, args.seed, args.out_dir) == (5, 1, str(run.dir))


def test_a_run_named_by_its_flags_names_each_flag_with_its_value():
    assert runner.run_name(("--preset", "grpo", "--mu", "4"), 0) == "preset-grpo_mu-4-seed0"
    assert runner.run_name(("--base-seed", "1", "--beta", "0"), 1003) == \
        "base-seed-1_beta-0-seed1003"


# -----------------------------------------------------------------------------
# The modes of an experiment's command line


def experiment(tmp_path, warm_starts=("warm-start",)):
    """A stand-in experiment of two runs."""
    runs = [runner.seeded_run(f"rgra-seed{s}", ["--preset", "rgra"], s, tmp_path) for s in (0, 1)]
    return runner.Experiment("experiments/sweep.py", runs, {w: [] for w in warm_starts}, tmp_path,
                             "1 variant x 2 seeds", "the tables and plots")


def parser():
    p = argparse.ArgumentParser()
    runner.add_modes(p, "the tables")
    return p


def test_the_modes_exclude_each_other_and_jobs_must_be_at_least_one():
    p = parser()
    assert p.parse_args(["--jobs", "3", "--collect"]).jobs == 3
    for argv in (["--collect", "--print-commands"], ["--jobs", "0"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)


def test_a_run_name_not_in_the_experiment_is_refused_naming_it(tmp_path, capsys):
    e = experiment(tmp_path)
    runner.check_runs(parser(), "rgra-seed1", e)
    runner.check_runs(parser(), "warm-start", e)
    with pytest.raises(SystemExit):
        runner.check_runs(parser(), "grpo-seed0", e)
    assert "experiments/sweep.py has no run 'grpo-seed0'" in capsys.readouterr().err


def printed(capsys):
    """The commands printed (comments left out) as argument lists, and the comments."""
    lines = capsys.readouterr().out.splitlines()
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    return commands, [line for line in lines if line.startswith("#")]


def test_print_commands_gives_the_warm_starts_then_every_run_and_runs_nothing(tmp_path, capsys):
    e = experiment(tmp_path, warm_starts=("warm-start-base0", "warm-start-base1"))
    args = parser().parse_args(["--print-commands"])
    assert runner.run_modes(args, ["--jobs", "2", "--print-commands"], e) is False
    commands, comments = printed(capsys)
    assert all(c[:4] == ["python", "experiments/sweep.py", "--jobs", "2"] for c in commands)
    assert [c[c.index("--run") + 1] for c in commands] == [
        "warm-start-base0", "warm-start-base1", "rgra-seed0", "rgra-seed1"]
    assert comments[0] == "# 1. the warm starts (cached in --base-dir): run them first, once"
    assert "--sweep-dir" in comments[1] and comments[2].endswith("the tables and plots")
    assert not list(tmp_path.iterdir())


def test_collect_goes_on_to_collect_without_running_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(nanorgra, "train", lambda *a, **k: pytest.fail("--collect trained"))
    args = parser().parse_args(["--collect"])
    assert runner.run_modes(args, ["--collect"], experiment(tmp_path)) is True


# -----------------------------------------------------------------------------
# A finished run


def finished_run(run_dir, rewards, lengths, argv=(), base_weight=0.0):
    """The files of a finished run whose metrics rows have these rewards and lengths, run with
    nanorgra.py's argv from a stand-in base whose one weight is base_weight."""
    styles = {"careful": 1, "left-to-right": 0, "shortcut": 0, "bare": 0, "other": 0}
    level = dict(acc=0.5, len=25.0, styles=styles, steps={"1-digit +": 1.0})
    base = run_dir.parent / f"base-{base_weight}.pt"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.full((2,), base_weight)}, base)
    summary = dict(base={"mix3": dict(acc=0.2), "ood4": dict(acc=0.0)},
                   final={"mix3": level, "ood4": dict(acc=0.0)}, base_path=str(base))
    settings = run_settings(nanorgra.parse_args([*argv, "--out-dir", str(run_dir)]))
    rows = [dict(reward=r, resp_len=n, entropy=0.5, kl=None, clip_frac=0.0)
            for r, n in zip(rewards, lengths)]
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(settings))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "eval.jsonl").write_text("")


def test_finished_runs_are_read_back_and_missing_ones_named(tmp_path):
    e = experiment(tmp_path)
    finished_run(e.runs[0].dir, [0.4] * 10, [30.0] * 10)
    with pytest.raises(SystemExit, match=r"not finished yet: 1 of 2 runs \(rgra-seed1\)"):
        runner.read_finished(e.runs)
    finished_run(e.runs[1].dir, [0.4] * 10, [30.0] * 10)
    files = runner.read_finished(e.runs)
    assert list(files) == ["rgra-seed0", "rgra-seed1"]
    assert files["rgra-seed1"]["summary"]["final"]["mix3"]["acc"] == 0.5


@pytest.fixture
def records(tmp_path, monkeypatch):
    """A records folder of the test's own (NANORGRA_RECORDS reaches worker processes too)."""
    monkeypatch.setenv("NANORGRA_RECORDS", str(tmp_path / "records"))
    return tmp_path / "records"


def test_a_finished_run_leaves_a_record_of_its_files_base_fingerprint_commit_and_machine(
        tmp_path, records):
    e = experiment(tmp_path / "sweep")
    for run in e.runs:
        finished_run(run.dir, [0.4] * 10, [30.0] * 10, run.argv[:-2])
    runner.read_finished(e.runs)
    record = json.loads((records / "sweep" / "rgra-seed1.json").read_text())
    assert record["summary"]["final"]["mix3"]["acc"] == 0.5 and len(record["metrics"]) == 10
    provenance = record["provenance"]
    assert provenance["base_seed"] == 0 and provenance["base_file"] == "base-0.0.pt"
    assert len(provenance["base_fingerprint"]) == 16 and provenance["commit"]
    assert provenance["cpu"] and provenance["threads"] >= 1
    assert record["settings"]["seed"] == 1


def test_a_run_with_a_record_is_skipped_and_collected_without_its_directory(
        tmp_path, records, monkeypatch):
    """A later sitting, on another machine: the records came with the repository, the run
    directories did not."""
    e = experiment(tmp_path / "sweep")
    for run in e.runs:
        finished_run(run.dir, [0.4] * 10, [30.0] * 10, run.argv[:-2])
    before = runner.read_finished(e.runs)
    for run in e.runs:
        for f in run.dir.iterdir():
            f.unlink()
        run.dir.rmdir()

    def must_not_run(*a, **k):
        raise AssertionError("a recorded run ran again")

    monkeypatch.setattr(nanorgra, "train", must_not_run)
    assert [runner.run_one(run.argv + ["--threads", "1"]) for run in e.runs] == ["done", "done"]
    assert runner.read_finished(e.runs) == before


def test_a_record_of_other_settings_is_refused_naming_what_differs(tmp_path, records):
    e = experiment(tmp_path / "sweep")
    finished_run(e.runs[0].dir, [0.4] * 10, [30.0] * 10, ["--lr", "1e-3", "--seed", "0"])
    runner.write_record(e.runs[0].dir, runner.record_path(e.runs[0].dir), seconds=1.0)
    with pytest.raises(SystemExit, match=r"other settings \(lr\)"):
        runner.run_one(e.runs[0].argv)


def test_collecting_refuses_to_pool_runs_on_two_bases_and_names_the_runs_to_redo(
        tmp_path, records):
    runs = [runner.seeded_run(f"rgra-seed{s}", ["--preset", "rgra"], s, tmp_path / "map")
            for s in range(3)]
    for run, weight in zip(runs, (0.0, 0.0, 1.0)):  # the third ran on another machine's base
        finished_run(run.dir, [0.4] * 10, [30.0] * 10, run.argv[:-2], base_weight=weight)
    with pytest.raises(SystemExit, match=r"another base than the others of their base seed: "
                                         r"rgra-seed2;"):
        runner.read_finished(runs)


def test_runs_of_two_base_seeds_may_have_two_bases(tmp_path, records):
    runs = [runner.seeded_run(f"s{b}-seed0", ["--base-seed", str(b)], 0, tmp_path / "c")
            for b in (0, 1)]
    for run, weight in zip(runs, (0.0, 1.0)):
        finished_run(run.dir, [0.4] * 10, [30.0] * 10, run.argv[:-2], base_weight=weight)
    assert list(runner.read_finished(runs)) == ["s0-seed0", "s1-seed0"]


def test_a_collapsed_run_is_measured_as_collapsed_by_the_rule(tmp_path):
    finished_run(tmp_path / "run", [0.4] * 5 + [0.05] * 5, [30.0] * 10)
    measured = runner.run_measures(runner.read_run(Path(tmp_path / "run")))
    assert set(measured) == set(runner.MEASURES) | {"collapsed"}
    assert measured["collapsed"] is True  # the reward fell below half its start
    assert (measured["gain"], measured["careful"]) == (pytest.approx(0.3), 1.0)


# -----------------------------------------------------------------------------
# The collapse rule


def test_collapse_rule_flags_falling_reward_and_shrinking_length():
    flat_len = [30.0] * 20
    assert runner.collapsed([0.4] * 10 + [0.05] * 10, flat_len)  # reward fell below half its start
    shrinking_len = [30.0] * 10 + [10.0] * 10
    assert runner.collapsed([0.4] * 20, shrinking_len)  # length fell below half its start
    assert runner.collapsed([0.0] * 20, [30.0] * 10 + [2.0] * 10)  # degenerate, very short outputs
    assert runner.collapsed([0.4] * 20, [20.0] * 10 + [72.0] * 10)  # babbling to the length cap


def test_collapse_rule_flags_a_run_that_collapsed_in_its_first_steps_by_its_final_accuracy():
    early = [0.01] * 20  # the reward fell at the first update: the start window has collapsed too
    assert not runner.collapsed(early, [25.0] * 20)
    assert runner.collapsed(early, [25.0] * 20, acc=0.02, base_acc=0.17)
    assert not runner.collapsed(early, [25.0] * 20, acc=0.10, base_acc=0.17)  # above half the base


def test_collapse_rule_spares_healthy_and_noisy_runs():
    assert not runner.collapsed([0.3, 0.4, 0.35, 0.5, 0.45] * 4, [30.0] * 20)  # rising, noisy
    assert not runner.collapsed([0.0] * 20, [30.0] * 20)  # never learned, but did not collapse
    assert not runner.collapsed([0.4, 0.0], [30.0, 1.0])  # too short to judge


@pytest.mark.parametrize("acc,gain,reward", [
    (0.906, 0.732, 0.878),  # base 0, seed 1014, positive-only: the best of its arm's 18 runs
    (0.872, 0.718, 0.830),  # base 1, seed 1007, positive-only
])
@pytest.mark.parametrize("end_len", [10.0, 60.0])  # the length halved, or doubled
def test_collapse_rule_never_flags_a_run_that_learned_however_its_length_moved(
        acc, gain, reward, end_len):
    """The confirmations' two positive-only runs that the old rule flagged by their length alone
    (data/results/confirm.json: final accuracy, gain over the base, the reward of the last 5
    steps). Their per-step trajectories are not stored: the start window's reward (0.2) and
    length (25 tokens) are this base's order of size, and the length moves past the rule's bound
    either way."""
    rewards = [0.2] * 10 + [reward] * 10
    lengths = [25.0] * 10 + [end_len] * 10
    assert not runner.collapsed(rewards, lengths, acc=acc, base_acc=acc - gain)
    assert not runner.collapsed(rewards, lengths)  # without accuracies: its reward rose


def test_collapse_rule_counts_a_moved_length_in_a_run_that_did_not_learn():
    shrinking = [25.0] * 10 + [10.0] * 10
    assert runner.collapsed([0.2] * 10 + [0.15] * 10, shrinking)  # the reward ended lower
    # the reward rose, but the accuracy ended below the base's: not learned either
    assert runner.collapsed([0.1] * 10 + [0.15] * 10, shrinking, acc=0.15, base_acc=0.17)
    assert not runner.collapsed([0.1] * 10 + [0.15] * 10, shrinking, acc=0.20, base_acc=0.17)
