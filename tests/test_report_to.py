"""--report-to (rundir.py): each step's metrics row, the evaluations and the settings streamed to
TensorBoard or Weights & Biases, optional packages. A tiny run writes TensorBoard events and the
test reads them back with TensorBoard's own reader; W&B is a stand-in module (the package is not a
dependency of the tests); an absent package is refused at start-up with its install command."""

import importlib.machinery
import importlib.util
import json
import sys
import types

import pytest
import torch

import nanorgra
import rundir
from data.tasks import RL_LEVEL

# 4 steps of a one-layer model: evaluations after steps 1 and 3, checkpoints after steps 1 and 3
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--warm-batch", "8",
        "--skill-steps", "4", "--habit-steps", "2", "--steps", "4", "--prompts", "2", "--group",
        "2", "--max-new-tokens", "30", "--eval-n", "4", "--pass-n", "2", "--pass-k", "2",
        "--eval-every", "2", "--ckpt-every", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bases")  # the tiny base is trained once, for every test


def train(out_dir, base_dir, *extra):
    argv = [*TINY, "--out-dir", str(out_dir), "--base-dir", str(base_dir), *extra]
    return nanorgra.train(nanorgra.parse_args(argv), log=lambda *a: None)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_events(log_dir):
    """{tag: [(x, value), ...]} of the scalars, and {tag: text} of the texts, in the event files
    under log_dir, as TensorBoard reads them (a resumed run's purged events left out)."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (requirements-dev.txt pins it)")
    from tensorboard.util import tensor_util

    events = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    values = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
              for tag in events.Tags()["tensors"]}
    scalars = {tag: [(x, float(v)) for x, v in pairs] for tag, pairs in values.items()
               if all(v.dtype.kind == "f" for _, v in pairs)}
    texts = {tag: pairs[-1][1].item().decode() for tag, pairs in values.items()
             if tag not in scalars}
    return scalars, texts


def test_the_numbers_of_a_row_are_flattened_and_lists_text_and_none_left_out():
    row = dict(step=3, reward=0.5, updates=1, kl=None, per_update=[dict(loss=1.0)],
               styles=dict(careful=0.25, terse=0.75), note="text", flag=True)
    assert rundir.numbers_of(row) == {"reward": 0.5, "updates": 1, "styles/careful": 0.25,
                                      "styles/terse": 0.75}
    ev = {RL_LEVEL: dict(acc=0.5, steps=dict(add=1.0), **{"pass@k": {"1": 0.5}})}
    assert rundir.numbers_of(ev, "eval/") == {f"eval/{RL_LEVEL}/acc": 0.5,
                                             f"eval/{RL_LEVEL}/steps/add": 1.0,
                                             f"eval/{RL_LEVEL}/pass@k/1": 0.5}


def test_a_tiny_run_reported_to_tensorboard_writes_the_metrics_rows_values_read_back_exactly(
        tmp_path, base_dir):
    out = tmp_path / "run"
    train(out, base_dir, "--report-to", "tensorboard")
    rows, evals = read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "eval.jsonl")
    scalars, texts = read_events(out / rundir.TENSORBOARD_DIR)
    # every number of every row, at x = RL steps done, the value of the JSON file to the last bit
    # (stored as float64)
    for key in ("reward", "resp_len", "loss", "grad_norm", "styles/careful", "t_learn"):
        expected = [(r["step"] + 1, rundir.numbers_of(r)[key]) for r in rows]
        assert scalars[key] == expected, key
    assert set(rundir.numbers_of(rows[0])) <= set(scalars)
    assert not any(tag.startswith(("per_update", "step")) for tag in scalars)
    # the evaluations: the base at 0, after step 1 at 2, the final one after step 3 at 4
    assert scalars[f"eval/{RL_LEVEL}/acc"] == [(e["step"] + 1, e[RL_LEVEL]["acc"]) for e in evals]
    assert [x for x, _ in scalars[f"eval/{RL_LEVEL}/acc"]] == [0, 2, 4]
    # the settings, as config.json holds them
    config = json.loads(texts["config/text_summary"].strip("`\n"))
    assert config == json.loads((out / "config.json").read_text())
    assert "report_to" not in config  # a setting of where the numbers go, not of the run


def test_a_resumed_run_reports_each_step_once(tmp_path, base_dir, monkeypatch):
    """A run that dies after step 2 resumes from its checkpoint after step 1: its events are
    written again from the rows it keeps, so each x holds one value, the final file's (not the
    dropped step 2's beside its redone one)."""
    out = tmp_path / "run"
    real_step = nanorgra.rl_step

    def dies_at_step_3(policy, ref, opt, tok, args, step):
        if step == 3:
            raise RuntimeError("killed")
        return real_step(policy, ref, opt, tok, args, step)

    monkeypatch.setattr(nanorgra, "rl_step", dies_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        train(out, base_dir, "--report-to", "tensorboard")
    assert len(read_jsonl(out / "metrics.jsonl")) == 3  # steps 0, 1, 2; the checkpoint after 1
    monkeypatch.setattr(nanorgra, "rl_step", real_step)
    train(out, base_dir, "--report-to", "tensorboard", "--resume")
    rows = read_jsonl(out / "metrics.jsonl")
    scalars, _ = read_events(out / rundir.TENSORBOARD_DIR)
    assert scalars["reward"] == [(r["step"] + 1, r["reward"]) for r in rows]
    assert [x for x, _ in scalars["reward"]] == [1, 2, 3, 4]


def test_overwrite_removes_the_replaced_runs_events_and_a_default_run_writes_none(
        tmp_path, base_dir):
    out = tmp_path / "run"
    train(out, base_dir, "--report-to", "tensorboard")
    train(out, base_dir, "--overwrite")
    assert not (out / rundir.TENSORBOARD_DIR).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(rundir.RUN_FILES)


class FakeWandb(types.ModuleType):
    """Records what a run asks of the wandb package."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, numbers, step):
        self.logged.append((step, numbers))

    def finish(self):
        self.finished += 1


@pytest.mark.parametrize("wandb_mode", [None, "online"])
def test_wandb_gets_the_settings_and_each_rows_numbers_offline_unless_wandb_mode_is_set(
        tmp_path, base_dir, monkeypatch, wandb_mode):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    if wandb_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", wandb_mode)
    out = tmp_path / "run"
    train(out, base_dir, "--report-to", "wandb")
    [init] = fake.inits
    assert init["mode"] == ("offline" if wandb_mode is None else None)  # None: wandb reads the env
    assert init["config"] == json.loads((out / "config.json").read_text())
    assert init["name"] == "run" and init["dir"] == str(out)
    rows = read_jsonl(out / "metrics.jsonl")
    logged_rows = [(x, n) for x, n in fake.logged if "reward" in n]
    assert logged_rows == [(r["step"] + 1, rundir.numbers_of(r)) for r in rows]
    assert [x for x, n in fake.logged if f"eval/{RL_LEVEL}/acc" in n] == [0, 2, 4]
    assert fake.finished == 1


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_an_absent_package_is_refused_at_start_up_naming_its_install_command(
        tmp_path, capsys, monkeypatch, name):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == name else real_find_spec(n, *a))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        nanorgra.main([*TINY, "--out-dir", str(out), "--report-to", name])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--report-to {name}" in last and f"pip install {name}" in last
    assert not out.exists()


def test_only_rank_0_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "rank", lambda: 1)
    args = nanorgra.parse_args([*TINY, "--out-dir", str(tmp_path / "run"),
                                "--report-to", "tensorboard"])
    run = rundir.RunDir(args, torch.device("cpu"), log=lambda *a: None)
    run.saved = -1
    run.start_reporting()
    assert type(run.reporter) is rundir.Reporter
    assert not (tmp_path / "run").exists()
