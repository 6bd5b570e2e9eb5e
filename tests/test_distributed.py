"""A run under torchrun, 2 CPU processes (gloo), against the same run in one process: the same
update on the same global batch, every file written once by rank 0, and resume.

What may differ, and why only in the last float digits: each rank samples its 2 prompts in a batch
of 2 instead of 4 (the same tokens, log-probs that differ in rounding), computes the loss of its own
rows, and the two halves of the gradient are added by the all-reduce instead of in one sum over the
whole batch: the same numbers added in another order. Measured: metrics within 1e-7 relative, final
weights within 1.2e-7. The tolerances (1e-4 relative, 1e-6 absolute) are far below any real change:
one step moves a weight by about the learning rate, 1e-4.

Each test starts Python processes (the torchrun ones through `python -m torch.distributed.run`,
which is torchrun): tens of seconds each. tests/ddp_run.py is `python nanorgra.py` with a stand-in
reward that varies inside every group, so that every step changes the weights.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DRIVER = str(REPO / "tests" / "ddp_run.py")
TINY = ("--n-layer 1 --n-head 2 --n-embd 32 --skill-steps 20 --habit-steps 10 --warm-batch 16 "
        "--steps 4 --prompts 4 --group 4 --eval-n 16 --pass-n 8 --pass-k 4 --max-new-tokens 48 "
        "--eval-every 2 --ckpt-every 2 --device cpu").split()
TIMINGS = ("t_sample", "t_score", "t_reference", "t_learn")
RTOL, ATOL = 1e-4, 1e-6


def start(command, env=None):
    """Run a command in the repository root; its output on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def one_process(*flags, env=None):
    return start([sys.executable, DRIVER, *TINY, "--threads", "1", *flags], env)


def two_processes(*flags, env=None):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return start([*torchrun, DRIVER, *TINY, *flags], env)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny warm start, trained once in one process on one thread: every run below loads it."""
    bases = tmp_path_factory.mktemp("bases")
    code, out = one_process("--out-dir", str(bases.parent / "warm"), "--base-dir", str(bases),
                            "--steps", "1")
    assert code == 0, out
    return bases


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_close_rows(a, b):
    """Metrics rows equal but for float rounding (the timings aside)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for row_a, row_b in zip(a, b):
        for key, value in row_a.items():
            if key in TIMINGS:
                continue
            if isinstance(value, float):
                assert row_b[key] == pytest.approx(value, rel=RTOL, abs=ATOL), (row_a["step"], key)
            elif key == "per_update":  # each optimizer step's statistics, floats too
                assert row_b[key] == [pytest.approx(u, rel=RTOL, abs=ATOL) for u in value]
            else:
                assert row_b[key] == value, (row_a["step"], key)


def weights(run_dir):
    return torch.load(run_dir / "ckpt.pt")["model"]


@pytest.mark.parametrize("switches", [
    [],  # the default: RGRA, one update per step
    ["--preset", "grpo", "--mu", "2", "--minibatches", "2", "--micro-batch", "3", "--lr", "1e-3"],
    ["--preset", "reinforce_pp", "--mu", "2", "--ratio-level", "sequence", "--clip-c", "3",
     "--entropy-coef", "0.01", "--lr", "1e-3"],
], ids=["rgra", "grpo-reuse-minibatches", "reinforce_pp-new-switches"])
def test_two_processes_make_the_single_process_update_on_the_same_global_batch(tmp_path, base_dir,
                                                                                switches):
    """--prompts 4 over 2 ranks: each samples 2 prompts x 4 completions. With minibatches and
    micro-batches the ranks hold different shares of each minibatch (some none); the sum is still
    the whole minibatch's gradient. REINFORCE++ normalises over the whole step: every rank holds
    every reward (rl_step gathers them), so its batch mean and std are the single process's."""
    common = [*switches, "--base-dir", str(base_dir)]
    code, out = one_process(*common, "--out-dir", str(tmp_path / "one"))
    assert code == 0, out
    code, out = two_processes(*common, "--out-dir", str(tmp_path / "two"))
    assert code == 0, out
    one = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    two = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert all(r["grad_norm"] > 0 for r in one)  # every step moved the weights: a real comparison
    assert_close_rows(one, two)
    final_one, final_two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name, tensor in final_one.items():
        torch.testing.assert_close(final_two[name], tensor, rtol=RTOL, atol=ATOL)


def test_under_torchrun_rank_0_writes_every_file_once_and_a_crashed_run_resumes_to_the_same_end(
        tmp_path, base_dir):
    common = ["--base-dir", str(base_dir)]
    code, out = two_processes(*common, "--out-dir", str(tmp_path / "whole"))
    assert code == 0, out
    whole = tmp_path / "whole"
    assert [r["step"] for r in read_jsonl(whole / "metrics.jsonl")] == [0, 1, 2, 3]  # not twice
    assert [e["step"] for e in read_jsonl(whole / "eval.jsonl")] == [-1, 1, 3]
    assert sorted(p.name for p in whole.iterdir()) == sorted(
        ["ckpt.pt", "config.json", "eval.jsonl", "metrics.jsonl", "run.png", "summary.json"])

    crashed = tmp_path / "crashed"
    crash = {"NANORGRA_CRASH_AT_STEP": "3"}
    code, out = two_processes(*common, "--out-dir", str(crashed), env=crash)
    assert code != 0
    assert torch.load(crashed / "ckpt.pt")["step"] == 1  # saved after step 1 (--ckpt-every 2)
    code, out = two_processes(*common, "--out-dir", str(crashed), "--resume")
    assert code == 0, out
    without_timings = [{k: v for k, v in r.items() if k not in TIMINGS}
                       for r in read_jsonl(crashed / "metrics.jsonl")]
    assert without_timings == [{k: v for k, v in r.items() if k not in TIMINGS}
                               for r in read_jsonl(whole / "metrics.jsonl")]
    assert read_jsonl(crashed / "eval.jsonl") == read_jsonl(whole / "eval.jsonl")
    for name, tensor in weights(whole).items():
        assert torch.equal(weights(crashed)[name], tensor), name  # the same world size: exactly


def test_prompts_that_do_not_split_evenly_over_the_processes_are_refused(tmp_path, base_dir):
    code, out = two_processes("--prompts", "3", "--base-dir", str(base_dir), "--out-dir",
                              str(tmp_path / "run"))
    assert code != 0 and "--prompts (3) must be a multiple of the number of processes (2)" in out
    assert not (tmp_path / "run").exists()
