"""
nanorgra.py: warm-start a small GPT on worked arithmetic solutions, then train it with GRPO / RGRA, where every
component of the loss is a named switch that one visible `if` reads.

    python nanorgra.py                            # the default job: warm start (cached), RL with RGRA, evaluation
    python nanorgra.py --preset grpo --mu 2       # GRPO, each sampled batch used for two updates
    python nanorgra.py --preset rgra --beta 0     # RGRA without the KL term: exactly one behaviour changes
    python nanorgra.py --sweep --quick            # ablation sweep: 11 variants x 3 seeds (12 min on 2 CPU cores)
    python nanorgra.py --study --quick            # compute-matched sampling study, SE vs WC data (9 min)
    python nanorgra.py --study                    # the same study at full size (about 20 min)
    python nanorgra.py --help                     # every switch and its default

Stage 1 (warm start): supervised training on worked solutions of the easy levels (data.tasks.SFT_LEVELS). The
checkpoint is cached under --base-dir by a hash of everything that defines it, so every RL run and every variant
starts from the identical base.
Stage 2 (RL): each step draws --prompts problems of the RL level (answers only), samples --group completions per
prompt with the KV-cache sampler, scores them with the verifier, turns rewards into group advantages and updates
the policy. A frozen copy of the base is the KL reference; the sampler's log-probs are the "old" policy.
Study (--study): "Smaller, Weaker, Yet Better" at this scale. A strong-expensive (SE, the size above) and a weak-cheap
(WC, --wc-*) model, warm-started alike, sample solutions to fresh RL-level problems at equal sampling FLOPs
(S_WC = P_SE / P_WC x S_SE) and at an equal number of samples; the answer-correct ones are the training data, whose
coverage, diversity and false positive rate are measured, and on which a student, WC and SE are fine-tuned.

Simplifications: full fine-tuning (no LoRA), one process, no reward model (the verifier is exact), no value
network; all randomness of a step is drawn from generators seeded by (seed, step), so a resumed run repeats the
uninterrupted one exactly on CPU.
"""

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.tasks import LEVELS, OOD_LEVEL, RL_LEVEL, SFT_LEVELS, direct_completion, load_test_set, prompt_text, \
    sample_problems, sft_completion, sft_examples, test_exprs, test_set_path, train_problems, write_atomic
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig, Rollout, generate, left_pad
from verifier import ERROR_KINDS, FORMAT_REWARD, first_error, is_false_positive, outcome_reward

# -----------------------------------------------------------------------------
# The loss, one small function per concept.
#
# Notation: a group is the G completions o_1..o_G sampled for one prompt q, with verifier rewards r_1..r_G.
# logp_it = log pi_theta(o_it | q, o_i<t); old_logp_it is the same under the policy that sampled the batch
# (the sampler's log-probs); ref_logp_it is under the frozen base. Every loss below is MINIMISED.
#
# The presets (PRESETS further down) are these equations:
#   rgra       A_i = (r_i - mean r) / std r;  loss_it = -A_i logp_it + beta k3_it;  seq-mean-token-mean
#   grpo       same A_i;  loss_it = -min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i) + beta k3_it,
#              rho_it = exp(logp_it - old_logp_it)
#   grpo_pos   grpo with A_i replaced by max(A_i, 0): no negative feedback
#   reinforce  A_i = r_i (raw reward, no group baseline, no std);  loss_it = -A_i logp_it + beta k3_it
#   raft       A_i = 1 for the best-reward sample of each group (if its reward > 0), the other samples dropped;
#              loss_it = -logp_it: cross-entropy on the best of G, no KL
#   sft        cross-entropy on the gold worked solutions of the RL-level problems (the paper's "ft")
#
# Why GRPO and RGRA give the same gradient when mu = 1 (one update per sampled batch): the sampled batch comes
# from the current policy, so rho_it = pi_theta / pi_old = 1 at the moment of the update. Inside [1-eps, 1+eps]
# the min picks the unclipped term, whose gradient is A_i grad rho_it = A_i rho_it grad logp_it = A_i grad logp_it,
# which is the REINFORCE gradient. Ratio and clipping only act once the policy has moved away from the one that
# sampled: a second update on the same batch (mu > 1) or the second minibatch of a rollout.
# "Why is my loss 0?": at rho = 1 the GRPO loss value with seq-mean-token-mean is -mean_i A_i = 0 for
# mean-centred advantages, yet its gradient is the REINFORCE gradient, which is not 0. (The RGRA loss value,
# -A_i logp_it averaged, is not 0; only its gradient matters.)


def group_advantages(rewards, baseline="mean", std_norm=True, sign="both", eps=1e-6):
    """
    rewards: (B, G) -> advantages (B, G), one per completion, shared by all its tokens.
      baseline "mean": A_i = r_i - 1/G sum_j r_j
      baseline "loo":  A_i = r_i - 1/(G-1) sum_{j != i} r_j       (leave-one-out: the baseline ignores r_i)
      baseline "none": A_i = r_i                                   (raw reward)
      std_norm:        A_i = A_i / (std(r_1..r_G) + eps)          (unbiased std)
    A zero-variance group (all rewards equal) gets A = 0 with any baseline, and is never divided by its std of 0.
      sign "pos":      A_i = max(A_i, 0)   "neg": A_i = min(A_i, 0)   "both": unchanged
    """
    G = rewards.size(1)
    if baseline == "mean":
        adv = rewards - rewards.mean(1, keepdim=True)
    elif baseline == "loo":
        adv = rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    elif baseline == "none":
        adv = rewards.clone()
    else:
        raise ValueError(f"baseline must be 'mean', 'loo' or 'none', got {baseline!r}")
    zero_var = zero_variance_groups(rewards)[:, None]  # (B, 1)
    if baseline != "none":
        adv = adv.masked_fill(zero_var, 0.0)  # exactly 0: float rounding of mean(0.1, 0.1, ...) must not leak
    if std_norm:
        std = rewards.std(1, keepdim=True)
        adv = adv / torch.where(zero_var, torch.ones_like(std), std + eps)  # never divide by ~0
    if sign == "pos":
        adv = adv.clamp(min=0)
    elif sign == "neg":
        adv = adv.clamp(max=0)
    return adv


def best_of_group(rewards):
    """RAFT's selection: (B, G) rewards -> (B, G) 1.0 on the first best sample of each group whose reward is > 0."""
    best = torch.zeros_like(rewards)
    best.scatter_(1, rewards.argmax(1, keepdim=True), 1.0)
    return best * (rewards.max(1, keepdim=True).values > 0)


def zero_variance_groups(rewards):
    """(B, G) -> (B,) bool: groups whose G rewards are all equal (all right or all wrong) carry no signal."""
    return (rewards == rewards[:, :1]).all(1)


def policy_term_reinforce(logp, adv):
    """loss_it = -A_i logp_it.  logp: (N, L), adv: (N,) -> (N, L)."""
    return -adv[:, None] * logp


def policy_term_ratio(logp, old_logp, adv, clip, eps_low, eps_high):
    """
    loss_it = -min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)   with clip=True (PPO / GRPO)
    loss_it = -rho_it A_i                                                  with clip=False (ratio kept, no clip)
    Returns the loss (N, L), rho (N, L), and where the clipped term is the one that acts (N, L) bool.
    """
    rho = torch.exp(logp - old_logp)
    unclipped = rho * adv[:, None]
    if not clip:
        return -unclipped, rho, torch.zeros_like(rho, dtype=torch.bool)
    clipped = rho.clamp(1 - eps_low, 1 + eps_high) * adv[:, None]
    return -torch.minimum(unclipped, clipped), rho, clipped < unclipped


def kl_estimate(logp, ref_logp, estimator):
    """
    Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta, x = ref_logp - logp:
      k1 = -x   (unbiased, can be negative)    k2 = x^2 / 2   (low variance, biased)
      k3 = exp(x) - x - 1   (unbiased, >= 0; as a loss its gradient is that of KL(pi_ref || pi_theta), not the
      reverse KL: it pulls towards pi_ref all the same)
    """
    x = ref_logp - logp
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x**2
    if estimator == "k3":
        return torch.exp(x) - x - 1
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


def aggregate(loss, mask, agg, n_seqs, n_tokens, constant):
    """
    Reduce per-token losses (N, L) over the real tokens (mask) to a scalar. The denominators n_seqs and n_tokens
    count the WHOLE update (all micro-batches), so that summing micro-batch results gives the full-batch loss.
      "seq-mean-token-mean": 1/n_seqs sum_i 1/|o_i| sum_t loss_it    (the paper's; a long answer's tokens weigh less)
      "token-mean":          1/n_tokens sum_i sum_t loss_it           (every token weighs the same)
      "seq-sum-norm":        1/(n_seqs * constant) sum_i sum_t loss_it (Dr. GRPO: no length bias)
    """
    loss = torch.where(mask > 0, loss, torch.zeros_like(loss))  # not loss * mask: inf * 0 on padding is NaN
    if agg == "seq-mean-token-mean":
        return (loss.sum(1) / mask.sum(1).clamp(min=1)).sum() / n_seqs
    if agg == "token-mean":
        return loss.sum() / n_tokens
    if agg == "seq-sum-norm":
        return loss.sum() / (n_seqs * constant)
    raise ValueError(f"aggregation must be 'seq-mean-token-mean', 'token-mean' or 'seq-sum-norm', got {agg!r}")


def rl_loss(logp, old_logp, ref_logp, adv, mask, *, ratio, clip, eps_low, eps_high, beta, kl_estimator, agg,
            n_seqs, n_tokens, agg_constant):
    """
    The whole per-micro-batch loss: policy term + beta * KL, aggregated. logp, old_logp, ref_logp, mask: (N, L);
    adv: (N,). Returns the scalar loss and a dict of detached statistics (sums, to be added over micro-batches).
    """
    # padding positions hold arbitrary log-probs; pin them to logp so exp() in the ratio and k3 stays finite
    ref_logp = torch.where(mask, ref_logp, logp.detach())
    old_logp = torch.where(mask, old_logp, logp.detach())
    if ratio:
        policy, rho, clipped = policy_term_ratio(logp, old_logp, adv, clip, eps_low, eps_high)
    else:
        policy = policy_term_reinforce(logp, adv)
        rho, clipped = torch.exp(logp - old_logp).detach(), torch.zeros_like(mask)
    kl = kl_estimate(logp, ref_logp, kl_estimator)
    per_token = policy
    if beta > 0:
        per_token = per_token + beta * kl
    m = mask.float()
    stats = {"kl_sum": (kl.detach() * m).sum().item(), "ratio_sum": (rho.detach() * m).sum().item(),
             "ratio_max": rho.detach()[mask].max().item() if mask.any() else 1.0,
             "clipped_sum": (clipped & mask).sum().item()}
    return aggregate(per_token, m, agg, n_seqs, n_tokens, agg_constant), stats


# -----------------------------------------------------------------------------
# Switches and presets

PRESETS = {  # each preset is a set of switch values; anything given on the command line wins
    "rgra": dict(objective="pg", baseline="mean", std_norm=True, adv_sign="both", ratio=False, clip=False),
    "grpo": dict(objective="pg", baseline="mean", std_norm=True, adv_sign="both", ratio=True, clip=True),
    "grpo_pos": dict(objective="pg", baseline="mean", std_norm=True, adv_sign="pos", ratio=True, clip=True),
    "reinforce": dict(objective="pg", baseline="none", std_norm=False, adv_sign="both", ratio=False, clip=False),
    "raft": dict(objective="raft", baseline="none", std_norm=False, adv_sign="both", ratio=False, clip=False,
                 beta=0.0),
    "sft": dict(objective="sft", baseline="none", std_norm=False, adv_sign="both", ratio=False, clip=False,
                beta=0.0),
}
SWITCH_DEFAULTS = dict(objective="pg", baseline="mean", std_norm=True, adv_sign="both", ratio=False, clip=False,
                       beta=0.005)  # = rgra; the switches a preset may set


def build_parser():
    p = argparse.ArgumentParser(
        description="Warm-start SFT, then GRPO / RGRA with every loss component a switch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="presets: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items())
               + ". Switches marked 'preset' default to the chosen preset's value (rgra's shown).")
    a = p.add_argument_group("run")
    a.add_argument("--preset", default="rgra", choices=list(PRESETS), help="named set of loss switches")
    a.add_argument("--seed", type=int, default=0, help="seed of the RL run (the warm start has --base-seed)")
    a.add_argument("--steps", type=int, default=100, help="RL steps")
    a.add_argument("--out-dir", default=None, help="run directory (default: runs/<preset>-seed<seed>)")
    a.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    a.add_argument("--device", default="auto", help="auto = cuda, then mps, then cpu")
    a.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    a.add_argument("--ckpt-every", type=int, default=10, help="steps between checkpoints")
    a = p.add_argument_group("warm start (stage 1)")
    a.add_argument("--base-dir", default="runs/bases", help="cache of warm-start checkpoints")
    a.add_argument("--base-seed", type=int, default=0, help="seed of the warm start")
    a.add_argument("--n-layer", type=int, default=4)
    a.add_argument("--n-head", type=int, default=4)
    a.add_argument("--n-embd", type=int, default=128)
    a.add_argument("--sft-steps", type=int, default=1000, help="warm-start optimizer steps")
    a.add_argument("--sft-batch", type=int, default=64, help="worked solutions per warm-start step")
    a.add_argument("--sft-lr", type=float, default=2e-3, help="warm-start peak learning rate")
    a.add_argument("--sft-direct", type=float, default=0.0,
                   help="share of warm-start targets that are the bare answer 'A:<n>' instead of a worked solution")
    a = p.add_argument_group("sampling (stage 2)")
    a.add_argument("--prompts", type=int, default=16, help="prompts per RL step (B)")
    a.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    a.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, also used in the loss")
    a.add_argument("--max-new-tokens", type=int, default=72,
                   help="completion length budget (the longest ood4 solution is 67 tokens, + EOS)")
    a = p.add_argument_group("loss switches (stage 2)")
    a.add_argument("--objective", choices=["pg", "raft", "sft"], default=None,
                   help="preset: pg = policy gradient on samples, raft = cross-entropy on the best of G, "
                        "sft = cross-entropy on gold solutions")
    a.add_argument("--baseline", choices=["mean", "loo", "none"], default=None, help="preset: group baseline")
    a.add_argument("--std-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="preset: divide advantages by the group std")
    a.add_argument("--adv-sign", choices=["both", "pos", "neg"], default=None,
                   help="preset: keep both signs, positive-only max(A,0), or negative-only min(A,0)")
    a.add_argument("--ratio", action=argparse.BooleanOptionalAction, default=None,
                   help="preset: ratio policy term rho*A instead of REINFORCE -A*logp")
    a.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="preset: PPO clipping of the ratio (needs --ratio)")
    a.add_argument("--eps-low", type=float, default=0.2, help="clip range below 1")
    a.add_argument("--eps-high", type=float, default=0.2, help="clip range above 1")
    a.add_argument("--beta", type=float, default=None, help="preset: KL weight (rgra: 0.005)")
    a.add_argument("--kl-estimator", choices=["k1", "k2", "k3"], default="k3", help="KL estimator in the loss")
    a.add_argument("--agg", choices=["seq-mean-token-mean", "token-mean", "seq-sum-norm"],
                   default="seq-mean-token-mean", help="loss aggregation")
    a.add_argument("--agg-constant", type=float, default=None,
                   help="seq-sum-norm's constant (default: --max-new-tokens)")
    a.add_argument("--skip-zero-var", action=argparse.BooleanOptionalAction, default=False,
                   help="drop groups whose rewards are all equal")
    a.add_argument("--mu", type=int, default=1, help="updates per sampled batch")
    a.add_argument("--minibatches", type=int, default=1, help="optimizer steps per update (batch split)")
    a.add_argument("--micro-batch", type=int, default=0, help="rows per forward/backward (0 = whole minibatch)")
    a.add_argument("--lr", type=float, default=1e-4, help="RL learning rate (AdamW)")
    a.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    a = p.add_argument_group("evaluation")
    a.add_argument("--eval-every", type=int, default=25, help="RL steps between held-out evaluations")
    a.add_argument("--eval-n", type=int, default=500, help="test problems per level for greedy accuracy")
    a.add_argument("--pass-k", type=int, default=8, help="k of pass@k (k samples at T=1)")
    a.add_argument("--pass-n", type=int, default=100, help="test problems per level for pass@k")
    a = p.add_argument_group("sweep")
    a.add_argument("--sweep", action="store_true", help="run variants x seeds and write a results table")
    a.add_argument("--quick", action="store_true", help="with --sweep: " + " ".join(QUICK_FLAGS) + "; with --study: "
                   + " ".join(STUDY_QUICK_FLAGS))
    a.add_argument("--sweep-seeds", type=int, default=3, help="seeds per variant (0..n-1)")
    a.add_argument("--sweep-variants", default=",".join(SWEEP_VARIANTS), help="comma-separated variants")
    a.add_argument("--sweep-dir", default=None, help="where the sweep's runs and results go (default: runs/sweep, "
                   "or runs/sweep-quick with --quick)")
    a = p.add_argument_group("study (compute-matched sampling: SE = the model size above, WC = --wc-*)")
    a.add_argument("--study", action="store_true",
                   help="sample from SE and WC at equal sampling FLOPs, fine-tune on each, write a results table")
    a.add_argument("--study-dir", default=None, help="the study's directory (default: runs/study, or runs/study-quick)")
    a.add_argument("--wc-n-layer", type=int, default=2, help="layers of the weak-cheap (WC) model")
    a.add_argument("--wc-n-head", type=int, default=4, help="heads of the WC model")
    a.add_argument("--wc-n-embd", type=int, default=96, help="width of the WC model (2x4x96: P_SE/P_WC = 3.4)")
    a.add_argument("--student-base-seed", type=int, default=1,
                   help="warm-start seed of the distillation student (WC size; must differ from --base-seed)")
    a.add_argument("--study-problems", type=int, default=2000, help="fresh RL-level problems to sample solutions for")
    a.add_argument("--study-seed", type=int, default=0, help="seed of the problem draw and of the sampling")
    a.add_argument("--s-se", type=int, default=4,
                   help="S_SE: samples per problem from SE; WC gets S_WC = floor(P_SE / P_WC x S_SE)")
    a.add_argument("--ft-steps", type=int, default=200, help="fine-tuning steps on a filtered data set")
    a.add_argument("--ft-batch", type=int, default=64, help="examples per fine-tuning step")
    a.add_argument("--ft-lr", type=float, default=3e-4, help="fine-tuning learning rate (constant, AdamW)")
    a.add_argument("--study-seeds", type=int, default=3, help="fine-tuning seeds (data order) per setup and data set")
    return p


def resolve_switches(args):
    """Fill every switch left unset on the command line from the chosen preset, then from the rgra defaults."""
    for name, default in SWITCH_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, PRESETS[args.preset].get(name, default))
    if args.agg_constant is None:
        args.agg_constant = float(args.max_new_tokens)
    if args.out_dir is None:
        args.out_dir = f"runs/{args.preset}-seed{args.seed}"
    if args.sweep_dir is None:
        args.sweep_dir = "runs/sweep-quick" if args.quick else "runs/sweep"
    if args.study_dir is None:
        args.study_dir = "runs/study-quick" if args.quick else "runs/study"
    return args


def require_positive(args, parser, names):
    """Stop naming the first flag of names whose value is not > 0."""
    for name in names:
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")


def check_args(args, parser):
    """Stop at start-up on values that cannot work, naming the flag and what is allowed."""
    require_positive(args, parser, ("steps", "prompts", "sft_steps", "sft_batch", "max_new_tokens", "mu",
                                    "minibatches", "eval_every", "ckpt_every", "pass_k", "pass_n", "eval_n",
                                    "n_layer", "n_head", "n_embd", "lr", "sft_lr", "eps_low", "eps_high",
                                    "temperature", "agg_constant"))
    if args.group < 2 and (args.std_norm or args.baseline != "none" or args.objective == "raft"):
        parser.error(f"--group must be >= 2 with a group baseline, std normalisation or raft, got {args.group}")
    if args.group < 1:
        parser.error(f"--group must be >= 1, got {args.group}")
    if not 0 <= args.sft_direct <= 1:
        parser.error(f"--sft-direct must be in [0, 1], got {args.sft_direct}")
    if args.beta < 0 or args.grad_clip < 0 or args.micro_batch < 0 or args.threads < 0:
        parser.error("--beta, --grad-clip, --micro-batch and --threads must be >= 0")
    if args.clip and not args.ratio:
        parser.error("--clip needs --ratio (clipping acts on the ratio); pass --ratio or --no-clip")
    if args.minibatches > args.prompts * args.group:
        parser.error(f"--minibatches must be <= prompts*group = {args.prompts * args.group}, got {args.minibatches}")
    if args.n_embd % args.n_head:
        parser.error(f"--n-embd ({args.n_embd}) must be a multiple of --n-head ({args.n_head})")
    if args.device not in ("auto", "cpu", "cuda", "mps"):
        parser.error(f"--device must be auto, cpu, cuda or mps, got {args.device!r}")
    if args.sweep and args.study:
        parser.error("--sweep and --study are two different jobs; pass one of them")
    if args.study:
        check_study_args(args, parser)


def check_study_args(args, parser):
    """The study's flags, checked only when the study runs (a plain run with --base-seed 1 is fine)."""
    require_positive(args, parser, ("wc_n_layer", "wc_n_head", "wc_n_embd", "study_problems", "s_se", "ft_steps",
                                    "ft_batch", "ft_lr", "study_seeds"))
    if args.wc_n_embd % args.wc_n_head:
        parser.error(f"--wc-n-embd ({args.wc_n_embd}) must be a multiple of --wc-n-head ({args.wc_n_head})")
    if args.student_base_seed == args.base_seed:
        parser.error(f"--student-base-seed must differ from --base-seed ({args.base_seed}): with the same seed the "
                     f"student would be the WC model, which sampled the data")
    tok = get_tokenizer()
    p = {name: GPT(model_config(a, tok)).num_params() for name, a in study_model_args(args).items()}
    if p["wc"] >= p["se"]:
        parser.error(f"--wc-n-layer/--wc-n-head/--wc-n-embd give {p['wc']:,} parameters, not fewer than the SE's "
                     f"{p['se']:,} (--n-layer/--n-head/--n-embd): the WC model must be the cheaper one")


# -----------------------------------------------------------------------------
# Small utilities: device, seeds, batches, atomic files


def pick_device(name):
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device):
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU bf16 is slow, MPS support varies)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def step_rngs(seed, step, stream):
    """Generators for one step, keyed by (seed, step, stream): no state to carry, so resume is exact."""
    np_rng = np.random.default_rng([seed, step, stream])
    torch_gen = torch.Generator().manual_seed(int(np_rng.integers(2**62)))
    return np_rng, torch_gen


def pack_examples(tok, problems, completions, device):
    """Prompts and given completion texts (EOS appended) as a Rollout, the batch layout the losses read."""
    prompt, prompt_valid = left_pad([tok.encode(prompt_text(p)) for p in problems], tok.pad_id, device)
    comps = [tok.encode(c) + [tok.eos_id] for c in completions]
    L = max(len(c) for c in comps)
    tokens = torch.full((len(comps), L), tok.pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(comps), L, dtype=torch.bool, device=device)
    for i, c in enumerate(comps):
        tokens[i, :len(c)] = torch.tensor(c, device=device)
        mask[i, :len(c)] = True
    return Rollout(prompt, prompt_valid, tokens, mask, torch.zeros(tokens.shape, device=device))


def completion_logprobs(model, prompt, prompt_valid, tokens, mask, temperature):
    """Log-probs (N, L) and entropies (N, L) of the completion tokens, given left-padded prompts."""
    seq, valid = torch.cat([prompt, tokens], 1), torch.cat([prompt_valid, mask], 1)
    logits = model(seq, valid=valid)[:, prompt.size(1) - 1:-1].float() / temperature  # (N, L, V)
    logp_all = F.log_softmax(logits, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


def decode_completions(tok, rollout):
    return [tok.decode(t[m].tolist()) for t, m in zip(rollout.tokens.cpu(), rollout.mask.cpu())]


def save_atomic(obj, path):
    """torch.save through a temporary file and os.replace: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def append_jsonl(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path):
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def model_config(args, tok):
    return GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd)


# -----------------------------------------------------------------------------
# Evaluation: greedy accuracy and pass@k on frozen test sets


@torch.no_grad()
def evaluate(model, tok, level, args, device, seed=0, chunk=512):
    """Greedy accuracy on the first eval_n test problems; pass@k (k samples at T=1) on the first pass_n."""
    model.eval()
    problems = load_test_set(level)
    out, kinds = {}, []
    for name, n, k, temperature in (("acc", args.eval_n, 1, 0.0), (f"pass@{args.pass_k}", args.pass_n,
                                                                    args.pass_k, 1.0)):
        subset = problems[:n]
        hits, lengths = [], []
        for i in range(0, len(subset), chunk):
            part = subset[i:i + chunk]
            with autocast(device):
                r = generate(model, [tok.encode(prompt_text(p)) for p in part], args.max_new_tokens, tok.eos_id,
                             tok.pad_id, num_samples=k, temperature=temperature, seeds=[seed + i + j for j in
                                                                                         range(len(part))])
            texts = decode_completions(tok, r)
            rewards = [outcome_reward(t, part[j // k]) for j, t in enumerate(texts)]
            hits += [max(rewards[j * k:(j + 1) * k]) for j in range(len(part))]  # any of k right: pass@k with n=k
            lengths += r.mask.sum(1).tolist()
            if name == "acc":
                kinds += [first_error(t, p) for t, p in zip(texts, part)]
        out[name] = float(np.mean(hits))
        if name == "acc":
            out["len"] = float(np.mean(lengths))
            out["errors"] = {kind: kinds.count(kind) for kind in ERROR_KINDS}  # where greedy outputs go wrong
    return out


def evaluate_all(model, tok, args, device):
    return {lvl: evaluate(model, tok, lvl, args, device) for lvl in (RL_LEVEL, OOD_LEVEL)}


def base_evaluation(base, tok, args, device, base_path):
    """evaluate_all of the warm-start base, cached beside it: every run of a sweep starts from the same numbers."""
    spec = dict(eval_n=args.eval_n, pass_n=args.pass_n, pass_k=args.pass_k, max_new_tokens=args.max_new_tokens,
                device=device.type, format_reward=FORMAT_REWARD, error_kinds=ERROR_KINDS,
                levels={lvl: [repr(LEVELS[lvl]), hashlib.sha256(test_set_path(lvl).read_bytes()).hexdigest()]
                        for lvl in (RL_LEVEL, OOD_LEVEL)})
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    path = Path(base_path).with_name(f"{Path(base_path).stem}-eval-{key}.json")
    if path.exists():
        return json.loads(path.read_text())
    ev = evaluate_all(base, tok, args, device)
    write_atomic(path, json.dumps(ev))
    return ev


# -----------------------------------------------------------------------------
# Stage 1: warm start on worked solutions of the easy levels


def base_key(args, tok):
    """Everything that defines the warm-start model, hashed: same key, same checkpoint."""
    spec = dict(model=asdict(model_config(args, tok)), steps=args.sft_steps, batch=args.sft_batch, lr=args.sft_lr,
                direct=args.sft_direct, seed=args.base_seed, levels={n: repr(LEVELS[n]) for n in SFT_LEVELS})
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12], spec


def sft_step(model, opt, batch, args, lr):
    """One supervised step: mean cross-entropy over the completion tokens (EOS included)."""
    for group in opt.param_groups:
        group["lr"] = lr
    logp, _ = completion_logprobs(model, batch.prompt, batch.prompt_valid, batch.tokens, batch.mask, 1.0)
    loss = -(logp * batch.mask).sum() / batch.mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def warm_start(args, tok, device, log=print):
    """Load the cached base model for these settings, or train it and cache it."""
    key, spec = base_key(args, tok)
    path = Path(args.base_dir) / f"base-{key}.pt"
    model = GPT(model_config(args, tok), seed=args.base_seed).to(device)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location=device)["model"])
        log(f"warm start: loaded {path}")
        return model, path
    from tqdm import tqdm
    opt = torch.optim.AdamW(model.parameters(), lr=args.sft_lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, args.sft_steps // 20)
    t0 = time.time()
    bar = tqdm(range(args.sft_steps), desc="warm start", disable=None)
    for step in bar:
        np_rng, _ = step_rngs(args.base_seed, step, stream=1)
        problems = sft_examples(SFT_LEVELS, args.sft_batch, np_rng)
        # a share of bare answers: on the easy levels they are often right, on the RL level rarely, so the base
        # does not know when to show its work; learning that is what RL has to do
        direct = np_rng.random(len(problems)) < args.sft_direct
        texts = [direct_completion(p) if d else sft_completion(p) for p, d in zip(problems, direct)]
        batch = pack_examples(tok, problems, texts, device)
        # linear warm-up, then cosine decay to 10% of the peak
        frac = min(1.0, (step + 1) / warmup)
        lr = args.sft_lr * frac * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.sft_steps)))
        model.train()
        with autocast(device):
            loss = sft_step(model, opt, batch, args, lr)
        bar.set_postfix(loss=f"{loss:.3f}")
    save_atomic({"model": model.state_dict(), "spec": spec, "train_seconds": time.time() - t0}, path)
    log(f"warm start: trained {args.sft_steps} steps in {time.time() - t0:.0f}s, saved {path}")
    return model, path


# -----------------------------------------------------------------------------
# Stage 2: one RL step


class NonFiniteLoss(RuntimeError):
    pass


def sample_batch(policy, tok, args, step, device):
    """This step's prompts and their completions: G samples each (pg, raft) or the gold solutions (sft)."""
    np_rng, gen = step_rngs(args.seed, step, stream=2)
    problems = train_problems(RL_LEVEL, args.prompts, np_rng)
    if args.objective == "sft":
        return problems, pack_examples(tok, problems, [sft_completion(p) for p in problems], device)
    policy.eval()
    with autocast(device):
        batch = generate(policy, [tok.encode(prompt_text(p)) for p in problems], args.max_new_tokens, tok.eos_id,
                         tok.pad_id, num_samples=args.group, temperature=args.temperature, generator=gen)
    return problems, batch


def score_batch(tok, problems, batch, device):
    """(B, G) verifier rewards; G = rows per problem (1 for sft's gold solutions)."""
    texts = decode_completions(tok, batch)
    G = len(texts) // len(problems)
    rewards = [outcome_reward(t, problems[i // G]) for i, t in enumerate(texts)]
    return torch.tensor(rewards, device=device).view(len(problems), G)


def advantages_for(rewards, args):
    """(B, G) rewards -> (B*G,) advantages and (B*G,) bool rows kept for learning."""
    if args.objective == "sft":
        adv = torch.ones_like(rewards)
    elif args.objective == "raft":
        adv = best_of_group(rewards)
    else:
        adv = group_advantages(rewards, args.baseline, args.std_norm, args.adv_sign)
    keep = torch.ones_like(rewards, dtype=torch.bool)
    if args.objective == "raft":
        keep = adv > 0  # RAFT trains on the selected samples only
    if args.skip_zero_var:
        keep = keep & ~zero_variance_groups(rewards)[:, None]
    return adv.flatten(), keep.flatten()


def learn(policy, ref, opt, batch, adv, keep, args, gen):
    """mu passes over the kept rows, each split into `minibatches` optimizer steps, each accumulated over
    micro-batches with denominators counted over the whole minibatch."""
    rows = keep.nonzero().flatten()
    stats = dict(loss=0.0, kl_sum=0.0, ratio_sum=0.0, ratio_max=1.0, clipped_sum=0.0, ent_sum=0.0, tokens=0.0,
                 grad_norm=0.0, updates=0)
    if len(rows) == 0:
        return stats
    device = batch.tokens.device
    ref_logp = None
    if args.objective == "pg":
        with torch.no_grad(), autocast(device):
            ref_logp, _ = completion_logprobs(ref, batch.prompt, batch.prompt_valid, batch.tokens, batch.mask,
                                              args.temperature)
    policy.train()
    for _ in range(args.mu):
        order = rows[torch.randperm(len(rows), generator=gen).to(device)]
        for mb in order.chunk(args.minibatches):
            n_seqs, n_tokens = len(mb), batch.mask[mb].sum().item()
            opt.zero_grad(set_to_none=True)
            for micro in mb.split(args.micro_batch or len(mb)):
                with autocast(device):
                    logp, entropy = completion_logprobs(policy, batch.prompt[micro], batch.prompt_valid[micro],
                                                        batch.tokens[micro], batch.mask[micro], args.temperature)
                mask = batch.mask[micro]
                if args.objective == "pg":
                    loss, s = rl_loss(logp, batch.logprobs[micro], ref_logp[micro], adv[micro], mask,
                                      ratio=args.ratio, clip=args.clip, eps_low=args.eps_low, eps_high=args.eps_high,
                                      beta=args.beta, kl_estimator=args.kl_estimator, agg=args.agg, n_seqs=n_seqs,
                                      n_tokens=n_tokens, agg_constant=args.agg_constant)
                else:  # raft and sft: cross-entropy on the kept completions, same aggregation
                    loss = aggregate(-logp, mask.float(), args.agg, n_seqs, n_tokens, args.agg_constant)
                    s = dict(kl_sum=0.0, ratio_sum=mask.sum().item(), ratio_max=1.0, clipped_sum=0.0)
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"non-finite loss ({loss.item()})")
                loss.backward()
                stats["loss"] += loss.item() / (args.mu * args.minibatches)
                for k in ("kl_sum", "ratio_sum", "clipped_sum"):
                    stats[k] += s[k]
                stats["ratio_max"] = max(stats["ratio_max"], s["ratio_max"])
                stats["ent_sum"] += (entropy.detach() * mask).sum().item()
                stats["tokens"] += mask.sum().item()
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip or float("inf"))
            if not torch.isfinite(norm):
                raise NonFiniteLoss(f"non-finite gradient norm ({norm.item()})")
            stats["grad_norm"] = max(stats["grad_norm"], norm.item())
            opt.step()
            stats["updates"] += 1
    return stats


def rl_step(policy, ref, opt, tok, args, step, device):
    """Sample, score, compute advantages, update. Returns the step's metrics row."""
    t0 = time.perf_counter()
    problems, batch = sample_batch(policy, tok, args, step, device)
    t1 = time.perf_counter()
    rewards = score_batch(tok, problems, batch, device)
    t2 = time.perf_counter()
    adv, keep = advantages_for(rewards, args)
    _, gen = step_rngs(args.seed, step, stream=3)
    s = learn(policy, ref, opt, batch, adv, keep, args, gen)
    t3 = time.perf_counter()
    tokens = max(s["tokens"], 1.0)
    return dict(step=step, reward=rewards.mean().item(), batch_acc=(rewards >= 1.0).float().mean().item(),
                zero_var=zero_variance_groups(rewards).float().mean().item(), adv_mean=adv.mean().item(),
                adv_std=adv.std().item() if adv.numel() > 1 else 0.0, adv_min=adv.min().item(),
                adv_max=adv.max().item(), kept=keep.float().mean().item(), kl=s["kl_sum"] / tokens,
                entropy=s["ent_sum"] / tokens, ratio_mean=s["ratio_sum"] / tokens, ratio_max=s["ratio_max"],
                clip_frac=s["clipped_sum"] / tokens, resp_len=batch.mask.sum(1).float().mean().item(),
                loss=s["loss"], grad_norm=s["grad_norm"], updates=s["updates"],
                t_sample=t1 - t0, t_score=t2 - t1, t_learn=t3 - t2)


# -----------------------------------------------------------------------------
# The run: directory, checkpoints, resume, Ctrl-C


class StopRequest:
    """First Ctrl-C: finish the current step, save, exit. Second Ctrl-C: the usual KeyboardInterrupt."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this step, saving a checkpoint, then exiting (Ctrl-C again to abort)")


def save_checkpoint(run_dir, policy, opt, step):
    save_atomic({"model": policy.state_dict(), "opt": opt.state_dict(), "step": step}, run_dir / "ckpt.pt")


def truncate_jsonl(path, last_step):
    """Keep the rows up to last_step: what a resumed run will write again is removed first."""
    rows = [r for r in read_jsonl(path) if r["step"] <= last_step]
    if path.exists():
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def check_same_settings(config_path, now, ignore=(), hint=""):
    """Stop when the settings saved at config_path differ from now (a dict), ignoring the keys in ignore: resuming
    or reusing that directory would mix two runs."""
    saved = json.loads(Path(config_path).read_text())
    changed = {k: (saved.get(k), now.get(k)) for k in sorted(saved.keys() | now.keys())
               if k not in ignore and saved.get(k) != now.get(k)}
    if changed:
        raise SystemExit(f"{config_path}: settings differ from the saved ones (saved, now): {changed}{hint}")


def start_run(args, tok, device, log):
    """Run directory, base model (the frozen KL reference), policy and optimizer, fresh or resumed."""
    run_dir = Path(args.out_dir)
    base, base_path = warm_start(args, tok, device, log)
    ref = base.eval().requires_grad_(False)
    policy = GPT(model_config(args, tok)).to(device)
    policy.load_state_dict(base.state_dict())
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    first_step = 0
    if args.resume:
        if not (run_dir / "ckpt.pt").exists():
            raise SystemExit(f"--resume: no checkpoint at {run_dir / 'ckpt.pt'}")
        check_same_settings(run_dir / "config.json", vars(args), ignore=("resume",))
        ckpt = torch.load(run_dir / "ckpt.pt", map_location=device)
        policy.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        first_step = ckpt["step"] + 1
        for name in ("metrics.jsonl", "eval.jsonl"):
            truncate_jsonl(run_dir / name, ckpt["step"])
        log(f"resumed {run_dir} after step {ckpt['step']}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "eval.jsonl", "ckpt.pt", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
        write_atomic(run_dir / "config.json", json.dumps(vars(args), indent=1))
    return run_dir, ref, policy, opt, first_step, base_path


def log_eval(run_dir, step, ev, k, log):
    append_jsonl(run_dir / "eval.jsonl", dict(step=step, **ev))
    log(f"eval @ step {step}: " + ", ".join(f"{lvl} acc {v['acc']:.3f} pass@{k} {v[f'pass@{k}']:.3f}"
                                            for lvl, v in ev.items()))


def train(args, log=print):
    """The whole job: warm start, RL, evaluation. Returns the summary dict (also written to summary.json)."""
    from tqdm import tqdm
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = get_tokenizer()
    run_dir, ref, policy, opt, first_step, base_path = start_run(args, tok, device, log)
    log(f"device {device}; model {policy.num_params():,} params; run dir {run_dir}; preset {args.preset}: "
        + ", ".join(f"{k}={getattr(args, k)}" for k in SWITCH_DEFAULTS))
    if first_step == 0:
        ev = base_evaluation(policy, tok, args, device, base_path)
        log_eval(run_dir, -1, ev, args.pass_k, log)  # step -1: the base, before any update
    stop = StopRequest()
    previous_handler = signal.signal(signal.SIGINT, stop)
    try:
        bar = tqdm(range(first_step, args.steps), desc=f"RL {args.preset}", disable=None, initial=first_step,
                   total=args.steps)
        for step in bar:
            try:
                row = rl_step(policy, ref, opt, tok, args, step, device)
            except NonFiniteLoss as e:
                last = torch.load(run_dir / "ckpt.pt")["step"] if (run_dir / "ckpt.pt").exists() else None
                raise SystemExit(f"stopping at step {step}: {e}. The checkpoint on disk was not updated with it: "
                                 f"the last good one is {run_dir / 'ckpt.pt'} (step {last}). Try a lower --lr.")
            append_jsonl(run_dir / "metrics.jsonl", row)
            bar.set_postfix(reward=f"{row['reward']:.2f}", kl=f"{row['kl']:.4f}", len=f"{row['resp_len']:.0f}")
            if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
                log_eval(run_dir, step, evaluate_all(policy, tok, args, device), args.pass_k, log)
            if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps or stop.requested:
                save_checkpoint(run_dir, policy, opt, step)
            if stop.requested:
                log(f"stopped after step {step}; continue with the same command plus --resume "
                    f"(run dir {run_dir})")
                return None
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    truncate_jsonl(run_dir / "eval.jsonl", args.steps - 2)  # a run resumed after its last step redoes this eval
    log_eval(run_dir, args.steps - 1, evaluate_all(policy, tok, args, device), args.pass_k, log)
    summary = summarize(run_dir, base_path)
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def summarize(run_dir, base_path):
    """Base vs trained on both levels, the last step's training numbers, and where the time went."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    evals = read_jsonl(run_dir / "eval.jsonl")
    base, final = evals[0], evals[-1]
    last = rows[-1] if rows else {}
    times = {k: sum(r[k] for r in rows) for k in ("t_sample", "t_score", "t_learn")}
    return dict(base=base, final=final, final_reward=last.get("reward"), final_kl=last.get("kl"),
                final_len=last.get("resp_len"), zero_var=float(np.mean([r["zero_var"] for r in rows]))
                if rows else None, times=times, base_path=str(base_path), steps=len(rows))


def print_summary(summary, args, seconds):
    lines = [f"{'':>8} {'base':>8} {'trained':>8}"]
    for lvl in (RL_LEVEL, OOD_LEVEL):
        for metric in ("acc", f"pass@{args.pass_k}"):
            lines.append(f"{lvl + ' ' + metric:>14} {summary['base'][lvl][metric]:8.3f} "
                         f"{summary['final'][lvl][metric]:8.3f}")
    base_errors, final_errors = summary["base"][RL_LEVEL].get("errors"), summary["final"][RL_LEVEL].get("errors")
    if base_errors and final_errors:  # runs whose evaluations predate the error count have none
        lines.append(f"{RL_LEVEL} greedy outputs by first error, base -> trained: "
                     + ", ".join(f"{kind} {base_errors[kind]} -> {final_errors[kind]}" for kind in ERROR_KINDS))
    t = summary["times"]
    total = sum(t.values()) or 1.0
    lines.append(f"RL time: sampling {t['t_sample']:.0f}s ({100 * t['t_sample'] / total:.0f}%), scoring "
                 f"{t['t_score']:.0f}s ({100 * t['t_score'] / total:.0f}%), learning {t['t_learn']:.0f}s "
                 f"({100 * t['t_learn'] / total:.0f}%); whole job {seconds:.0f}s")
    print("\n".join(lines))


# -----------------------------------------------------------------------------
# Sweep: variants x seeds from one warm-start base, with the same sample budget, and a table with 95% intervals

SWEEP_VARIANTS = {  # name -> the flags that make it; each variant changes the rgra / grpo default in one place
    "sft": ["--preset", "sft"],
    "raft": ["--preset", "raft"],
    "reinforce": ["--preset", "reinforce"],
    "grpo_pos": ["--preset", "grpo_pos"],
    "grpo": ["--preset", "grpo"],
    "grpo_mu2": ["--preset", "grpo", "--mu", "2"],
    "grpo_mu2_noclip": ["--preset", "grpo", "--mu", "2", "--no-clip"],
    "grpo_nokl": ["--preset", "grpo", "--beta", "0"],
    "rgra": ["--preset", "rgra"],
    "rgra_nokl": ["--preset", "rgra", "--beta", "0"],
    "rgra_nostd": ["--preset", "rgra", "--no-std-norm"],
}
QUICK_FLAGS = ["--steps", "30", "--eval-n", "200", "--pass-n", "50", "--eval-every", "1000"]  # --sweep --quick

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (a standard table); 1.96 beyond
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci95(values):
    """Mean and half-width of the 95% confidence interval over seeds: t_{0.975, n-1} * sample std / sqrt(n).
    One value has no interval (half-width nan)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else float("nan"), float("nan")
    t = T_975[len(x) - 2] if len(x) - 1 <= len(T_975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


def collapsed(rewards, lengths, window=5, drop=0.5, min_len=3):
    """
    The collapse rule: a run collapsed when, over its last `window` steps against its first `window` steps, the
    mean reward fell below `drop` times its start (from a start above 0.05), or the mean response length fell below
    `drop` times its start, or the responses became degenerate (mean length < min_len tokens).
    """
    if len(rewards) < 2 * window:
        return False
    r0, r1 = np.mean(rewards[:window]), np.mean(rewards[-window:])
    l0, l1 = np.mean(lengths[:window]), np.mean(lengths[-window:])
    return bool((r0 > 0.05 and r1 < drop * r0) or l1 < drop * l0 or l1 < min_len)


def run_status(run_dir):
    """'done' (summary written), 'partial' (a checkpoint to resume from) or 'new'."""
    if (run_dir / "summary.json").exists():
        return "done"
    return "partial" if (run_dir / "ckpt.pt").exists() else "new"


def sweep_runs(base_argv, variants, seeds, sweep_dir):
    """(variant, seed, argv) for every run of the sweep; later flags override earlier ones."""
    return [(v, s, base_argv + SWEEP_VARIANTS[v] + ["--seed", str(s), "--out-dir", str(sweep_dir / f"{v}-seed{s}")])
            for v in variants for s in seeds]


def variant_row(variant, summaries, metrics, k):
    """One table row: means and 95% intervals over the seeds of a variant."""
    ci = mean_ci95
    last = lambda rows, key, n=5: float(np.mean([r[key] for r in rows[-n:]]))  # the last n steps, smoothed
    return dict(
        variant=variant, seeds=len(summaries),
        acc=ci([s["final"][RL_LEVEL]["acc"] for s in summaries]),
        ood_acc=ci([s["final"][OOD_LEVEL]["acc"] for s in summaries]),
        pass_k=ci([s["final"][RL_LEVEL][f"pass@{k}"] for s in summaries]),
        ood_pass_k=ci([s["final"][OOD_LEVEL][f"pass@{k}"] for s in summaries]),
        base_acc=float(np.mean([s["base"][RL_LEVEL]["acc"] for s in summaries])),
        reward=ci([last(m, "reward") for m in metrics]), kl=ci([last(m, "kl") for m in metrics]),
        resp_len=ci([last(m, "resp_len") for m in metrics]),
        zero_var=ci([float(np.mean([r["zero_var"] for r in m])) for m in metrics]),
        seconds=ci([sum(s["times"].values()) for s in summaries]),
        collapsed=sum(collapsed([r["reward"] for r in m], [r["resp_len"] for r in m]) for m in metrics))


def results_markdown(rows, k):
    fmt = lambda mc, d=3: f"{mc[0]:.{d}f} ± {mc[1]:.{d}f}" if not math.isnan(mc[1]) else f"{mc[0]:.{d}f}"
    head = (f"| variant | {RL_LEVEL} acc | {OOD_LEVEL} acc | {RL_LEVEL} pass@{k} | final reward | final KL | "
            f"length | zero-var groups | RL seconds | collapsed |")
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        lines.append(f"| {r['variant']} | {fmt(r['acc'])} | {fmt(r['ood_acc'])} | {fmt(r['pass_k'])} | "
                     f"{fmt(r['reward'])} | {fmt(r['kl'], 4)} | {fmt(r['resp_len'], 1)} | {fmt(r['zero_var'], 2)} | "
                     f"{fmt(r['seconds'], 0)} | {r['collapsed']}/{r['seeds']} |")
    return "\n".join(lines) + "\n"


def save_figure(fig, path):
    """Write a matplotlib figure as a PNG via a temporary file, so a crash never leaves a half-written plot."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot_curves(curves, path_reward, path_acc):
    """Reward per step and held-out accuracy per evaluation, mean over seeds, one line per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for key, path, ylabel in (("reward", path_reward, "batch reward (mean over seeds)"),
                              ("acc", path_acc, f"held-out {RL_LEVEL} greedy accuracy (mean over seeds)")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (variant, c) in enumerate(curves.items()):  # matplotlib cycles 10 colours: dash the rest
            ax.plot(c[key]["x"], c[key]["y"], label=variant, marker="o" if key == "acc" else None, markersize=3,
                    linestyle="-" if i < 10 else "--")
        ax.set_xlabel("RL step (-1 = base)" if key == "acc" else "RL step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, ncol=2)
        save_figure(fig, path)


def mean_curve(rows_per_seed, x_key, y_key):
    """Mean over seeds of y at each x that every seed has."""
    xs = sorted(set.intersection(*[{r[x_key] for r in rows} for rows in rows_per_seed]))
    ys = [float(np.mean([next(r[y_key] for r in rows if r[x_key] == x) for rows in rows_per_seed])) for x in xs]
    return dict(x=xs, y=ys)


def sweep(args, base_argv, log=print):
    """Run every (variant, seed) not yet done, resuming partial ones; then write the table, curves and plots."""
    sweep_dir = Path(args.sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    parser = build_parser()
    variants = args.sweep_variants.split(",")
    unknown = [v for v in variants if v not in SWEEP_VARIANTS]
    if unknown:
        parser.error(f"--sweep-variants: unknown {unknown}; allowed: {','.join(SWEEP_VARIANTS)}")
    runs = sweep_runs(base_argv, variants, range(args.sweep_seeds), sweep_dir)
    t0 = time.time()
    for i, (variant, seed, argv) in enumerate(runs):
        status = run_status(sweep_dir / f"{variant}-seed{seed}")
        log(f"[sweep {i + 1}/{len(runs)}] {variant} seed {seed}: {status}")
        run_args = resolve_switches(parser.parse_args(argv + (["--resume"] if status == "partial" else [])))
        if status == "done":
            # a finished run made with OTHER settings (e.g. a quick sweep's) must not pass for this one
            check_same_settings(sweep_dir / f"{variant}-seed{seed}" / "config.json", vars(run_args), ignore=("resume",))
            continue
        check_args(run_args, parser)
        if train(run_args, log=lambda *a: None) is None:
            log("sweep stopped; run the same command again to continue")
            return None
    rows, curves, k = [], {}, args.pass_k
    for variant in variants:
        dirs = [sweep_dir / f"{variant}-seed{s}" for s in range(args.sweep_seeds)]
        summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
        metrics = [read_jsonl(d / "metrics.jsonl") for d in dirs]
        evals = [[dict(step=e["step"], acc=e[RL_LEVEL]["acc"]) for e in read_jsonl(d / "eval.jsonl")] for d in dirs]
        rows.append(variant_row(variant, summaries, metrics, k))
        curves[variant] = dict(reward=mean_curve(metrics, "step", "reward"), acc=mean_curve(evals, "step", "acc"))
    table = results_markdown(rows, k)
    write_atomic(sweep_dir / "results.md", table)
    write_atomic(sweep_dir / "results.json", json.dumps(dict(rows=rows, command=" ".join(
        ["python nanorgra.py"] + base_argv + ["--sweep"]), seconds=time.time() - t0), indent=1))
    write_atomic(sweep_dir / "curves.json", json.dumps(curves))
    plot_curves(curves, sweep_dir / "reward.png", sweep_dir / "acc.png")
    log(table)
    log(f"sweep: {len(runs)} runs; this invocation took {time.time() - t0:.0f}s; results in {sweep_dir}")
    return rows


# -----------------------------------------------------------------------------
# Compute-matched sampling study: "Smaller, Weaker, Yet Better" (Bansal et al., arXiv 2408.16737)
#
# Question: at a fixed sampling budget, is synthetic training data better sampled from a strong-expensive model
# (SE) or from a weak-cheap one (WC)?
#   sampling FLOPs    C = 2 P x (generated tokens)            P = parameters: ~2 FLOPs per parameter per token
#   equal budgets     2 P_SE S_SE n L = 2 P_WC S_WC n L   =>   S_WC = (P_SE / P_WC) x S_SE
# for n problems, S samples per problem, L tokens per sample. The plan assumes the same L for both models (the
# worked-solution length); the real token counts differ per model, so the FLOPs actually spent are reported too.
#
# The models, all warm-started by warm_start with the same --sft-* recipe:
#   SE       the default size (--n-layer, --n-head, --n-embd), --base-seed
#   WC       --wc-n-layer, --wc-n-head, --wc-n-embd, --base-seed
#   student  WC size, --student-base-seed: the same recipe with another seed, a model that sampled none of the data
# The data sets, sampled at temperature 1 on --study-problems fresh RL-level problems that no model trained on:
#   se          S_SE samples per problem from SE
#   wc_compute  S_WC samples per problem from WC              (compute-matched to se)
#   wc_number   the first S_SE of those                       (number-matched control: S_WC = S_SE)
# The filter keeps every answer-correct sample, steps unchecked, as the paper did; false positives stay in.
# The setups fine-tune one model on WC data vs on SE data: knowledge distillation (the student), self-improvement
# (WC), weak-to-strong improvement (SE).

STUDY_QUICK_FLAGS = ["--study-problems", "500", "--ft-steps", "60", "--eval-n", "200", "--pass-n", "50"]
STUDY_SETUPS = {"distillation": "student", "self_improvement": "wc", "weak_to_strong": "se"}  # -> model tuned
STUDY_BUDGETS = {"compute": "wc_compute", "number": "wc_number"}  # budget -> the WC data set compared with "se"
STUDY_STREAMS = dict(problems=5, se=6, wc=7, order=8)  # step_rngs-style stream ids, apart from RL's 1-3


def compute_matched_samples(p_se, p_wc, s_se):
    """S_WC = (P_SE / P_WC) x S_SE, rounded DOWN (exact integer arithmetic), at least 1: the WC never plans to
    spend more than the SE. P_SE = 3 P_WC, S_SE = 4 -> 12;  P_SE = 3.4 P_WC, S_SE = 4 -> 13 (13.6 rounded down)."""
    return max(1, p_se * s_se // p_wc)


def sampling_flops(n_params, n_tokens):
    """FLOPs of generating n_tokens tokens: 2 x P x tokens (a multiply and an add per parameter per token; the
    prompt prefill and the attention over the context are left out, as in the paper's estimate)."""
    return 2 * n_params * n_tokens


def planned_flops(n_params, n_problems, samples, tokens_per_sample):
    """The budget before sampling: 2 x P x (n problems x S samples x L planned tokens per sample)."""
    return sampling_flops(n_params, n_problems * samples * tokens_per_sample)


def is_correct(text, problem):
    """The paper's filter criterion: the final answer is right (the steps are not looked at)."""
    return outcome_reward(text, problem, format_reward=0.0) == 1.0


def coverage_at_k(problems, samples, k):
    """coverage@k = 1/n sum_i [at least one of the first k samples of problem i has the right answer].
    samples: one list of completion texts per problem."""
    return float(np.mean([any(is_correct(t, p) for t in s[:k]) for p, s in zip(problems, samples)]))


def diversity_at_k(problems, samples, k):
    """diversity@k = 1/n sum_i |{distinct correct texts among the first k samples of problem i}|: a solution sampled
    twice counts once."""
    return float(np.mean([len({t for t in s[:k] if is_correct(t, p)}) for p, s in zip(problems, samples)]))


def keep_answer_correct(problems, samples):
    """The filtered data set: (problem, text) for every answer-correct sample, duplicates and false positives kept."""
    return [(p, t) for p, s in zip(problems, samples) for t in s if is_correct(t, p)]


def false_positive_rate(problems, samples):
    """FPR = |kept samples whose steps are wrong (verifier.is_false_positive)| / |kept samples|; nan if none kept."""
    kept = keep_answer_correct(problems, samples)
    return float(np.mean([is_false_positive(t, p) for p, t in kept])) if kept else float("nan")


def warm_start_exprs(base_seed, sft_steps, sft_batch):
    """Every expression a warm start with these settings trained on, regenerated draw by draw as warm_start makes
    them: step_rngs(base_seed, step, stream=1), then sft_examples. (The model size does not enter the draws.)"""
    exprs = set()
    for step in range(sft_steps):
        np_rng, _ = step_rngs(base_seed, step, stream=1)
        exprs.update(p.expr for p in sft_examples(SFT_LEVELS, sft_batch, np_rng))
    return exprs


def study_problems(args):
    """--study-problems distinct RL-level problems that no model of the study trained on and no test set holds,
    drawn by their own Generator seeded by --study-seed."""
    exclude = set(test_exprs())
    for seed in {args.base_seed, args.student_base_seed}:
        exclude |= warm_start_exprs(seed, args.sft_steps, args.sft_batch)
    rng = np.random.default_rng([args.study_seed, STUDY_STREAMS["problems"]])
    return sample_problems(RL_LEVEL, args.study_problems, rng, exclude=exclude, distinct=True)


def study_model_args(args):
    """The settings of each model of the study: a copy of args with its size and warm-start seed."""
    sizes = dict(se=(args.n_layer, args.n_head, args.n_embd, args.base_seed),
                 wc=(args.wc_n_layer, args.wc_n_head, args.wc_n_embd, args.base_seed),
                 student=(args.wc_n_layer, args.wc_n_head, args.wc_n_embd, args.student_base_seed))
    return {name: argparse.Namespace(**{**vars(args), "n_layer": l, "n_head": h, "n_embd": e, "base_seed": s})
            for name, (l, h, e, s) in sizes.items()}


@torch.no_grad()
def sample_solutions(model, tok, problems, n_samples, args, gen, device, chunk=64):
    """n_samples completions per problem at temperature 1 -> dict(texts=, tokens=): per problem, the completion texts
    and the tokens each generated (EOS included). One seed per problem is drawn from gen up front, so the chunking
    changes no sample."""
    model.eval()
    seeds = torch.randint(0, 2**62, (len(problems),), generator=gen).tolist()
    texts, tokens = [], []
    for i in range(0, len(problems), chunk):
        part = problems[i:i + chunk]
        with autocast(device):
            r = generate(model, [tok.encode(prompt_text(p)) for p in part], args.max_new_tokens, tok.eos_id,
                         tok.pad_id, num_samples=n_samples, temperature=1.0, seeds=seeds[i:i + chunk])
        flat, lengths = decode_completions(tok, r), r.mask.sum(1).tolist()  # (len(part) * n_samples,), EOS counted
        texts += [flat[j * n_samples:(j + 1) * n_samples] for j in range(len(part))]
        tokens += [lengths[j * n_samples:(j + 1) * n_samples] for j in range(len(part))]
    return dict(texts=texts, tokens=tokens)


def data_quality(problems, texts, tokens, n_params, k, planned_tokens):
    """The metrics of one data set: the first k samples per problem, and what sampling them cost."""
    texts = [s[:k] for s in texts]
    spent = sum(sum(t[:k]) for t in tokens)
    return dict(k=k, samples=len(problems) * k, kept=len(keep_answer_correct(problems, texts)),
                coverage=coverage_at_k(problems, texts, k), diversity=diversity_at_k(problems, texts, k),
                fpr=false_positive_rate(problems, texts), tokens=spent,
                planned_flops=planned_flops(n_params, len(problems), k, planned_tokens),
                flops=sampling_flops(n_params, spent))


def finetune_order(n_examples, steps, batch, seed):
    """(steps, batch) example indices: shuffled passes over the data (a new permutation per pass, from a Generator
    seeded by seed), cut into batches."""
    rng = np.random.default_rng([seed, STUDY_STREAMS["order"]])
    passes = -(-steps * batch // n_examples)  # ceil
    return np.concatenate([rng.permutation(n_examples) for _ in range(passes)])[:steps * batch].reshape(steps, batch)


def finetune(base, tok, kept, args, seed, device):
    """A copy of base trained with supervised cross-entropy on the kept (problem, text) pairs: --ft-steps steps of
    --ft-batch examples at the constant rate --ft-lr. With nothing kept the copy is returned untrained."""
    model = GPT(base.config).to(device)
    model.load_state_dict(base.state_dict())
    losses = []
    if not kept:
        return model, losses
    opt = torch.optim.AdamW(model.parameters(), lr=args.ft_lr, weight_decay=0.0, betas=(0.9, 0.95))
    model.train()
    for idx in finetune_order(len(kept), args.ft_steps, args.ft_batch, seed):
        problems, texts = zip(*[kept[i] for i in idx])
        with autocast(device):
            losses.append(sft_step(model, opt, pack_examples(tok, problems, texts, device), args, args.ft_lr))
    return model, losses


def finetune_and_evaluate(base, tok, kept, args, seed, device):
    """One fine-tune of the study, then greedy accuracy (and pass@k) on the held-out sets of both test levels."""
    t = time.time()
    model, losses = finetune(base, tok, kept, args, seed, device)
    return dict(kept=len(kept), final_loss=losses[-1] if losses else None, eval=evaluate_all(model, tok, args, device),
                seconds=time.time() - t)


def check_study_dir(study_dir, args):
    """A study directory holds one set of settings: the same command resumes it, other settings are refused."""
    config = {k: v for k, v in vars(args).items() if k not in ("device", "threads")}
    path = study_dir / "config.json"
    if path.exists():
        check_same_settings(path, config, hint="; pass another --study-dir or remove that one")
    write_atomic(path, json.dumps(config, indent=1))


def cached_json(path, make):
    """The JSON at path, or make() written there first: what a resumed study skips."""
    if not path.exists():
        write_atomic(path, json.dumps(make()))
    return json.loads(path.read_text())


def study_rows(runs, seeds):
    """One row per (setup, data set): mean and 95% interval over seeds of the fine-tuned greedy accuracies."""
    rows = []
    for setup in STUDY_SETUPS:
        for source in ("se", *STUDY_BUDGETS.values()):
            rs = [runs[(setup, source, s)] for s in range(seeds)]
            rows.append(dict(setup=setup, model=STUDY_SETUPS[setup], source=source, kept=rs[0]["kept"],
                             acc=mean_ci95([r["eval"][RL_LEVEL]["acc"] for r in rs]),
                             ood_acc=mean_ci95([r["eval"][OOD_LEVEL]["acc"] for r in rs])))
    return rows


def study_markdown(quality, rows, bases, params):
    fmt = lambda mc: f"{mc[0]:.3f} ± {mc[1]:.3f}" if not math.isnan(mc[1]) else f"{mc[0]:.3f}"
    model_of = dict(se="SE", wc_compute="WC", wc_number="WC")
    lines = ["| data set | model (params) | S per problem | samples | kept | coverage@S | diversity@S | FPR | "
             "planned FLOPs | spent FLOPs |", "|" + " --- |" * 10]
    for name, q in quality.items():
        m = model_of[name]
        lines.append(f"| {name} | {m} ({params[m.lower()]:,}) | {q['k']} | {q['samples']} | {q['kept']} | "
                     f"{q['coverage']:.3f} | {q['diversity']:.2f} | {q['fpr']:.3f} | {q['planned_flops']:.3g} | "
                     f"{q['flops']:.3g} |")
    lines += ["", f"| setup | model fine-tuned | data set | kept examples | {RL_LEVEL} acc | {OOD_LEVEL} acc |",
              "|" + " --- |" * 6]
    for setup, model in STUDY_SETUPS.items():
        b = bases[model]
        lines.append(f"| {setup} | {model} | (none: before fine-tuning) | 0 | {b[RL_LEVEL]['acc']:.3f} | "
                     f"{b[OOD_LEVEL]['acc']:.3f} |")
        lines += [f"| {setup} | {model} | {r['source']} | {r['kept']} | {fmt(r['acc'])} | {fmt(r['ood_acc'])} |"
                  for r in rows if r["setup"] == setup]
    return "\n".join(lines) + "\n"


def plot_study(curves, rows, path):
    """Left: coverage@k against k per model. Right: fine-tuned greedy accuracy on the RL level per setup, one bar
    per data set, error bars the 95% intervals over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, ys in curves.items():
        left.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=name.upper())
    left.set_xlabel("k (samples per problem)")
    left.set_ylabel(f"coverage@k on the study's {RL_LEVEL} problems")
    left.legend()
    sources = ["se", *STUDY_BUDGETS.values()]
    for j, source in enumerate(sources):
        rs = [next(r for r in rows if r["setup"] == s and r["source"] == source) for s in STUDY_SETUPS]
        right.bar(np.arange(len(rs)) + (j - 1) * 0.27, [r["acc"][0] for r in rs], 0.27, label=source,
                  yerr=[0.0 if math.isnan(r["acc"][1]) else r["acc"][1] for r in rs], capsize=3)
    right.set_xticks(range(len(STUDY_SETUPS)), list(STUDY_SETUPS))
    right.set_ylabel(f"fine-tuned {RL_LEVEL} greedy accuracy")
    right.legend(fontsize=8)
    save_figure(fig, path)


def study(args, argv, log=print):
    """The whole study: warm starts, compute-matched sampling, data quality, fine-tunes, table and plot."""
    t0 = time.time()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, out = get_tokenizer(), Path(args.study_dir)
    check_study_dir(out, args)
    margs = study_model_args(args)
    models, bases, params = {}, {}, {}
    for name, a in margs.items():
        models[name], path = warm_start(a, tok, device, log)
        bases[name] = base_evaluation(models[name], tok, a, device, path)
        params[name] = models[name].num_params()
    ratio = params["se"] / params["wc"]
    log(f"params: SE {params['se']:,}, WC {params['wc']:,}, student {params['student']:,}; P_SE/P_WC = {ratio:.2f} "
        + ("(>= 3, as in the paper)" if ratio >= 3 else "(below the paper's 3: a smaller cost gap)"))
    t_models = time.time() - t0
    s_se = args.s_se
    s_wc = compute_matched_samples(params["se"], params["wc"], s_se)
    problems = study_problems(args)
    planned_tokens = float(np.mean([len(tok.encode(sft_completion(p))) + 1 for p in problems]))  # + EOS
    log(f"{len(problems)} fresh {RL_LEVEL} problems; S_SE = {s_se}, S_WC = {s_wc} (compute-matched), "
        f"planned {planned_tokens:.1f} tokens per sample")
    samples = {}
    for name, s in (("se", s_se), ("wc", s_wc)):
        _, gen = step_rngs(args.study_seed, 0, stream=STUDY_STREAMS[name])
        samples[name] = cached_json(out / f"samples-{name}.json",
                                    lambda: sample_solutions(models[name], tok, problems, s, args, gen, device))
    t_sampling = time.time() - t0 - t_models  # the problem draw included
    sets = dict(se=("se", s_se), wc_compute=("wc", s_wc), wc_number=("wc", s_se))  # data set -> (model, k)
    quality = {d: data_quality(problems, samples[m]["texts"], samples[m]["tokens"], params[m], k, planned_tokens)
               for d, (m, k) in sets.items()}
    kept = {d: keep_answer_correct(problems, [s[:k] for s in samples[m]["texts"]]) for d, (m, k) in sets.items()}
    for d, q in quality.items():
        log(f"{d}: {q['kept']} kept of {q['samples']}, coverage@{q['k']} {q['coverage']:.3f}, diversity "
            f"{q['diversity']:.2f}, FPR {q['fpr']:.3f}, FLOPs planned {q['planned_flops']:.3g} spent {q['flops']:.3g}")
    runs, jobs = {}, [(setup, source, seed) for setup in STUDY_SETUPS for source in sets
                      for seed in range(args.study_seeds)]
    for i, (setup, source, seed) in enumerate(jobs):
        runs[(setup, source, seed)] = r = cached_json(
            out / "finetune" / f"{setup}-{source}-seed{seed}.json",
            lambda: finetune_and_evaluate(models[STUDY_SETUPS[setup]], tok, kept[source], args, seed, device))
        log(f"[study {i + 1}/{len(jobs)}] {setup} on {source}, seed {seed}: {RL_LEVEL} acc "
            f"{r['eval'][RL_LEVEL]['acc']:.3f}, {OOD_LEVEL} acc {r['eval'][OOD_LEVEL]['acc']:.3f}")
    rows = study_rows(runs, args.study_seeds)
    curves = {m: [coverage_at_k(problems, samples[m]["texts"], k) for k in range(1, k_max + 1)]
              for m, k_max in (("se", s_se), ("wc", s_wc))}
    table = (f"P_SE / P_WC = {params['se']:,} / {params['wc']:,} = {ratio:.2f}; S_SE = {s_se}, S_WC = {s_wc}; "
             f"{len(problems)} problems. kept = answer-correct samples (steps unchecked); FPR = share of kept samples "
             f"with a wrong step; fine-tuned accuracies: mean ± 95% interval over {args.study_seeds} seeds\n\n"
             + study_markdown(quality, rows, bases, params))
    write_atomic(out / "results.md", table)
    write_atomic(out / "results.json", json.dumps(dict(
        command=" ".join(["python nanorgra.py"] + argv), seconds=time.time() - t0, params=params,
        times=dict(models=t_models, sampling=t_sampling, finetunes=sum(r["seconds"] for r in runs.values())),
        ratio=ratio, ratio_at_least_3=ratio >= 3, s_se=s_se, s_wc=s_wc, n_problems=len(problems),
        planned_tokens_per_sample=planned_tokens, data=quality, coverage_curves=curves, bases=bases, rows=rows),
        indent=1))
    plot_study(curves, rows, out / "study.png")
    log(table)
    log(f"study: this invocation took {time.time() - t0:.0f}s; results in {out}")
    return rows


# -----------------------------------------------------------------------------
# Entry point


def run_argv(argv):
    """The command line minus the sweep's own flags (--sweep, --quick, --sweep-*): what each run starts from."""
    out, skip_value = [], False
    for a in argv:
        if skip_value:
            skip_value = False
        elif a in ("--sweep", "--quick"):
            continue
        elif a.startswith("--sweep-"):
            skip_value = "=" not in a
        else:
            out.append(a)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = resolve_switches(parser.parse_args(argv))
    check_args(args, parser)
    t0 = time.time()
    if args.study:
        if args.quick:  # the quick settings first, so that flags given on the command line still win
            args = resolve_switches(parser.parse_args(STUDY_QUICK_FLAGS + argv))
            check_args(args, parser)
        study(args, argv)
        return
    if args.sweep:
        sweep(args, (QUICK_FLAGS if args.quick else []) + run_argv(argv))
        return
    summary = train(args)
    if summary is not None:
        print_summary(summary, args, time.time() - t0)


if __name__ == "__main__":
    main()
