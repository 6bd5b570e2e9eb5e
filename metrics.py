"""
metrics.py: what a run logs of each RL step (one row of metrics.jsonl), and the statistics of the
loss that learn() adds up over micro-batches and processes. Nothing here changes the training: it
reads what nanorgra.rl_step and nanorgra.learn computed.
"""

from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import torch

from distributed import reduce_over_ranks
from verifier import STYLE_NAMES


@dataclass(frozen=True)
class LossStats:
    """What the loss saw of some tokens (nanorgra.rl_loss, one micro-batch), or of many
    (combined): sums that add up, and the extremes of the ratio rho. Each field a 0-d tensor (of
    one micro-batch) or a float (combined)."""

    tokens: torch.Tensor  # real tokens
    ratio_sum: torch.Tensor  # the sum of rho over them
    clipped: torch.Tensor  # the tokens where clipping (or dual-clip) acted
    loss: torch.Tensor  # the loss: its share of the update's loss
    # the trainer against the sampler, x = log pi_trainer - log pi_sampler of each sampled token
    # (the mismatch; at the first update pi_trainer is pi_old): sums over the tokens
    x_sum: torch.Tensor  # -1/tokens of it: KL(sampler || trainer), the k1 estimate
    k3_sum: torch.Tensor  # exp(x) - x - 1: the k3 estimate of the same KL
    w_sum: torch.Tensor  # w = exp(x), and w^2: the effective sample size (sum w)^2 / (n sum w^2)
    w2_sum: torch.Tensor
    seqs: torch.Tensor  # the completions, and the sum of each one's mean x: the log-perplexity
    seq_x_sum: torch.Tensor  # difference, trainer's minus sampler's, is -1/seqs of it
    over_c: torch.Tensor  # tokens with w > C (what TIS truncates)
    outside_c: torch.Tensor  # tokens with w outside [1/C, C] (what token-level MIS drops)
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor
    x_max: torch.Tensor  # the largest |x|


SUMMED = ("tokens", "ratio_sum", "clipped", "loss", "x_sum", "k3_sum", "w_sum", "w2_sum", "seqs",
          "seq_x_sum", "over_c", "outside_c")


def loss_stats(rho, clipped, mask, loss, x, c):
    """The LossStats of one micro-batch: rho, clipped, mask (N, L), the loss (detached), x (N, L)
    the trainer's log-probs minus the sampler's (0 on padding), C the correction's bound."""
    rho = rho[mask]  # (tokens,)
    no_tokens = torch.ones((), device=rho.device)  # the ratio of no token: 1
    # x is 0 on padding, where it adds nothing to these sums (w - x - 1 = 0 there too); no
    # boolean indexing: each would be a host sync on a GPU
    x = x.double()
    w = torch.exp(x)
    per_seq = x.sum(1) / mask.sum(1).clamp(min=1)  # (N,) each completion's mean x
    return LossStats(tokens=mask.sum(), ratio_sum=rho.double().sum(),
                     clipped=(clipped & mask).sum(), loss=loss,
                     x_sum=x.sum(), k3_sum=(w - x - 1).sum(), w_sum=(w * mask).sum(),
                     w2_sum=(w * w * mask).sum(), seqs=mask.any(1).sum(), seq_x_sum=per_seq.sum(),
                     over_c=((w > c) & mask).sum(),
                     outside_c=(((w > c) | (w < 1 / c)) & mask).sum(),
                     ratio_min=rho.min() if len(rho) else no_tokens,
                     ratio_max=rho.max() if len(rho) else no_tokens,
                     x_max=x.abs().max())


def combine(parts):
    """One LossStats of many: the sums added up in float64, the extremes, over these parts and,
    under torchrun, over every process (one collective each, one read at the end). No parts: no
    tokens, rho 1 (the ratio of a policy that has not moved) and x 0."""
    one = torch.ones((), dtype=torch.float64)
    sums, low, high = torch.zeros(len(SUMMED), dtype=torch.float64), one, one
    highs = torch.stack([one, 0 * one])  # (2,): ratio_max, x_max
    if parts:
        sums = torch.stack([torch.stack([getattr(p, name) for p in parts]).double().sum()
                            for name in SUMMED])  # (12,)
        low = torch.stack([p.ratio_min for p in parts]).min().double()
        highs = torch.stack([torch.stack([p.ratio_max for p in parts]).max().double(),
                             torch.stack([p.x_max for p in parts]).max().double()])
    sums = reduce_over_ranks(sums, "sum").tolist()
    low = reduce_over_ranks(low, "min").item()
    high, x_max = reduce_over_ranks(highs, "max").tolist()
    return LossStats(*sums, ratio_min=low, ratio_max=high, x_max=x_max)


class Learned(NamedTuple):
    """What learn() reports: the combined statistics of all its updates, those of each optimizer
    step (how the ratio leaves 1 as a reused batch goes stale), and each step's gradient norm."""
    total: LossStats
    per_update: list
    norms: list


def update_view(stats):
    """One optimizer step as metrics.jsonl's per_update shows it."""
    return dict(clip_frac=stats.clipped / (stats.tokens or 1), ratio_min=stats.ratio_min,
                ratio_max=stats.ratio_max)


def mismatch_metrics(first):
    """The sampler against the trainer, read at the first update (first: its LossStats), whose
    forward is the trainer's pi_old: the KL(sampler || trainer) by k1 and k3 per token, the
    log-perplexity difference (trainer's minus sampler's, per completion), the largest
    |log pi_trainer - log pi_sampler|, the effective sample size of w = pi_trainer / pi_sampler as
    a share of the tokens (1: no mismatch), and the shares of tokens with w > C and outside
    [1/C, C]. None where nothing was sampled."""
    n = first.tokens
    return dict(mismatch_kl_k1=-first.x_sum / n, mismatch_kl_k3=first.k3_sum / n,
                mismatch_log_ppl_diff=-first.seq_x_sum / (first.seqs or 1),
                mismatch_max=first.x_max, mismatch_ess=first.w_sum**2 / (n * first.w2_sum),
                mismatch_over_c=first.over_c / n, mismatch_outside_c=first.outside_c / n)


# -----------------------------------------------------------------------------
# One step's row of metrics.jsonl


class StepRecord(NamedTuple):
    """What rl_step hands to the logs: the step, its (B, G) rewards, the style of each completion,
    the Experience learned from, learn()'s Learned, and where the time went."""
    step: int
    rewards: torch.Tensor
    styles: list
    experience: object
    learned: Learned
    times: dict


def step_metrics(record, zero_var, kl):
    """The metrics row of one step: rewards and advantages, the sampled tokens, the updates, the
    styles of the samples, and where the time went. zero_var: (B,) the groups whose rewards are
    all equal; kl: (N, L) the per-token k3 estimate of the sampled tokens to the base, or None
    (beta = 0 computes no reference log-probs)."""
    row = dict(step=record.step)
    row.update(reward_metrics(record.rewards, record.experience, zero_var))
    row.update(token_metrics(record.experience, kl))
    row.update(update_metrics(record.learned))
    first = record.learned.per_update[0] if record.learned.per_update else None
    sampled = bool(record.experience.rollout.logprobs.any())  # sft (gold text) has no sampler
    if first is not None and first.tokens and sampled:
        row.update(mismatch_metrics(first))
    row["per_update"] = [update_view(u) for u in record.learned.per_update]
    row["styles"] = style_shares(record.styles)
    row.update(record.times)
    return row


def reward_metrics(rewards, experience, zero_var):
    """rewards: (B, G). Mean reward, share right, share of zero-variance groups, the advantages'
    mean and std, and the share of rows learned from."""
    adv = experience.adv  # (B*G,)
    return dict(reward=rewards.mean().item(),
                batch_acc=(rewards >= 1).float().mean().item(),
                zero_var=zero_var.float().mean().item(),
                adv_mean=adv.mean().item(),
                adv_std=adv.std().item() if adv.numel() > 1 else 0.0,
                kept=experience.keep.float().mean().item())


def token_metrics(experience, kl):
    """Means over the sampled tokens: KL to the base and the entropy estimate -log pi; and the mean
    completion length. sft (gold text) has no samples for either."""
    rollout = experience.rollout
    mask = rollout.mask.float()
    sampled = bool(rollout.logprobs.any())  # given text (sft) has log-probs 0: nothing was sampled
    tokens = float(mask.sum())
    entropy = float((-rollout.logprobs * mask).sum())
    kl_sum = None if kl is None else float((kl * mask).sum())
    return dict(kl=kl_sum / tokens if kl_sum is not None else None,
                entropy=entropy / tokens if sampled else None,
                resp_len=tokens / float(len(mask)))


def update_metrics(learned):
    """The updates learn() made: how many, the mean and largest ratio over the trained tokens, the
    share of tokens where the clipped term acted, the loss per update and the largest
    gradient norm."""
    total = learned.total
    tokens = total.tokens or 1
    updates = len(learned.norms)
    return dict(ratio_mean=total.ratio_sum / tokens,
                clip_frac=total.clipped / tokens,
                ratio_max=total.ratio_max,
                updates=updates,
                loss=total.loss / max(updates, 1),
                grad_norm=max(learned.norms, default=0.0))


def style_shares(styles):
    """The share of the step's completions written in each style (verifier.solution_style)."""
    tally = Counter(styles)
    return {s: tally[s] / sum(tally.values()) for s in STYLE_NAMES}
