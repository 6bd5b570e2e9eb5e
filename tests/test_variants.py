"""The loss variants since GRPO (issue 18): GSPO's sequence ratio, CISPO, dual-clip, REINFORCE++'s
batch normalisation, the entropy bonus, the recipes' presets, and the paper's format reward.

Read top to bottom: each variant against an independent implementation written here as plain loops
over completions and tokens (values and gradients, with padding, zero-variance groups and every
aggregation); the identities that hold between variants; the entropy bonus on a tiny GPT; the
presets and their checks; the format reward; and every new preset run end to end from the command
line on a tiny model (CPU, seconds each).
"""

import copy
import json
import math
import zlib
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import flags
import nanorgra
from data.tasks import make_problem, prompt_text
from data.tokenizer import get_tokenizer
from experiments import sweep
from model import GPT, GPTConfig, Rollout, completion_logits, completion_logprobs, generate, \
    token_entropy

AGGS = ["seq-mean-token-mean", "token-mean", "seq-sum-norm"]
CONSTANT = 7.0  # seq-sum-norm's constant in the hand examples
NEW_PRESETS = ["dr_grpo", "dapo", "gspo", "cispo", "reinforce_pp", "rloo"]
NEW_SWITCHES = ["std_over", "ratio_level", "clip_mode", "clip_c", "entropy_coef"]
OFF = dict(std_over="group", ratio_level="token", clip_mode="ppo", clip_c=0.0, entropy_coef=0.0)

# 3 prompts x 4 completions: a mixed group, an all-right group (zero variance), a mixed group with
# the paper's format bonus in it. Completions of 1 to 6 tokens in rows of 6: padding on most rows.
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.1, 1.1, 0.0, 0.1]])
LENGTHS = [1, 3, 6, 2, 4, 1, 5, 2, 3, 6, 1, 4]
N, L = len(LENGTHS), max(LENGTHS)


# -----------------------------------------------------------------------------
# Hand examples, and the losses written out as loops


def batch(seed=0, spread=1.0, lengths=LENGTHS):
    """Log-probs of completions with padding: logp = old_logp + spread * noise, so that the ratios
    range from about exp(-2 spread) to exp(2 spread). Padding holds numbers that must never count.
    Returns logp (a leaf that takes gradients), the Rollout (mask, old log-probs), ref_logp."""
    g = torch.Generator().manual_seed(seed)
    n, width = len(lengths), max(lengths)
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]  # (n, width)
    old = -3 * torch.rand(n, width, generator=g)
    logp = old + spread * torch.randn(n, width, generator=g)
    ref = old + 0.3 * torch.randn(n, width, generator=g)
    logp = torch.where(mask, logp, torch.full_like(logp, -30.0)).requires_grad_(True)
    old = torch.where(mask, old, torch.full_like(old, 40.0))
    zeros = torch.zeros(n, width, dtype=torch.long)
    rows = Rollout(zeros[:, :1], torch.ones(n, 1, dtype=torch.bool), zeros, mask, old)
    return logp, rows, torch.where(mask, ref, torch.full_like(ref, 25.0))


def counts_of(rows):
    return len(rows.mask), int(rows.mask.sum())


def looped_loss(logp, rows, adv, ref_logp, cfg):
    """The loss of cfg written out one completion and one token at a time, each clipping case
    spelled out, the aggregation as the three sums of REFERENCE.md section 5."""
    n_seqs, n_tokens = counts_of(rows)
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    total = 0.0
    for i in range(len(adv)):
        tokens = [t for t in range(logp.size(1)) if rows.mask[i, t]]
        a = float(adv[i])
        mean_log_ratio = sum(logp[i, t] - rows.logprobs[i, t] for t in tokens) / len(tokens)
        row = 0.0
        for t in tokens:
            if cfg.ratio_level == "sequence":
                rho = torch.exp(mean_log_ratio)
            else:
                rho = torch.exp(logp[i, t] - rows.logprobs[i, t])
            if not cfg.ratio:
                term = -a * logp[i, t]
            elif cfg.clip and cfg.clip_mode == "cispo":
                weight = min(max(rho.item(), lo), hi)  # a number: no gradient through it
                term = -weight * a * logp[i, t]
            elif cfg.clip and a > 0 and rho.item() > hi:
                term = torch.tensor(-hi * a)  # the clipped term, a constant
            elif cfg.clip and a < 0 and rho.item() < lo:
                term = torch.tensor(-lo * a)
            else:
                term = -rho * a
            if cfg.clip_c > 0 and a < 0 and term.item() > -cfg.clip_c * a:
                term = torch.tensor(-cfg.clip_c * a)  # dual-clip's bound, a constant
            if cfg.beta > 0:
                x = ref_logp[i, t] - logp[i, t]
                term = term + cfg.beta * (torch.exp(x) - x - 1)
            row = row + term
        if cfg.agg == "seq-mean-token-mean":
            total = total + row / len(tokens) / n_seqs
        elif cfg.agg == "token-mean":
            total = total + row / n_tokens
        else:
            total = total + row / (n_seqs * cfg.agg_constant)
    return total


def value_and_grad(loss, logp):
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


def assert_matches_the_loops(cfg, adv, seed=0, spread=1.0):
    """rl_loss of cfg against looped_loss on the hand batch: value and gradient. Returns the
    statistics rl_loss logged."""
    logp, rows, ref_logp = batch(seed, spread)
    loss, stats = nanorgra.rl_loss(logp, rows, adv, ref_logp, cfg, counts_of(rows))
    value, grad = value_and_grad(loss, logp)
    loop_value, loop_grad = value_and_grad(looped_loss(logp, rows, adv, ref_logp, cfg), logp)
    torch.testing.assert_close(value, loop_value.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, loop_grad, rtol=1e-5, atol=1e-7)
    assert grad.abs().max() > 0  # a gradient of 0 everywhere would make the comparison pass
    assert torch.equal(grad[~rows.mask], torch.zeros(int((~rows.mask).sum())))  # padding: none
    return stats


def advantages(cfg):
    adv, _ = nanorgra.advantages_for(REWARDS, replace(cfg, agg_constant=CONSTANT))
    return adv


def config(preset, **switches):
    return replace(nanorgra.PRESETS[preset], agg_constant=CONSTANT, **switches)


# -----------------------------------------------------------------------------
# Each variant against the loops


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.2, 0.2)], ids=["paper-range", "ppo-range"])
def test_gspo_sequence_ratio_loss_and_gradient_equal_the_looped_ones(agg, eps):
    cfg = config("gspo", agg=agg, eps_low=eps[0], eps_high=eps[1])
    stats = assert_matches_the_loops(cfg, advantages(cfg))
    assert 0 < stats.clipped < stats.tokens  # both cases occur: clipped and not


@pytest.mark.parametrize("agg", AGGS)
def test_gspo_without_clip_is_minus_the_sequence_ratio_times_the_advantage_like_the_loops(agg):
    cfg = config("gspo", agg=agg, clip=False)
    assert assert_matches_the_loops(cfg, advantages(cfg)).clipped == 0


def test_gspo_ratio_is_one_number_per_completion_over_its_real_tokens_only():
    logp, rows, _ = batch()
    adv = torch.ones(N)
    _, stats = nanorgra.rl_loss(logp, rows, adv, None, config("gspo", clip=False, beta=0.0),
                                counts_of(rows))
    d = (logp - rows.logprobs).detach()  # (N, L)
    expected = [math.exp(sum(float(d[i, t]) for t in range(n)) / n) * n
                for i, n in enumerate(LENGTHS)]  # each token of o_i carries s_i
    assert stats.ratio_sum.item() == pytest.approx(sum(expected), rel=1e-5)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_cispo_loss_and_gradient_equal_the_looped_ones(agg, level):
    cfg = config("cispo", agg=agg, ratio_level=level)
    stats = assert_matches_the_loops(cfg, advantages(cfg))
    assert 0 < stats.clipped < stats.tokens


def test_cispo_gives_every_token_a_gradient_where_ppo_gives_clipped_tokens_none():
    logp, rows, _ = batch()
    adv = torch.linspace(-1, 1, N) + 0.05  # none is 0
    grads = {}
    for mode in ("ppo", "cispo"):
        cfg = config("grpo", clip_mode=mode, beta=0.0)
        loss, stats = nanorgra.rl_loss(logp, rows, adv, None, cfg, counts_of(rows))
        grads[mode] = value_and_grad(loss, logp)[1]
        assert stats.clipped > 0
    assert (grads["ppo"][rows.mask] == 0).any()
    assert (grads["cispo"][rows.mask] != 0).all()


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_dual_clip_loss_and_gradient_equal_the_looped_ones(agg, level):
    cfg = config("grpo", agg=agg, ratio_level=level, clip_c=2.0)
    adv = advantages(cfg)
    logp, rows, _ = batch()
    rho = torch.exp(logp - rows.logprobs).detach()
    assert ((adv[:, None] < 0) & (rho > 2.0) & rows.mask).any()  # the bound has work to do
    assert_matches_the_loops(cfg, adv)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("preset", ["reinforce_pp", "dr_grpo", "dapo", "rloo"])
def test_the_other_presets_losses_and_gradients_equal_the_looped_ones(agg, preset):
    cfg = config(preset, agg=agg, beta=0.01)
    assert_matches_the_loops(cfg, advantages(cfg))


def looped_advantages(rewards, baseline, std_over, eps=1e-6):
    """REINFORCE++'s advantages as plain arithmetic on lists of floats."""
    groups = rewards.tolist()
    flat = [r for group in groups for r in group]
    adv = []
    for group in groups:
        for r in group:
            if baseline == "batch":
                adv.append(0.0 if len(set(flat)) == 1 else r - sum(flat) / len(flat))
            else:  # the group mean
                adv.append(0.0 if len(set(group)) == 1 else r - sum(group) / len(group))
    if std_over == "group":  # the group std, as GRPO's
        stds = [float(np.std(group, ddof=1)) if len(set(group)) > 1 else None for group in groups]
        G = len(groups[0])
        return [a if stds[k // G] is None else a / (stds[k // G] + eps) for k, a in enumerate(adv)]
    if len(set(adv)) == 1:  # all equal: never divided by a std of 0
        return adv
    mean = sum(adv) / len(adv)
    std = math.sqrt(sum((a - mean) ** 2 for a in adv) / (len(adv) - 1))
    return [a / (std + eps) for a in adv]


@pytest.mark.parametrize("rewards", [
    REWARDS,
    torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]),  # two zero-variance groups
    torch.tensor([[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]]),  # the whole step equal: 0.1 each
    torch.tensor([[0.0, 0.0], [0.0, 0.0]]),
], ids=["mixed", "zero-variance-groups", "all-equal-0.1", "all-zero"])
@pytest.mark.parametrize("baseline,std_over", [("batch", "batch"), ("mean", "batch"),
                                               ("batch", "group")])
def test_reinforce_pp_advantages_equal_the_looped_ones(rewards, baseline, std_over):
    adv = nanorgra.group_advantages(rewards, baseline, True, std_over=std_over)
    expected = torch.tensor(looped_advantages(rewards, baseline, std_over)).view(rewards.shape)
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(adv).all()


def test_reinforce_pp_pushes_up_an_all_right_group_that_a_group_baseline_ignores():
    """The batch baseline compares a prompt's completions with the whole step's: an all-right group
    beats the step's mean reward. REINFORCE++-baseline keeps the group mean, so it does not."""
    batch_baseline = nanorgra.group_advantages(REWARDS, "batch", True, std_over="batch")
    group_baseline = nanorgra.group_advantages(REWARDS, "mean", True, std_over="batch")
    assert (batch_baseline[1] > 0).all()
    assert torch.equal(group_baseline[1], torch.zeros(4))


def test_reinforce_pp_advantages_of_the_whole_step_have_std_one():
    adv = nanorgra.advantages_for(REWARDS, nanorgra.PRESETS["reinforce_pp"])[0]
    assert adv.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert adv.std().item() == pytest.approx(1.0, rel=1e-4)


# -----------------------------------------------------------------------------
# The identities


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("agg", AGGS)
def test_gspo_ratio_equals_the_token_ratio_when_every_sequence_has_one_token(clip, agg):
    logp, rows, ref_logp = batch(lengths=[1] * N)
    adv = torch.linspace(-1.5, 1.5, N)
    results = []
    for level in ("token", "sequence"):
        cfg = config("grpo", agg=agg, clip=clip, ratio_level=level)
        loss, stats = nanorgra.rl_loss(logp, rows, adv, ref_logp, cfg, counts_of(rows))
        results.append((*value_and_grad(loss, logp), stats))
    (v_token, g_token, s_token), (v_seq, g_seq, s_seq) = results
    assert torch.equal(v_token, v_seq) and torch.equal(g_token, g_seq)
    assert {k: v.item() for k, v in vars(s_token).items()} == \
        {k: v.item() for k, v in vars(s_seq).items()}
    assert s_token.clipped > 0 or not clip


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_cispo_gradient_equals_rgras_when_no_weight_is_clipped_and_rho_is_one(agg, level):
    logp, rows, ref_logp = batch()
    now = replace(rows, logprobs=logp.detach().clone())  # sampled by this very policy: rho = 1
    adv = advantages(nanorgra.PRESETS["rgra"])
    cispo = config("cispo", agg=agg, ratio_level=level, beta=0.005)
    rgra = config("rgra", agg=agg)
    loss_cispo, stats = nanorgra.rl_loss(logp, now, adv, ref_logp, cispo, counts_of(rows))
    loss_rgra, _ = nanorgra.rl_loss(logp, now, adv, ref_logp, rgra, counts_of(rows))
    assert stats.clipped == 0
    v_cispo, g_cispo = value_and_grad(loss_cispo, logp)
    v_rgra, g_rgra = value_and_grad(loss_rgra, logp)
    torch.testing.assert_close(g_cispo, g_rgra)
    torch.testing.assert_close(v_cispo, v_rgra)


def test_cispo_gradient_is_rgras_with_each_token_weighted_by_its_clipped_ratio():
    logp, rows, _ = batch()
    adv = advantages(nanorgra.PRESETS["rgra"])
    cfg = config("cispo")
    loss, _ = nanorgra.rl_loss(logp, rows, adv, None, cfg, counts_of(rows))
    _, grad = value_and_grad(loss, logp)
    rho = torch.exp(logp - rows.logprobs).detach()
    weight = rho.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    n_seqs, n_tokens = counts_of(rows)
    expected = torch.where(rows.mask, -weight * adv[:, None] / n_tokens, torch.zeros_like(rho))
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("agg", AGGS)
def test_dual_clip_changes_nothing_where_the_advantage_is_not_negative_or_rho_is_at_most_c(agg):
    logp, rows, ref_logp = batch(spread=1.5)
    rho = torch.exp(logp - rows.logprobs).detach()
    adv = torch.linspace(-1, 1, N)
    big = ((rho > 3.0) & rows.mask).any(1)  # (N,) rows with a token whose ratio is above c
    adv = torch.where(big, adv.abs() + 0.1, adv)  # those rows get A > 0: the bound never acts
    assert big.any() and (adv < 0).any()  # both cases the claim covers are present
    results = []
    for c in (0.0, 3.0):
        cfg = config("grpo", agg=agg, clip_c=c)
        loss, stats = nanorgra.rl_loss(logp, rows, adv, ref_logp, cfg, counts_of(rows))
        results.append((*value_and_grad(loss, logp), stats.clipped))
    (v_off, g_off, clipped_off), (v_on, g_on, clipped_on) = results
    assert torch.equal(v_off, v_on) and torch.equal(g_off, g_on) and clipped_off == clipped_on


def test_dual_clip_bounds_a_negative_advantage_at_c_and_gives_those_tokens_no_gradient():
    rho = torch.tensor([[0.5, 1.0, 2.9, 3.1, 10.0]])
    old = torch.zeros_like(rho)
    logp = rho.log().requires_grad_(True)
    adv = torch.tensor([-2.0])
    loss, rho_out, clipped = nanorgra.policy_term_ratio(logp, old, adv, True, 0.2, 0.2)
    bounded, acts = nanorgra.dual_clip(loss, adv, 3.0)
    assert acts.tolist() == [[False, False, False, True, True]]
    torch.testing.assert_close(bounded[acts], torch.tensor([6.0, 6.0]))  # -c A = 6
    torch.testing.assert_close(bounded[~acts], loss[~acts])
    (grad,) = torch.autograd.grad(bounded.sum(), logp)
    assert torch.equal(grad[acts], torch.zeros(2))
    torch.testing.assert_close(grad[0, 1:3], (-rho_out * adv[:, None])[0, 1:3].detach())


@pytest.mark.parametrize("rewards", [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                                     [0.1, 1.1, 0.0, 0.1], [1.0, 1.0, 1.0], [0.1, 0.1]])
def test_reinforce_pp_equals_group_normalisation_when_the_batch_holds_one_group(rewards):
    one_group = torch.tensor([rewards])
    grpo = nanorgra.group_advantages(one_group, "mean", True)
    for baseline in ("batch", "mean"):  # REINFORCE++ and REINFORCE++-baseline
        reinforce_pp = nanorgra.group_advantages(one_group, baseline, True, std_over="batch")
        torch.testing.assert_close(reinforce_pp, grpo, rtol=1e-6, atol=1e-7)
    preset, _ = nanorgra.advantages_for(one_group, nanorgra.PRESETS["reinforce_pp"])
    torch.testing.assert_close(preset, grpo.flatten(), rtol=1e-6, atol=1e-7)


def test_reinforce_pp_differs_from_group_normalisation_when_the_batch_holds_several_groups():
    batch_adv = nanorgra.group_advantages(REWARDS, "batch", True, std_over="batch")
    assert not torch.allclose(batch_adv, nanorgra.group_advantages(REWARDS, "mean", True))


# -----------------------------------------------------------------------------
# On a tiny GPT: the entropy bonus, and the presets at mu = 1


@pytest.fixture(scope="module")
def rollout(tiny, tok):
    """4 completions for each of 4 arithmetic prompts from the tiny model, as the sampler draws."""
    rng = np.random.default_rng(0)
    prompts = [tok.encode(prompt_text(make_problem("mix3", rng))) for _ in range(4)]
    r = generate(tiny.eval(), prompts, 12, tok.eos_id, tok.pad_id, num_samples=4,
                 temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert r.mask.sum(1).min() < r.mask.sum(1).max()  # padding on some rows
    return r


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps a copy of the gradients of every update it makes."""

    def __init__(self, params, lr=0.0):
        super().__init__(params, lr=lr)
        self.grads = []

    def step(self, closure=None):
        self.grads.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def learn_grads(model, rollout, cfg, adv, temperature=1.0, lr=0.0):
    """learn() on a fresh copy of model (the untouched model is the KL reference) with these
    advantages, every row kept: the gradient of each update and learn's statistics."""
    policy = copy.deepcopy(model)
    ref_logp = None  # the reference's log-probs, only when the KL term reads them
    if cfg.beta > 0:
        with torch.no_grad():
            ref_logp = completion_logprobs(model, rollout, temperature)
    opt = RecordingSGD(policy.parameters(), lr=lr)
    keep = torch.ones(len(adv), dtype=torch.bool)
    exp = nanorgra.Experience(rollout, adv, ref_logp, temperature, keep)
    learned = nanorgra.learn(policy, opt, exp, cfg, torch.Generator().manual_seed(0))
    return opt.grads, learned


def assert_same_grads(a, b, rtol=1e-5):
    scale = max(g.abs().max().item() for g in a)
    assert scale > 0
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=rtol * scale)


def test_token_entropy_is_the_entropy_of_the_whole_next_token_distribution():
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1))
    for temperature in (1.0, 0.7):
        H = token_entropy(logits, temperature)
        for b in range(2):
            for t in range(3):
                z = [x / temperature for x in logits[b, t].tolist()]
                total = sum(math.exp(x) for x in z)
                p = [math.exp(x) / total for x in z]
                assert H[b, t].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-5)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_bonus_gradient_is_minus_coef_times_the_gradient_of_the_aggregated_entropy(
        tiny, rollout, agg, temperature):
    """With every advantage 0 and beta 0, learn's gradient is the entropy bonus's alone; it equals
    -coef times the gradient of the entropy, computed here token by token from the model's logits
    and aggregated by the loops of REFERENCE.md section 5."""
    coef = 0.05
    cfg = replace(nanorgra.PRESETS["rgra"], agg=agg, beta=0.0, entropy_coef=coef, grad_clip=0.0,
                  agg_constant=CONSTANT)
    adv = torch.zeros(len(rollout.mask))
    grads, _ = learn_grads(tiny, rollout, cfg, adv, temperature)

    model = copy.deepcopy(tiny)
    logits = completion_logits(model, rollout)  # (N, L, V)
    mask = rollout.mask
    n_seqs, n_tokens = len(mask), int(mask.sum())
    total = 0.0
    for i in range(n_seqs):
        tokens = [t for t in range(mask.size(1)) if mask[i, t]]
        row = 0.0
        for t in tokens:
            p = torch.softmax(logits[i, t] / temperature, -1)
            row = row - (p * p.log()).sum()
        if agg == "seq-mean-token-mean":
            total = total + row / len(tokens) / n_seqs
        elif agg == "token-mean":
            total = total + row / n_tokens
        else:
            total = total + row / (n_seqs * CONSTANT)
    (-coef * total).backward()
    assert_same_grads(grads[0], [p.grad for p in model.parameters()])


def test_entropy_is_computed_from_the_same_forward_and_only_when_its_coefficient_is_positive(
        tiny, rollout, monkeypatch):
    forwards, entropies = [], []
    real_forward, real_entropy = GPT.forward, nanorgra.token_entropy

    def counting_forward(self, *args, **kwargs):
        forwards.append(1)
        return real_forward(self, *args, **kwargs)

    def counting_entropy(*args, **kwargs):
        entropies.append(1)
        return real_entropy(*args, **kwargs)

    monkeypatch.setattr(GPT, "forward", counting_forward)
    monkeypatch.setattr(nanorgra, "token_entropy", counting_entropy)
    adv = torch.linspace(-1, 1, len(rollout.mask))
    cfg = replace(nanorgra.PRESETS["rgra"], beta=0.0, micro_batch=5)  # 16 rows: 4 micro-batches
    learn_grads(tiny, rollout, cfg, adv)
    assert (len(forwards), len(entropies)) == (4, 0)
    learn_grads(tiny, rollout, replace(cfg, entropy_coef=0.01), adv)
    assert (len(forwards), len(entropies)) == (8, 4)  # no second forward for the entropy


@pytest.mark.parametrize("preset,rgra_switches", [
    ("gspo", dict()),
    ("cispo", dict(agg="token-mean", beta=0.0)),
    ("dapo", dict(agg="token-mean", beta=0.0)),
])
def test_at_mu_1_gspo_cispo_and_dapo_give_rgras_gradient_with_their_aggregation_and_beta(
        tiny, rollout, preset, rgra_switches):
    """One update per sampled batch: every ratio is 1 (s_i too), nothing is clipped, and what is
    left of each recipe is its aggregation and beta (and dapo's clip range does not act)."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]] * 2)  # no group equal
    cfg = replace(nanorgra.PRESETS[preset], grad_clip=0.0)
    other = replace(nanorgra.PRESETS["rgra"], grad_clip=0.0, **rgra_switches)
    adv, _ = nanorgra.advantages_for(rewards, cfg)
    grads, learned = learn_grads(tiny, rollout, cfg, adv)
    other_grads, _ = learn_grads(tiny, rollout, other, adv)
    assert learned.total.clipped == 0
    assert_same_grads(grads[0], other_grads[0])


def test_with_mu_2_gspo_and_grpo_differ_on_the_second_update(tiny, rollout):
    adv = torch.linspace(-1, 1, len(rollout.mask))
    grads = {}
    for level in ("token", "sequence"):
        cfg = replace(nanorgra.PRESETS["grpo"], ratio_level=level, mu=2, grad_clip=0.0)
        grads[level], _ = learn_grads(tiny, rollout, cfg, adv, lr=1.0)
    assert_same_grads(grads["token"][0], grads["sequence"][0])
    diff = max((a - b).abs().max().item() for a, b in zip(grads["token"][1], grads["sequence"][1]))
    assert diff > 1e-3


# -----------------------------------------------------------------------------
# The presets and their switches


PARENTS = {  # each new preset: the preset it replaces, and what it changes
    "dr_grpo": ("grpo", dict(std_norm=False, agg="seq-sum-norm")),
    "dapo": ("grpo", dict(eps_high=0.28, agg="token-mean", skip_zero_var=True, beta=0.0)),
    "gspo": ("grpo", dict(ratio_level="sequence", eps_low=3e-4, eps_high=4e-4)),
    "cispo": ("grpo", dict(clip_mode="cispo", agg="token-mean", beta=0.0)),
    "reinforce_pp": ("grpo", dict(baseline="batch", std_over="batch")),
    "rloo": ("rgra", dict(baseline="loo", std_norm=False, agg="seq-sum-norm")),
}


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_each_new_preset_is_an_existing_preset_with_its_recipes_switches(preset):
    parent, changes = PARENTS[preset]
    new, old = asdict(nanorgra.PRESETS[preset]), asdict(nanorgra.PRESETS[parent])
    assert {k: v for k, v in new.items() if v != old[k]} == changes


def test_every_new_switch_is_off_in_the_default_and_in_the_six_old_presets():
    assert {name: getattr(nanorgra.LossConfig(), name) for name in NEW_SWITCHES} == OFF
    for preset in ("rgra", "grpo", "grpo_pos", "reinforce", "raft", "sft"):
        assert {name: getattr(nanorgra.PRESETS[preset], name) for name in NEW_SWITCHES} == OFF
    assert nanorgra.parse_args([]).format_reward == 0.0


@pytest.mark.parametrize("switches,name", [
    (dict(ratio_level="sequence"), "ratio_level"),  # rgra has no ratio
    (dict(ratio_level="geometric"), "ratio_level"),
    (dict(clip_mode="sapo"), "clip_mode"),
    (dict(std_over="prompt"), "std_over"),
    (dict(baseline="median"), "baseline"),
    (dict(clip_c=3.0), "clip_c"),  # rgra does not clip
    (dict(entropy_coef=-0.1), "entropy_coef"),
    (dict(entropy_coef=math.nan), "entropy_coef"),
])
def test_a_new_switch_that_cannot_work_on_rgra_is_refused_naming_its_field(switches, name):
    with pytest.raises(flags.SwitchError) as e:
        replace(nanorgra.PRESETS["rgra"], **switches)
    assert e.value.switch == name


@pytest.mark.parametrize("preset,c", [("grpo", 1.0), ("grpo", 0.5), ("grpo", -1.0),
                                      ("grpo", math.inf), ("cispo", 3.0)])
def test_dual_clip_c_must_be_above_1_on_a_ppo_clip(preset, c):
    with pytest.raises(flags.SwitchError) as e:
        replace(nanorgra.PRESETS[preset], clip_c=c)
    assert e.value.switch == "clip_c"


@pytest.mark.parametrize("argv,flag", [
    (["--format-reward", "-0.1"], "--format-reward"),
    (["--format-reward", "nan"], "--format-reward"),
    (["--preset", "grpo", "--clip-c", "0.5"], "--clip-c"),
    (["--ratio-level", "sequence"], "--ratio-level"),
    (["--preset", "rloo", "--group", "1"], "--group"),  # leave-one-out needs two samples
])
def test_bad_new_flags_stop_at_start_up_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        nanorgra.parse_args(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err.strip().splitlines()[-1]


def test_reinforce_pp_needs_no_group_so_a_group_of_one_is_allowed():
    args = nanorgra.parse_args(["--preset", "reinforce_pp", "--group", "1"])
    assert args.group == 1 and args.loss.baseline == "batch"


def test_every_new_flag_appears_in_help_with_its_help_text():
    text = "".join(flags.build_parser(nanorgra.PRESETS).format_help().split())  # wrapping aside
    for f in fields(nanorgra.LossConfig):
        if f.name in NEW_SWITCHES:
            assert "--" + f.name.replace("_", "-") in text
            assert "".join(f.metadata["help"].split()) in text, f.name
    format_flag = [f for f in flags.RUN_FLAGS["reward"] if f.name == "--format-reward"][0]
    assert "--format-reward" in text and "".join(format_flag.help.split()) in text
    for preset in NEW_PRESETS:
        assert f"{preset}:LossConfig(" in text  # the epilog lists every preset


def test_the_references_trl_and_verl_table_has_a_row_for_every_loss_switch_and_new_preset():
    reference = (Path(__file__).resolve().parent.parent / "REFERENCE.md").read_text()
    section = reference.split("## 9. The same switches in TRL and verl")[1]
    table = section.split("\n## ")[0]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `--")]
    for f in fields(nanorgra.LossConfig):
        assert any("--" + f.name.replace("_", "-") in cell for cell in first_cells), f.name
    for preset in NEW_PRESETS:
        assert any(f"--preset {preset}`" in cell for cell in first_cells), preset
    assert any("--format-reward" in cell for cell in first_cells)


def test_the_sweep_keeps_its_13_variants_first_and_can_run_every_preset():
    old = ["rgra", "grpo", "grpo_pos", "grpo_neg", "reinforce", "raft", "sft", "rgra_nokl",
           "rgra_nostd", "grpo_mu4", "grpo_mu4_noclip", "rgra_lr", "rgra_lr_nokl"]
    assert list(sweep.VARIANTS)[:13] == old
    for preset in nanorgra.PRESETS:
        assert sweep.VARIANTS[preset] == ["--preset", preset]
    assert list(sweep.VARIANTS)[13:] == NEW_PRESETS


# -----------------------------------------------------------------------------
# The paper's reward: --format-reward


def test_score_batch_adds_the_format_reward_to_well_formed_answer_lines_right_or_wrong(tok):
    problem = make_problem("mix3", np.random.default_rng(3))
    texts = [f"A:{problem.answer}", f"A:{problem.answer + 1}", f"QA:{problem.answer}", "="]
    rewards, _ = nanorgra.score_batch([problem], texts, 0.1)
    torch.testing.assert_close(rewards, torch.tensor([[1.1, 0.1, 1.0, 0.0]]))
    plain, _ = nanorgra.score_batch([problem], texts)  # the default: no bonus
    assert plain.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert ((rewards >= 1) == (plain >= 1)).all()  # accuracy (reward >= 1) is unchanged by it


# -----------------------------------------------------------------------------
# End to end, from the command line


TINY = ("--n-layer 1 --n-head 2 --n-embd 32 --skill-steps 20 --habit-steps 10 --warm-batch 16 "
        "--steps 2 --prompts 4 --group 4 --eval-n 16 --pass-n 8 --pass-k 4 --max-new-tokens 48 "
        "--eval-every 2 --ckpt-every 2 --device cpu").split()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """One warm-start cache for the module: the tiny base is trained once."""
    return tmp_path_factory.mktemp("bases")


@pytest.fixture
def stand_in_reward(monkeypatch):
    """The verifier swapped for a checksum of the text in {0, 0.25, .., 1}, plus the format bonus
    it is given: with the real verifier the tiny model is always wrong and nothing is learned."""
    def reward(text, problem, format_reward=0.0):
        return zlib.crc32(text.encode()) % 5 / 4 + format_reward

    monkeypatch.setattr(nanorgra, "outcome_reward", reward)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_main(out_dir, base_dir, *extra):
    nanorgra.main([*TINY, "--out-dir", str(out_dir), "--base-dir", str(base_dir), *extra])
    return json.loads((out_dir / "config.json").read_text()), read_jsonl(out_dir / "metrics.jsonl")


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_each_new_preset_runs_end_to_end_from_the_command_line(tmp_path, base_dir,
                                                               stand_in_reward, preset):
    config, rows = run_main(tmp_path / "run", base_dir, "--preset", preset)
    expected = replace(nanorgra.PRESETS[preset], agg_constant=48.0)
    assert config["preset"] == preset and config["loss"] == asdict(expected)
    assert [r["step"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert any(r["grad_norm"] > 0 for r in rows)  # the weights moved
    assert (tmp_path / "run" / "summary.json").exists()


def test_every_new_switch_at_once_runs_end_to_end_and_is_recorded(tmp_path, base_dir,
                                                                  stand_in_reward, monkeypatch):
    format_rewards = []
    score_batch = nanorgra.score_batch

    def recording_score_batch(problems, texts, format_reward=0.0):
        format_rewards.append(format_reward)
        return score_batch(problems, texts, format_reward)

    monkeypatch.setattr(nanorgra, "score_batch", recording_score_batch)
    switches = ["--preset", "gspo", "--mu", "2", "--clip-c", "3", "--entropy-coef", "0.01",
                "--std-over", "batch", "--format-reward", "0.1"]
    config, rows = run_main(tmp_path / "run", base_dir, *switches)
    assert config["format_reward"] == 0.1
    assert {k: config["loss"][k] for k in NEW_SWITCHES} == dict(
        std_over="batch", ratio_level="sequence", clip_mode="ppo", clip_c=3.0, entropy_coef=0.01)
    assert format_rewards == [0.1, 0.1]  # every step's rewards carry the bonus
    assert all(r["updates"] == 2 and math.isfinite(r["loss"]) for r in rows)
    assert all(r["reward"] >= 0.1 for r in rows)  # the stand-in's 0 to 1, plus 0.1 for everything


def test_the_base_evaluation_is_shared_by_runs_that_differ_only_in_the_format_reward(
        tmp_path, base_dir):
    """Evaluation counts right answers (reward >= 1 with or without the bonus), so the format
    reward is not one of its parameters, and its key does not hold it."""
    before = set(base_dir.glob("*.eval-*.json"))
    run_main(tmp_path / "a", base_dir, "--steps", "1", "--format-reward", "0.25")
    run_main(tmp_path / "b", base_dir, "--steps", "1", "--format-reward", "0.5")
    assert len(set(base_dir.glob("*.eval-*.json")) - before) <= 1


# -----------------------------------------------------------------------------
# The KL in the reward (kl_in_reward)


def test_kl_in_the_reward_subtracts_beta_times_each_completions_summed_kl_as_a_plain_loop_does():
    logp, rows, ref_logp = batch(seed=3)
    rewards = REWARDS.clone()
    for estimator in ("k1", "k2", "k3"):
        got = nanorgra.kl_penalised_rewards(rewards, rows.logprobs, ref_logp, rows.mask, 0.05,
                                            estimator)
        expected = rewards.clone()
        for i in range(N):
            kl = 0.0
            for t in range(L):
                if rows.mask[i, t]:
                    x = float(ref_logp[i, t] - rows.logprobs[i, t])
                    kl += {"k1": -x, "k2": 0.5 * x * x, "k3": math.exp(x) - x - 1}[estimator]
            expected.view(-1)[i] -= 0.05 * kl
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_with_the_kl_in_the_reward_the_loss_has_no_kl_term():
    logp, rows, ref_logp = batch(seed=4)
    adv = torch.randn(N, generator=torch.Generator().manual_seed(0))
    in_reward = replace(nanorgra.PRESETS["rgra"], beta=0.05, kl_in_reward=True)
    no_kl = replace(nanorgra.PRESETS["rgra"], beta=0.0)
    a, _ = nanorgra.rl_loss(logp, rows, adv, ref_logp, in_reward, counts_of(rows))
    b, _ = nanorgra.rl_loss(logp, rows, adv, ref_logp, no_kl, counts_of(rows))
    assert a.item() == b.item()


def test_an_rl_step_with_the_kl_in_the_reward_computes_its_advantages_from_the_penalised_rewards(
        monkeypatch):
    args = nanorgra.parse_args(["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--prompts",
                                "2", "--group", "4", "--max-new-tokens", "30", "--beta", "0.05",
                                "--kl-in-reward", "--kl-estimator", "k1", "--device", "cpu"])
    tok = get_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32)
    ref, policy = GPT(config, seed=0), GPT(config, seed=1)
    seen = {}
    real = nanorgra.advantages_for

    def spy(scores, cfg):
        seen["scores"] = scores.clone()
        return real(scores, cfg)

    monkeypatch.setattr(nanorgra, "advantages_for", spy)
    monkeypatch.setattr(nanorgra, "outcome_reward", lambda *a: 0.0)  # every reward 0: only KL
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    problems, seeds = nanorgra.step_prompts(args, 0)
    rollout = nanorgra.sample_batch(copy.deepcopy(policy), tok, problems, seeds, args)
    nanorgra.rl_step(policy, ref, opt, tok, args, 0)
    with torch.no_grad():
        ref_logp = completion_logprobs(ref, rollout, 1.0)
    kl_sum = ((rollout.logprobs - ref_logp) * rollout.mask).sum(1)  # k1 = log pi - log pi_ref
    torch.testing.assert_close(seen["scores"].flatten(), -0.05 * kl_sum, rtol=1e-5, atol=1e-6)


def test_the_kl_in_the_reward_needs_a_kl_weight():
    with pytest.raises(flags.SwitchError) as e:
        replace(nanorgra.PRESETS["rgra"], beta=0.0, kl_in_reward=True)
    assert e.value.switch == "kl_in_reward"
