"""What a first GPU run needs, pinned down on the CPU: the lesson's identity GRPO == RGRA at mu = 1
holds under mixed precision too (CPU autocast stands in for a GPU's), the sampler's loop decides
nothing differently when it looks at its values less often, each distinct completion is scored
once, a resumed run loads its checkpoint to the CPU, and a device that is absent or a completion
budget beyond the model's positions is refused at start-up with a message."""

import copy
import json

import numpy as np
import pytest
import torch

import batches
import nanorgra
import rundir
from data.tasks import make_problem, prompt_text
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig, completion_logprobs, generate
from verifier import outcome_reward, solution_style

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0],
                        [0.0, 1.0, 0.0, 0.0],
                        [1.0, 1.0, 0.0, 0.0],
                        [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def tiny_model(tok, precision, n_layer=2, n_embd=64, n_head=4):
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=n_layer, n_head=n_head,
                       n_embd=n_embd)
    return GPT(config, seed=0, precision=precision)


def sample(model, tok, n_prompts=4, group=4, new_tokens=16, check_every=None):
    rng = np.random.default_rng(0)
    prompts = [tok.encode(prompt_text(make_problem("mix3", rng))) for _ in range(n_prompts)]
    return generate(model, prompts, new_tokens, tok.eos_id, tok.pad_id, num_samples=group,
                    temperature=1.0, generator=torch.Generator().manual_seed(0),
                    check_every=check_every)


def learn_once(model, rollout, *flags):
    """nanorgra.learn on a copy of model with an optimizer that records the gradient and does not
    move the weights; returns learn's statistics and the gradient of its first update."""
    cfg = nanorgra.parse_args(["--grad-clip", "0", "--beta", "0", *flags]).loss
    grads = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            grads.append(torch.cat([p.grad.flatten().clone() for p in params]))
            return super().step(closure)

    policy = copy.deepcopy(model)
    adv, keep = nanorgra.advantages_for(REWARDS, cfg)
    experience = nanorgra.Experience(rollout, adv, None, 1.0, keep)
    learned = nanorgra.learn(policy, Recorder(policy.parameters(), lr=0.0), experience, cfg,
                             torch.Generator().manual_seed(0))
    return learned.total, grads[0]


# -----------------------------------------------------------------------------
# Mixed precision


def test_under_bf16_the_samplers_log_probs_are_not_the_trainers():
    """Why mixed precision needs pi_old from the trainer: the sampler computes the same function
    with other arithmetic, and under bf16 the difference shows (in float32 it is ~1e-7)."""
    tok = get_tokenizer()
    model = tiny_model(tok, "bf16")
    rollout = sample(model, tok)
    with torch.no_grad():
        trainer = completion_logprobs(model, rollout, 1.0)
    gap = ((trainer - rollout.logprobs) * rollout.mask).abs().max().item()
    assert gap > 1e-4


def test_under_bf16_every_ratio_is_1_at_the_first_update_and_grpo_equals_rgra(tok):
    model = tiny_model(tok, "bf16")
    rollout = sample(model, tok)
    grpo, g_grpo = learn_once(model, rollout, "--preset", "grpo")
    rgra, g_rgra = learn_once(model, rollout, "--preset", "rgra")
    assert grpo.ratio_max == pytest.approx(1.0, abs=1e-6)
    assert grpo.ratio_min == pytest.approx(1.0, abs=1e-6)
    assert grpo.ratio_sum / grpo.tokens == pytest.approx(1.0, abs=1e-6)
    assert grpo.clipped == 0
    assert g_rgra.abs().max() > 0
    torch.testing.assert_close(g_grpo, g_rgra, rtol=1e-5, atol=1e-6 * g_rgra.abs().max().item())


def test_mixed_precision_keeps_the_head_and_the_log_probs_in_float32(tok):
    model = tiny_model(tok, "bf16")
    rollout = sample(model, tok)
    seq, valid = rollout.sequences()
    assert model(seq, valid=valid).dtype == torch.float32
    assert rollout.logprobs.dtype == torch.float32


def test_float32_is_the_default_precision_of_a_run_and_of_a_model(tok):
    assert nanorgra.parse_args([]).precision == "fp32"
    assert tiny_model(tok, "fp32").precision == GPT(GPTConfig()).precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        GPT(GPTConfig(), precision="int8")


# -----------------------------------------------------------------------------
# The sampler's loop


@pytest.mark.parametrize("check_every", [2, 8])
def test_looking_at_the_running_rows_less_often_samples_the_same_tokens(tok, check_every):
    """Finished rows leave the batch later, so the batch's matrix products have other shapes and
    the log-probs may differ in their last bits (which is why the CPU looks every step: the
    default job's numbers stay the same to the last digit); the samples do not change."""
    model = tiny_model(tok, "fp32")
    every_step = sample(model, tok, new_tokens=24, check_every=1)
    fewer = sample(model, tok, new_tokens=24, check_every=check_every)
    assert torch.equal(every_step.tokens, fewer.tokens)
    assert torch.equal(every_step.mask, fewer.mask)
    torch.testing.assert_close(every_step.logprobs, fewer.logprobs, rtol=0, atol=1e-5)


# -----------------------------------------------------------------------------
# Scoring


def test_each_distinct_completion_is_scored_once_with_the_same_rewards_and_styles(tok,
                                                                                  monkeypatch):
    rng = np.random.default_rng(1)
    problems = [make_problem("mix3", rng) for _ in range(2)]
    texts = ["9*6=54\nA:1", "A:3", "9*6=54\nA:1", "A:3",  # the first group repeats itself
             "1+1=2\nA:2", "A:7", "A:7", "A:7"]
    prompts = [tok.encode(prompt_text(p)) for p in problems]
    completions = [tok.encode(t) + [tok.eos_id] for t in texts]
    from model import pack
    rollout = pack([prompts[i // 4] for i in range(8)], completions, tok.pad_id, "cpu")
    calls = []
    real_reward = nanorgra.outcome_reward
    monkeypatch.setattr(nanorgra, "outcome_reward",
                        lambda *a: calls.append(a[0]) or real_reward(*a))
    texts_back = batches.decode_completions(tok, rollout)
    rewards, styles = nanorgra.score_batch(problems, texts_back, format_reward=0.1)
    plain = [outcome_reward(t, problems[i // 4], 0.1) for i, t in enumerate(texts)]
    assert rewards.flatten().tolist() == pytest.approx(plain)
    assert styles == [solution_style(t, problems[i // 4].expr) for i, t in enumerate(texts)]
    assert len(calls) == 4  # 2 distinct texts in each group


# -----------------------------------------------------------------------------
# Resume, and refusals at start-up

TINY = ("--n-layer 1 --n-head 2 --n-embd 32 --skill-steps 4 --habit-steps 2 --warm-batch 8 "
        "--steps 2 --prompts 2 --group 2 --eval-n 4 --pass-n 2 --pass-k 2 --max-new-tokens 30 "
        "--eval-every 2 --ckpt-every 1 --device cpu").split()


def test_a_resumed_run_loads_its_checkpoint_to_the_cpu_and_keeps_adams_step_counts_there(
        tmp_path, monkeypatch):
    flags = [*TINY, "--out-dir", str(tmp_path / "run"), "--base-dir", str(tmp_path / "bases")]
    nanorgra.train(nanorgra.parse_args(flags), log=lambda *a: None)
    places = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load",
                        lambda *a, **k: places.append(k.get("map_location")) or real_load(*a, **k))
    args = nanorgra.parse_args(flags + ["--resume"])
    run = rundir.RunDir(args, torch.device("cpu"), log=lambda *a: None)
    policy = GPT(GPTConfig(vocab_size=get_tokenizer().vocab_size, n_layer=1, n_head=2,
                           n_embd=32))
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    assert run.start(policy, opt) == 2
    assert places and set(places) == {"cpu"}
    steps = [state["step"] for state in opt.state.values()]
    assert steps and all(s.device.type == "cpu" for s in steps)


def test_a_cuda_device_that_is_not_there_is_refused_with_a_message(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as e:
        nanorgra.parse_args(["--device", "cuda"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--device cuda" in last and "no CUDA device" in last


def test_a_completion_budget_beyond_the_models_positions_is_refused_before_any_allocation(
        capsys):
    with pytest.raises(SystemExit) as e:
        nanorgra.parse_args(["--max-new-tokens", "100000"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--max-new-tokens 100000" in last and "at most 114" in last
    assert nanorgra.parse_args(["--max-new-tokens", "114"]).max_new_tokens == 114


def test_a_deterministic_run_is_the_same_run_on_the_cpu(tmp_path):
    def final(name, *extra):
        flags = [*TINY, "--out-dir", str(tmp_path / name), "--base-dir", str(tmp_path / "bases"),
                 *extra]
        nanorgra.train(nanorgra.parse_args(flags), log=lambda *a: None)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]

    try:
        assert final("plain") == final("deterministic", "--deterministic")
    finally:
        torch.use_deterministic_algorithms(False)


def test_the_compiled_decode_step_samples_the_same_tokens(tok):
    """--compile passes the decode step through torch.compile (here on the CPU, where it works):
    the same function, fused into fewer kernels, so the same samples (log-probs to float rounding:
    a fused kernel may sum in another order)."""
    model = tiny_model(tok, "fp32", n_layer=1, n_embd=32, n_head=2)
    plain = sample(model, tok)
    compiled = copy.deepcopy(model)
    compiled.decode_step = torch.compile(compiled.decode_step, dynamic=True)
    fused = sample(compiled, tok)
    assert torch.equal(plain.tokens, fused.tokens) and torch.equal(plain.mask, fused.mask)
    torch.testing.assert_close(plain.logprobs, fused.logprobs, rtol=0, atol=1e-5)


def test_a_run_with_the_compile_flag_compiles_the_decode_step_and_the_forward(tmp_path,
                                                                           monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **k: compiled.append(fn) or fn)
    flags = [*TINY, "--compile", "--out-dir", str(tmp_path / "run"),
             "--base-dir", str(tmp_path / "bases")]
    nanorgra.train(nanorgra.parse_args(flags), log=lambda *a: None)
    assert [fn.__name__ for fn in compiled] == ["decode_step", "forward"]  # the policy's
