"""
warmstart.py: the warm start, the supervised stage before RL. It teaches a small GPT arithmetic
in two stages, like an LLM's pre-training and mid-training (data.tasks.SKILLS, HABITS): the atoms
of the RL level and careful solutions; then a messy corpus in four styles, right at very different
rates, for RL (answers only) to select from: RL can make the careful habit win; it does not teach
arithmetic.

    python warmstart.py                  # the default base: found (shipped or cached) or trained
    python warmstart.py --retrain-base   # train it again (about 4 minutes on a 2-core CPU)
    python warmstart.py --base-seed 1    # the second base of the confirmations

nanorgra.py calls warm_start() first; the bases of the default settings (seeds 0 and 1) ship in
bases/, so RL starts at once. A base is found by a key computed from what it is made of (bases.py):
edit a style, a generator, a level or the model, and the next run trains a new base, saying why.
"""

import functools
import math
from pathlib import Path
from typing import NamedTuple

import torch

import bases
import flags
import rundir
from batches import packed_examples, prefetched
from data.tasks import HABITS, SKILLS, STREAMS, STYLES, TESTED_LEVELS, corpus_examples, step_rngs
from data.tokenizer import get_tokenizer
from distributed import pick_device
from model import GPT, GPTConfig, packed_logprobs


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
    (reading it as a number would make a GPU wait). It is nanorgra.learn() with advantage 1 on
    every token (the sft preset, token-mean), on packed rows."""
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


def stage_pairs(stage, step, base_seed, n):
    """The n (problem, style) pairs of one step of a stage, drawn from the stage's corpus with the
    step's own generator (experiments/study.py replays them to keep its problems apart from every
    one a warm start trained on)."""
    np_rng, _ = step_rngs(base_seed, step, stage.stream)
    return corpus_examples(stage.corpus, n, np_rng)


def stage_batch(tok, stage, step, args, device):
    """The packed batch of one step of a stage: args.warm_batch pairs, each written in its style."""
    pairs = stage_pairs(stage, step, args.base_seed, args.warm_batch)
    texts = [STYLES[style](p.expr) for p, style in pairs]
    return packed_examples(tok, [p for p, _ in pairs], texts, device)


def train_stage(model, tok, stage, args):
    """Supervised steps on the stage's corpus, with a fresh AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.0, betas=(0.9, 0.95))
    bar = rundir.progress(range(stage.steps), f"warm start, {stage.name}")
    # the next steps' batches are made by a worker while this one computes (host work off the
    # device's critical path); each step's draws are its own, so they are a plain loop's batches
    batches = prefetched(lambda step: stage_batch(tok, stage, step, args, model.device),
                         range(stage.steps))
    for step, batch in zip(bar, batches):
        for group in opt.param_groups:
            group["lr"] = stage_lr(stage, step)
        loss = supervised_step(model, opt, batch)
        if step % 100 == 0 or step == stage.steps - 1:  # a look at the loss, now and then
            bar.set_postfix(loss=f"{loss.item():.3f}")


# -----------------------------------------------------------------------------
# The base: each stage's weights found by their key, or trained and saved


# The warm start trains with torch's default number of CPU threads, whatever --threads says: the
# thread count changes the order of float sums, so a base trained with another would differ in its
# last digits (pitfall 11), and the sweep's one-thread workers share the default job's base.
WARM_START_THREADS = torch.get_num_threads()


def stage_keys(args, tok):
    """Each stage's (Stage, key, parts, file name): the parts are what the warm start trains on
    (the corpus probe, the test sets it leaves out) and how (its code, the model's configuration
    and seed, the stage's settings, the stages before it); the key is their hash."""
    common = dict(
        corpus=bases.corpus_probe(tok),
        code=bases.code_fingerprint(train_stage, GPT),
        model=bases.digest((model_config(args, tok), args.base_seed, args.precision)),
        test_sets=bases.test_sets_fingerprint(TESTED_LEVELS))
    keys, before = [], None
    for stage in warm_stages(args):
        if stage.steps == 0:  # a stage of 0 steps is left out
            continue
        settings = (stage.name, stage.corpus, stage.steps, stage.lr, stage.stream, args.warm_batch)
        parts = dict(common, stage=bases.digest(settings), before=before)
        before = bases.digest(parts)[:12]
        keys.append((stage, before, parts, f"base-{stage.name}-{before}.pt"))
    return keys


def model_config(args, tok):
    return GPTConfig(vocab_size=tok.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd)


def warm_start(args, tok, device, log=print):
    """The base model and the path of its weights: the last stage whose base is found (shipped or
    cached, bases.find_base) is loaded, and the stages after it are trained and cached under
    --base-dir; --retrain-base trains every stage."""
    model = GPT(model_config(args, tok), seed=args.base_seed, precision=args.precision).to(device)
    keys = stage_keys(args, tok)
    found = [None if args.retrain_base else bases.find_base(name, args.base_dir)
             for *_, name in keys]
    done = max([i + 1 for i, path in enumerate(found) if path is not None], default=0)
    path = found[done - 1] if done else None
    with rundir.torch_threads(WARM_START_THREADS):
        if path is not None:
            bases.load_base(model, path)
            log(f"warm start: loaded {path}")
        for stage, key, parts, name in keys[done:]:
            why = "--retrain-base" if args.retrain_base else bases.why_trained(stage.name, parts)
            log(f"warm start: training {stage.name} ({stage.steps} steps): {why}")
            record = dict(stage=stage.name, steps=stage.steps, key=key, parts=parts,
                          trained_on=rundir.machine(device, WARM_START_THREADS, args.precision))
            train = functools.partial(train_stage, model, tok, stage, args)
            path = bases.train_and_save(model, Path(args.base_dir) / name, train, record, log)
    return model, path


def main(argv=None):
    args = flags.parse_warm_start_args(argv)
    model, path = warm_start(args, get_tokenizer(), pick_device(args.device))
    print(f"base: {path} ({model.num_params():,} params)")


if __name__ == "__main__":
    main()
