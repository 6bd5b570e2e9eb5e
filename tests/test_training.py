"""nanorgra.py as a user runs it: the command line, the run directory,
the warm-start cache, resume, failures.

Every run is a tiny model on CPU (seconds). The machinery tests (resume, non-finite loss) swap the
verifier for a stand-in reward that varies inside every group, so that every step really changes the
weights: with the real verifier a 20-step warm start is always wrong, every advantage is 0, and
nothing would be tested.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path

from dataclasses import asdict, fields, replace

import numpy as np
import pytest
import torch

import data.tasks as tasks
import flags
import evaluation
import warmstart
import nanorgra
import rundir
from data.tasks import STEP_KINDS, train_problems
from verifier import STYLE_NAMES

REPO = Path(__file__).resolve().parent.parent
TINY = ("--n-layer 1 --n-head 2 --n-embd 32 --skill-steps 20 --habit-steps 10 --warm-batch 16 "
        "--steps 4 --prompts 4 --group 4 --eval-n 16 --pass-n 8 --pass-k 4 --max-new-tokens 48 "
        "--eval-every 2 --ckpt-every 2 --device cpu").split()
METRIC_KEYS = {"reward", "batch_acc", "zero_var", "adv_mean", "adv_std", "kept", "kl", "entropy",
               "ratio_mean", "ratio_max", "clip_frac", "resp_len", "loss", "grad_norm", "updates",
               "t_sample", "t_score", "t_reference", "t_learn", "per_update"}
RUN_FILES = ["ckpt.pt", "config.json", "eval.jsonl", "metrics.jsonl", "run.png", "summary.json"]
TIMING_KEYS = {"t_sample", "t_score", "t_reference", "t_learn"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """One warm-start cache for the whole module: the tiny base is trained once."""
    return tmp_path_factory.mktemp("bases")


def argv(out_dir, base_dir, *extra):
    return [*TINY, "--out-dir", str(out_dir), "--base-dir", str(base_dir), *extra]


def parse(*flags):
    return nanorgra.parse_args(list(flags))


def run(out_dir, base_dir, *extra):
    """train() exactly as main() would call it; returns the summary (None if stopped)
    and the log lines."""
    lines = []
    args = nanorgra.parse_args(argv(out_dir, base_dir, *extra))
    return nanorgra.train(args, log=lines.append), lines


def error_line(capsys):
    """The last line a refused command wrote to stderr: argparse's usage line above it lists every
    flag, so a message is only known to name its flag if this line does."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def without_timings(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.fixture(scope="module")
def varied_base_dir(tmp_path_factory):
    """The warm-start cache of the stand-in-reward runs: it also caches the base's evaluation, which
    the stand-in reward changes, so it must not be shared with runs scored by the real verifier."""
    return tmp_path_factory.mktemp("bases-varied")


@pytest.fixture
def stand_in_bases(monkeypatch, varied_base_dir):
    """Stand-in verifier: a reward in {0, 0.25, .., 1} from a checksum of the completion text.
    Deterministic (resume must see the same rewards), yet the G different completions of a group
    almost never all score the same, so the advantages are non-zero and every step updates the
    weights. Returns the base dir to use."""

    def checksum_reward(text, problem, *a, **k):
        return zlib.crc32(text.encode()) % 5 / 4

    monkeypatch.setattr(nanorgra, "outcome_reward", checksum_reward)  # the RL step's scores
    monkeypatch.setattr(evaluation, "outcome_reward", checksum_reward)  # and the evaluations
    return varied_base_dir


# -----------------------------------------------------------------------------
# Importing and the command line


def test_importing_nanorgra_starts_nothing_prints_nothing_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", "import nanorgra"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no runs/ directory, no warm-start cache


@pytest.mark.parametrize("flags,name", [
    (["--preset", "ppo"], "--preset"),
    (["--group", "1"], "--group"),  # rgra normalises by the group std, which needs two samples
    (["--eps-low", "0"], "--eps-low"),
    (["--eps-low", "1.5"], "--eps-low"),  # a clip range below 0: 1 - eps_low < 0
    (["--beta", "nan"], "--beta"),
    (["--beta", "-0.1"], "--beta"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--skill-lr", "nan"], "--skill-lr"),
    (["--steps", "0"], "--steps"),
    (["--mu", "0"], "--mu"),
    # shorter than any careful solution: no sample could be right
    (["--max-new-tokens", "5"], "--max-new-tokens"),
    (["--eval-n", "501"], "--eval-n"),
    (["--clip"], "--clip"),  # rgra has no ratio to clip
    (["--preset", "grpo", "--no-ratio"], "--clip"),
    (["--n-embd", "30", "--n-head", "4"], "--n-embd"),
])
def test_bad_flag_values_stop_at_start_up_with_status_2_and_a_message_naming_the_flag(
        tmp_path, capsys, flags, name):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        nanorgra.main(argv(out, tmp_path / "bases", *flags))
    assert e.value.code == 2  # argparse's usage error
    assert name in error_line(capsys)
    # stopped before anything was written
    assert not out.exists() and not (tmp_path / "bases").exists()


def test_presets_are_loss_configs_that_replace_changes_without_argparse():
    grpo = nanorgra.PRESETS["grpo"]
    assert isinstance(grpo, nanorgra.LossConfig) and (grpo.ratio, grpo.clip) == (True, True)
    mu2 = replace(grpo, mu=2)
    assert mu2.mu == 2 and grpo.mu == 1  # a new config; the preset is frozen
    assert {f for f in asdict(grpo) if asdict(grpo)[f] != asdict(mu2)[f]} == {"mu"}
    with pytest.raises(ValueError, match="^beta"):
        replace(grpo, beta=float("nan"))  # a notebook user is refused too, naming the field
    with pytest.raises(ValueError, match="^clip"):
        replace(nanorgra.PRESETS["rgra"], clip=True)


def test_every_loss_switch_is_a_flag_whose_help_is_its_fields_metadata():
    text = flags.build_parser(nanorgra.PRESETS).format_help()
    for f in fields(nanorgra.LossConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert f.metadata["help"].split()[0] in text
    assert "updates per sampled batch (rgra: 1)" in text  # LossConfig.mu's help, and rgra's value


def test_a_bad_switch_value_names_its_field_as_data_not_only_in_the_message():
    with pytest.raises(flags.SwitchError) as e:
        replace(nanorgra.PRESETS["grpo"], eps_low=1.5)
    assert e.value.switch == "eps_low" and "< 1" in e.value.problem


def test_help_shows_only_the_flags_of_a_run():
    text = flags.build_parser(nanorgra.PRESETS).format_help()
    for experiment_flag in ("--sweep", "--study", "--quick", "--wc-", "--s-se", "--ft-"):
        assert experiment_flag not in text


def test_grpo_preset_resolves_to_ratio_and_clip():
    cfg = parse("--preset", "grpo").loss
    assert ((cfg.ratio, cfg.clip, cfg.baseline, cfg.std_norm, cfg.adv_sign)
            == (True, True, "mean", True, "both"))


@pytest.mark.parametrize("preset", list(nanorgra.PRESETS))
@pytest.mark.parametrize("flag,switch", [
    ("--no-clip", "clip"),
    ("--ratio", "ratio"),
    ("--beta=0.1", "beta"),
    ("--baseline=loo", "baseline"),
    ("--no-std-norm", "std_norm"),
    ("--adv-sign=neg", "adv_sign"),
    ("--objective=raft", "objective"),
])
def test_one_switch_on_top_of_a_preset_changes_that_switch_and_nothing_else(preset, flag, switch):
    base = asdict(parse("--preset", preset).loss)
    changed = asdict(parse("--preset", preset, flag).loss)
    assert {k for k in base if base[k] != changed[k]} <= {switch}
    assert changed[switch] == asdict(parse(flag).loss)[switch]


def test_grpo_without_clip_differs_from_grpo_only_in_clip():
    grpo = asdict(parse("--preset", "grpo").loss)
    no_clip = asdict(parse("--preset", "grpo", "--no-clip").loss)
    assert {k for k in grpo if grpo[k] != no_clip[k]} == {"clip"}


def test_defaults_are_the_rgra_preset():
    defaults = parse().loss
    assert defaults == replace(nanorgra.PRESETS["rgra"], agg_constant=72.0)
    assert (defaults.ratio, defaults.clip, defaults.beta) == (False, False, 0.005)
    # Dr. GRPO's constant follows the budget
    assert parse("--max-new-tokens", "60").loss.agg_constant == 60.0
    assert parse("--max-new-tokens", "60", "--agg-constant", "30").loss.agg_constant == 30.0


@pytest.mark.parametrize("preset", ["rgra", "dr_grpo"])
@pytest.mark.parametrize("budget", [72, 40])
def test_the_config_python_builds_equals_the_command_lines_for_the_same_settings(preset, budget):
    """loss_config is the one rule that makes a run's LossConfig: the notebook and the exercises
    build it in Python, the command line through it, so the two cannot differ."""
    from_flags = parse("--preset", preset, "--max-new-tokens", str(budget)).loss
    assert from_flags == nanorgra.loss_config(preset, max_new_tokens=budget)
    assert from_flags.agg_constant == budget
    with_switch = parse("--preset", preset, "--max-new-tokens", str(budget), "--mu", "2").loss
    assert with_switch == nanorgra.loss_config(preset, max_new_tokens=budget, mu=2)


# -----------------------------------------------------------------------------
# A run end to end


def test_tiny_run_writes_config_metrics_evals_checkpoint_summary_and_plot(
        tmp_path, base_dir, capsys):
    out = tmp_path / "run"
    nanorgra.main(argv(out, base_dir))
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES  # and no temporary files left behind
    config = json.loads((out / "config.json").read_text())
    args = parse(*argv(out, base_dir))
    assert (config["loss"] == asdict(args.loss) and config["steps"] == args.steps
            and "resume" not in config)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert METRIC_KEYS <= r.keys()
        assert all(isinstance(r[k], (int, float)) for k in METRIC_KEYS - {"per_update"})
        assert [set(u) for u in r["per_update"]] == [{"clip_frac", "ratio_min", "ratio_max"}]
        assert (set(r["styles"]) == set(STYLE_NAMES)
                and sum(r["styles"].values()) == pytest.approx(1.0))
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [-1, 1, 3]  # base, every 2 steps, final
    ckpt = torch.load(out / "ckpt.pt")
    assert ckpt["step"] == 3 and {"model", "opt"} <= ckpt.keys()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["base"] == evals[0] and summary["final"] == evals[-1]
    for ev in (summary["base"], summary["final"]):  # base -> trained: what RL changed
        # every greedy output has one style
        assert sum(ev["mix3"]["styles"].values()) == config["eval_n"]
        assert set(ev["mix3"]["pass@k"]) == {"1", "2", "4"}  # --pass-k 4: k = 1, 2, 4
        pass_k = list(ev["mix3"]["pass@k"].values())
        # pass@k cannot fall as k grows
        assert pass_k == sorted(pass_k) and 0 <= pass_k[0] and pass_k[-1] <= 1
        assert (set(ev["mix3"]["steps"]) == set(STEP_KINDS) and "acc" in ev["ood4"]
                and ev["mix3"]["len"] > 0)
    assert "pass@k" not in evals[1]["mix3"]  # the evaluations during the run are greedy only
    printed = capsys.readouterr().out
    assert ("mix3 greedy accuracy" in printed and "by solution style" in printed
            and "pass@4" in printed)


def test_warm_start_is_cached_per_stage_and_reused_by_runs_with_the_same_base_settings(
        tmp_path, base_dir):
    _, first = run(tmp_path / "a", base_dir)
    bases = sorted(base_dir.glob("base-*.pt"))
    # one cached checkpoint per stage
    assert [p.name.split("-")[1] for p in bases] == ["habits", "skills"]
    stamps = [p.stat().st_mtime_ns for p in bases]
    # RL settings do not matter: the last stage's base is loaded, the first is not needed
    _, second = run(tmp_path / "b", base_dir, "--seed", "1", "--preset", "grpo")
    assert [line for line in second if line.startswith("warm start")] == \
        [f"warm start: loaded {bases[0]}"]
    assert (sorted(base_dir.glob("base-*.pt")) == bases
            and [p.stat().st_mtime_ns for p in bases] == stamps)
    # a setting of the second stage only
    _, third = run(tmp_path / "c", base_dir, "--habit-steps", "11")
    assert any(line.startswith("warm start: loaded") and "skills" in line for line in third)
    assert any(line.startswith("warm start: trained habits") for line in third)
    # a setting of the first stage: both again
    _, fourth = run(tmp_path / "d", base_dir, "--base-seed", "1")
    assert sum(line.startswith("warm start: trained") for line in fourth) == 2
    assert len(list(base_dir.glob("base-*.pt"))) == 5


def test_the_base_key_holds_content_not_the_machine_a_base_trained_with_other_threads_is_used(
        tmp_path, base_dir, monkeypatch):
    """The thread count changes the order of float sums and so a base's last digits (pitfall 11),
    but not what the base is made of: the key leaves the machine out, so that the shipped base
    serves every machine; the record beside the base says where it was trained."""
    run(tmp_path / "a", base_dir, "--steps", "1")
    monkeypatch.setattr(warmstart, "WARM_START_THREADS", warmstart.WARM_START_THREADS + 1)
    _, lines = run(tmp_path / "b", base_dir, "--steps", "1")
    assert sum(line.startswith("warm start: loaded") for line in lines) == 1
    assert not any(line.startswith("warm start: trained") for line in lines)


def test_a_runs_threads_do_not_change_the_base_it_loads(tmp_path, base_dir):
    """--threads is the RL's: the warm start trains with torch's default, so every run of a
    sweep (one thread each) shares the base that the default job trained."""
    run(tmp_path / "a", base_dir, "--steps", "1")
    _, lines = run(tmp_path / "b", base_dir, "--steps", "1", "--threads", "2")
    assert sum(line.startswith("warm start: loaded") for line in lines) == 1


def test_a_base_cached_before_the_atoms_were_reweighted_is_not_reused(
        tmp_path, base_dir, monkeypatch):
    run(tmp_path / "a", base_dir, "--steps", "1")
    # as if data/tasks.py changed
    monkeypatch.setattr(tasks, "STEP_KINDS", {**tasks.STEP_KINDS, "1-digit +": 5})
    _, lines = run(tmp_path / "b", base_dir, "--steps", "1")
    assert sum(line.startswith("warm start: trained") for line in lines) == 2


def test_cached_base_evaluation_is_not_reused_for_a_different_evaluation_level(
        tmp_path, base_dir, monkeypatch):
    # evaluates the base on mix3 and ood4, and caches it
    run(tmp_path / "a", base_dir, "--steps", "1")
    # as if the RL level had been changed in data/tasks.py
    for module in (nanorgra, rundir, evaluation):
        monkeypatch.setattr(module, "RL_LEVEL", "mix2")
    run(tmp_path / "b", base_dir, "--steps", "1")
    base_row = read_jsonl(tmp_path / "b" / "eval.jsonl")[0]
    assert base_row["step"] == -1 and "mix2" in base_row


def test_step_accuracy_poses_each_atom_alone_and_scores_the_number_written_per_kind(monkeypatch):
    seen = []

    def oracle(model, tok, prompts, how):  # right, except for every product
        seen.extend(prompts)
        texts = ["A:" + (str(tasks.evaluate(p[2:-1])) if "*" not in p else "-1") for p in prompts]
        return texts, None

    monkeypatch.setattr(evaluation, "sample_texts", oracle)
    acc = evaluation.step_accuracy(None, None, "mix3", 72)
    assert acc == {k: (0.0 if "*" in k else 1.0) for k in STEP_KINDS}
    atoms = tasks.atom_check_steps("mix3")
    assert seen == [f"Q:{expr}\n" for facts in atoms.values() for expr in facts]


def test_the_atom_check_set_holds_distinct_true_steps_of_every_kind_from_rl_level_solutions():
    atoms = tasks.atom_check_steps("mix3")
    assert set(atoms) == set(STEP_KINDS)
    # every one-digit + and -, * fact; 200 of the others
    assert {kind: len(facts) for kind, facts in atoms.items()} == {
        "1-digit +": 100, "1-digit -": 55, "1-digit *": 100,
        "multi-digit +": 200, "multi-digit -": 200,
        "two multi-digit +": 200, "two multi-digit -": 200}
    for kind, facts in atoms.items():
        for expr, z in facts.items():
            assert tasks.expression_kind(expr) == kind and tasks.evaluate(expr) == z and z >= 0
    assert tasks.atom_check_steps("mix3") == atoms  # seeded: the same set every time


# -----------------------------------------------------------------------------
# Nothing a user ran is lost


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_a_second_run_into_a_used_directory_is_refused_and_the_first_runs_files_are_unchanged(
        tmp_path, base_dir):
    run(tmp_path / "run", base_dir, "--steps", "2")
    before = snapshot(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "run", base_dir, "--steps", "2")
    assert "--resume" in str(e.value.code) and "--overwrite" in str(e.value.code)
    assert snapshot(tmp_path / "run") == before


def test_overwrite_replaces_a_used_directory_with_a_new_run(tmp_path, base_dir):
    run(tmp_path / "run", base_dir, "--steps", "2")
    run(tmp_path / "run", base_dir, "--steps", "3", "--overwrite")
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [0, 1, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 3


def test_resume_without_a_checkpoint_is_refused_before_any_warm_start(tmp_path):
    with pytest.raises(SystemExit, match="nothing to resume"):
        run(tmp_path / "run", tmp_path / "bases", "--resume")
    assert not (tmp_path / "bases").exists()  # no warm start was trained first


def test_a_truncated_checkpoint_gives_one_line_naming_the_file(tmp_path, base_dir):
    run(tmp_path / "run", base_dir, "--steps", "2")
    ckpt = tmp_path / "run" / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "run", base_dir, "--steps", "2", "--resume")
    message = str(e.value.code)
    assert str(ckpt) in message and "damaged" in message and "\n" not in message


def test_a_truncated_base_cache_gives_one_line_naming_the_file_and_what_to_do(tmp_path, base_dir):
    bases = tmp_path / "bases"
    shutil.copytree(base_dir, bases)
    summary, _ = run(tmp_path / "a", bases, "--steps", "1")  # makes sure this base is in the cache
    habits = Path(summary["base_path"])  # the last stage's checkpoint: the base itself
    assert habits.parent == bases and habits.name.startswith("base-habits-")
    habits.write_bytes(habits.read_bytes()[:1000])
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "b", bases, "--steps", "1")
    message = str(e.value.code)
    assert str(habits) in message and "delete it" in message and "\n" not in message


# -----------------------------------------------------------------------------
# Resume and failures


def test_stand_in_reward_makes_every_step_update_the_weights(tmp_path, stand_in_bases):
    """The premise of the tests below: with the stand-in reward the run is not a no-op."""
    run(tmp_path / "run", stand_in_bases)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(r["grad_norm"] > 0 and r["zero_var"] < 1 for r in rows)
    base = torch.load(next(stand_in_bases.glob("base-habits-*.pt")), weights_only=True)
    final = torch.load(tmp_path / "run" / "ckpt.pt")["model"]
    assert not torch.equal(base["wte.weight"], final["wte.weight"])


def interrupted(rl_step, at_step, interrupt):
    """rl_step, with interrupt() called as step at_step begins."""
    def step_or_interrupt(policy, ref, opt, tok, args, step):
        if step == at_step:
            interrupt()
        return rl_step(policy, ref, opt, tok, args, step)
    return step_or_interrupt


def test_resume_after_ctrl_c_repeats_the_uninterrupted_run_exactly(
        tmp_path, stand_in_bases, monkeypatch):
    run(tmp_path / "a", stand_in_bases)  # uninterrupted: steps 0..3

    rl_step = nanorgra.rl_step

    def ctrl_c():  # a user's Ctrl-C while step 2 runs
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(nanorgra, "rl_step", interrupted(rl_step, at_step=2, interrupt=ctrl_c))
    summary, _ = run(tmp_path / "b", stand_in_bases)
    assert summary is None  # stopped, not finished
    # step 2 was finished
    assert [r["step"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")] == [0, 1, 2]
    # and saved, although --ckpt-every is 2
    assert torch.load(tmp_path / "b" / "ckpt.pt")["step"] == 2
    monkeypatch.setattr(nanorgra, "rl_step", rl_step)

    _, lines = run(tmp_path / "b", stand_in_bases, "--resume")
    assert any(line.startswith("resumed") for line in lines)
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_resume_after_a_crash_redoes_the_steps_after_the_last_checkpoint(
        tmp_path, stand_in_bases, monkeypatch):
    run(tmp_path / "a", stand_in_bases)  # uninterrupted: steps 0..3

    rl_step = nanorgra.rl_step

    def crash():  # a second Ctrl-C, or the machine going away
        raise KeyboardInterrupt

    monkeypatch.setattr(nanorgra, "rl_step", interrupted(rl_step, at_step=3, interrupt=crash))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stand_in_bases)
    assert [r["step"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")] == [0, 1, 2]
    # step 2 is logged but not in any checkpoint
    assert torch.load(tmp_path / "b" / "ckpt.pt")["step"] == 1
    monkeypatch.setattr(nanorgra, "rl_step", rl_step)

    run(tmp_path / "b", stand_in_bases, "--resume")
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_resuming_a_finished_run_changes_nothing(tmp_path, base_dir):
    run(tmp_path / "run", base_dir, "--steps", "2")
    names = ("metrics.jsonl", "eval.jsonl", "summary.json")
    before = {name: (tmp_path / "run" / name).read_text() for name in names}
    run(tmp_path / "run", base_dir, "--steps", "2", "--resume")
    assert {name: (tmp_path / "run" / name).read_text() for name in before} == before


def assert_same_run(a, b):
    """Same metrics rows (timings aside), same evaluations, same final weights."""
    assert (without_timings(read_jsonl(b / "metrics.jsonl"))
            == without_timings(read_jsonl(a / "metrics.jsonl")))
    assert read_jsonl(b / "eval.jsonl") == read_jsonl(a / "eval.jsonl")
    wa, wb = torch.load(a / "ckpt.pt"), torch.load(b / "ckpt.pt")
    assert wa["step"] == wb["step"] == 3
    for name, tensor in wa["model"].items():
        assert torch.equal(tensor, wb["model"][name]), name


def test_resume_refuses_changed_settings(tmp_path, stand_in_bases):
    run(tmp_path / "run", stand_in_bases, "--steps", "2")
    with pytest.raises(SystemExit, match="lr"):
        run(tmp_path / "run", stand_in_bases, "--steps", "2", "--resume", "--lr", "3e-4")


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path, stand_in_bases, monkeypatch):
    state = {"step": None, "weights": {}}
    rl_step, rl_loss = nanorgra.rl_step, nanorgra.rl_loss

    def tracking_rl_step(policy, ref, opt, tok, args, step):
        state["step"] = step
        row = rl_step(policy, ref, opt, tok, args, step)
        state["weights"][step] = {k: v.clone() for k, v in policy.state_dict().items()}
        return row

    def nan_at_step_2(*args, **kwargs):
        loss, stats = rl_loss(*args, **kwargs)
        return (loss * float("nan") if state["step"] == 2 else loss), stats

    monkeypatch.setattr(nanorgra, "rl_step", tracking_rl_step)
    monkeypatch.setattr(nanorgra, "rl_loss", nan_at_step_2)
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "run", stand_in_bases)
    message = str(e.value.code)
    assert "non-finite" in message and "step 2" in message and "(step 1)" in message
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt")
    # written after step 1 (--ckpt-every 2), not touched by the failed step 2
    assert ckpt["step"] == 1
    for name, tensor in ckpt["model"].items():
        assert torch.equal(tensor, state["weights"][1][name]), name
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [0, 1]
    assert not (tmp_path / "run" / "summary.json").exists()


# -----------------------------------------------------------------------------
# Learning


def test_rl_raises_the_reward_on_a_small_fixed_set_of_easy_problems(tmp_path, monkeypatch):
    """The whole loop (sample, verify, group advantages, update) climbs the reward: a small base
    warm-started for 600 steps is partially right on 16 fixed problems of the warm-start level mix2,
    and 30 RGRA steps on them raise its reward. Every step sees the same 16 problems, so the first
    and the last steps are comparable (with fresh problems each step, the difference between steps
    is mostly which problems were drawn)."""
    easy = train_problems("mix2", 16, np.random.default_rng(1))

    def the_easy_problems(level, n, rng):
        return [easy[i % len(easy)] for i in range(n)]

    monkeypatch.setattr(nanorgra, "train_problems", the_easy_problems)
    flags = ("--n-layer 1 --n-head 4 --n-embd 64 --skill-steps 600 --habit-steps 0 --warm-batch 32 "
             "--steps 30 --prompts 16 --group 8 --lr 1e-3 --max-new-tokens 48 --eval-n 16 "
             "--pass-n 8 --pass-k 2 --eval-every 100 --ckpt-every 100 --device cpu").split()
    args = parse(*flags, "--out-dir", str(tmp_path / "run"), "--base-dir", str(tmp_path / "bases"))
    nanorgra.train(args, log=lambda line: None)
    rewards = [r["reward"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert first > 0  # partially right: there is something to reinforce
    assert last > first + 0.05 and last > 1.5 * first, rewards
