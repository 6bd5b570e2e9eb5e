"""--compile on the CPU: train() passes the sampler's decode step and the policy's forward
(learn()'s, the prefill's) through torch.compile, and the compiled functions compute what the eager
ones do.

The compiler here is TorchDynamo with the aot_eager backend: the same graph capture, guards,
recompilation rules and autograd graph as --compile's default (inductor), with the ops run eagerly,
because inductor's C++ code generation takes ~40 s for this tiny model on the shared 2-core CPU.
NANORGRA_COMPILE_BACKEND=inductor runs the same tests with inductor (there, measured once: loss
1.5e-8 and gradient 1.9e-8 from eager, within the tolerance below).

Tolerance, compiled against eager: rtol 1e-5, atol 1e-6 on the loss and on every gradient entry (a
fused kernel may sum in another order; aot_eager agrees to the bit); greedy tokens exactly equal."""

import copy
import os

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import nanorgra
from data.tasks import make_problem, prompt_text
from model import completion_logprobs, generate

BACKEND = os.environ.get("NANORGRA_COMPILE_BACKEND", "aot_eager")
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def compiled(tiny):
    """A copy of the tiny model compiled as train() compiles the policy under --compile."""
    torch._dynamo.reset()
    model = copy.deepcopy(tiny)
    model.decode_step = torch.compile(model.decode_step, dynamic=True, backend=BACKEND)
    model.forward = torch.compile(model.forward, dynamic=True, backend=BACKEND)
    return model


def prompts(tok, n, seed):
    """n prompts of several lengths (so some are left-padded), as token ids."""
    rng = np.random.default_rng(seed)
    levels = ("mix2", "ood4")
    return [tok.encode(prompt_text(make_problem(levels[i % 2], rng))) for i in range(n)]


def greedy(model, tok, n_prompts, seed, eos_id):
    return generate(model, prompts(tok, n_prompts, seed), 24, eos_id, tok.pad_id,
                    temperature=0.0, seeds=[0] * n_prompts)


def experience(model, tok, n_prompts, seed, group=4):
    """An RL step's experience sampled from model (eager), with made-up rewards that vary inside
    each group, and the model itself as the KL reference."""
    rollout = generate(model, prompts(tok, n_prompts, seed), 24, tok.eos_id, tok.pad_id,
                       num_samples=group, temperature=1.0, seeds=list(range(n_prompts)))
    rewards = (torch.arange(n_prompts * group).view(n_prompts, group) % 3 == seed % 3).float()
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0
    cfg = nanorgra.loss_config("grpo", 24, entropy_coef=0.01, grad_clip=0.0)
    adv, keep = nanorgra.advantages_for(rewards, cfg)
    with torch.no_grad():
        ref_logp = completion_logprobs(model, rollout, 1.0)
    return nanorgra.Experience(rollout, adv, ref_logp, 1.0, keep), cfg


def learn_once(model, experience, cfg):
    """One learn() call of one minibatch on model, which it leaves as it was (lr 0): its loss and
    its gradient, every parameter's flattened."""
    learned = nanorgra.learn(model, torch.optim.SGD(model.parameters(), lr=0.0), experience, cfg,
                             torch.Generator().manual_seed(0))
    assert len(learned.norms) == 1
    return learned.total.loss, torch.cat([p.grad.flatten() for p in model.parameters()])


def test_greedy_decoding_with_the_compiled_sampler_gives_the_same_tokens(tiny, compiled, tok):
    plain, fused = greedy(tiny, tok, 6, 0, tok.eos_id), greedy(compiled, tok, 6, 0, tok.eos_id)
    assert torch.equal(plain.tokens, fused.tokens) and torch.equal(plain.mask, fused.mask)
    torch.testing.assert_close(plain.logprobs, fused.logprobs, **TOLERANCE)


def test_the_loss_and_gradient_of_a_learn_minibatch_agree_with_eager(tiny, compiled, tok):
    batch, cfg = experience(tiny, tok, 4, 1)
    eager_loss, eager_grad = learn_once(copy.deepcopy(tiny), batch, cfg)
    compiled_loss, compiled_grad = learn_once(compiled, batch, cfg)
    assert eager_grad.abs().max() > 1e-3  # a gradient worth comparing
    torch.testing.assert_close(compiled_loss, eager_loss, **TOLERANCE)
    torch.testing.assert_close(compiled_grad, eager_grad, **TOLERANCE)


def test_a_second_call_with_other_shapes_does_not_recompile(tiny, compiled, tok):
    """The shapes change every step (rows, prompt and completion lengths): dynamic=True compiles
    one graph for all of them. Rows never finish here (no EOS), as in the sync-count tests: a
    shrinking batch is another layout of the cache, compiled once more the first time."""
    greedy(compiled, tok, 3, 2, eos_id=-1)  # first calls: compile, or find the graphs compiled
    learn_once(compiled, *experience(tiny, tok, 4, 3))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        greedy(compiled, tok, 5, 4, eos_id=-1)
        learn_once(compiled, *experience(tiny, tok, 3, 5, group=2))
    assert counters["stats"]["unique_graphs"] == graphs
