"""The RL loss of nanorgra.py, pinned down on hand examples and on a tiny random GPT (CPU, seconds).

Read top to bottom: advantages, RAFT's selection, the KL estimators, the ratio and its clipping,
aggregation, then the claims the project is built on: GRPO == RGRA at mu = 1 and not at mu > 1,
micro-batching changes nothing, and a loss value of 0 does not mean a gradient of 0.
"""

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import nanorgra
from data.tasks import make_problem, prompt_text
from model import completion_logprobs, generate

AGGS = ["seq-mean-token-mean", "token-mean", "seq-sum-norm"]
# Made-up verifier rewards for 4 prompts x 4 samples: mixed groups, one all-wrong and
# one all-right group.
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0],
                        [0.0, 0.0, 0.0, 0.0],
                        [1.0, 1.0, 1.0, 1.0],
                        [0.0, 1.0, 0.0, 0.0]])
B, G = REWARDS.shape


@pytest.fixture(scope="module")
def rollout(tiny, tok):
    """G samples for each of B arithmetic prompts from the tiny model, as nanorgra's
    sampler draws them."""
    rng = np.random.default_rng(0)
    prompts = [tok.encode(prompt_text(make_problem("mix3", rng))) for _ in range(B)]
    r = generate(tiny.eval(), prompts, 12, tok.eos_id, tok.pad_id, num_samples=G, temperature=1.0,
                 generator=torch.Generator().manual_seed(0))
    lengths = r.mask.sum(1)
    # completions of different lengths, or aggregation tests see nothing
    assert lengths.min() < lengths.max()
    return r


def make_cfg(*flags):
    """The LossConfig exactly as the command line resolves it (rgra defaults, presets,
    one-flag changes)."""
    return nanorgra.parse_args(["--grad-clip", "0", *flags]).loss


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps a copy of the gradients of every update it makes: learn()'s
    gradients, observed."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.grads = []

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        self.grads.append([p.grad.detach().clone() for p in params])
        return super().step(closure)


def run_learn(model, rollout, cfg, lr=0.0, adv=None, keep=None):
    """One call of nanorgra.learn on a fresh copy of model (the untouched model is the KL
    reference). Returns the trained copy, the gradients of each update, and learn's statistics
    summed like step_metrics sums them."""
    policy = copy.deepcopy(model)
    with torch.no_grad():
        ref_logp = completion_logprobs(model, rollout, 1.0)
    opt = RecordingSGD(policy.parameters(), lr=lr)
    if adv is None:
        adv, keep = nanorgra.advantages_for(REWARDS, cfg)
    exp = nanorgra.Experience(rollout, adv, ref_logp, 1.0, keep)
    learned = nanorgra.learn(policy, opt, exp, cfg, torch.Generator().manual_seed(0))
    stats = dict(clipped=learned.total.clipped, ratio_max=learned.total.ratio_max,
                 loss=learned.total.loss / len(learned.norms))
    return policy, opt.grads, stats


def assert_same_grads(a, b, rtol=1e-5):
    """a, b: the gradients of one update, one tensor per parameter."""
    assert len(a) == len(b)
    scale = max(g.abs().max().item() for g in a)
    assert scale > 0  # a gradient of zero everywhere would make every comparison pass
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=rtol * scale)


def max_grad_diff(a, b):
    scale = max(g.abs().max().item() for g in a)
    return max((ga - gb).abs().max().item() for ga, gb in zip(a, b)) / scale


# -----------------------------------------------------------------------------
# Group advantages


@pytest.mark.parametrize("baseline", ["mean", "loo"])
@pytest.mark.parametrize("std_norm", [True, False])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_zero_variance_group_gives_exactly_zero_advantages_never_nan(baseline, std_norm, value):
    rewards = torch.tensor([[value] * 4, [1.0, 0.0, 0.0, 0.0]])
    adv = nanorgra.group_advantages(rewards, baseline, std_norm)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[0], torch.zeros(4))
    assert adv[1].abs().sum() > 0  # the mixed group beside it still gets a signal


@pytest.mark.parametrize("baseline,value,g", [("mean", 0.1, 8), ("mean", 0.3, 8), ("loo", 1.1, 3),
                                              ("none", 1.0, 4)])
def test_zero_variance_group_is_not_rescaled_whatever_the_reward_value(baseline, value, g):
    """With the paper's 0.1 format bonus, all-wrong-but-well-formed groups (0.1 each)
    must carry no signal."""
    rewards = torch.full((1, g), value)
    adv = nanorgra.group_advantages(rewards, baseline, std_norm=True)
    expected = rewards if baseline == "none" else torch.zeros_like(rewards)
    assert torch.equal(adv, expected)


def test_mean_baseline_subtracts_the_group_mean():
    adv = nanorgra.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "mean", std_norm=False)
    torch.testing.assert_close(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25]]))
    torch.testing.assert_close(adv.sum(), torch.tensor(0.0))


def test_leave_one_out_baseline_is_the_mean_of_the_other_rewards():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.5]])
    adv = nanorgra.group_advantages(rewards, "loo", std_norm=False)
    # A_i = r_i - mean of the other three
    expected = torch.tensor([[1 - 0.5 / 3, 0 - 1.5 / 3, 0 - 1.5 / 3, 0.5 - 1 / 3]])
    torch.testing.assert_close(adv, expected)


def test_no_baseline_returns_the_raw_rewards_as_a_copy():
    rewards = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 1.0, 0.0]])
    adv = nanorgra.group_advantages(rewards, "none", std_norm=False)
    assert torch.equal(adv, rewards)
    adv[0, 0] = -7.0
    assert rewards[0, 0] == 1.0  # the caller's rewards are not modified through the result


def test_std_normalisation_divides_by_the_unbiased_group_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.5]])
    plain = nanorgra.group_advantages(rewards, "mean", std_norm=False)
    normed = nanorgra.group_advantages(rewards, "mean", std_norm=True)
    # hand value for the first group: std([1, 0, 0, 0]) with Bessel's correction is exactly 0.5
    torch.testing.assert_close(normed[0], torch.tensor([1.5, -0.5, -0.5, -0.5]),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normed, plain / rewards.std(1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_positive_only_clamps_negative_advantages_to_zero_and_keeps_positive_ones():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.5]])
    both = nanorgra.group_advantages(rewards, sign="both")
    pos = nanorgra.group_advantages(rewards, sign="pos")
    assert (both < 0).any() and (both > 0).any()
    assert torch.equal(pos, torch.where(both > 0, both, torch.zeros_like(both)))


def test_negative_only_clamps_positive_advantages_to_zero_and_keeps_negative_ones():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.5]])
    both = nanorgra.group_advantages(rewards, sign="both")
    neg = nanorgra.group_advantages(rewards, sign="neg")
    assert torch.equal(neg, torch.where(both < 0, both, torch.zeros_like(both)))


def test_unknown_baseline_is_refused_by_name():
    with pytest.raises(ValueError, match="baseline"):
        nanorgra.group_advantages(REWARDS, "median")


def test_zero_variance_groups_are_the_all_right_and_all_wrong_groups():
    assert nanorgra.zero_variance_groups(REWARDS).tolist() == [False, True, True, False]


def test_raft_selects_the_first_best_sample_of_each_group_and_none_when_all_are_wrong():
    rewards = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.2, 1.0, 0.0]])
    expected = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert torch.equal(nanorgra.best_of_group(rewards), expected)


def test_skip_zero_var_drops_exactly_the_rows_of_zero_variance_groups():
    adv, keep = nanorgra.advantages_for(REWARDS, make_cfg("--skip-zero-var"))
    assert keep.tolist() == [True] * 4 + [False] * 8 + [True] * 4
    _, keep_all = nanorgra.advantages_for(REWARDS, make_cfg())
    assert keep_all.all()


# -----------------------------------------------------------------------------
# KL estimators, x = ref_logp - logp


def test_k3_is_never_negative_while_k1_can_be():
    g = torch.Generator().manual_seed(0)
    logp, ref_logp = -3 * torch.rand(1000, generator=g), -3 * torch.rand(1000, generator=g)
    assert (nanorgra.kl_estimate(logp, ref_logp, "k3") >= 0).all()
    assert (nanorgra.kl_estimate(logp, ref_logp, "k2") >= 0).all()
    assert (nanorgra.kl_estimate(logp, ref_logp, "k1") < 0).any()


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_every_kl_estimate_is_zero_where_the_policy_equals_the_reference(estimator):
    logp = -3 * torch.rand(50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(nanorgra.kl_estimate(logp, logp.clone(), estimator), torch.zeros(50))


def test_kl_estimators_on_a_hand_example():
    logp, ref_logp = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    x = math.log(0.5)  # ref_logp - logp
    expected = {"k1": -x, "k2": x * x / 2, "k3": math.exp(x) - x - 1}  # 0.6931, 0.2402, 0.1931
    for name, value in expected.items():
        torch.testing.assert_close(nanorgra.kl_estimate(logp, ref_logp, name),
                                   torch.tensor([value]))


def test_k1_and_k3_average_to_the_exact_kl_under_the_policy_and_k2_does_not():
    """Unbiasedness, computed exactly: E_{o ~ pi}[k(o)] = sum_o pi(o) k(o)
    over a small vocabulary."""
    g = torch.Generator().manual_seed(2)
    logp = torch.log_softmax(2 * torch.randn(8, generator=g), 0)
    ref_logp = torch.log_softmax(2 * torch.randn(8, generator=g), 0)
    exact = (logp.exp() * (logp - ref_logp)).sum()  # KL(pi || pi_ref)
    p = logp.exp()
    for name in ("k1", "k3"):
        torch.testing.assert_close((p * nanorgra.kl_estimate(logp, ref_logp, name)).sum(),
                                   exact)
    assert not torch.allclose((p * nanorgra.kl_estimate(logp, ref_logp, "k2")).sum(), exact,
                              rtol=1e-2)


def test_k3_as_a_loss_has_the_gradient_of_kl_from_the_reference_to_the_policy():
    """Pitfall 1 (which KL does the k3 loss optimise?): on samples of pi_theta, the expected
    gradient of the k3 loss is that of KL(pi_ref || pi_theta), not of KL(pi_theta || pi_ref)
    that it estimates."""
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(8, generator=g, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(8, generator=g), 0)

    logp = torch.log_softmax(theta, 0)
    # sampling weights: the loss differentiates through log pi only, as in training
    p = logp.exp().detach()
    (k3_grad,) = torch.autograd.grad((p * nanorgra.kl_estimate(logp, ref_logp, "k3")).sum(), theta)

    def grad_of(kl):
        (grad,) = torch.autograd.grad(kl(torch.log_softmax(theta, 0)), theta)
        return grad

    forward = grad_of(lambda lp: (ref_logp.exp() * (ref_logp - lp)).sum())  # KL(pi_ref || pi_theta)
    reverse = grad_of(lambda lp: (lp.exp() * (lp - ref_logp)).sum())  # KL(pi_theta || pi_ref)
    torch.testing.assert_close(k3_grad, forward)
    assert not torch.allclose(k3_grad, reverse, atol=1e-3)


def test_unknown_kl_estimator_is_refused_by_name():
    with pytest.raises(ValueError, match="k4"):
        nanorgra.kl_estimate(torch.zeros(2), torch.zeros(2), "k4")


# -----------------------------------------------------------------------------
# The ratio and its clipping (eps_low != eps_high, so a swapped pair would show)

EPS_LOW, EPS_HIGH = 0.1, 0.3  # the unclipped range is [0.9, 1.3]
RHOS = [0.5, 0.8, 0.95, 1.0, 1.2, 1.25, 1.4, 2.0]


def ratio_case(clip=True):
    rho = torch.tensor(RHOS).repeat(3, 1)  # rows: A = +1, A = -1, A = 0
    adv = torch.tensor([1.0, -1.0, 0.0])
    old_logp = -torch.rand(rho.shape, generator=torch.Generator().manual_seed(4))
    logp = (old_logp + rho.log()).requires_grad_(True)
    loss, out_rho, clipped = nanorgra.policy_term_ratio(logp, old_logp, adv, clip,
                                                        EPS_LOW, EPS_HIGH)
    return logp, adv, loss, out_rho, clipped


def test_ratio_is_pi_theta_over_pi_old():
    _, _, _, rho, _ = ratio_case()
    torch.testing.assert_close(rho, torch.tensor(RHOS).repeat(3, 1))


def test_clipped_above_one_plus_eps_high_if_a_is_positive_below_one_minus_eps_low_if_negative():
    _, _, _, _, clipped = ratio_case()
    # A > 0: the ratio may not grow past 1.3
    assert clipped[0].tolist() == [rho > 1 + EPS_HIGH for rho in RHOS]
    # A < 0: the ratio may not shrink past 0.9
    assert clipped[1].tolist() == [rho < 1 - EPS_LOW for rho in RHOS]
    assert not clipped[2].any()  # A = 0: nothing to clip
    # the cases that tell eps_low and eps_high apart: 0.8 is clipped for A < 0,
    # 1.2 and 1.25 are not for A > 0
    assert clipped[1, RHOS.index(0.8)] and not clipped[0, RHOS.index(1.25)]


def test_clipped_tokens_get_zero_gradient_and_the_others_get_minus_rho_times_advantage():
    logp, adv, loss, rho, clipped = ratio_case()
    loss.sum().backward()
    assert clipped.any()
    assert torch.equal(logp.grad[clipped], torch.zeros(int(clipped.sum())))
    expected = (-rho * adv[:, None]).detach()  # d(-rho A)/d logp = -rho A
    torch.testing.assert_close(logp.grad[~clipped], expected[~clipped])


def test_clipped_loss_is_the_pessimistic_minimum_of_the_two_terms():
    _, adv, loss, rho, _ = ratio_case()
    unclipped = rho * adv[:, None]
    clipped = rho.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * adv[:, None]
    torch.testing.assert_close(loss, -torch.minimum(unclipped, clipped))


def test_without_clip_no_token_is_clipped_and_the_loss_is_minus_rho_times_advantage():
    logp, adv, loss, rho, clipped = ratio_case(clip=False)
    assert not clipped.any()
    torch.testing.assert_close(loss, -rho * adv[:, None])
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, (-rho * adv[:, None]).detach())


def test_reinforce_term_gradient_is_minus_advantage_whatever_the_ratio():
    logp = torch.randn(3, 5, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    adv = torch.tensor([2.0, -1.0, 0.0])
    nanorgra.policy_term_reinforce(logp, adv).sum().backward()
    torch.testing.assert_close(logp.grad, -adv[:, None].expand(3, 5))


# -----------------------------------------------------------------------------
# Aggregation: two sequences of lengths 1 and 3

# 99 sits on padding and must not count
AGG_LOSS = torch.tensor([[4.0, 99.0, 99.0], [1.0, 1.0, 1.0]])
AGG_MASK = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize("agg,expected", [("token-mean", (4 + 3) / 4),
                                          ("seq-mean-token-mean", (4 / 1 + 3 / 3) / 2),
                                          ("seq-sum-norm", (4 + 3) / (2 * 5))])
def test_aggregation_values_on_a_hand_example(agg, expected):
    value = nanorgra.aggregate(AGG_LOSS, AGG_MASK, agg, n_seqs=2, n_tokens=4, constant=5.0)
    assert value.item() == pytest.approx(expected)


def token_weights(agg):
    loss = AGG_LOSS.clone().requires_grad_(True)
    nanorgra.aggregate(loss, AGG_MASK, agg, n_seqs=2, n_tokens=4, constant=5.0).backward()
    return loss.grad


def test_token_mean_weighs_every_real_token_the_same():
    w = token_weights("token-mean")
    # the short sequence's one token counts as much as each of the long one's
    assert torch.equal(w, AGG_MASK / 4)


def test_seq_mean_token_mean_weighs_every_sequence_the_same():
    w = token_weights("seq-mean-token-mean")
    assert torch.equal(w.sum(1), torch.tensor([0.5, 0.5]))  # each sequence: 1/n_seqs in all
    # so a token of the 1-token answer weighs 3x a token of the 3-token answer
    assert w[0, 0] == 3 * w[1, 0]
    assert torch.equal(w * (1 - AGG_MASK), torch.zeros_like(w))


def test_seq_sum_norm_weighs_every_token_by_a_constant_independent_of_lengths():
    w = token_weights("seq-sum-norm")
    assert torch.equal(w, AGG_MASK / (2 * 5.0))


def test_unknown_aggregation_is_refused_by_name():
    with pytest.raises(ValueError, match="token-sum"):
        nanorgra.aggregate(AGG_LOSS, AGG_MASK, "token-sum", 2, 4, 5.0)


def test_non_finite_values_on_padding_never_reach_the_loss():
    loss = AGG_LOSS.clone()
    # e.g. k3 = exp(ref_logp - logp) on a pad token the policy has pushed far down
    loss[0, 2] = float("inf")
    assert torch.isfinite(nanorgra.aggregate(loss, AGG_MASK, "token-mean", 2, 4, 5.0))


# -----------------------------------------------------------------------------
# Log-probs: the trained distribution is the sampled one


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logprobs_equal_the_samplers_logprobs_so_rho_is_one_before_any_update(
        tiny, tok, temperature):
    rng = np.random.default_rng(1)
    prompts = [tok.encode(prompt_text(make_problem("mix3", rng))) for _ in range(3)]
    r = generate(tiny.eval(), prompts, 10, tok.eos_id, tok.pad_id, num_samples=3,
                 temperature=temperature, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logp = completion_logprobs(tiny, r, temperature)
        logp_t1 = completion_logprobs(tiny, r, 1.0)
    assert (logp - r.logprobs)[r.mask].abs().max() < 1e-5
    # pitfall 9: the loss must use the sampling temperature, or rho != 1 from the start
    if temperature != 1.0:
        assert (logp_t1 - r.logprobs)[r.mask].abs().max() > 1e-2


def test_one_update_raises_the_logprob_of_positive_advantage_completions_and_lowers_negative_ones(
        tiny, rollout):
    adv = torch.zeros(B * G)
    adv[0], adv[1] = 1.0, -1.0
    keep = torch.ones(B * G, dtype=torch.bool)
    policy, _, _ = run_learn(tiny, rollout, make_cfg("--beta", "0"), lr=0.1, adv=adv, keep=keep)

    def seq_logp(model):
        with torch.no_grad():
            lp = completion_logprobs(model, rollout.rows(slice(0, 2)), 1.0)
        return (lp * rollout.mask[:2]).sum(1)

    before, after = seq_logp(tiny), seq_logp(policy)
    assert after[0] > before[0]
    assert after[1] < before[1]


# -----------------------------------------------------------------------------
# The point of the project: GRPO == RGRA at mu = 1, and not at mu > 1


@pytest.mark.parametrize("agg", AGGS)
def test_grpo_and_rgra_gradients_are_equal_at_mu_1_and_nothing_is_clipped(tiny, rollout, agg):
    """One update per sampled batch: old log-probs are the sampler's, rho = 1, and the ratio+clip
    gradient A rho grad log pi equals the REINFORCE gradient A grad log pi."""
    _, grpo, s_grpo = run_learn(tiny, rollout, make_cfg("--preset", "grpo", "--agg", agg))
    _, rgra, s_rgra = run_learn(tiny, rollout, make_cfg("--preset", "rgra", "--agg", agg))
    assert len(grpo) == len(rgra) == 1
    assert_same_grads(grpo[0], rgra[0])
    assert s_grpo["clipped"] == 0
    assert s_grpo["ratio_max"] == pytest.approx(1.0, abs=1e-5)


def test_grpo_and_rgra_differ_from_the_second_update_on_when_a_batch_is_reused(tiny, rollout):
    """mu = 2 with a step big enough to move rho outside [1 - eps, 1 + eps]: the first update is the
    same for both, the second is not, and only GRPO clips."""
    lr = 1.0
    grpo_cfg = make_cfg("--preset", "grpo", "--mu", "2")
    rgra_cfg = make_cfg("--preset", "rgra", "--mu", "2")
    p_grpo, grpo, s_grpo = run_learn(tiny, rollout, grpo_cfg, lr=lr)
    p_rgra, rgra, s_rgra = run_learn(tiny, rollout, rgra_cfg, lr=lr)
    assert len(grpo) == len(rgra) == 2
    assert_same_grads(grpo[0], rgra[0])
    assert max_grad_diff(grpo[1], rgra[1]) > 1e-2
    assert s_grpo["clipped"] > 0
    assert s_rgra["clipped"] == 0
    # both see rho move; only one uses it
    assert s_grpo["ratio_max"] > 1 + 0.2 and s_rgra["ratio_max"] > 1 + 0.2
    assert not torch.allclose(p_grpo.wte.weight, p_rgra.wte.weight)


def test_second_update_gradients_ratio_and_clip_each_change_the_reinforce_gradient(tiny, rollout):
    """After one optimizer step on a batch, at the new weights:
    REINFORCE != ratio without clip != ratio with clip, and the ratio gradient is exactly the
    REINFORCE gradient with every token weighted by rho."""
    grpo = make_cfg("--preset", "grpo", "--beta", "0", "--agg-constant", "12")
    adv, _ = nanorgra.advantages_for(REWARDS, grpo)
    policy, _, _ = run_learn(tiny, rollout, make_cfg("--preset", "rgra"), lr=1.0)
    n_seqs, n_tokens = B * G, rollout.mask.sum().item()

    def grads(ratio, clip, weight=None):
        policy.zero_grad(set_to_none=True)
        logp = completion_logprobs(policy, rollout, 1.0)
        if weight is not None:  # the reference: REINFORCE on rho-weighted tokens
            token_loss = -adv[:, None] * weight * logp
            loss = nanorgra.aggregate(token_loss, rollout.mask.float(), grpo.agg,
                                      n_seqs, n_tokens, grpo.agg_constant)
            stats = None
        else:
            cfg = replace(grpo, ratio=ratio, clip=clip)
            loss, stats = nanorgra.rl_loss(logp, rollout, adv, None, cfg, (n_seqs, n_tokens))
        loss.backward()
        return [p.grad.clone() for p in policy.parameters()], stats, logp.detach()

    reinforce, _, logp = grads(False, False)
    ratio, _, _ = grads(True, False)
    clipped, stats, _ = grads(True, True)
    rho = torch.exp(logp - rollout.logprobs)
    weighted, _, _ = grads(None, None, weight=rho)
    assert stats.clipped > 0
    assert max_grad_diff(ratio, reinforce) > 1e-2
    assert max_grad_diff(clipped, ratio) > 1e-2
    assert_same_grads(ratio, weighted)


# -----------------------------------------------------------------------------
# RAFT and SFT need no branch of their own


@pytest.mark.parametrize("preset", ["raft", "sft"])
@pytest.mark.parametrize("agg", AGGS)
def test_raft_and_sft_presets_give_the_old_cross_entropy_branch_on_the_kept_rows(
        tiny, rollout, preset, agg):
    """Before the LossConfig, learn() had a branch for RAFT and SFT: cross-entropy -logp on the kept
    rows, aggregated over them, no KL. The presets now go through the REINFORCE term with
    advantage 1 and beta 0; same gradient."""
    cfg = make_cfg("--preset", preset, "--agg", agg, "--agg-constant", "12")
    assert cfg.beta == 0 and not cfg.ratio
    # sft: one gold row per problem (here: every row)
    rewards = REWARDS if preset == "raft" else torch.ones(B * G, 1)
    adv, keep = nanorgra.advantages_for(rewards, cfg)
    _, grads, _ = run_learn(tiny, rollout, cfg, adv=adv, keep=keep)

    rows = keep.nonzero().flatten()  # the old branch, written out
    model = copy.deepcopy(tiny)
    logp = completion_logprobs(model, rollout.rows(rows), 1.0)
    mask = rollout.mask[rows]
    old = nanorgra.aggregate(-logp, mask.float(), agg, len(rows), mask.sum().item(), 12.0)
    old.backward()
    assert_same_grads(grads[0], [p.grad for p in model.parameters()])
    if preset == "raft":
        # the first best sample of each of the three groups with a right answer
        assert rows.tolist() == [0, 8, 13]


# -----------------------------------------------------------------------------
# Micro-batching: global denominators make the accumulated result the full-batch one (pitfall 10)


@pytest.mark.parametrize("agg", AGGS)
def test_micro_batched_loss_and_gradients_equal_the_full_batch_ones(tiny, rollout, agg):
    full_cfg = make_cfg("--preset", "grpo", "--agg", agg)
    micro_cfg = make_cfg("--preset", "grpo", "--agg", agg, "--micro-batch", "3")
    full_model, full, s_full = run_learn(tiny, rollout, full_cfg, lr=1.0)
    micro_model, micro, s_micro = run_learn(tiny, rollout, micro_cfg, lr=1.0)
    # 16 rows in micro-batches of 3, 3, 3, 3, 3, 1: still one update
    assert len(full) == len(micro) == 1
    assert_same_grads(full[0], micro[0])
    assert s_micro["loss"] == pytest.approx(s_full["loss"], rel=1e-5, abs=1e-7)
    for p, q in zip(full_model.parameters(), micro_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("agg", AGGS)
def test_sum_of_micro_batch_losses_with_global_denominators_is_the_full_batch_loss(
        tiny, rollout, agg):
    g = torch.Generator().manual_seed(6)
    mask = rollout.mask
    logp = rollout.logprobs + 0.1 * torch.randn(mask.shape, generator=g)
    ref_logp = rollout.logprobs + 0.1 * torch.randn(mask.shape, generator=g)
    adv = torch.randn(B * G, generator=g)
    cfg = replace(nanorgra.PRESETS["grpo"], beta=0.1, agg=agg, agg_constant=12.0)
    n_seqs, n_tokens = B * G, mask.sum().item()
    counts = (n_seqs, n_tokens)
    full, _ = nanorgra.rl_loss(logp, rollout, adv, ref_logp, cfg, counts)
    parts = [nanorgra.rl_loss(logp[s], rollout.rows(s), adv[s], ref_logp[s], cfg, counts)[0]
             for s in torch.arange(B * G).split(5)]
    torch.testing.assert_close(sum(parts), full)
    if agg == "token-mean":
        # the check can fail: averaging per-micro-batch token means (local counts) is a
        # different, wrong number
        local = [nanorgra.rl_loss(logp[s], rollout.rows(s), adv[s], ref_logp[s], cfg,
                                  (len(s), mask[s].sum().item()))[0] / 4
                 for s in torch.arange(B * G).split(4)]
        assert not torch.allclose(sum(local), full)


# -----------------------------------------------------------------------------
# "Why is my loss 0?" (pitfall 3)


def test_at_rho_1_the_grpo_loss_value_is_0_while_its_gradient_is_not(tiny, rollout):
    """seq-mean-token-mean and rho = 1: the loss is -1/N sum_i A_i mean_t rho_it = -mean(A) = 0 for
    mean-centred advantages, whatever the model. The gradient is the REINFORCE gradient, which is
    not 0. The REINFORCE loss value -1/N sum_i A_i mean_t log pi_it is not 0 either, and tells as
    little: only its gradient matters."""
    grpo = make_cfg("--preset", "grpo", "--beta", "0")
    adv, _ = nanorgra.advantages_for(REWARDS, grpo)
    assert adv.abs().sum() > 0
    policy = copy.deepcopy(tiny)
    logp = completion_logprobs(policy, rollout, 1.0)
    n_seqs, n_tokens = B * G, rollout.mask.sum().item()
    sampled_now = replace(rollout, logprobs=logp.detach())  # old_logp = logp: rho = 1
    counts = (n_seqs, n_tokens)
    ratio_loss, _ = nanorgra.rl_loss(logp, sampled_now, adv, None, grpo, counts)
    reinforce_loss, _ = nanorgra.rl_loss(logp, sampled_now, adv, None,
                                         replace(grpo, ratio=False, clip=False), counts)
    assert abs(ratio_loss.item()) < 1e-6
    assert abs(reinforce_loss.item()) > 1e-3
    (g_ratio,) = torch.autograd.grad(ratio_loss, policy.wte.weight, retain_graph=True)
    (g_reinforce,) = torch.autograd.grad(reinforce_loss, policy.wte.weight)
    assert g_ratio.abs().max() > 1e-4
    torch.testing.assert_close(g_ratio, g_reinforce)
