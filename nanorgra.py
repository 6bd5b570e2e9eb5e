"""
nanorgra.py: teach a small GPT arithmetic, then train it with GRPO / RGRA, where every component of the loss is a
named switch that one visible `if` reads.

    python nanorgra.py                          # the default job: warm start (cached), RGRA, evaluation, plot
    python nanorgra.py --preset grpo --mu 2     # GRPO, each sampled batch used for two updates
    python nanorgra.py --preset rgra --beta 0   # RGRA without the KL term: exactly one thing changes
    python nanorgra.py --help                   # every switch and its default

Read top to bottom: the loss, one RL step (sample, score, advantages, learn), the warm start, evaluation, the run
loop, then plumbing. REFERENCE.md has the equations, papers and pitfalls; experiments/ the sweep and the study.
Simplifications: full fine-tuning (no LoRA), one process, an exact verifier, no value network. Every random draw
of a step comes from generators seeded by (seed, step): a resumed run repeats the uninterrupted one on CPU.
"""

import argparse
import hashlib
import inspect
import io
import json
import math
import re
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.tasks import HABITS, LEVELS, OOD_LEVEL, RL_LEVEL, SKILLS, STEP_KINDS, STYLES, TEST_SET_SIZE, \
    atom_check_steps, corpus_examples, load_test_set, prompt_text, test_exprs, train_problems, worked_solution, \
    write_atomic
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig, autocast, completion_logprobs, generate, pack, pick_device
from verifier import FORMAT_REWARD, STYLE_NAMES, outcome_reward, solution_style

# -----------------------------------------------------------------------------
# The loss, one small function per concept.
#
# A group is the G completions o_1..o_G sampled for one prompt q, with verifier rewards r_1..r_G.
# logp_it = log pi_theta(o_it | q, o_i<t); old_logp_it is the same under the policy that sampled the batch (the
# sampler's log-probs); ref_logp_it is under the frozen base. Every loss below is MINIMISED.
#
#   rgra       A_i = (r_i - mean r) / std r;  loss_it = -A_i logp_it + beta k3_it;  seq-mean-token-mean
#   grpo       same A_i;  loss_it = -min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i) + beta k3_it,
#              rho_it = exp(logp_it - old_logp_it)
#   grpo_pos   grpo with A_i replaced by max(A_i, 0): no negative feedback
#   reinforce  A_i = r_i (raw reward: no group baseline, no std);  loss_it = -A_i logp_it + beta k3_it
#   raft       A_i = 1 on the best of G (if its reward is > 0), the others dropped, beta = 0: cross-entropy on it
#   sft        A_i = 1 on the gold worked solution of each problem, beta = 0: the paper's "ft"
#
# Why GRPO and RGRA give the same gradient when mu = 1 (one update per sampled batch): the batch comes from the
# current policy, so rho_it = 1 at the update. Inside [1-eps, 1+eps] the min picks the unclipped term, whose
# gradient is A_i grad rho_it = A_i rho_it grad logp_it = A_i grad logp_it: the REINFORCE gradient. Ratio and
# clipping act only once the policy has moved away from the one that sampled (mu > 1, or a later minibatch).
# "Why is my loss 0?": at rho = 1 the GRPO loss value is -mean_i A_i = 0 for mean-centred advantages, yet its
# gradient is not 0. (RGRA's loss value is not 0 either way; only the gradient matters.)


@dataclass(frozen=True)
class LossConfig:
    """Every switch of the loss and of how it is applied. A preset is an instance; a variant is, for example,
    replace(PRESETS["grpo"], mu=2). The command-line flags are made from these fields."""

    objective: str = "pg"  # pg: policy gradient on samples | raft: the best of G | sft: gold solutions
    baseline: str = "mean"  # mean | loo (leave-one-out) | none (raw reward)
    std_norm: bool = True  # divide advantages by the group std
    adv_sign: str = "both"  # both | pos: max(A, 0) | neg: min(A, 0)
    ratio: bool = False  # policy term rho * A (PPO, GRPO) instead of -A * logp (REINFORCE, RGRA)
    clip: bool = False  # clip rho to [1 - eps_low, 1 + eps_high] (needs ratio)
    eps_low: float = 0.2  # clip range below 1
    eps_high: float = 0.2  # clip range above 1
    beta: float = 0.005  # weight of the KL term
    kl_estimator: str = "k3"  # k1 | k2 | k3
    agg: str = "seq-mean-token-mean"  # | token-mean | seq-sum-norm
    agg_constant: float = 72.0  # seq-sum-norm's constant: the completion budget (the command line sets it)
    skip_zero_var: bool = False  # drop the groups whose rewards are all equal
    mu: int = 1  # updates per sampled batch
    minibatches: int = 1  # optimizer steps per update (the batch split)
    micro_batch: int = 0  # rows per forward/backward (0 = the whole minibatch); changes memory, not the gradient
    grad_clip: float = 1.0  # max gradient norm (0 = off)

    def __post_init__(self):  # a ValueError that starts with the name of the first field that cannot work
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name, low, closed in (("eps_low", 0, False), ("eps_high", 0, False), ("beta", 0, True),
                                  ("agg_constant", 0, False), ("grad_clip", 0, True), ("mu", 1, True),
                                  ("minibatches", 1, True), ("micro_batch", 0, True)):
            x = getattr(self, name)
            if not (math.isfinite(x) and (x >= low if closed else x > low) and (name != "eps_low" or x < 1)):
                raise ValueError(f"{name} must be a finite number {'>=' if closed else '>'} {low}"
                                 f"{' and < 1' if name == 'eps_low' else ''}; got {x!r}")
        if self.clip and not self.ratio:
            raise ValueError("clip needs ratio (clipping acts on the ratio): pass --ratio, or --no-clip")


CHOICES = dict(objective=("pg", "raft", "sft"), baseline=("mean", "loo", "none"), adv_sign=("both", "pos", "neg"),
               kl_estimator=("k1", "k2", "k3"), agg=("seq-mean-token-mean", "token-mean", "seq-sum-norm"))
rgra = LossConfig()
grpo = replace(rgra, ratio=True, clip=True)
PRESETS = dict(rgra=rgra, grpo=grpo, grpo_pos=replace(grpo, adv_sign="pos"),
               reinforce=replace(rgra, baseline="none", std_norm=False),
               raft=replace(rgra, objective="raft", baseline="none", std_norm=False, beta=0.0),
               sft=replace(rgra, objective="sft", baseline="none", std_norm=False, beta=0.0))


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


def rl_loss(logp, old_logp, ref_logp, adv, mask, cfg, n_seqs, n_tokens):
    """The per-micro-batch loss of cfg (a LossConfig): policy term + beta * KL, aggregated. logp, old_logp, ref_logp,
    mask: (N, L); adv: (N,); ref_logp is read only when beta > 0. Returns it and detached ratio statistics (sums)."""
    old_logp = torch.where(mask, old_logp, logp.detach())  # padding holds arbitrary numbers: keep exp() finite
    if cfg.ratio:
        per_token, rho, clipped = policy_term_ratio(logp, old_logp, adv, cfg.clip, cfg.eps_low, cfg.eps_high)
    else:
        per_token, rho, clipped = policy_term_reinforce(logp, adv), torch.exp(logp - old_logp), mask & False
    if cfg.beta > 0:
        ref_logp = torch.where(mask, ref_logp, logp.detach())
        per_token = per_token + cfg.beta * kl_estimate(logp, ref_logp, cfg.kl_estimator)
    rho = rho.detach()[mask]
    stats = dict(tokens=len(rho), ratio_sum=rho.sum().item(), ratio_max=rho.max().item() if len(rho) else 1.0,
                 clipped=(clipped & mask).sum().item())
    return aggregate(per_token, mask.float(), cfg.agg, n_seqs, n_tokens, cfg.agg_constant), stats


# -----------------------------------------------------------------------------
# One RL step: sample, score, advantages, learn


def sample_batch(policy, tok, args, step, device):
    """This step's problems and their completions: G samples each, or for sft the gold worked solutions."""
    np_rng, gen = step_rngs(args.seed, step, stream=2)
    problems = train_problems(RL_LEVEL, args.prompts, np_rng)
    if args.loss.objective == "sft":
        return problems, pack_examples(tok, problems, [worked_solution(p.expr) for p in problems], device)
    with autocast(device):
        return problems, generate(policy, [tok.encode(prompt_text(p)) for p in problems], args.max_new_tokens,
                                  tok.eos_id, tok.pad_id, args.group, args.temperature, generator=gen)


def score_batch(tok, problems, batch):
    """(B, G) verifier rewards (the final answer only), and the solution style of each completion (for the logs)."""
    texts = decode_completions(tok, batch)
    G = len(texts) // len(problems)
    rewards = torch.tensor([outcome_reward(t, problems[i // G]) for i, t in enumerate(texts)])
    return rewards.view(len(problems), G), [solution_style(t, problems[i // G].expr) for i, t in enumerate(texts)]


def advantages_for(rewards, cfg):
    """(B, G) rewards -> (B*G,) advantages and (B*G,) rows to learn from. RAFT and SFT are the REINFORCE term with
    advantage 1 on the rows they keep (and beta 0): cross-entropy on those rows, with no loss of their own."""
    if cfg.objective == "pg":
        adv = group_advantages(rewards, cfg.baseline, cfg.std_norm, cfg.adv_sign)
    elif cfg.objective == "raft":
        adv = best_of_group(rewards)  # the best sample of each group, if any is right
    else:
        adv = torch.ones_like(rewards)  # sft: every gold solution
    keep = adv > 0 if cfg.objective != "pg" else torch.ones_like(rewards, dtype=torch.bool)
    if cfg.skip_zero_var:
        keep = keep & ~zero_variance_groups(rewards)[:, None]
    return adv.flatten(), keep.flatten()


def learn(policy, opt, batch, ref_logp, adv, keep, cfg, temperature, gen):
    """The algorithm: mu passes over the kept rows, each split into cfg.minibatches optimizer steps, each
    accumulated over micro-batches whose denominators count the whole minibatch (pitfall 10). Returns the loss
    statistics of every micro-batch and the gradient norm of every optimizer step."""
    rows, records, norms, device = keep.nonzero().flatten(), [], [], batch.tokens.device
    for _ in range(cfg.mu if len(rows) else 0):
        for mb in rows[torch.randperm(len(rows), generator=gen).to(device)].chunk(cfg.minibatches):
            n_seqs, n_tokens = len(mb), batch.mask[mb].sum().item()
            opt.zero_grad(set_to_none=True)
            for micro in mb.split(cfg.micro_batch or len(mb)):
                with autocast(device):
                    logp = completion_logprobs(policy, batch, temperature, micro)
                loss, stats = rl_loss(logp, batch.logprobs[micro], None if ref_logp is None else ref_logp[micro],
                                      adv[micro], batch.mask[micro], cfg, n_seqs, n_tokens)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss ({loss.item()})")
                loss.backward()
                records.append(dict(stats, loss=loss.item()))
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or math.inf)
            if not torch.isfinite(norm):
                raise FloatingPointError(f"non-finite gradient norm ({norm.item()})")
            opt.step()
            norms.append(norm.item())
    return records, norms


def rl_step(policy, ref, opt, tok, args, step, device):
    """Sample, score, compute advantages, learn. Returns the step's metrics row."""
    t0 = time.perf_counter()
    problems, batch = sample_batch(policy, tok, args, step, device)
    t1 = time.perf_counter()
    rewards, styles = score_batch(tok, problems, batch)
    adv, keep = advantages_for(rewards.to(device), args.loss)
    ref_logp = None  # the frozen base's log-probs: only the KL term needs them, so beta = 0 skips this forward
    if args.loss.beta > 0:
        with torch.no_grad(), autocast(device):
            ref_logp = completion_logprobs(ref, batch, args.temperature)
    t2 = time.perf_counter()
    records, norms = learn(policy, opt, batch, ref_logp, adv, keep, args.loss, args.temperature,
                           step_rngs(args.seed, step, stream=3)[1])
    times = dict(t_sample=t1 - t0, t_score=t2 - t1, t_learn=time.perf_counter() - t2)
    return step_metrics(step, rewards, styles, adv, keep, batch, args.loss.objective != "sft", ref_logp, records,
                        norms, times)


def step_metrics(step, rewards, styles, adv, keep, batch, sampled, ref_logp, records, norms, times):
    """Everything logged about one step, in one place. KL (k3 to the base, when beta > 0 had its log-probs
    computed) and entropy (-log pi) are averaged over the sampled tokens; sft (gold text) has no samples for them."""
    mask, tokens = batch.mask, sum(r["tokens"] for r in records) or 1
    per_token = lambda x: ((x * mask).sum() / mask.sum()).item()  # the mean over the real tokens
    return dict(step=step, reward=rewards.mean().item(), batch_acc=(rewards >= 1).float().mean().item(),
                zero_var=zero_variance_groups(rewards).float().mean().item(), adv_mean=adv.mean().item(),
                adv_std=adv.std().item() if adv.numel() > 1 else 0.0, kept=keep.float().mean().item(),
                kl=per_token(kl_estimate(batch.logprobs, ref_logp, "k3")) if ref_logp is not None else None,
                entropy=per_token(-batch.logprobs) if sampled else None, resp_len=mask.sum(1).float().mean().item(),
                ratio_mean=sum(r["ratio_sum"] for r in records) / tokens, clip_frac=sum(r["clipped"] for r in records)
                / tokens, ratio_max=max((r["ratio_max"] for r in records), default=1.0), updates=len(norms),
                loss=sum(r["loss"] for r in records) / max(len(norms), 1), grad_norm=max(norms, default=0.0),
                styles={s: styles.count(s) / len(styles) for s in STYLE_NAMES}, **times)


# -----------------------------------------------------------------------------
# The warm start, in two stages like an LLM's pre-training and mid-training (data.tasks.SKILLS, HABITS): the atoms
# of the RL level and careful solutions; then a messy corpus in four styles, right at very different rates, for RL
# (answers only) to select from: RL can make the careful habit win; it does not teach new arithmetic.


SUPERVISED = replace(PRESETS["sft"], agg="token-mean")  # learn() with A = 1 on every token: mean cross-entropy


def warm_stages(args):  # (name, corpus, steps, peak lr, stream of the random draws); experiments/study.py reads it
    return (("skills", SKILLS, args.skill_steps, args.skill_lr, 1),
            ("habits", HABITS, args.habit_steps, args.habit_lr, 4))


def train_stage(model, tok, corpus, steps, lr, stream, args, device, desc):
    """Supervised steps on corpus with a fresh AdamW: learn() with advantage 1 on every example."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    for step in (bar := tqdm(range(steps), desc=desc, disable=None)):
        np_rng, gen = step_rngs(args.base_seed, step, stream)
        pairs = corpus_examples(corpus, args.warm_batch, np_rng)
        for group in opt.param_groups:  # linear warm-up over 5% of the steps, then cosine decay to 10% of lr
            group["lr"] = lr * min(1, (step + 1) / (steps // 20 + 1)) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        batch = pack_examples(tok, [p for p, _ in pairs], [STYLES[style](p.expr) for p, style in pairs], device)
        ones = torch.ones(len(pairs), device=device)
        records, _ = learn(model, opt, batch, None, ones, ones > 0, SUPERVISED, 1.0, gen)
        bar.set_postfix(loss=f"{records[0]['loss']:.3f}")


def warm_start(args, tok, device, log=print):
    """The base model: the skills stage, then the habits stage, each loaded from the cache under --base-dir or
    trained and cached under a hash of all that defines it: the stages before it, and the test sets too."""
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    model, path = GPT(config, seed=args.base_seed).to(device), None
    key = repr((config, args.base_seed, LEVELS, STEP_KINDS, sorted(test_exprs())))  # all that shapes the draws
    for name, corpus, steps, lr, stream in warm_stages(args):
        if steps == 0:  # a stage of 0 steps is left out
            continue
        key = hashlib.sha256(repr((key, corpus, steps, lr, args.warm_batch)).encode()).hexdigest()[:12]
        path = Path(args.base_dir) / f"base-{name}-{key}.pt"
        if path.exists():
            model.load_state_dict(load_checkpoint(path, device, "delete it and this stage is trained again")["model"])
            log(f"warm start: loaded {path}")
        else:
            t0 = time.time()
            train_stage(model, tok, corpus, steps, lr, stream, args, device, f"warm start, {name}")
            save_atomic({"model": model.state_dict(), "seconds": time.time() - t0}, path)
            log(f"warm start: trained {name} ({steps} steps) in {time.time() - t0:.0f}s, saved {path}")
    return model, path


# -----------------------------------------------------------------------------
# Evaluation on the frozen test sets


@torch.no_grad()
def sample_texts(model, tok, prompts, k, temperature, max_new_tokens, device, seed=0, chunk=1024):
    """k completions per prompt text (greedy at temperature 0) as texts, prompt-major, and their lengths in tokens
    (EOS included). Prompt i's samples are seeded by seed + i: the chunking changes nothing."""
    texts, lengths, per = [], [], max(1, chunk // k)
    for i in range(0, len(prompts), per):
        part = prompts[i:i + per]
        with autocast(device):
            r = generate(model, [tok.encode(p) for p in part], max_new_tokens, tok.eos_id, tok.pad_id, k,
                         temperature, seeds=range(seed + i, seed + i + len(part)))
        texts += decode_completions(tok, r)
        lengths += r.mask.sum(1).tolist()
    return texts, lengths


def evaluate(model, tok, level, n, max_new_tokens, device):
    """Greedy outputs on the first n test problems of level: accuracy, mean length, and how many outputs are in
    each solution style (verifier.solution_style)."""
    problems = load_test_set(level)[:n]
    texts, lengths = sample_texts(model, tok, [prompt_text(p) for p in problems], 1, 0.0, max_new_tokens, device)
    styles = Counter(solution_style(t, p.expr) for t, p in zip(texts, problems))
    return dict(acc=float(np.mean([outcome_reward(t, p) >= 1 for t, p in zip(texts, problems)])),
                len=float(np.mean(lengths)), styles={s: styles[s] for s in STYLE_NAMES})


def step_accuracy(model, tok, level, max_new_tokens, device):
    """The atoms: up to 200 distinct steps x<op>y of each kind that occurs in the careful solutions of level
    (atom_check_steps), each posed as a problem of its own ("Q:4+54"). Greedy accuracy per step kind."""
    steps = [(expr, z, kind) for kind, facts in atom_check_steps(level).items() for expr, z in facts.items()]
    texts, _ = sample_texts(model, tok, [f"Q:{expr}\n" for expr, _, _ in steps], 1, 0.0, max_new_tokens, device)
    right = [(outcome_reward(t, z) >= 1, kind) for t, (_, z, kind) in zip(texts, steps)]
    return {k: float(np.mean([ok for ok, kind in right if kind == k])) for k in STEP_KINDS}


def pass_at_k(model, tok, level, n, k_max, max_new_tokens, device):
    """pass@k, k = 1, 2, 4, ..., k_max, on the first n test problems: from k_max samples each at T = 1, the unbiased
    1 - C(k_max - c, k) / C(k_max, k) for c right, averaged. RL that sharpens lifts small k, not large k."""
    problems = load_test_set(level)[:n]
    texts, _ = sample_texts(model, tok, [prompt_text(p) for p in problems], k_max, 1.0, max_new_tokens, device)
    right = [sum(outcome_reward(t, p) >= 1 for t in texts[i * k_max:(i + 1) * k_max]) for i, p in enumerate(problems)]
    ks = sorted({2**j for j in range(int(math.log2(k_max)) + 1)} | {k_max})
    return {str(k): float(np.mean([1 - math.comb(k_max - c, k) / math.comb(k_max, k) for c in right])) for k in ks}


def evaluate_all(model, tok, args, device, full=True):
    """Greedy on the RL and OOD levels; with full (base and final), also the RL level's atoms and pass@k."""
    ev = {lvl: evaluate(model, tok, lvl, args.eval_n, args.max_new_tokens, device) for lvl in (RL_LEVEL, OOD_LEVEL)}
    if full:
        ev[RL_LEVEL]["steps"] = step_accuracy(model, tok, RL_LEVEL, args.max_new_tokens, device)
        ev[RL_LEVEL]["pass@k"] = pass_at_k(model, tok, RL_LEVEL, args.pass_n, args.pass_k, args.max_new_tokens, device)
    return ev


def base_evaluation(base, tok, args, device, base_path):
    """evaluate_all of the base, cached beside it: every run of a sweep starts from the same numbers."""
    spec = [args.eval_n, args.pass_n, args.pass_k, args.max_new_tokens, device.type, FORMAT_REWARD, STYLE_NAMES,
            STEP_KINDS, "atom_check_steps(200)", RL_LEVEL, OOD_LEVEL]
    path = Path(base_path).with_suffix(f".eval-{hashlib.sha256(repr(spec).encode()).hexdigest()[:8]}.json")
    if not path.exists():
        write_atomic(path, json.dumps(evaluate_all(base, tok, args, device)))
    return json.loads(path.read_text())


# -----------------------------------------------------------------------------
# The run: RL steps with evaluations and checkpoints, then the summary and its plot


def train(args, log=print):
    """The whole job: the summary (also in summary.json), or None if the first Ctrl-C stopped it after a step and
    a checkpoint (a second Ctrl-C stops at once: KeyboardInterrupt)."""
    device, tok, stop = pick_device(args.device), get_tokenizer(), []
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir, ref, policy, opt, first_step, base_path = start_run(args, tok, device, log)
    log(f"device {device}; model {policy.num_params():,} params; run dir {run_dir}; {args.loss}")
    if first_step == 0:
        log_eval(run_dir, -1, base_evaluation(policy, tok, args, device, base_path), log)  # step -1: the base
    def on_ctrl_c(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)
        print("\nCtrl-C: finishing this step, saving a checkpoint, then exiting (Ctrl-C again to abort)")
    previous_handler, saved = signal.signal(signal.SIGINT, on_ctrl_c), first_step - 1
    try:
        for step in (bar := tqdm(range(first_step, args.steps), desc=f"RL {args.preset}", disable=None,
                                 initial=first_step, total=args.steps)):
            try:
                row = rl_step(policy, ref, opt, tok, args, step, device)
            except FloatingPointError as e:  # learn() found a non-finite loss or gradient
                raise SystemExit(f"stopping at step {step}: {e}. The last good checkpoint, {run_dir / 'ckpt.pt'} "
                                 f"(step {saved}), was not touched. Try a lower --lr.")
            append_jsonl(run_dir / "metrics.jsonl", row)
            bar.set_postfix(reward=f"{row['reward']:.2f}", len=f"{row['resp_len']:.0f}")
            if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
                log_eval(run_dir, step, evaluate_all(policy, tok, args, device, full=False), log)
            if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps or stop:
                save_atomic({"model": policy.state_dict(), "opt": opt.state_dict(), "step": step}, run_dir / "ckpt.pt")
                saved = step
            if stop:
                log(f"stopped after step {step}; continue with the same command plus --resume (run dir {run_dir})")
                return None
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    truncate_jsonl(run_dir / "eval.jsonl", args.steps - 2)  # a run resumed after its last step redoes this eval
    log_eval(run_dir, args.steps - 1, evaluate_all(policy, tok, args, device), log)
    rows, evals = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(run_dir / "eval.jsonl")
    last = lambda key: None if rows[-1][key] is None else float(np.mean([r[key] for r in rows[-5:]]))  # smoothed
    summary = dict(base=evals[0], final=evals[-1], steps=len(rows), base_path=str(base_path),
                   last_steps={key: last(key) for key in ("reward", "kl", "entropy", "resp_len")},
                   times={k: sum(r[k] for r in rows) for k in ("t_sample", "t_score", "t_learn")})
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    plot_run(run_dir, rows, evals)
    return summary


def print_summary(summary, run_dir, seconds):
    b, f = summary["base"], summary["final"]
    rows = [(f"{lvl} greedy accuracy", b[lvl]["acc"], f[lvl]["acc"]) for lvl in (RL_LEVEL, OOD_LEVEL)]
    rows += [(f"{RL_LEVEL} length (tokens)", b[RL_LEVEL]["len"], f[RL_LEVEL]["len"])] + [(f"{RL_LEVEL} step, {k}", x,
             f[RL_LEVEL]["steps"][k]) for k, x in b[RL_LEVEL]["steps"].items()]  # the atoms, each posed alone
    rows += [(f"{RL_LEVEL} pass@{k}", b[RL_LEVEL]["pass@k"][k], x) for k, x in f[RL_LEVEL]["pass@k"].items()]
    lines = [f"{'':>28} {'base':>8} {'trained':>8}"] + [f"{n:>28} {x:8.3f} {y:8.3f}" for n, x, y in rows]
    lines.append(f"{RL_LEVEL} greedy outputs by solution style, base -> trained: " + ", ".join(
        f"{k} {n} -> {f[RL_LEVEL]['styles'][k]}" for k, n in b[RL_LEVEL]["styles"].items()))
    t = summary["times"]
    print("\n".join(lines + [f"RL time: sampling {t['t_sample']:.0f}s, scoring {t['t_score']:.0f}s, learning "
                             f"{t['t_learn']:.0f}s; whole job {seconds:.0f}s; plot {run_dir / 'run.png'}"]))


def plot_run(run_dir, rows, evals):
    """run.png: batch reward, held-out greedy accuracy, response length and the styles of the samples, per step."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    x, x_eval, fig = [r["step"] + 1 for r in rows], [e["step"] + 1 for e in evals], Figure((11, 7), layout="tight")
    panels = {"batch reward (samples at T=1)": {"": (x, [r["reward"] for r in rows])},
              "greedy accuracy": {lvl: (x_eval, [e[lvl]["acc"] for e in evals]) for lvl in (RL_LEVEL, OOD_LEVEL)},
              "response length (tokens)": {"": (x, [r["resp_len"] for r in rows])},
              "share of the sampled completions": {s: (x, [r["styles"][s] for r in rows]) for s in STYLE_NAMES}}
    for ax, (ylabel, curves) in zip(fig.subplots(2, 2).flat, panels.items()):
        for label, (xs, ys) in curves.items():
            ax.plot(xs, ys, label=label or None, marker="o" if len(xs) < 20 else None)
        ax.set(xlabel="RL steps done", ylabel=ylabel)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(str(run_dir))
    save_figure(fig, run_dir / "run.png")


# =============================================================================
# Plumbing: flags, devices, seeds, batches, the run directory, checkpoints, JSONL

RUN_FLAGS = {  # group -> (flag, default, least value allowed, help); the type is the default's
    "run": [("--seed", 0, None, "seed of the RL run"), ("--steps", 60, 1, "RL steps"), ("--lr", 1e-4, 0, "RL lr"),
            ("--threads", 0, 0, "CPU threads for torch, 0 = default"), ("--ckpt-every", 10, 1, "steps between saves")],
    "warm start": [("--base-seed", 0, None, "seed of the warm start"), ("--n-layer", 4, 1, "transformer blocks"),
                   ("--n-head", 4, 1, "attention heads"), ("--n-embd", 128, 1, "width"), ("--warm-batch", 64, 1,
                   "examples per step"), ("--skill-steps", 2500, 0, "steps of the skills stage"), ("--skill-lr", 3e-3,
                   0, "its peak lr"), ("--habit-steps", 400, 0, "steps of the habits stage"), ("--habit-lr", 1e-3, 0,
                   "its peak lr")],
    "sampling": [("--prompts", 16, 1, "prompts per RL step"), ("--group", 8, 1, "completions per prompt, G"),
                 ("--temperature", 1.0, 0, "also in the loss"), ("--max-new-tokens", 72, 1, "completion budget")],
    "evaluation": [("--eval-every", 20, 1, "RL steps between evaluations"), ("--eval-n", 500, 1, "test problems "
                   "for greedy accuracy"), ("--pass-n", 100, 1, "test problems for pass@k"), ("--pass-k", 64, 1,
                   "largest k of the pass@k curve, k = 1, 2, 4, ...")]}


def build_parser():
    p = argparse.ArgumentParser(description="Warm start, then GRPO / RGRA with every loss component a switch.",
                                epilog="presets: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    a = p.add_argument_group("run")
    a.add_argument("--preset", default="rgra", choices=list(PRESETS), help="named set of loss switches (rgra)")
    a.add_argument("--out-dir", default=None, help="run directory (default: runs/<preset>-seed<seed>)")
    either = a.add_mutually_exclusive_group()
    either.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    either.add_argument("--overwrite", action="store_true", help="delete the run in --out-dir and start again")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto: cuda, mps, cpu")
    a.add_argument("--base-dir", default="runs/bases", help="cache of warm-start checkpoints (runs/bases)")
    for group, flags in RUN_FLAGS.items():
        a = p.add_argument_group(group) if group != "run" else a
        for flag, default, _, text in flags:
            a.add_argument(flag, type=type(default), default=default, help=f"{text} ({default})")
    a = p.add_argument_group("loss switches (default: the preset's; README.md names each in TRL and verl)")
    comments = dict(re.findall(r"^    (\w+): \w+ = [^#\n]+# (.+)$", inspect.getsource(LossConfig), re.M))
    for f in fields(LossConfig):  # each switch's help is the comment beside its field
        kind = dict(action=argparse.BooleanOptionalAction) if f.type is bool else dict(type=f.type)
        a.add_argument("--" + f.name.replace("_", "-"), default=None, choices=CHOICES.get(f.name),
                       help=f"{comments[f.name]} (rgra: {f.default})", **kind)
    return p


def parse_args(argv=None):
    """The command line as a namespace whose .loss is the preset with the given switches on top. A value that
    cannot work stops here with exit status 2 and a message naming its flag and what it allows."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields(LossConfig) if getattr(args, f.name) is not None}
    for f in fields(LossConfig):
        delattr(args, f.name)
    need = sorted(len(worked_solution(p.expr)) + 1 for p in load_test_set(RL_LEVEL))  # tokens, EOS included
    try:
        for flag, default, low, _ in [f for flags in RUN_FLAGS.values() for f in flags]:
            x = getattr(args, flag[2:].replace("-", "_"))
            if low is not None and not (math.isfinite(x) and x >= low and (x > 0 or low == 0 and type(x) is int)):
                raise ValueError(f"{flag} must be a finite number {'>=' if type(x) is int else '>'} {low}, got {x}")
        args.loss = replace(PRESETS[args.preset], **{"agg_constant": float(args.max_new_tokens), **given})
        if args.group < 2 and (args.loss.std_norm or args.loss.baseline != "none" or args.loss.objective == "raft"):
            raise ValueError(f"--group must be >= 2 with a group baseline, std normalisation or raft, got {args.group}")
        if args.n_embd % args.n_head:
            raise ValueError(f"--n-embd ({args.n_embd}) must be a multiple of --n-head ({args.n_head})")
        if max(args.eval_n, args.pass_n) > TEST_SET_SIZE:
            raise ValueError(f"--eval-n and --pass-n must be <= {TEST_SET_SIZE}, the size of a test set")
        if args.max_new_tokens < need[0]:  # then no careful sample could ever be right
            raise ValueError(f"--max-new-tokens {args.max_new_tokens} is shorter than every careful {RL_LEVEL} "
                             f"solution ({need[0]} to {need[-1]} tokens with EOS)")
    except ValueError as e:
        name = str(e).split(" ")[0]  # a LossConfig message starts with its field's name
        parser.error(f"--{name.replace('_', '-')}{str(e)[len(name):]}" if hasattr(LossConfig, name) else str(e))
    args.out_dir = args.out_dir or f"runs/{args.preset}-seed{args.seed}"
    return args


def step_rngs(seed, step, stream):
    """Generators for one step, keyed by (seed, step, stream): no state to carry, so resume is exact."""
    np_rng = np.random.default_rng([seed, step, stream])
    return np_rng, torch.Generator().manual_seed(int(np_rng.integers(2**62)))


def pack_examples(tok, problems, completions, device):
    """Prompts and given completion texts (EOS appended) as a Rollout, the batch layout the losses read."""
    return pack([tok.encode(prompt_text(p)) for p in problems], [tok.encode(c) + [tok.eos_id] for c in completions],
                tok.pad_id, device)


def decode_completions(tok, rollout):
    return [tok.decode(t[m].tolist()) for t, m in zip(rollout.tokens.cpu(), rollout.mask.cpu())]


def save_figure(fig, path):  # a matplotlib Figure as a PNG, written atomically: never a half-written plot
    fig.savefig(buffer := io.BytesIO(), dpi=110, format="png")
    write_atomic(path, buffer.getvalue())


def save_atomic(obj, path):
    """torch.save, written atomically (data.tasks.write_atomic): a crash never leaves a half-written checkpoint."""
    torch.save(obj, buffer := io.BytesIO())
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path, device, what_to_do):
    """torch.load, or for a damaged file (truncated, or not a checkpoint) a one-line exit naming it."""
    try:
        return torch.load(path, map_location=device)
    except Exception as e:  # torch raises one of several types on a damaged file
        raise SystemExit(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:80]}); {what_to_do}") \
            from None


def run_settings(args):  # as config.json holds them: JSON values, without --resume and --overwrite
    return json.loads(json.dumps({k: asdict(v) if k == "loss" else v for k, v in vars(args).items()
                                  if k not in ("resume", "overwrite")}))


def start_run(args, tok, device, log):
    """The run directory, fresh or resumed, the base (the frozen KL reference), the policy and the optimizer.
    Nothing a user ran is lost: a used directory, a --resume of nothing or with other settings stop at once."""
    run_dir, now = Path(args.out_dir), run_settings(args)
    files = ("config.json", "metrics.jsonl", "eval.jsonl", "ckpt.pt", "summary.json", "run.png")  # what a run writes
    held = [name for name in files if (run_dir / name).exists()]
    if args.resume and not (run_dir / "ckpt.pt").exists():
        raise SystemExit(f"--resume: no checkpoint at {run_dir / 'ckpt.pt'}, so nothing to resume")
    saved = json.loads((run_dir / "config.json").read_text()) if args.resume else now
    if changed := {k: (saved.get(k), now.get(k)) for k in saved.keys() | now.keys() if saved.get(k) != now.get(k)}:
        raise SystemExit(f"--resume: the settings differ from {run_dir / 'config.json'} (saved, now): {changed}")
    if held and not (args.resume or args.overwrite):
        raise SystemExit(f"{run_dir} already holds a run ({', '.join(held)}): continue it with --resume, replace it "
                         f"with --overwrite, or pass another --out-dir")
    ckpt = load_checkpoint(run_dir / "ckpt.pt", device, "start again with --overwrite") if args.resume else None
    base, base_path = warm_start(args, tok, device, log)
    policy = GPT(base.config).to(device)
    policy.load_state_dict(base.state_dict() if ckpt is None else ckpt["model"])
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    if ckpt is not None:
        opt.load_state_dict(ckpt["opt"])
        for name in ("metrics.jsonl", "eval.jsonl"):
            truncate_jsonl(run_dir / name, ckpt["step"])
        log(f"resumed {run_dir} after step {ckpt['step']}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in files:  # only --overwrite gets here with any of them
            (run_dir / name).unlink(missing_ok=True)
        write_atomic(run_dir / "config.json", json.dumps(now, indent=1))
    return run_dir, base.eval().requires_grad_(False), policy, opt, 0 if ckpt is None else ckpt["step"] + 1, base_path


def append_jsonl(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


def truncate_jsonl(path, last_step):
    """Keep the rows up to last_step: what a resumed run will write again is removed first."""
    if path.exists():
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r["step"] <= last_step))


def log_eval(run_dir, step, ev, log):
    append_jsonl(run_dir / "eval.jsonl", dict(step=step, **ev))
    log(f"eval @ step {step}: " + ", ".join(f"{lvl} acc {v['acc']:.3f}" for lvl, v in ev.items()))


def main(argv=None):
    args, t0 = parse_args(argv), time.time()
    summary = train(args)
    if summary is not None:
        print_summary(summary, Path(args.out_dir), time.time() - t0)


if __name__ == "__main__":
    main()
