"""
The answers to the exercises of notebook.ipynb, one function each, written from the equations of
REFERENCE.md without calling nanorgra.py. course/exercises.py checks a student's function against
nanorgra's; when the student has not answered yet, it checks these instead.

Read them after trying: each is a few lines, and each line is one step of the equation.
"""

import torch


def leave_one_out_advantages(rewards):
    """
    RLOO's advantage, no std (Ahmadian et al., arXiv 2402.14740):
      A_i = r_i - 1/(G-1) sum_{j != i} r_j
    rewards: (B, G), one row per group -> (B, G).
    """
    G = rewards.size(1)
    others = rewards.sum(1, keepdim=True) - rewards  # (B, G): the sum of the other G-1 rewards
    return rewards - others / (G - 1)


def positive_only_advantages(rewards):
    """
    GRPO's advantage with the negative ones set to 0 (the RGRA paper's GRPO-pos):
      A_i = max((r_i - mean r) / (std r + 1e-6), 0)     (unbiased std over the group)
    A group whose rewards are all equal gets 0. rewards: (B, G) -> (B, G).
    """
    centred = rewards - rewards.mean(1, keepdim=True)
    adv = centred / (rewards.std(1, keepdim=True) + 1e-6)
    return adv.clamp(min=0)


def k2_estimate(logp, ref_logp):
    """
    The k2 estimate of KL(pi_theta || pi_ref) per token, x = ref_logp - logp:
      k2 = x^2 / 2
    logp, ref_logp: (N, L) -> (N, L).
    """
    x = ref_logp - logp
    return 0.5 * x**2


def token_mean(loss, mask):
    """
    token-mean aggregation (DAPO): every real token weighs the same,
      1/T sum_i sum_t loss_it,   T = the number of real tokens
    loss: (N, L) per-token losses; mask: (N, L) bool, True on real tokens -> a scalar.
    Padding may hold any number: it must not reach the result.
    """
    real = torch.where(mask, loss, torch.zeros_like(loss))
    return real.sum() / mask.sum()


def clipped_policy_term(logp, old_logp, adv, eps):
    """
    PPO's clipped policy term per token (GRPO), as a loss to minimise:
      rho_it = exp(logp_it - old_logp_it)
      loss_it = -min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i)
    logp, old_logp: (N, L); adv: (N,) -> (N, L).
    """
    rho = torch.exp(logp - old_logp)
    unclipped = rho * adv[:, None]
    clipped = rho.clamp(1 - eps, 1 + eps) * adv[:, None]
    return -torch.minimum(unclipped, clipped)


def kl_in_reward(rewards, logp, ref_logp, mask, beta):
    """
    The KL as a cost in the reward (REINFORCE++, RLOO; verl's use_kl_in_reward), with k3:
      r_i <- r_i - beta sum_t k3_it,   k3 = exp(x) - x - 1,   x = ref_logp - logp
    the sum over the real tokens of completion i only.
    rewards: (B, G); logp, ref_logp, mask: (B*G, L), rows prompt-major -> (B, G).
    """
    x = ref_logp - logp
    k3 = torch.exp(x) - x - 1
    per_completion = torch.where(mask, k3, torch.zeros_like(k3)).sum(1)  # (B*G,)
    return rewards - beta * per_completion.view(rewards.shape)


def tis_policy_term(logp, old_logp, sampler_logp, adv, c):
    """
    RGRA's policy term corrected for the sampler's mismatch by token-level truncated importance
    sampling (TIS), as a loss to minimise:
      w_it = exp(old_logp_it - sampler_logp_it)    pi_old (the trainer's) over pi_sampler
      loss_it = -min(w_it, c) A_i logp_it          the weight held constant: no gradient
    logp, old_logp, sampler_logp: (N, L); adv: (N,) -> (N, L).
    """
    weight = torch.exp(old_logp - sampler_logp).clamp(max=c).detach()
    return -weight * adv[:, None] * logp
