"""
nanorgra.py: train a small GPT with GRPO / RGRA, where every component of the loss is a named
switch that one visible `if` reads. The lesson, top to bottom: 1. the loss, 2. one RL step (sample,
score, advantages, learn), 3. the run loop, like nanoGPT's.

    python nanorgra.py                          # the default job: 60 RGRA steps from the base
    python nanorgra.py --preset grpo --mu 2     # GRPO, each sampled batch used for two updates
    python nanorgra.py --preset rgra --beta 0   # RGRA without the KL term: one thing changes
    python nanorgra.py --help                   # every switch and its default
    torchrun --standalone --nproc_per_node=2 nanorgra.py    # the same job over 2 processes

The stages before and after RL have files of their own: warmstart.py (the base; the default bases
ship in bases/), evaluation.py, metrics.py (what a step logs). REFERENCE.md has the equations, the
recipes since GRPO, the papers and the pitfalls. Every random draw of a step comes from generators
seeded by (seed, step): a resumed run repeats the uninterrupted one on CPU.
"""

import copy
import math
import time
from dataclasses import dataclass, replace

import torch

import flags
import rundir
from batches import decode_completions, pack_examples
from data.tasks import RL_LEVEL, STREAMS, prompt_text, step_rngs, train_problems, worked_solution
from data.tokenizer import get_tokenizer
from distributed import gather_step, my_micro_batches, my_share, setup_device, \
    sum_gradients_over_ranks, sum_rows_over_ranks
from evaluation import base_evaluation, before_and_after, evaluate_all
from flags import SwitchError, check_switches, switch
from metrics import Learned, StepRecord, combine, loss_stats, step_metrics
from model import Rollout, completion_logits, completion_logprobs, generate, sampling_precision, \
    token_entropy, token_logprobs
from verifier import outcome_reward, solution_style
from warmstart import warm_start

# -----------------------------------------------------------------------------
# 1. The loss, one small function per concept.
#
# A group is the G completions o_1..o_G sampled for one prompt q, with verifier rewards r_1..r_G.
# logp_it = log pi_theta(o_it | q, o_i<t); old_logp_it is the same under the policy that sampled the
# batch (the sampler's log-probs); ref_logp_it is under the frozen base. Every loss is MINIMISED.
#
#   rgra   A_i = (r_i - mean r) / std r,  loss_it = -A_i logp_it + beta k3_it  (seq-mean-token-mean)
#   grpo   the same A_i, rho_it = exp(logp_it - old_logp_it),
#          loss_it = -min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i) + beta k3_it
# Every other preset (no negative feedback, raw reward, RAFT, SFT, and the recipes since GRPO) is a
# replace() of one of these; REFERENCE.md, section 6, has each one's equation and source.
#
# Why GRPO and RGRA give the same gradient when mu = 1 (one update per sampled batch): the batch
# comes from the current policy, so rho_it = 1 at the update. Inside [1-eps, 1+eps] the min picks
# the unclipped term, whose gradient is the REINFORCE gradient:
#   A_i grad rho_it = A_i rho_it grad logp_it = A_i grad logp_it
# Ratio and clipping act only once the policy has moved away from the one that sampled (mu > 1, or
# a later minibatch). "Why is my loss 0?": at rho = 1 the GRPO loss value is -mean_i A_i = 0 for
# mean-centred advantages, yet its gradient is not 0.


@dataclass(frozen=True)
class LossConfig:
    """Every switch of the loss and of how it is applied. A preset is an instance; a variant is, for
    example, replace(PRESETS["grpo"], mu=2). The command-line flags are made from these fields, and
    every rule about them is here: each field's allowed values, and rules() below."""

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
    # the sampler against the trainer (REFERENCE.md, section 10: the mismatch lab)
    old_logprobs: str = switch("auto", "where pi_old comes from: sampler (its own log-probs) | "
                               "trainer (a forward before the first update) | auto: trainer "
                               "under --precision bf16, else sampler",
                               choices=("auto", "sampler", "trainer"))
    correction: str = switch("none", "of the sampler's mismatch, w = pi_old / pi_sampler: tis: "
                             "the policy term times min(w, C) | mis: times w, and 0 where w "
                             "leaves [1/C, C] | none", choices=("none", "tis", "mis"))
    correction_level: str = switch("token", "w of each token | sequence: the product of a "
                                   "completion's token w | sequence-mean: their geometric mean",
                                   choices=("token", "sequence", "sequence-mean"))
    correction_c: float = switch(2.0, "the bound C of tis and mis", above=1)
    masked_denominator: str = switch("leaves", "a token mis drops leaves the denominators of "
                                     "aggregation (verl) | stays: counted with a loss of 0 (TRL, "
                                     "ms-swift)", choices=("leaves", "stays"))
    # the entropy bonus
    entropy_coef: float = switch(0.0, "weight of the entropy bonus: loss -= entropy_coef * H, H "
                                 "the entropy of the whole next-token distribution", at_least=0)
    # aggregation
    agg: str = switch("seq-mean-token-mean", "| token-mean | seq-sum-norm",
                      choices=("seq-mean-token-mean", "token-mean", "seq-sum-norm"))
    agg_constant: float = switch(72.0, "seq-sum-norm's constant: the completion budget "
                                 "(loss_config sets it to max_new_tokens)", above=0)
    # which rows, and how often
    skip_zero_var: bool = switch(False, "drop the groups whose rewards are all equal")
    mu: int = switch(1, "updates per sampled batch", at_least=1)
    minibatches: int = switch(1, "optimizer steps per update (the batch split)", at_least=1)
    micro_batch: int = switch(0, "rows per forward/backward (0 = the whole minibatch); changes "
                              "memory, not the gradient", at_least=0)
    grad_clip: float = switch(1.0, "max gradient norm (0 = off)", at_least=0)

    def __post_init__(self):
        check_switches(self)  # each field inside its allowed values (flags.py reads the metadata)
        for broken, name, problem in self.rules():
            if broken:
                raise SwitchError(name, problem)  # .switch names the field

    def rules(self):
        """The switches that cannot work together: (whether this config breaks the rule, the field
        to name, the problem)."""
        return [
            (self.clip and not self.ratio, "clip",
             "needs ratio (clipping acts on the ratio): pass --ratio, or --no-clip"),
            (self.ratio_level == "sequence" and not self.ratio, "ratio_level",
             "sequence needs ratio (it is a level of the ratio): pass --ratio"),
            (0 < self.clip_c <= 1, "clip_c", f"must be 0 (off) or > 1 (the bound acts where rho > "
             f"c; rho = 1 must stay free); got {self.clip_c}"),
            (self.clip_c > 0 and not self.clip, "clip_c",
             "needs clip (dual-clip bounds the clipped term): pass --clip"),
            (self.clip_c > 0 and self.clip_mode != "ppo", "clip_c",
             "needs clip_mode ppo (cispo's weight is bounded already)"),
            (self.kl_in_reward and self.beta == 0, "kl_in_reward",
             "needs beta > 0 (the weight of the KL in the reward): pass --beta"),
            (self.correction != "none" and self.old_logprobs != "trainer", "correction",
             "needs old_logprobs trainer (with the sampler's own pi_old, w = 1): pass "
             "--old-logprobs trainer"),
        ]


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


def loss_config(preset="rgra", max_new_tokens=72, **switches):
    """The LossConfig of a run, as the command line builds it: the preset with switches on top, and
    seq-sum-norm's constant the completion budget, max_new_tokens (Dr. GRPO's choice), unless a
    switch gives agg_constant."""
    return replace(PRESETS[preset], **{"agg_constant": float(max_new_tokens), **switches})


def group_advantages(rewards, baseline="mean", std_norm=True, sign="both", std_over="group",
                     eps=1e-6):
    """rewards: (B, G) -> advantages (B, G), one per completion, shared by all its tokens.
      baseline "mean":  A_i = r_i - 1/G sum_j r_j
      baseline "loo":   A_i = r_i - 1/(G-1) sum_{j != i} r_j   (leave-one-out: ignores r_i)
      baseline "none":  A_i = r_i                               (raw reward)
      baseline "batch": A_i = r_i - the mean of all B*G rewards (REINFORCE++: no group baseline)
      std_norm, std_over "group": A_i = A_i / (std(r_1..r_G) + eps)   (unbiased std)
      std_norm, std_over "batch": batch_std_normalised (REINFORCE++)
    With a group baseline ("mean", "loo") a zero-variance group (all rewards equal) gets A = 0, and
    no group is ever divided by its std of 0.
      sign "pos":       A_i = max(A_i, 0)   "neg": A_i = min(A_i, 0)   "both": unchanged"""
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
    """REINFORCE++ (Hu, arXiv 2501.03262): the advantages of the whole step divided by one std,
    that of all B*G of them, instead of each group's:
      A_i = A_i / (std(A_1..A_BG) + eps)   (unbiased std, over completions)
    After the batch baseline it is the paper's normalisation; after the group mean it is
    REINFORCE++-baseline's (the batch mean of group-centred advantages is 0 already). A step whose
    advantages are all equal is never divided by its std of 0. adv: (B, G) -> (B, G)."""
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
    """(B, G) -> (B,) bool: the groups whose rewards are all equal, which carry no signal."""
    return (rewards == rewards[:, :1]).all(1)


def policy_term_reinforce(logp, adv):
    """loss_it = -A_i logp_it.  logp: (N, L), adv: (N,) -> (N, L)."""
    return -adv[:, None] * logp


def policy_term_ratio(logp, old_logp, adv, clip, eps_low, eps_high):
    """
    with clip (PPO, GRPO):  loss_it = -min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)
    without clip:           loss_it = -rho_it A_i
    Returns the loss (N, L), rho (N, L), and where the clipped term is the one that acts (N, L)."""
    rho = torch.exp(logp - old_logp)
    unclipped = rho * adv[:, None]
    if not clip:
        return -unclipped, rho, torch.zeros_like(rho, dtype=torch.bool)
    clipped = rho.clamp(1 - eps_low, 1 + eps_high) * adv[:, None]
    return -torch.minimum(unclipped, clipped), rho, clipped < unclipped


def sequence_logprobs(logp, mask):
    """GSPO's log-probs (Zheng et al., arXiv 2507.18071): each completion's log-prob divided by its
    length, log pi(o_i | q) / |o_i| = 1/|o_i| sum_t logp_it over its real tokens, on each of them.
    Their ratio is GSPO's sequence ratio, the geometric mean of the token ratios of o_i:
      s_i = (pi_theta(o_i | q) / pi_old(o_i | q))^(1/|o_i|)
          = exp(1/|o_i| sum_t (logp_it - old_logp_it))
    logp: (N, L), mask: (N, L) bool -> (N, L), each row one value. Padding is never counted."""
    real = torch.where(mask, logp, torch.zeros_like(logp))  # not logp * mask: -inf * 0 is NaN
    per_row = real.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)  # (N, 1)
    return per_row.expand_as(logp)


def policy_term_cispo(logp, rho, adv, eps_low, eps_high):
    """CISPO (MiniMax-M1, arXiv 2506.13585): the REINFORCE term weighted by the clipped importance
    weight, held constant (sg, stop-gradient):
      loss_it = -sg(clip(rho_it, 1 - eps_low, 1 + eps_high)) A_i logp_it
    PPO's min gives a clipped token no gradient at all; here every token keeps its gradient, and
    only the weight of it is bounded. logp, rho: (N, L), adv: (N,). Returns the loss (N, L) and
    where the weight was clipped (N, L)."""
    weight = rho.detach().clamp(1 - eps_low, 1 + eps_high)  # (N, L)
    clipped = (rho < 1 - eps_low) | (rho > 1 + eps_high)
    return -weight * adv[:, None] * logp, clipped


def dual_clip(loss, adv, c):
    """Dual-clip PPO (Ye et al., arXiv 1912.09729): for A_i < 0 the clipped objective is bounded
    below by c A_i (c > 1), max(min(rho A_i, clip(rho) A_i), c A_i), so that one token whose ratio
    has grown huge cannot dominate the update. As a loss:
      loss_it = min(loss_it, -c A_i)   where A_i < 0;   unchanged where A_i >= 0
    It acts only where rho_it > c; there the loss is a constant and gives no gradient.
    loss: (N, L), adv: (N,). Returns the loss (N, L) and where the bound acts (N, L)."""
    bound = (-c * adv[:, None]).expand_as(loss)  # (N, L)
    acts = (adv[:, None] < 0) & (loss > bound)
    return torch.where(acts, bound, loss), acts


def correction_weights(old_logp, sampler_logp, mask, cfg):
    """The sampler's mismatch corrected: the sampler drew the completions from pi_sampler (other
    arithmetic than the trainer's: bf16, fp16, vLLM), the loss takes pi_old from the trainer.
      token:          w_it = pi_old(o_it) / pi_sampler(o_it) = exp(old_logp_it - sampler_logp_it)
      sequence:       w_i = prod_t w_it            sequence-mean: w_i = (prod_t w_it)^(1/|o_i|)
      tis (truncated, Yao et al. 2025):  weight = min(w, C)
      mis (masked):  weight = w where 1/C <= w <= C, else 0: the token (or sequence) is dropped
    The weight is a number (no gradient) that multiplies the policy term. old_logp, sampler_logp,
    mask: (N, L). Returns the weight (N, L) and the tokens kept (N, L) bool."""
    log_w = torch.where(mask, old_logp - sampler_logp, torch.zeros_like(old_logp))  # (N, L)
    if cfg.correction_level == "sequence":
        log_w = log_w.sum(1, keepdim=True).expand_as(log_w)
    elif cfg.correction_level == "sequence-mean":
        lengths = mask.sum(1, keepdim=True).clamp(min=1)  # (N, 1)
        log_w = (log_w.sum(1, keepdim=True) / lengths).expand_as(log_w)
    w = torch.exp(log_w).detach()
    if cfg.correction == "tis":
        return w.clamp(max=cfg.correction_c), mask
    kept = mask & (w >= 1 / cfg.correction_c) & (w <= cfg.correction_c)
    return torch.where(kept, w, torch.zeros_like(w)), kept


def kl_estimate(logp, ref_logp, estimator):
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta, x = ref_logp - logp:
      k1 = -x   (unbiased, can be negative)    k2 = x^2 / 2   (low variance, biased)
      k3 = exp(x) - x - 1   (unbiased, >= 0; as a loss its gradient is that of KL(pi_ref ||
                             pi_theta), not the reverse KL: it pulls towards pi_ref all the same)"""
    x = ref_logp - logp
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x**2
    if estimator == "k3":
        return torch.exp(x) - x - 1
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


def kl_penalised_rewards(rewards, logp, ref_logp, mask, beta, estimator):
    """The KL in the reward (kl_in_reward; verl's use_kl_in_reward, the REINFORCE++ and RLOO papers'
    choice) instead of in the loss: each completion pays beta times its summed per-token estimate,
      r_i <- r_i - beta sum_t kl_it,   kl_it = kl_estimate(logp_it, ref_logp_it)
    before the advantages are computed from the rewards, so the cost is weighed against the other
    completions of the group like any reward, and it is a number (no gradient flows through it).
    rewards: (B, G); logp (the sampler's), ref_logp, mask: (B*G, L) -> (B, G)."""
    kl = kl_estimate(logp, ref_logp, estimator)  # (B*G, L)
    per_completion = torch.where(mask, kl, torch.zeros_like(kl)).sum(1)  # (B*G,)
    return rewards - beta * per_completion.view_as(rewards)


def aggregate(loss, mask, agg, n_seqs, n_tokens, constant):
    """Reduce per-token losses (N, L) over the real tokens (mask) to a scalar. The denominators
    n_seqs and n_tokens count the WHOLE update (all micro-batches, all ranks), so that summing the
    parts gives the full-batch loss.
      "seq-mean-token-mean": 1/n_seqs sum_i 1/|o_i| sum_t loss_it   (the paper's: a token of a long
                                                                      answer weighs less)
      "token-mean":          1/n_tokens sum_i sum_t loss_it          (every token weighs the same)
      "seq-sum-norm":        1/(n_seqs constant) sum_i sum_t loss_it (Dr. GRPO: no length bias)"""
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
    """The entropy bonus (TRL entropy_coef, verl entropy_coeff), aggregated like the policy term:
      loss_it = -entropy_coef H_it,   H_it = -sum_v pi(v | q, o_i<t) log pi(v | q, o_i<t)
    H is the entropy of the whole next-token distribution at step t, not -log pi of the sampled
    token; minimising -H spreads probability back over the tokens the policy is squeezing out.
    entropy, mask: (N, L); denominators: as in rl_loss."""
    n_seqs, n_tokens = denominators
    per_token = -cfg.entropy_coef * entropy  # (N, L)
    return aggregate(per_token, mask.float(), cfg.agg, n_seqs, n_tokens, cfg.agg_constant)


def rl_loss(logp, rollout, adv, ref_logp, cfg, denominators):
    """The loss of cfg (a LossConfig) on some completions: policy term + beta * KL, aggregated (the
    entropy bonus, which needs the logits, is added by learn()).
      logp:     (N, L) their log-probs under the policy being trained
      rollout:  their Rollout: the mask of real tokens, and the sampler's log-probs (old_logp)
      adv:      (N,) their advantages
      ref_logp: (N, L) their log-probs under the frozen base; read only when beta > 0
      denominators: (n_seqs, n_tokens) of the whole update, those of aggregate()
    Returns the loss and its LossStats (metrics.py): detached statistics for the logs."""
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
    # the sampler's log-probs, (N, L): pi_old's unless the trainer recomputed it
    sampler_logp = rollout.sampler_logprobs
    if sampler_logp is None:
        sampler_logp = rollout.logprobs
    if cfg.correction != "none":  # TIS or MIS: the policy term times a weight for the mismatch
        weight, _ = correction_weights(old_logp, sampler_logp, mask, cfg)
        per_token = per_token * weight
    if cfg.beta > 0 and not cfg.kl_in_reward:  # the KL as a loss term (GRPO's and RGRA's place)
        ref_logp = torch.where(mask, ref_logp, logp.detach())
        per_token = per_token + cfg.beta * kl_estimate(logp, ref_logp, cfg.kl_estimator)
    n_seqs, n_tokens = denominators
    loss = aggregate(per_token, mask.float(), cfg.agg, n_seqs, n_tokens, cfg.agg_constant)
    mismatch = torch.where(mask, logp.detach() - sampler_logp, torch.zeros_like(logp))  # logs
    return loss, loss_stats(rho.detach(), clipped, mask, loss.detach(), mismatch, cfg.correction_c)


# -----------------------------------------------------------------------------
# 2. One RL step: sample, score, advantages, learn. Under torchrun (distributed.py) the processes
# meet where a comment says "torchrun:"; in one process each of those calls returns its input.


def step_prompts(args, step):
    """The step's problems, and a sampling seed for each, drawn for the whole step first: a
    prompt's samples do not depend on which process draws them."""
    np_rng, gen = step_rngs(args.seed, step, STREAMS["prompts"])
    problems = train_problems(RL_LEVEL, args.prompts, np_rng)
    seeds = torch.randint(0, 2**62, (len(problems),), generator=gen).tolist()
    return problems, seeds


def sample_batch(policy, tok, problems, seeds, args):
    """The completions of problems, a Rollout: G samples each, or for sft the gold solutions."""
    if args.loss.objective == "sft":
        solutions = [worked_solution(p.expr) for p in problems]
        return pack_examples(tok, problems, solutions, policy.device)
    prompts = [tok.encode(prompt_text(p)) for p in problems]
    with sampling_precision(policy, args.sampler_precision):  # None: the trainer's own
        return generate(policy, prompts, args.max_new_tokens, tok.eos_id, tok.pad_id, args.group,
                        args.temperature, seeds=seeds)


def score_batch(problems, texts, format_reward=0.0):
    """(B, G) verifier rewards of B*G completion texts: 1 for the right final answer, plus
    format_reward for a well-formed answer line, right or wrong (the RGRA paper used 0.1); and each
    one's solution style (logs). A group's texts often repeat: each distinct one is scored once."""
    G = len(texts) // len(problems)
    scored = {}  # (prompt number, text) -> (reward, style)
    for i, text in enumerate(texts):
        problem = problems[i // G]
        if (i // G, text) not in scored:
            scored[i // G, text] = (outcome_reward(text, problem, format_reward),
                                    solution_style(text, problem.expr))
    each = [scored[i // G, text] for i, text in enumerate(texts)]
    rewards = torch.tensor([reward for reward, _ in each])  # on the CPU, where the verifier ran
    return rewards.view(len(problems), G), [style for _, style in each]


def reference_logprobs(ref, rollout, args):
    """(N, L) log-probs under the frozen base, for the KL; None (no forward) when beta = 0."""
    if args.loss.beta == 0:
        return None
    with torch.no_grad():
        return completion_logprobs(ref, rollout, args.temperature)


def advantages_for(rewards, cfg):
    """(B, G) rewards -> (B*G,) advantages and (B*G,) rows to learn from. RAFT and SFT are the
    REINFORCE term with advantage 1 on the rows they keep (and beta 0): cross-entropy on those
    rows. rewards are the whole step's: REINFORCE++'s batch statistics are the step's."""
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
    """The algorithm: mu passes over the rows to learn from, each split into cfg.minibatches
    optimizer steps, each accumulated over micro-batches whose denominators count the whole
    minibatch (pitfall 10). Returns a Learned (metrics.py): statistics and gradient norms."""
    kept = experience.keep.nonzero().flatten()  # (K,) row numbers
    passes = [kept[torch.randperm(len(kept), generator=gen).to(kept.device)]
              for _ in range(cfg.mu if len(kept) else 0)]  # each pass's order of the rows
    mixed = policy.precision != "fp32"  # mixed precision: pi_old from the trainer itself
    if passes and (cfg.old_logprobs == "trainer" or (cfg.old_logprobs == "auto" and mixed)):
        experience = trainer_old_logprobs(policy, experience, passes[0], cfg)
    if cfg.correction == "mis" and cfg.masked_denominator == "leaves":  # verl: out of the mask
        experience, passes = without_dropped_tokens(experience, passes, cfg)
    mask = experience.rollout.mask  # (N, L)
    updates, norms = [], []
    for order in passes:
        # torchrun: each process computes its share of each minibatch's rows
        for minibatch, micro_batches in my_micro_batches(order, cfg.minibatches, cfg.micro_batch):
            # the denominators of aggregate(): the sequences and tokens of the whole minibatch
            denominators = (len(minibatch), mask[minibatch].sum().item())
            opt.zero_grad(set_to_none=True)
            updates.append([backward(policy, experience, micro, cfg, denominators)
                            for micro in micro_batches])
            sum_gradients_over_ranks(policy)  # torchrun: every process gets the summed gradient
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or math.inf)
            norms.append(norm.item())  # the update's one read of a value (a host sync on a GPU)
            if not math.isfinite(norms[-1]):  # a non-finite loss gives it too, and on every rank
                raise FloatingPointError(f"non-finite gradient norm ({norms[-1]})")
            opt.step()
    every = [stats for update in updates for stats in update]
    return Learned(combine(every), [combine(update) for update in updates], norms)


def without_dropped_tokens(experience, passes, cfg):
    """MIS with verl's denominators: the tokens it drops leave the rollout's mask, so aggregate()
    counts them nowhere, and a completion left with none leaves the passes. Returns both."""
    rollout = experience.rollout
    _, kept = correction_weights(rollout.logprobs, rollout.sampler_logprobs, rollout.mask, cfg)
    rows_left = kept.any(1)  # (N,)
    passes = [order[rows_left[order]] for order in passes]
    return replace(experience, rollout=replace(rollout, mask=kept)), passes


def backward(policy, experience, rows, cfg, denominators):
    """The loss of some rows (a micro-batch), backpropagated (the gradient adds up over the
    micro-batches of a minibatch). Returns their LossStats."""
    part = experience.rollout.rows(rows)  # a Rollout of those rows
    ref_logp = None if experience.ref_logp is None else experience.ref_logp[rows]
    logits = completion_logits(policy, part)  # (n, L, V): the one forward
    logp = token_logprobs(logits, part.tokens, experience.temperature)  # (n, L)
    loss, stats = rl_loss(logp, part, experience.adv[rows], ref_logp, cfg, denominators)
    if cfg.entropy_coef > 0:  # the bonus reads the whole next-token distribution
        entropy = token_entropy(logits, experience.temperature)  # (n, L)
        loss = loss + entropy_bonus(entropy, part.mask, cfg, denominators)
    loss.backward()
    return replace(stats, loss=loss.detach())


@torch.no_grad()
def trainer_old_logprobs(policy, experience, first_pass, cfg):
    """The experience with pi_old from the trainer's own forward over the first pass's
    micro-batches (under mixed precision, or old_logprobs trainer), so that rho = 1 at the first
    update, as it must at mu = 1. The sampler (a KV cache, a token at a time) agrees with the
    trainer to ~1e-6 in float32, to ~0.1 under bf16: GRPO would not equal RGRA (pitfall 12)."""
    logprobs = torch.zeros_like(experience.rollout.logprobs)  # (N, L); rows never learned stay 0
    # torchrun: each process computes its share of the rows
    for _, micro_batches in my_micro_batches(first_pass, cfg.minibatches, cfg.micro_batch):
        for rows in micro_batches:
            part = experience.rollout.rows(rows)
            logits = completion_logits(policy, part)
            logp = token_logprobs(logits, part.tokens, experience.temperature)
            logprobs[rows] = torch.where(part.mask, logp, torch.zeros_like(logp))
    logprobs = sum_rows_over_ranks(logprobs)  # torchrun: every process's rows on every process
    sampled = experience.rollout.logprobs  # kept: the mismatch is measured and corrected from it
    rollout = replace(experience.rollout, logprobs=logprobs, sampler_logprobs=sampled)
    return replace(experience, rollout=rollout)


def rl_step(policy, ref, opt, tok, args, step):
    """Sample, score, compute advantages, learn. Returns the step's metrics row."""
    t0 = time.perf_counter()
    problems, seeds = step_prompts(args, step)
    problems, seeds = my_share(problems), my_share(seeds)  # torchrun: this process's prompts
    rollout = sample_batch(policy, tok, problems, seeds, args)
    t1 = time.perf_counter()
    texts = decode_completions(tok, rollout)  # the step waits for the sampler here, once
    ref_logp = reference_logprobs(ref, rollout, args)  # (N, L) or None; queued on a GPU, which
    t2 = time.perf_counter()  # computes it while the verifier runs on the host
    rewards, styles = score_batch(problems, texts, args.format_reward)  # (B, G)
    # torchrun: every process's rows, on every process
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
    times = dict(t_sample=t1 - t0, t_reference=t2 - t1, t_score=t3 - t2,
                 t_learn=time.perf_counter() - t3)
    kl = None if ref_logp is None else kl_estimate(rollout.logprobs, ref_logp, "k3")  # for logs
    record = StepRecord(step, rewards, styles, experience, learned, times)
    return step_metrics(record, zero_variance_groups(rewards), kl)


# -----------------------------------------------------------------------------
# 3. The run: the base, RL steps with evaluations and checkpoints, like nanoGPT's training loop.
# rundir.RunDir keeps the files; Ctrl-C finishes the step, saves and stops; --resume goes on.


def train(args, log=print):
    """The whole job: its summary (summary.json), or None if a Ctrl-C stopped it."""
    device = setup_device(args)  # torchrun: this process's device, its rank's
    tok = get_tokenizer()
    run = rundir.RunDir(args, device, log)  # refuses a used directory; finds the checkpoint
    base, base_path = warm_start(args, tok, device, run.log)  # shipped, cached or trained
    ref = base.eval().requires_grad_(False)  # the frozen KL reference
    policy = copy.deepcopy(base).requires_grad_(True)
    if args.compile:  # fewer, fused kernels: the same functions, to float rounding
        policy.decode_step = torch.compile(policy.decode_step, dynamic=True)  # the sampler's step
        policy.forward = torch.compile(policy.forward, dynamic=True)  # learn()'s, the prefill's
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
    """The command line (flags.py); args.loss is loss_config(--preset, --max-new-tokens, ...)."""
    return flags.parse_args(loss_config, PRESETS, argv)


def main(argv=None):
    t0 = time.time()
    args = parse_args(argv)
    summary = train(args)
    rundir.end_job(summary, args.out_dir, time.time() - t0)


if __name__ == "__main__":
    main()
