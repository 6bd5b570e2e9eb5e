"""The GPU path: on CUDA with bf16 autocast, as nanorgra.py samples and trains there. On a machine
without CUDA every test here is collected and skipped with that reason; the CPU tests check the
same properties in float32, exactly.

The tolerances, stated once: bf16 keeps about three significant digits, so
  * log-probs (sampler against full recompute, sampler against the training forward) agree within
    LOGP_TOL per token;
  * the two samplers draw the same tokens, except at a near-tie: where, at the first token they
    differ, the two tokens' float32 sampling scores (logit / T + Gumbel noise) are within TIE_TOL,
    so that bf16 rounding may decide either way;
  * the gradient of the loss under bf16 points the way the CPU float32 gradient does
    (cosine > 0.99) and has its norm within 5%.
"""

import copy
import os
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch

import nanorgra
import rundir
from data.tasks import RL_LEVEL, prompt_text, train_problems
from data.tokenizer import get_tokenizer
from model import Rollout, autocast, completion_logprobs, generate, generate_naive, gumbel_noise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here: the GPU path (bf16 autocast) is "
                                       "tested only where one is")

CUDA = torch.device("cuda")
LOGP_TOL, TIE_TOL = 5e-2, 5e-2
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--skill-steps", "300",
        "--habit-steps", "50", "--warm-batch", "32", "--max-new-tokens", "40"]
RUN = ["--steps", "4", "--prompts", "4", "--group", "4", "--eval-n", "16", "--pass-n", "4",
       "--pass-k", "4", "--eval-every", "2", "--ckpt-every", "2"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bases")


@pytest.fixture(scope="module")
def trained(base_dir):
    """A small model warm-started on the CPU: confident enough that near-ties are rare,
    and the same every time."""
    args = nanorgra.parse_args(TINY + ["--base-dir", str(base_dir), "--device", "cpu"])
    return nanorgra.warm_start(args, get_tokenizer(), torch.device("cpu"), log=lambda *a: None)[0]


@pytest.fixture(scope="module")
def prompts():
    tok = get_tokenizer()
    problems = train_problems(RL_LEVEL, 8, np.random.default_rng(0))
    return [tok.encode(prompt_text(p)) for p in problems]


def on(rollout, device):
    tensors = (rollout.prompt, rollout.prompt_valid, rollout.tokens, rollout.mask, rollout.logprobs)
    return Rollout(*(t.to(device) for t in tensors))


def test_kv_cache_sampler_equals_the_full_recompute_under_bf16_except_at_near_ties(
        trained, prompts):
    tok, model = get_tokenizer(), copy.deepcopy(trained).to(CUDA)
    with autocast(CUDA):
        a = generate(model, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4, seeds=range(8))
        b = generate_naive(model, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4,
                           seeds=range(8))
    # the very draws both samplers used
    noise = gumbel_noise(range(8), 4, 40, model.config.vocab_size, CUDA)
    width, near_ties = min(a.tokens.size(1), b.tokens.size(1)), 0
    for row in range(a.tokens.size(0)):
        differ = (a.tokens[row, :width] != b.tokens[row, :width]).nonzero().flatten()
        if len(differ) == 0:  # the same tokens: then the same mask, and log-probs within tolerance
            assert torch.equal(a.mask[row, :width], b.mask[row, :width])
            m = a.mask[row, :width]
            assert (a.logprobs[row, :width] - b.logprobs[row, :width])[m].abs().max() < LOGP_TOL
            continue
        # the same prefix up to t: the two tokens chosen at t must be a near-tie in float32
        t = differ[0].item()
        seq = torch.cat([a.prompt[row], a.tokens[row, :t]])[None]
        valid = torch.cat([a.prompt_valid[row], a.mask[row, :t]])[None]
        with torch.no_grad():
            scores = model(seq, valid=valid)[0, -1].float() + noise[row, t]  # temperature 1
        assert abs(scores[a.tokens[row, t]] - scores[b.tokens[row, t]]).item() < TIE_TOL, (row, t)
        near_ties += 1
    assert near_ties <= a.tokens.size(0) // 4  # ties are rare; many would be a bug, not rounding


def test_sampler_logprobs_equal_the_training_forward_under_bf16_within_the_tolerance(
        trained, prompts):
    tok, model = get_tokenizer(), copy.deepcopy(trained).to(CUDA)
    with autocast(CUDA):
        r = generate(model, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4, seeds=range(8))
        with torch.no_grad():
            logp = completion_logprobs(model, r, 1.0)
    assert logp.dtype == torch.float32  # log-probs are taken in float32 even under autocast
    assert (logp - r.logprobs)[r.mask].abs().max() < LOGP_TOL


class RecordingSGD(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = []

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        self.grads.append(torch.cat([p.grad.detach().flatten().float().cpu() for p in params]))
        return super().step(closure)


@pytest.mark.parametrize("preset", ["rgra", "grpo"])
def test_loss_gradients_under_bf16_on_the_gpu_match_the_float32_cpu_ones(trained, prompts, preset):
    tok = get_tokenizer()
    # sampled on the CPU, in float32
    rollout = generate(trained, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4, seeds=range(8))
    # mixed groups: every row has a signal
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]] * 4)
    cfg = replace(nanorgra.PRESETS[preset], grad_clip=0.0)
    grads = []
    for device in (torch.device("cpu"), CUDA):
        model, batch = copy.deepcopy(trained).to(device), on(rollout, device)
        with torch.no_grad(), autocast(device):
            ref_logp = completion_logprobs(model, batch, 1.0)
        adv, keep = nanorgra.advantages_for(rewards.to(device), cfg)
        opt = RecordingSGD(model.parameters())
        exp = nanorgra.Experience(batch, adv, ref_logp, 1.0, keep)
        nanorgra.learn(model, opt, exp, cfg, torch.Generator().manual_seed(0))
        grads.append(opt.grads[0].double())
    cpu, gpu = grads
    assert (cpu @ gpu / (cpu.norm() * gpu.norm())).item() > 0.99
    assert abs(gpu.norm() / cpu.norm() - 1).item() < 0.05


def test_a_tiny_run_on_the_gpu_stops_at_ctrl_c_and_resumes_to_the_end(
        tmp_path, base_dir, monkeypatch):
    argv = TINY + RUN + ["--device", "cuda", "--base-dir", str(base_dir),
                         "--out-dir", str(tmp_path / "run")]
    rl_step = nanorgra.rl_step

    def ctrl_c_during_step_1(policy, ref, opt, tok, args, step):
        assert policy.device.type == "cuda"
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a user's Ctrl-C while step 1 runs
        return rl_step(policy, ref, opt, tok, args, step)

    monkeypatch.setattr(nanorgra, "rl_step", ctrl_c_during_step_1)
    # stopped after step 1
    assert nanorgra.train(nanorgra.parse_args(argv), log=lambda *a: None) is None
    assert torch.load(tmp_path / "run" / "ckpt.pt", map_location="cpu")["step"] == 1
    monkeypatch.setattr(nanorgra, "rl_step", rl_step)
    summary = nanorgra.train(nanorgra.parse_args(argv + ["--resume"]), log=lambda *a: None)
    rows = rundir.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and summary["steps"] == 4
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["kl"]) for r in rows)
    assert (tmp_path / "run" / "run.png").exists()
