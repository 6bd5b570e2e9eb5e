"""The GPU path, where CUDA is present: float32 by default, as on the CPU, and mixed precision
(--precision bf16) as an opt-in. On a machine without CUDA every test here is collected and skipped
with that reason; tests/test_gpu_readiness.py checks the same properties on the CPU (bf16 under CPU
autocast).

The tolerances, stated once:
  * float32: the GPU's kernels sum in other orders than the CPU's, so log-probs agree within
    LOGP_TOL per token, and the two samplers draw the same tokens except at a near-tie: where, at
    the first token they differ, the two tokens' sampling scores (logit / T + Gumbel noise) are
    within TIE_TOL;
  * the gradient of the loss on the GPU points the way the CPU's does (cosine > 0.9999) with its
    norm within 0.1%;
  * bf16: at the first update of mu = 1 every ratio is 1 to 1e-6 (pi_old comes from the trainer's
    own forward), and GRPO's gradient equals RGRA's.
"""

import copy
import os
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch

import warmstart
import nanorgra
import rundir
from data.tasks import RL_LEVEL, prompt_text, train_problems
from data.tokenizer import get_tokenizer
from model import Rollout, completion_logprobs, generate, generate_naive, gumbel_noise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here: the GPU path is tested only where "
                                       "one is")

# cuBLAS's workspace fixed before any test here starts CUDA (cuBLAS reads it only then): without it
# the deterministic run below, made after CUDA started, would be refused
# (distributed.prepare_deterministic)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
CUDA = torch.device("cuda")
LOGP_TOL, TIE_TOL = 1e-4, 1e-4
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
    return warmstart.warm_start(args, get_tokenizer(), torch.device("cpu"), log=lambda *a: None)[0]


@pytest.fixture(scope="module")
def prompts():
    tok = get_tokenizer()
    problems = train_problems(RL_LEVEL, 8, np.random.default_rng(0))
    return [tok.encode(prompt_text(p)) for p in problems]


def on(rollout, device):
    tensors = (rollout.prompt, rollout.prompt_valid, rollout.tokens, rollout.mask, rollout.logprobs)
    return Rollout(*(t.to(device) for t in tensors))


def test_kv_cache_sampler_equals_the_full_recompute_on_the_gpu_except_at_near_ties(
        trained, prompts):
    tok, model = get_tokenizer(), copy.deepcopy(trained).to(CUDA)
    a = generate(model, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4, seeds=range(8))
    b = generate_naive(model, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4, seeds=range(8))
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
        # the same prefix up to t: the two tokens chosen at t must be a near-tie
        t = differ[0].item()
        seq = torch.cat([a.prompt[row], a.tokens[row, :t]])[None]
        valid = torch.cat([a.prompt_valid[row], a.mask[row, :t]])[None]
        with torch.no_grad():
            scores = model(seq, valid=valid)[0, -1] + noise[row, t]  # temperature 1
        assert abs(scores[a.tokens[row, t]] - scores[b.tokens[row, t]]).item() < TIE_TOL, (row, t)
        near_ties += 1
    assert near_ties <= a.tokens.size(0) // 8  # ties are rare; many would be a bug, not rounding


def test_sampler_logprobs_equal_the_training_forward_on_the_gpu(trained, prompts):
    tok, model = get_tokenizer(), copy.deepcopy(trained).to(CUDA)
    r = generate(model, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4, seeds=range(8))
    with torch.no_grad():
        logp = completion_logprobs(model, r, 1.0)
    assert (logp - r.logprobs)[r.mask].abs().max() < LOGP_TOL


class RecordingSGD(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = []

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        self.grads.append(torch.cat([p.grad.detach().flatten().float().cpu() for p in params]))
        return super().step(closure)


def first_gradient(model, rollout, cfg, device):
    """The gradient of learn()'s first update, and its statistics, on device."""
    model, batch = copy.deepcopy(model).to(device), on(rollout, device)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]] * 4)  # mixed groups
    with torch.no_grad():
        ref_logp = completion_logprobs(model, batch, 1.0)
    adv, keep = nanorgra.advantages_for(rewards.to(device), cfg)
    opt = RecordingSGD(model.parameters())
    learned = nanorgra.learn(model, opt, nanorgra.Experience(batch, adv, ref_logp, 1.0, keep), cfg,
                             torch.Generator().manual_seed(0))
    return opt.grads[0].double(), learned


@pytest.mark.parametrize("preset", ["rgra", "grpo"])
def test_loss_gradients_on_the_gpu_match_the_cpu_ones(trained, prompts, preset):
    tok = get_tokenizer()
    rollout = generate(trained, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4, seeds=range(8))
    cfg = replace(nanorgra.PRESETS[preset], grad_clip=0.0)
    cpu, _ = first_gradient(trained, rollout, cfg, torch.device("cpu"))
    gpu, _ = first_gradient(trained, rollout, cfg, CUDA)
    assert (cpu @ gpu / (cpu.norm() * gpu.norm())).item() > 0.9999
    assert abs(gpu.norm() / cpu.norm() - 1).item() < 1e-3


def test_under_bf16_on_the_gpu_grpo_equals_rgra_at_the_first_update(trained, prompts):
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    tok, model = get_tokenizer(), copy.deepcopy(trained).to(CUDA)
    model.precision = "bf16"
    rollout = generate(model, prompts, 40, tok.eos_id, tok.pad_id, num_samples=4, seeds=range(8))
    grads = {}
    for preset in ("rgra", "grpo"):
        cfg = replace(nanorgra.PRESETS[preset], grad_clip=0.0, beta=0.0)
        grads[preset], learned = first_gradient(model, rollout, cfg, CUDA)
    assert abs(learned.total.ratio_max - 1) < 1e-6 and learned.total.clipped == 0
    torch.testing.assert_close(grads["grpo"], grads["rgra"], rtol=1e-5,
                               atol=1e-6 * grads["rgra"].abs().max().item())


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


def test_a_deterministic_gpu_run_repeats_itself_exactly(tmp_path, base_dir):
    def metrics(name):
        argv = TINY + RUN + ["--device", "cuda", "--deterministic", "--base-dir", str(base_dir),
                             "--out-dir", str(tmp_path / name)]
        nanorgra.train(nanorgra.parse_args(argv), log=lambda *a: None)
        rows = rundir.read_jsonl(tmp_path / name / "metrics.jsonl")
        return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]

    try:
        assert metrics("first") == metrics("second")
    finally:
        torch.use_deterministic_algorithms(False)
