"""
nanorgra.py: teach a small GPT arithmetic, then train it with GRPO / RGRA, where every component of
the loss is a named switch that one visible `if` reads.

    python nanorgra.py                          # the default job: warm start, RGRA, evaluation
    python nanorgra.py --preset grpo --mu 2     # GRPO, each sampled batch used for two updates
    python nanorgra.py --preset rgra --beta 0   # RGRA without the KL term: one thing changes
    python nanorgra.py --help                   # every switch and its default
    torchrun --standalone --nproc_per_node=2 nanorgra.py    # the same job over 2 processes

Read top to bottom: the loss, one RL step (sample, score, advantages, learn), the warm start,
evaluation, and the run loop. What is not the lesson lives apart: flags.py (the command line and
the switches' allowed values), rundir.py (the run directory, resume, checkpoints, caches, logs and
figures), distributed.py (the device, and torchrun: the processes meet in sample_batch, rl_step's
gather_step, learn and sample_texts only). REFERENCE.md has the equations, papers and pitfalls;
experiments/ the sweep, the regime map, the confirmations and the study.

Simplifications: full fine-tuning (no LoRA), an exact verifier, no value network. Every random
draw of a step comes from generators seeded by (seed, step): a resumed run repeats the
uninterrupted one on CPU.
"""

import copy
import functools
import hashlib
import math
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import flags
import rundir
from data.tasks import HABITS, LEVELS, OOD_LEVEL, RL_LEVEL, SKILLS, STEP_KINDS, STYLES, \
    atom_check_steps, corpus_examples, load_test_set, prompt_text, test_exprs, train_problems, \
    worked_solution
from data.tokenizer import get_tokenizer
from distributed import gather_objects, gather_step, my_share, rank, setup_device, \
    sum_gradients_over_ranks, sum_over_ranks, sum_rows_over_ranks, teardown
from flags import check_loss_config, switch
from model import GPT, GPTConfig, Rollout, completion_logits, completion_logprobs, \
    generate, pack, PACK_LEN, pack_rows, packed_logprobs, token_entropy, token_logprobs
from verifier import STYLE_NAMES, outcome_reward, reasoning_kind, solution_style

# -----------------------------------------------------------------------------
# The loss, one small function per concept.
#
# A group is the G completions o_1..o_G sampled for one prompt q, with verifier rewards r_1..r_G.
# logp_it = log pi_theta(o_it | q, o_i<t); old_logp_it is the same under the policy that sampled the
# batch (the sampler's log-probs); ref_logp_it is under the frozen base. Every loss is MINIMISED.
#
#   rgra       A_i = (r_i - mean r) / std r
#              loss_it = -A_i logp_it + beta k3_it, aggregated seq-mean-token-mean
#   grpo       the same A_i, rho_it = exp(logp_it - old_logp_it)
#              loss_it = -min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i) + beta k3_it
#   grpo_pos   grpo with A_i replaced by max(A_i, 0): no negative feedback
#   reinforce  A_i = r_i (raw reward: no group baseline, no std)
#              loss_it = -A_i logp_it + beta k3_it
#   raft       A_i = 1 on the best of G (if its reward is > 0), the others dropped, beta = 0
#   sft        A_i = 1 on the gold worked solution of each problem, beta = 0: the paper's "ft"
#
# The recipes since GRPO, each a replace() of one above (REFERENCE.md, section 6):
#   dr_grpo    grpo with A_i = r_i - mean r (no std) and seq-sum-norm
#   dapo       grpo with eps_high = 0.28, token-mean, zero-variance groups dropped, beta = 0
#   gspo       grpo with one ratio per completion, rho_i = exp(mean_t (logp_it - old_logp_it)),
#              clipped to [1 - 3e-4, 1 + 4e-4]
#   cispo      loss_it = -sg(clip(rho_it, 1-eps_low, 1+eps_high)) A_i logp_it, token-mean, beta = 0
#   reinforce_pp  grpo with A_i = (r_i - mean of the batch) / std of the batch
#   rloo       A_i = r_i - mean_{j != i} r_j (no std), -A_i logp_it, seq-sum-norm
# Switches no preset turns on: dual-clip (clip_c), the entropy bonus (entropy_coef), and the batch
# std after a group baseline (std_over batch: REINFORCE++-baseline).
#
# Why GRPO and RGRA give the same gradient when mu = 1 (one update per sampled batch): the batch
# comes from the current policy, so rho_it = 1 at the update. Inside [1-eps, 1+eps] the min picks
# the unclipped term, whose gradient is the REINFORCE gradient:
#   A_i grad rho_it = A_i rho_it grad logp_it = A_i grad logp_it
# Ratio and clipping act only once the policy has moved away from the one that sampled (mu > 1, or
# a later minibatch). "Why is my loss 0?": at rho = 1 the GRPO loss value is -mean_i A_i = 0 for
# mean-centred advantages, yet its gradient is not 0. (RGRA's loss value is not 0 either way; only
# the gradient matters.) The same holds for gspo and cispo: at mu = 1 every ratio is 1, s_i too,
# and no weight is clipped, so they differ from rgra only in their aggregation and beta.


@dataclass(frozen=True)
class LossConfig:
    """Every switch of the loss and of how it is applied. A preset is an instance; a variant is, for
    example, replace(PRESETS["grpo"], mu=2). The command-line flags are made from these fields."""

    # what is learned from
    objective: str = switch("pg", "pg: policy gradient on samples | raft: the best of G | "
                            "sft: gold solutions", choices=("pg", "raft", "sft"))
    # the advantage
    baseline: str = switch("mean", "mean | loo (leave-one-out) | none (raw reward) | batch (the "
                           "mean reward of the whole step: REINFORCE++)",
                           choices=("mean", "loo", "none", "batch"))
    std_norm: bool = switch(True, "divide advantages by a std: their group's, or see std_over")
    std_over: str = switch("group", "the std std_norm divides by: group | batch (of every "
                           "advantage of the step: REINFORCE++)", choices=("group", "batch"))
    adv_sign: str = switch("both", "both | pos: max(A, 0) | neg: min(A, 0)",
                           choices=("both", "pos", "neg"))
    # the policy term
    ratio: bool = switch(False, "policy term rho * A (PPO, GRPO) instead of -A * logp "
                         "(REINFORCE, RGRA)")
    ratio_level: str = switch("token", "token | sequence: one ratio per completion, the "
                              "geometric mean of its token ratios (GSPO; needs ratio)",
                              choices=("token", "sequence"))
    clip: bool = switch(False, "clip rho to [1 - eps_low, 1 + eps_high] (needs ratio)")
    clip_mode: str = switch("ppo", "how clip acts: ppo: -min(rho A, clip(rho) A), a clipped token "
                            "gets no gradient | cispo: -sg(clip(rho)) A logp, every token keeps "
                            "its gradient", choices=("ppo", "cispo"))
    eps_low: float = switch(0.2, "clip range below 1", above=0, below=1)
    eps_high: float = switch(0.2, "clip range above 1", above=0)
    clip_c: float = switch(0.0, "dual-clip: for A < 0 the loss is at most -clip_c * A (0 = off, "
                           "else > 1; needs clip, clip_mode ppo)", at_least=0)
    # the KL term
    beta: float = switch(0.005, "weight of the KL term", at_least=0)
    kl_estimator: str = switch("k3", "k1 | k2 | k3", choices=("k1", "k2", "k3"))
    kl_in_reward: bool = switch(False, "the KL as a cost in the reward, r_i - beta sum_t kl_it, "
                                "before the advantages, instead of a loss term (verl's "
                                "use_kl_in_reward; REINFORCE++, RLOO)")
    # the entropy bonus
    entropy_coef: float = switch(0.0, "weight of the entropy bonus: loss -= entropy_coef * H, H "
                                 "the entropy of the whole next-token distribution", at_least=0)
    # aggregation
    agg: str = switch("seq-mean-token-mean", "| token-mean | seq-sum-norm",
                      choices=("seq-mean-token-mean", "token-mean", "seq-sum-norm"))
    agg_constant: float = switch(72.0, "seq-sum-norm's constant: the completion budget "
                                 "(the command line sets it)", above=0)
    # which rows, and how often
    skip_zero_var: bool = switch(False, "drop the groups whose rewards are all equal")
    mu: int = switch(1, "updates per sampled batch", at_least=1)
    minibatches: int = switch(1, "optimizer steps per update (the batch split)", at_least=1)
    micro_batch: int = switch(0, "rows per forward/backward (0 = the whole minibatch); changes "
                              "memory, not the gradient", at_least=0)
    grad_clip: float = switch(1.0, "max gradient norm (0 = off)", at_least=0)

    def __post_init__(self):
        # flags.py: each field's allowed values, and the switches that cannot work together; a
        # SwitchError names the field
        check_loss_config(self)


rgra = LossConfig()
grpo = replace(rgra, ratio=True, clip=True)
PRESETS = dict(
    rgra=rgra,
    grpo=grpo,
    grpo_pos=replace(grpo, adv_sign="pos"),
    reinforce=replace(rgra, baseline="none", std_norm=False),
    raft=replace(rgra, objective="raft", baseline="none", std_norm=False, beta=0.0),
    sft=replace(rgra, objective="sft", baseline="none", std_norm=False, beta=0.0),
    # the recipes since GRPO (REFERENCE.md, section 6, has each one's equation and source)
    dr_grpo=replace(grpo, std_norm=False, agg="seq-sum-norm"),  # arXiv 2503.20783
    dapo=replace(grpo, eps_high=0.28, agg="token-mean", skip_zero_var=True, beta=0.0),  # 2503.14476
    # GSPO, arXiv 2507.18071, with the paper's clip range: log s_i is the MEAN of the token
    # log-ratios, so s_i strays from 1 far less than one token's ratio; PPO's 0.2 would never bind
    gspo=replace(grpo, ratio_level="sequence", eps_low=3e-4, eps_high=4e-4),
    cispo=replace(grpo, clip_mode="cispo", agg="token-mean", beta=0.0),  # arXiv 2506.13585
    reinforce_pp=replace(grpo, baseline="batch", std_over="batch"),  # arXiv 2501.03262
    rloo=replace(rgra, baseline="loo", std_norm=False, agg="seq-sum-norm"),  # arXiv 2402.14740
)


def group_advantages(rewards, baseline="mean", std_norm=True, sign="both", std_over="group",
                     eps=1e-6):
    """
    rewards: (B, G) -> advantages (B, G), one per completion, shared by all its tokens.
      baseline "mean":  A_i = r_i - 1/G sum_j r_j
      baseline "loo":   A_i = r_i - 1/(G-1) sum_{j != i} r_j   (leave-one-out: ignores r_i)
      baseline "none":  A_i = r_i                               (raw reward)
      baseline "batch": A_i = r_i - the mean of all B*G rewards (REINFORCE++: no group baseline)
      std_norm, std_over "group": A_i = A_i / (std(r_1..r_G) + eps)   (unbiased std)
      std_norm, std_over "batch": batch_std_normalised (REINFORCE++)
    With a group baseline ("mean", "loo") a zero-variance group (all rewards equal) gets A = 0, and
    no group is ever divided by its std of 0.
      sign "pos":       A_i = max(A_i, 0)   "neg": A_i = min(A_i, 0)   "both": unchanged
    """
    G = rewards.size(1)
    if baseline == "mean":
        adv = rewards - rewards.mean(1, keepdim=True)
    elif baseline == "loo":
        adv = rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    elif baseline == "none":
        adv = rewards.clone()
    elif baseline == "batch":
        adv = rewards - rewards.mean()
    else:
        raise ValueError(f"baseline must be 'mean', 'loo', 'none' or 'batch', got {baseline!r}")
    zero_var = zero_variance_groups(rewards)[:, None]  # (B, 1)
    if baseline in ("mean", "loo"):
        adv = adv.masked_fill(zero_var, 0.0)  # exactly 0: rounding of mean(0.1, ...) must not leak
    if baseline == "batch":
        all_equal = zero_variance_groups(rewards.view(1, -1))[:, None]  # (1, 1): the whole step's
        adv = adv.masked_fill(all_equal, 0.0)  # exactly 0, as for a group
    if std_norm and std_over == "group":
        std = rewards.std(1, keepdim=True)
        adv = adv / torch.where(zero_var, torch.ones_like(std), std + eps)  # never divide by ~0
    elif std_norm:  # std_over "batch"
        adv = batch_std_normalised(adv, eps)
    if sign == "pos":
        adv = adv.clamp(min=0)
    elif sign == "neg":
        adv = adv.clamp(max=0)
    return adv


def batch_std_normalised(adv, eps=1e-6):
    """
    REINFORCE++ (Hu, arXiv 2501.03262): the advantages of the whole step divided by one std, that of
    all B*G of them, instead of each group's:
      A_i = A_i / (std(A_1..A_BG) + eps)   (unbiased std, over completions)
    After the batch baseline it is the paper's normalisation; after the group mean it is
    REINFORCE++-baseline's (the batch mean of group-centred advantages is 0 already). A step whose
    advantages are all equal is never divided by its std of 0. adv: (B, G) -> (B, G).
    """
    flat = adv.flatten()  # (B*G,)
    all_equal = (flat == flat[0]).all()
    std = flat.std() if len(flat) > 1 else torch.zeros_like(flat[0])  # one row has no std
    return adv / torch.where(all_equal, torch.ones_like(std), std + eps)


def best_of_group(rewards):
    """RAFT's selection: (B, G) rewards -> (B, G) 1.0 on the first best sample of each group whose
    reward is > 0, else 0."""
    best = torch.zeros_like(rewards)
    best.scatter_(1, rewards.argmax(1, keepdim=True), 1.0)
    return best * (rewards.max(1, keepdim=True).values > 0)


def zero_variance_groups(rewards):
    """(B, G) -> (B,) bool: the groups whose G rewards are all equal (all right or all
    wrong), which carry no signal."""
    return (rewards == rewards[:, :1]).all(1)


def policy_term_reinforce(logp, adv):
    """loss_it = -A_i logp_it.  logp: (N, L), adv: (N,) -> (N, L)."""
    return -adv[:, None] * logp


def policy_term_ratio(logp, old_logp, adv, clip, eps_low, eps_high):
    """
    with clip (PPO, GRPO):  loss_it = -min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)
    without clip:           loss_it = -rho_it A_i
    Returns the loss (N, L), rho (N, L), and where the clipped term is the one that acts (N, L).
    """
    rho = torch.exp(logp - old_logp)
    unclipped = rho * adv[:, None]
    if not clip:
        return -unclipped, rho, torch.zeros_like(rho, dtype=torch.bool)
    clipped = rho.clamp(1 - eps_low, 1 + eps_high) * adv[:, None]
    return -torch.minimum(unclipped, clipped), rho, clipped < unclipped


def sequence_logprobs(logp, mask):
    """
    GSPO's log-probs (Zheng et al., arXiv 2507.18071): each completion's log-prob divided by its
    length, log pi(o_i | q) / |o_i| = 1/|o_i| sum_t logp_it over its real tokens, on each of them.
    Their ratio is GSPO's sequence ratio, the geometric mean of the token ratios of o_i:
      s_i = (pi_theta(o_i | q) / pi_old(o_i | q))^(1/|o_i|)
          = exp(1/|o_i| sum_t (logp_it - old_logp_it))
    logp: (N, L), mask: (N, L) bool -> (N, L), each row one value. Padding is never counted.
    """
    real = torch.where(mask, logp, torch.zeros_like(logp))  # not logp * mask: -inf * 0 is NaN
    per_row = real.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)  # (N, 1)
    return per_row.expand_as(logp)


def policy_term_cispo(logp, rho, adv, eps_low, eps_high):
    """
    CISPO (MiniMax-M1, arXiv 2506.13585): the REINFORCE term weighted by the clipped importance
    weight, held constant (sg, stop-gradient):
      loss_it = -sg(clip(rho_it, 1 - eps_low, 1 + eps_high)) A_i logp_it
    PPO's min gives a clipped token no gradient at all; here every token keeps its gradient, and
    only the weight of it is bounded. logp, rho: (N, L), adv: (N,). Returns the loss (N, L) and
    where the weight was clipped (N, L).
    """
    weight = rho.detach().clamp(1 - eps_low, 1 + eps_high)  # (N, L)
    clipped = (rho < 1 - eps_low) | (rho > 1 + eps_high)
    return -weight * adv[:, None] * logp, clipped


def dual_clip(loss, adv, c):
    """
    Dual-clip PPO (Ye et al., arXiv 1912.09729): for A_i < 0 the clipped objective is bounded below
    by c A_i (c > 1), max(min(rho A_i, clip(rho) A_i), c A_i), so that one token whose ratio has
    grown huge cannot dominate the update. As a loss:
      loss_it = min(loss_it, -c A_i)   where A_i < 0;   unchanged where A_i >= 0
    It acts only where rho_it > c; there the loss is a constant and gives no gradient.
    loss: (N, L), adv: (N,). Returns the loss (N, L) and where the bound acts (N, L).
    """
    bound = (-c * adv[:, None]).expand_as(loss)  # (N, L)
    acts = (adv[:, None] < 0) & (loss > bound)
    return torch.where(acts, bound, loss), acts


def kl_estimate(logp, ref_logp, estimator):
    """
    Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta, x = ref_logp - logp:
      k1 = -x   (unbiased, can be negative)    k2 = x^2 / 2   (low variance, biased)
      k3 = exp(x) - x - 1   (unbiased, >= 0; as a loss its gradient is that of
                             KL(pi_ref || pi_theta), not the reverse KL: it pulls towards pi_ref
                             all the same)
    """
    x = ref_logp - logp
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x**2
    if estimator == "k3":
        return torch.exp(x) - x - 1
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


def kl_penalised_rewards(rewards, logp, ref_logp, mask, beta, estimator):
    """
    The KL in the reward (kl_in_reward; verl's use_kl_in_reward, the REINFORCE++ and RLOO papers'
    choice) instead of in the loss: each completion pays beta times its summed per-token estimate,
      r_i <- r_i - beta sum_t kl_it,   kl_it = kl_estimate(logp_it, ref_logp_it)
    before the advantages are computed from the rewards, so the cost is weighed against the other
    completions of the group like any reward, and it is a number (no gradient flows through it).
    rewards: (B, G); logp (the sampler's), ref_logp, mask: (B*G, L) -> (B, G).
    """
    kl = kl_estimate(logp, ref_logp, estimator)  # (B*G, L)
    per_completion = torch.where(mask, kl, torch.zeros_like(kl)).sum(1)  # (B*G,)
    return rewards - beta * per_completion.view_as(rewards)


def aggregate(loss, mask, agg, n_seqs, n_tokens, constant):
    """
    Reduce per-token losses (N, L) over the real tokens (mask) to a scalar. The denominators n_seqs
    and n_tokens count the WHOLE update (all micro-batches, all ranks), so that summing the parts
    gives the full-batch loss.
      "seq-mean-token-mean": 1/n_seqs sum_i 1/|o_i| sum_t loss_it   (the paper's: a token of a long
                                                                      answer weighs less)
      "token-mean":          1/n_tokens sum_i sum_t loss_it          (every token weighs the same)
      "seq-sum-norm":        1/(n_seqs constant) sum_i sum_t loss_it (Dr. GRPO: no length bias)
    """
    # not loss * mask: inf * 0 on padding is NaN
    loss = torch.where(mask > 0, loss, torch.zeros_like(loss))
    if agg == "seq-mean-token-mean":
        return (loss.sum(1) / mask.sum(1).clamp(min=1)).sum() / n_seqs
    if agg == "token-mean":
        return loss.sum() / n_tokens
    if agg == "seq-sum-norm":
        return loss.sum() / (n_seqs * constant)
    raise ValueError(f"aggregation must be 'seq-mean-token-mean', 'token-mean' or 'seq-sum-norm', "
                     f"got {agg!r}")


def entropy_bonus(entropy, mask, cfg, denominators):
    """
    The entropy bonus (TRL entropy_coef, verl entropy_coeff), aggregated like the policy term:
      loss_it = -entropy_coef H_it,   H_it = -sum_v pi(v | q, o_i<t) log pi(v | q, o_i<t)
    H is the entropy of the whole next-token distribution at step t (model.token_entropy), not the
    -log pi of the sampled token; minimising -H spreads probability back over the tokens the policy
    is squeezing out. learn() adds it to rl_loss, because it needs the logits.
    entropy, mask: (N, L); denominators: as in rl_loss.
    """
    n_seqs, n_tokens = denominators
    per_token = -cfg.entropy_coef * entropy  # (N, L)
    return aggregate(per_token, mask.float(), cfg.agg, n_seqs, n_tokens, cfg.agg_constant)


def rl_loss(logp, rollout, adv, ref_logp, cfg, denominators):
    """
    The loss of cfg (a LossConfig) on some completions: policy term + beta * KL, aggregated (the
    entropy bonus, which needs the logits, is added by learn()).
      logp:     (N, L) their log-probs under the policy being trained
      rollout:  their Rollout: the mask of real tokens, and the sampler's log-probs (old_logp)
      adv:      (N,) their advantages
      ref_logp: (N, L) their log-probs under the frozen base; read only when beta > 0
      denominators: (n_seqs, n_tokens) of the whole update, those of aggregate()
    Returns the loss and detached statistics of the ratio, as sums, for the logs.
    """
    mask = rollout.mask
    # padding holds any number: put logp there, so that exp(logp - old_logp) stays finite
    old_logp = torch.where(mask, rollout.logprobs, logp.detach())
    ratio_logp, ratio_old_logp = logp, old_logp  # (N, L): rho = exp(ratio_logp - ratio_old_logp)
    if cfg.ratio_level == "sequence":  # GSPO: one ratio per completion, on all its tokens
        ratio_logp = sequence_logprobs(logp, mask)
        ratio_old_logp = sequence_logprobs(old_logp, mask)
    rho = torch.exp(ratio_logp - ratio_old_logp)  # also logged: how far the policy has moved
    if not cfg.ratio:
        per_token = policy_term_reinforce(logp, adv)
        clipped = torch.zeros_like(mask)
    elif cfg.clip and cfg.clip_mode == "cispo":
        per_token, clipped = policy_term_cispo(logp, rho, adv, cfg.eps_low, cfg.eps_high)
    else:
        per_token, _, clipped = policy_term_ratio(ratio_logp, ratio_old_logp, adv, cfg.clip,
                                                  cfg.eps_low, cfg.eps_high)  # its rho: the above
    if cfg.clip_c > 0:  # dual-clip: for A < 0, a loss of at most -clip_c A
        per_token, bounded = dual_clip(per_token, adv, cfg.clip_c)
        clipped = clipped | bounded
    if cfg.beta > 0 and not cfg.kl_in_reward:  # the KL as a loss term (GRPO's and RGRA's place)
        ref_logp = torch.where(mask, ref_logp, logp.detach())
        per_token = per_token + cfg.beta * kl_estimate(logp, ref_logp, cfg.kl_estimator)
    n_seqs, n_tokens = denominators
    loss = aggregate(per_token, mask.float(), cfg.agg, n_seqs, n_tokens, cfg.agg_constant)
    rho = rho.detach()[mask]
    no_tokens = torch.ones((), device=rho.device)  # the largest ratio of no token: 1
    stats = dict(tokens=mask.sum(), ratio_sum=rho.double().sum(), clipped=(clipped & mask).sum(),
                 ratio_max=rho.max() if len(rho) else no_tokens,
                 ratio_min=rho.min() if len(rho) else no_tokens)
    return loss, stats


# -----------------------------------------------------------------------------
# One RL step: sample, score, advantages, learn.
#
# Under torchrun (distributed.py) the processes meet in three places of a step: each samples and
# scores its share of the step's prompts (sample_batch); gather_step then gives every process the
# whole step's rows, so that the advantages, the minibatches and the metrics below are computed as
# by one process; and learn() has each process compute its share of a minibatch's rows and sums the
# gradients (and the statistics) over the processes. In one process every one of those calls
# returns its input. (Evaluation is the fourth place: sample_texts.)

# The random streams of a step (step_rngs): each kind of draw has its own, so that adding a draw of
# one kind never shifts the others. The study adds its own streams above these.
STREAMS = dict(skills=1, prompts=2, minibatches=3, habits=4)


def step_rngs(seed, step, stream):
    """A numpy and a torch generator for one step, keyed by (seed, step, stream): no state to
    carry, so resume is exact."""
    np_rng = np.random.default_rng([seed, step, stream])
    return np_rng, torch.Generator().manual_seed(int(np_rng.integers(2**62)))


def sample_batch(policy, tok, args, step):
    """The step's problems and their completions: G samples each, or for sft the gold worked
    solutions. Under torchrun, this process's share of them (my_share): every prompt of the step
    gets its seed first, so its samples do not depend on which process draws them."""
    np_rng, gen = step_rngs(args.seed, step, STREAMS["prompts"])
    problems = train_problems(RL_LEVEL, args.prompts, np_rng)
    seeds = my_share(torch.randint(0, 2**62, (len(problems),), generator=gen).tolist())
    problems = my_share(problems)
    if args.loss.objective == "sft":
        solutions = [worked_solution(p.expr) for p in problems]
        return problems, pack_examples(tok, problems, solutions, policy.device)
    prompts = [tok.encode(prompt_text(p)) for p in problems]
    rollout = generate(policy, prompts, args.max_new_tokens, tok.eos_id, tok.pad_id, args.group,
                       args.temperature, seeds=seeds)
    return problems, rollout


def score_batch(tok, problems, rollout, format_reward=0.0):
    """(B, G) verifier rewards, on the rollout's device: 1 for the right final answer, plus
    format_reward for a well-formed answer line, right or wrong (--format-reward; the RGRA paper
    used 0.1); and the solution style of each completion (logs). A group's completions often repeat
    (after some RL most of a group writes the same solution): each distinct one is scored once."""
    texts = decode_completions(tok, rollout)
    G = len(texts) // len(problems)
    scored = {}  # (prompt number, text) -> (reward, style)
    for i, text in enumerate(texts):
        problem = problems[i // G]
        if (i // G, text) not in scored:
            scored[i // G, text] = (outcome_reward(text, problem, format_reward),
                                    solution_style(text, problem.expr))
    each = [scored[i // G, text] for i, text in enumerate(texts)]
    rewards = torch.tensor([reward for reward, _ in each], device=rollout.tokens.device)
    return rewards.view(len(problems), G), [style for _, style in each]


def reference_logprobs(ref, rollout, args):
    """(N, L) log-probs of the completions under the frozen base, for the KL term; None when
    beta = 0, which skips the reference's forward."""
    if args.loss.beta == 0:
        return None
    with torch.no_grad():
        return completion_logprobs(ref, rollout, args.temperature)


def advantages_for(rewards, cfg):
    """(B, G) rewards -> (B*G,) advantages and (B*G,) rows to learn from. RAFT and SFT are the
    REINFORCE term with advantage 1 on the rows they keep (and beta 0): cross-entropy on those rows,
    no loss of their own. rewards are the whole step's, so the batch statistics of REINFORCE++ are
    those of every completion of the step."""
    if cfg.objective == "pg":
        adv = group_advantages(rewards, cfg.baseline, cfg.std_norm, cfg.adv_sign, cfg.std_over)
    elif cfg.objective == "raft":
        adv = best_of_group(rewards)  # the best sample of each group, if any is right
    else:
        adv = torch.ones_like(rewards)  # sft: every gold solution
    keep = adv > 0 if cfg.objective != "pg" else torch.ones_like(rewards, dtype=torch.bool)
    if cfg.skip_zero_var:
        keep = keep & ~zero_variance_groups(rewards)[:, None]
    return adv.flatten(), keep.flatten()


@dataclass
class Experience:
    """One step's batch of experience, as learn() reads it: every completion of the step."""

    rollout: Rollout  # prompts, completions (N, L), their mask, the sampler's log-probs (old_logp)
    adv: torch.Tensor  # (N,) the advantage of each completion
    ref_logp: torch.Tensor | None  # (N, L) log-probs under the frozen base; None when beta = 0
    temperature: float  # the sampling temperature: the loss takes log-probs at it too (pitfall 9)
    keep: torch.Tensor  # (N,) bool: the rows to learn from


def learn(policy, opt, experience, cfg, gen):
    """
    The algorithm: mu passes over the rows to learn from, each split into cfg.minibatches
    optimizer steps, each accumulated over micro-batches whose denominators count the whole
    minibatch (pitfall 10). Under torchrun each process computes the loss of its share of the
    minibatch's rows (my_micro_batches) and the gradients are summed over the processes before the
    optimizer step (sum_gradients_over_ranks): every process takes the same step. Returns the
    summed loss statistics and each step's gradient norm.
    """
    records, norms = [], []
    mask = experience.rollout.mask  # (N, L)
    kept = experience.keep.nonzero().flatten()  # (K,) row numbers
    passes = [kept[torch.randperm(len(kept), generator=gen).to(kept.device)]
              for _ in range(cfg.mu if len(kept) else 0)]  # each pass's order of the rows
    if policy.precision != "fp32" and passes:  # mixed precision: pi_old from the trainer itself
        experience = with_trainer_old_logprobs(policy, experience, passes[0], cfg)
    for order in passes:
        for minibatch in order.chunk(cfg.minibatches):
            # the denominators of aggregate(): the sequences and tokens of the whole minibatch
            denominators = (len(minibatch), mask[minibatch].sum().item())
            opt.zero_grad(set_to_none=True)
            for micro in my_micro_batches(minibatch, cfg):
                part = experience.rollout.rows(micro)  # a Rollout of the micro-batch's rows
                ref_logp = None if experience.ref_logp is None else experience.ref_logp[micro]
                logits = completion_logits(policy, part)  # (n, L, V): the one forward
                logp = token_logprobs(logits, part.tokens, experience.temperature)  # (n, L)
                adv = experience.adv[micro]
                loss, stats = rl_loss(logp, part, adv, ref_logp, cfg, denominators)
                if cfg.entropy_coef > 0:  # the bonus reads the whole next-token distribution
                    entropy = token_entropy(logits, experience.temperature)  # (n, L)
                    loss = loss + entropy_bonus(entropy, part.mask, cfg, denominators)
                loss.backward()
                records.append(dict(stats, loss=loss.detach(), update=len(norms)))
            sum_gradients_over_ranks(policy)
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or math.inf)
            if not torch.isfinite(norm):  # a non-finite loss gives it too, and on every rank
                raise FloatingPointError(f"non-finite gradient norm ({norm.item()})")
            opt.step()
            norms.append(norm.item())
    return learn_stats(records, norms)


def my_micro_batches(minibatch, cfg):
    """The row numbers this process computes of a minibatch (my_share: all of them in one
    process), in micro-batches of cfg.micro_batch rows (0: one micro-batch)."""
    my_rows = my_share(minibatch)
    return my_rows.split(cfg.micro_batch or max(len(my_rows), 1))


@torch.no_grad()
def with_trainer_old_logprobs(policy, experience, first_pass, cfg):
    """
    Under mixed precision only: the experience with pi_old's log-probs computed by the trainer's own
    forward, before the first update, over exactly the micro-batches the first pass will run
    (first_pass: its order of the rows), so that at the first update rho = 1 exactly, as it must at
    mu = 1. The sampler computes the same function with other arithmetic (a KV cache, one token at
    a time): in float32 the two agree to ~1e-6 and the sampler's log-probs serve; under bf16 they
    differ by up to ~0.1, a ratio away from 1 before any update, and GRPO would no longer equal
    RGRA. Under torchrun every process computes its rows and the sums give every process all.
    """
    logprobs = torch.zeros_like(experience.rollout.logprobs)  # (N, L); rows never learned stay 0
    for minibatch in first_pass.chunk(cfg.minibatches):
        for micro in my_micro_batches(minibatch, cfg):
            part = experience.rollout.rows(micro)
            logp = token_logprobs(completion_logits(policy, part), part.tokens,
                                  experience.temperature)
            logprobs[micro] = torch.where(part.mask, logp, torch.zeros_like(logp))
    logprobs = sum_rows_over_ranks(logprobs)
    return replace(experience, rollout=replace(experience.rollout, logprobs=logprobs))


def learn_stats(records, norms):
    """learn()'s statistics: the micro-batches' sums added up (in float64, one .item() each, not one
    per micro-batch) and, under torchrun, over the processes (sum_over_ranks); the largest ratio;
    the gradient norm of every optimizer step; and for each optimizer step its share of clipped
    tokens and its smallest and largest ratio, over every process (per_update: how the ratio
    leaves 1 as a reused batch goes stale)."""
    sums = dict(tokens=0, ratio_sum=0.0, clipped=0, loss=0.0)
    ratio_max = 1.0  # the largest ratio of no token
    if records:
        sums = {key: torch.stack([r[key] for r in records]).double().sum().item() for key in sums}
        ratio_max = torch.stack([r["ratio_max"] for r in records]).max().item()
    sums = sum_over_ranks(sums)
    ratio_max = sum_over_ranks(dict(ratio_max=ratio_max), op="max")["ratio_max"]
    return dict(sums, ratio_max=ratio_max, norms=norms, per_update=per_update_stats(records))


def per_update_stats(records):
    """[{clip_frac, ratio_min, ratio_max}] for each optimizer step of learn(), from its
    micro-batches' records (one read of each statistic, not one per record), summed over the
    processes under torchrun (sum_over_ranks)."""
    if not records:
        return []
    columns = {key: torch.stack([r[key] for r in records]).double().tolist()
               for key in ("tokens", "clipped", "ratio_min", "ratio_max")}
    updates = [r["update"] for r in records]
    sums, extremes = {}, {}
    for u in sorted(set(updates)):
        rows = [i for i, v in enumerate(updates) if v == u]
        for key in ("tokens", "clipped"):
            sums[f"{key} {u}"] = sum(columns[key][i] for i in rows)
        extremes[f"ratio_max {u}"] = max(columns["ratio_max"][i] for i in rows)
        extremes[f"-ratio_min {u}"] = -min(columns["ratio_min"][i] for i in rows)
    sums = sum_over_ranks(sums)
    extremes = sum_over_ranks(extremes, op="max")
    return [dict(clip_frac=sums[f"clipped {u}"] / (sums[f"tokens {u}"] or 1),
                 ratio_min=-extremes[f"-ratio_min {u}"], ratio_max=extremes[f"ratio_max {u}"])
            for u in sorted(set(updates))]


def rl_step(policy, ref, opt, tok, args, step):
    """Sample, score, compute advantages, learn. Returns the step's metrics row."""
    t0 = time.perf_counter()
    problems, rollout = sample_batch(policy, tok, args, step)
    t1 = time.perf_counter()
    rewards, styles = score_batch(tok, problems, rollout, args.format_reward)  # (B, G)
    t2 = time.perf_counter()
    ref_logp = reference_logprobs(ref, rollout, args)  # (N, L) or None
    # under torchrun: every process's rows, on every process (one process: as they are)
    rollout, rewards, styles, ref_logp = gather_step(rollout, rewards.to(policy.device), styles,
                                                     ref_logp, tok.pad_id)
    scores = rewards  # (B, G): what the advantages are computed from
    if args.loss.kl_in_reward:
        scores = kl_penalised_rewards(rewards, rollout.logprobs, ref_logp, rollout.mask,
                                      args.loss.beta, args.loss.kl_estimator)
    adv, keep = advantages_for(scores, args.loss)  # (B*G,) each
    experience = Experience(rollout, adv, ref_logp, args.temperature, keep)
    t3 = time.perf_counter()
    minibatch_gen = step_rngs(args.seed, step, STREAMS["minibatches"])[1]
    learned = learn(policy, opt, experience, args.loss, minibatch_gen)
    times = dict(t_sample=t1 - t0, t_score=t2 - t1, t_reference=t3 - t2,
                 t_learn=time.perf_counter() - t3)
    return step_metrics(step, rewards, styles, experience, learned, times)


# Everything logged about one step, in one place: step_metrics and its parts.


def step_metrics(step, rewards, styles, experience, learned, times):
    """The metrics row of one step (metrics.jsonl): rewards and advantages, the sampled tokens, the
    updates, the styles of the samples, and where the time went."""
    row = dict(step=step)
    row.update(reward_metrics(rewards, experience))
    row.update(token_metrics(experience))
    row.update(update_metrics(learned))
    row["per_update"] = learned["per_update"]  # each optimizer step's clip fraction and ratios
    row["styles"] = style_shares(styles)
    row.update(times)
    return row


def reward_metrics(rewards, experience):
    """rewards: (B, G). Mean reward, share right, share of zero-variance groups, the advantages'
    mean and std, and the share of rows learned from."""
    adv = experience.adv  # (B*G,)
    return dict(reward=rewards.mean().item(),
                batch_acc=(rewards >= 1).float().mean().item(),
                zero_var=zero_variance_groups(rewards).float().mean().item(),
                adv_mean=adv.mean().item(),
                adv_std=adv.std().item() if adv.numel() > 1 else 0.0,
                kept=experience.keep.float().mean().item())


def token_metrics(experience):
    """Means over the sampled tokens: KL to the base (k3, when beta > 0 had its log-probs computed)
    and the entropy estimate -log pi; and the mean completion length. sft (gold text) has no
    samples for either."""
    rollout = experience.rollout
    mask = rollout.mask.float()
    sampled = bool(rollout.logprobs.any())  # given text (sft) has log-probs 0: nothing was sampled
    tokens = float(mask.sum())
    entropy = float((-rollout.logprobs * mask).sum())
    kl = None
    if experience.ref_logp is not None:
        kl = float((kl_estimate(rollout.logprobs, experience.ref_logp, "k3") * mask).sum())
    return dict(kl=kl / tokens if kl is not None else None,
                entropy=entropy / tokens if sampled else None,
                resp_len=tokens / float(len(mask)))


def update_metrics(learned):
    """The updates learn() made: how many, the mean and largest ratio over the trained tokens, the
    share of tokens where the clipped term acted, the loss per update and the largest
    gradient norm."""
    tokens = learned["tokens"] or 1
    updates = len(learned["norms"])
    return dict(ratio_mean=learned["ratio_sum"] / tokens,
                clip_frac=learned["clipped"] / tokens,
                ratio_max=learned["ratio_max"],
                updates=updates,
                loss=learned["loss"] / max(updates, 1),
                grad_norm=max(learned["norms"], default=0.0))


def style_shares(styles):
    """The share of the step's completions written in each style (verifier.solution_style)."""
    tally = Counter(styles)
    return {s: tally[s] / sum(tally.values()) for s in STYLE_NAMES}


# -----------------------------------------------------------------------------
# The warm start, in two stages like an LLM's pre-training and mid-training
# (data.tasks.SKILLS, HABITS): the atoms of the RL level and careful solutions; then a messy
# corpus in four styles, right at very different rates, for RL (answers only) to select from:
# RL can make the careful habit win; it does not teach arithmetic.


class Stage(NamedTuple):
    name: str
    corpus: dict  # level -> (weight, styles), data.tasks.SKILLS or HABITS
    steps: int
    lr: float  # the peak learning rate
    stream: int  # the stream of step_rngs its draws come from


def warm_stages(args):
    """The two stages of the warm start (experiments/study.py replays their draws)."""
    return (Stage("skills", SKILLS, args.skill_steps, args.skill_lr, STREAMS["skills"]),
            Stage("habits", HABITS, args.habit_steps, args.habit_lr, STREAMS["habits"]))


def supervised_step(model, opt, batch, grad_clip=1.0):
    """One step of next-token cross-entropy on the completion tokens of a packed batch (a Packed),
    every token weighing the same, the gradient norm clipped as in RL. Returns the loss, a tensor
    (reading it as a number would make a GPU wait). It is learn() with advantage 1 on every token
    (the sft preset, token-mean), on packed rows."""
    logp = packed_logprobs(model, batch)  # (R, T)
    loss = -logp[batch.loss_mask].mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


def stage_lr(stage, step):
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of the peak."""
    warmup = min(1, (step + 1) / (stage.steps // 20 + 1))
    decay = 0.55 + 0.45 * math.cos(math.pi * step / stage.steps)
    return stage.lr * warmup * decay


def train_stage(model, tok, stage, args):
    """Supervised steps on the stage's corpus, with a fresh AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.0, betas=(0.9, 0.95))
    bar = rundir.progress(range(stage.steps), f"warm start, {stage.name}")
    for step in bar:
        np_rng, _ = step_rngs(args.base_seed, step, stage.stream)
        pairs = corpus_examples(stage.corpus, args.warm_batch, np_rng)
        texts = [STYLES[style](p.expr) for p, style in pairs]
        batch = packed_examples(tok, [p for p, _ in pairs], texts, model.device)
        for group in opt.param_groups:
            group["lr"] = stage_lr(stage, step)
        loss = supervised_step(model, opt, batch)
        if step % 100 == 0 or step == stage.steps - 1:  # a look at the loss, now and then
            bar.set_postfix(loss=f"{loss.item():.3f}")


# The warm start trains with torch's default number of CPU threads, whatever --threads says: the
# thread count changes the order of float sums, so a base trained with another would be another
# base (pitfall 11), and a base is cached and shared by every run (the notebook, the sweep's
# one-thread workers). The cache key holds these numerics: a base trained under others is never
# loaded in their place.
WARM_START_THREADS = torch.get_num_threads()


def warm_start(args, tok, device, log=print):
    """The base model: the skills stage, then the habits stage, each loaded from the cache under
    --base-dir or trained and cached under a hash of all that defines it: the stages before it, the
    test sets, and the numerics it is computed with (the device, the threads, torch's version, and
    the precision where it is not float32)."""
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd)
    model, path = GPT(config, seed=args.base_seed, precision=args.precision).to(device), None
    # "cpu, 2 threads, torch 2.13.0+cpu"
    numerics = rundir.numerics(device, WARM_START_THREADS, args.precision)
    # what shapes the draws and the arithmetic: the model, the seed, the levels, the rows' layout
    key = repr((config, args.base_seed, LEVELS, STEP_KINDS, sorted(test_exprs()), PACK_LEN,
                numerics))
    with rundir.torch_threads(WARM_START_THREADS):
        for stage in warm_stages(args):
            if stage.steps == 0:  # a stage of 0 steps is left out
                continue
            stage_key = repr((key, stage.corpus, stage.steps, stage.lr, args.warm_batch))
            key = hashlib.sha256(stage_key.encode()).hexdigest()[:12]
            path = Path(args.base_dir) / f"base-{stage.name}-{key}.pt"
            train = functools.partial(train_stage, model, tok, stage, args)
            rundir.cached_model(model, path, train, f"{stage.name} ({stage.steps} steps)", log)
    return model, path


# -----------------------------------------------------------------------------
# Evaluation on the frozen test sets. Under torchrun every rank samples its share of the prompts and
# the texts are gathered, so every rank returns the same numbers.


SAMPLE_ROWS = 1024  # rows sampled at once: bounds the memory of evaluation batches


class Sampling(NamedTuple):
    """How evaluation samples: k completions per prompt at temperature (0 = greedy),
    each at most max_new_tokens long."""
    k: int
    temperature: float
    max_new_tokens: int


@torch.no_grad()
def sample_texts(model, tok, prompts, sampling, seed=0):
    """sampling.k completions per prompt text (a Sampling), as texts (prompt-major), and their
    lengths in tokens (EOS included). Prompt i's samples are seeded by seed + i, so neither the
    chunking nor the processes change them. Under torchrun each process samples its share of the
    prompts (my_share) and the texts are gathered (gather_objects)."""
    numbered = my_share(list(enumerate(prompts)))  # this process's prompts, with their numbers
    per_chunk = max(1, SAMPLE_ROWS // sampling.k)
    texts, lengths = [], []
    for i in range(0, len(numbered), per_chunk):
        chunk = numbered[i:i + per_chunk]
        ids = [tok.encode(p) for _, p in chunk]
        seeds = [seed + j for j, _ in chunk]
        rollout = generate(model, ids, sampling.max_new_tokens, tok.eos_id, tok.pad_id,
                           sampling.k, sampling.temperature, seeds=seeds)
        texts += decode_completions(tok, rollout)
        lengths += rollout.mask.sum(1).tolist()
    return gather_objects(texts), gather_objects(lengths)


def evaluate(model, tok, level, n, max_new_tokens):
    """Greedy outputs on the first n test problems of level: accuracy, mean length, and how many
    outputs are in each solution style (verifier.solution_style)."""
    problems = load_test_set(level)[:n]
    prompts = [prompt_text(p) for p in problems]
    texts, lengths = sample_texts(model, tok, prompts, Sampling(1, 0.0, max_new_tokens))
    right = [outcome_reward(t, p) >= 1 for t, p in zip(texts, problems)]
    styles = Counter(solution_style(t, p.expr) for t, p in zip(texts, problems))
    return dict(acc=float(np.mean(right)), len=float(np.mean(lengths)),
                styles={s: styles[s] for s in STYLE_NAMES})


def step_accuracy(model, tok, level, max_new_tokens):
    """The atoms: up to 200 distinct steps x<op>y of each kind that occurs in the careful solutions
    of level (atom_check_steps), each posed as a problem of its own ("Q:4+54"). Greedy accuracy
    per step kind."""
    atoms = atom_check_steps(level)
    steps = [(expr, z, kind) for kind, facts in atoms.items() for expr, z in facts.items()]
    prompts = [f"Q:{expr}\n" for expr, _, _ in steps]
    texts, _ = sample_texts(model, tok, prompts, Sampling(1, 0.0, max_new_tokens))
    right = [(outcome_reward(t, z) >= 1, kind) for t, (_, z, kind) in zip(texts, steps)]
    return {k: float(np.mean([ok for ok, kind in right if kind == k])) for k in STEP_KINDS}


def pass_at_k(model, tok, level, n, k_max, max_new_tokens):
    """pass@k, k = 1, 2, 4, ..., k_max, on the first n test problems: from k_max samples each at
    T = 1, the unbiased 1 - C(k_max - c, k) / C(k_max, k) for c right, averaged. RL that sharpens
    lifts small k, not large k."""
    problems = load_test_set(level)[:n]
    prompts = [prompt_text(p) for p in problems]
    texts, _ = sample_texts(model, tok, prompts, Sampling(k_max, 1.0, max_new_tokens))
    per_problem = [texts[i * k_max:(i + 1) * k_max] for i in range(len(problems))]
    right = [sum(outcome_reward(t, p) >= 1 for t in ts) for ts, p in zip(per_problem, problems)]
    ks = sorted({2**j for j in range(int(math.log2(k_max)) + 1)} | {k_max})
    unbiased = {k: [1 - math.comb(k_max - c, k) / math.comb(k_max, k) for c in right] for k in ks}
    return {str(k): float(np.mean(values)) for k, values in unbiased.items()}


def evaluate_all(model, tok, args, full=True):
    """Greedy on the RL and OOD levels; with full (base and final), also the RL level's
    atoms and pass@k."""
    results = {level: evaluate(model, tok, level, args.eval_n, args.max_new_tokens)
               for level in (RL_LEVEL, OOD_LEVEL)}
    if full:
        results[RL_LEVEL]["steps"] = step_accuracy(model, tok, RL_LEVEL, args.max_new_tokens)
        results[RL_LEVEL]["pass@k"] = pass_at_k(model, tok, RL_LEVEL, args.pass_n, args.pass_k,
                                               args.max_new_tokens)
    return results


# What the summary shows the model writing: the first test problems of the RL level (the first is
# 4+9*6-3, precedence's example), greedy, before and after RL.
SHOWN_PROBLEMS = 3


def written_solutions(model, tok, problems, sampling, seed=0):
    """What the model writes: sampling.k completions of each problem (a Sampling), each with what
    the verifier says of it: [[{text, reward, right, style, reasoning}, ...] per problem].
    reasoning is verifier.reasoning_kind: sound, wrong reasoning, no reasoning or wrong answer."""
    prompts = [prompt_text(p) for p in problems]
    texts, _ = sample_texts(model, tok, prompts, sampling, seed)
    written = []
    for i, problem in enumerate(problems):
        own = texts[i * sampling.k:(i + 1) * sampling.k]
        written.append([dict(text=t, reward=outcome_reward(t, problem),
                             right=outcome_reward(t, problem) >= 1,
                             style=solution_style(t, problem.expr),
                             reasoning=reasoning_kind(t, problem)) for t in own])
    return written


def before_and_after(base, policy, tok, args):
    """The first SHOWN_PROBLEMS test problems of the RL level, and the base's and the trained
    policy's greedy solution of each (written_solutions), for the summary."""
    problems = load_test_set(RL_LEVEL)[:SHOWN_PROBLEMS]
    greedy = Sampling(1, 0.0, args.max_new_tokens)
    base_writes = written_solutions(base, tok, problems, greedy)
    trained_writes = written_solutions(policy, tok, problems, greedy)
    return [dict(expr=p.expr, answer=p.answer, base=b[0], trained=t[0])
            for p, b, t in zip(problems, base_writes, trained_writes)]


def base_evaluation(base, tok, args, base_path):
    """evaluate_all of the base, cached beside it: every run of a sweep starts from the
    same numbers."""
    spec = [args.eval_n, args.pass_n, args.pass_k, args.max_new_tokens, base.device.type,
            args.format_reward, STYLE_NAMES, STEP_KINDS, "atom_check_steps(200)", RL_LEVEL,
            OOD_LEVEL]
    if base.precision != "fp32":
        spec.append(base.precision)
    suffix = f".eval-{hashlib.sha256(repr(spec).encode()).hexdigest()[:8]}.json"
    path = Path(base_path).with_suffix(suffix)
    return rundir.cached_json(path, functools.partial(evaluate_all, base, tok, args))


# -----------------------------------------------------------------------------
# Text in, text out


def pack_examples(tok, problems, completions, device):
    """Prompts and given completion texts (EOS appended) as a Rollout, the batch layout the
    losses read."""
    prompts = [tok.encode(prompt_text(p)) for p in problems]
    targets = [tok.encode(c) + [tok.eos_id] for c in completions]
    return pack(prompts, targets, tok.pad_id, device)


def packed_examples(tok, problems, completions, device):
    """Prompts and given completion texts (EOS appended), several to a row (model.pack_rows): the
    layout of supervised training, which spends its compute on real tokens, not padding."""
    examples = [(tok.encode(prompt_text(p)), tok.encode(c) + [tok.eos_id])
                for p, c in zip(problems, completions)]
    return pack_rows(examples, tok.pad_id, device)


def decode_completions(tok, rollout):
    """The completion text of every row (EOS and padding left out)."""
    tokens, mask = rollout.tokens.cpu(), rollout.mask.cpu()
    return [tok.decode(t[m].tolist()) for t, m in zip(tokens, mask)]


# -----------------------------------------------------------------------------
# The run: RL steps with evaluations and checkpoints, like nanoGPT's training loop. rundir.RunDir
# keeps the files (rank 0 alone writes them); Ctrl-C finishes the step, saves and stops; --resume
# goes on from there.


def train(args, log=print):
    """The whole job: the summary (also in summary.json), or None if a Ctrl-C stopped it
    after a checkpoint."""
    device = setup_device(args)  # this process's device; under torchrun, its rank's
    tok = get_tokenizer()
    run = rundir.RunDir(args, device, log)  # refuses a used directory; finds the checkpoint
    base, base_path = warm_start(args, tok, device, run.log)
    ref = base.eval().requires_grad_(False)  # the frozen KL reference
    policy = copy.deepcopy(base).requires_grad_(True)
    if args.compile:  # fewer, fused kernels for the sampler's step: the same function
        policy.decode_step = torch.compile(policy.decode_step, dynamic=True)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    first_step = run.start(policy, opt)  # 0, or the step after the checkpoint (its state loaded)
    run.log(f"device {device}; model {policy.num_params():,} params; run dir {run.dir}")
    run.log(f"{args.loss}")
    if first_step == 0:
        run.log_eval(-1, base_evaluation(base, tok, args, base_path))  # step -1: the base
    with run.stop_on_ctrl_c() as ctrl_c, run.stop_on_non_finite():
        for step in run.steps(first_step):
            row = rl_step(policy, ref, opt, tok, args, step)
            run.log_step(row)
            stop = ctrl_c.requested()
            if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
                run.log_eval(step, evaluate_all(policy, tok, args, full=False))
            if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps or stop:
                run.save_checkpoint(policy, opt, step)
            if stop:
                return None
    run.log_eval(args.steps - 1, evaluate_all(policy, tok, args))
    return run.finish(base_path, before_and_after(base, policy, tok, args))


def parse_args(argv=None):
    """The command line (flags.py) with this file's presets: args.loss is the preset with
    the given switches on top."""
    return flags.parse_args(PRESETS, argv)


def main(argv=None):
    t0 = time.time()
    args = parse_args(argv)
    summary = train(args)
    if summary is not None and rank() == 0:
        rundir.print_summary(summary, Path(args.out_dir), time.time() - t0)
    teardown()


if __name__ == "__main__":
    main()
