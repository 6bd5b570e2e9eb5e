"""
experiments/bench_host.py: where a step's time goes, on the host (Python: drawing problems, writing
and tokenising texts, packing, launching ops, the verifier) and in compute, for the warm start's two
stages and each part of an RL step; and the warm start's steps with their batches made ahead by a
worker (batches.prefetched) against a plain loop, from the same weights, to the same bits.

    python experiments/bench_host.py                  # about 3 minutes on a 2-core CPU
    python experiments/bench_host.py --steps 100 --rl-steps 5

How the two are told apart. Warm start: the host's work is stage_batch (timed alone), the compute is
supervised_step. RL step: the verifier and the decoding of the texts are host work; sampling, the
reference's forward and learn() are both, so each is also run on a hollow model, the same layers and
heads at width n_head (so every op is launched as often, on almost no numbers): its time is the
host's share (Python and op dispatch), and the rest is compute. On a GPU the host's share is what a
step cannot go below however fast the device; docs/gpu.md builds its H100 estimate from these.
Writes data/results/host_and_compute.json (with the command, the machine and the seconds).
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

import numpy as np
import torch

import nanorgra
import rundir
import warmstart
from batches import decode_completions, prefetched
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def warm_stage(tok, stage, args, steps):
    """One stage's first `steps` steps twice from the same weights: a plain loop (its host and
    compute timed apart) and the prefetched loop (the step's wall time). Returns ms per step and
    whether the two loops end in the same weights, bit for bit."""
    model = GPT(warmstart.model_config(args, tok), seed=args.base_seed)
    twins = [copy.deepcopy(model), copy.deepcopy(model)]
    opts = [torch.optim.AdamW(m.parameters(), lr=stage.lr, weight_decay=0.0, betas=(0.9, 0.95))
            for m in twins]
    host, compute = [], []
    for step in range(steps):  # the plain loop
        batch, seconds = timed(warmstart.stage_batch, tok, stage, step, args, "cpu")
        host.append(seconds)
        compute.append(timed(warmstart.supervised_step, twins[0], opts[0], batch)[1])
    batches = prefetched(lambda step: warmstart.stage_batch(tok, stage, step, args, "cpu"),
                         range(steps))
    t0 = time.perf_counter()
    for batch in batches:  # the prefetched loop
        warmstart.supervised_step(twins[1], opts[1], batch)
    ahead = (time.perf_counter() - t0) / steps
    same = all(torch.equal(a, b) for a, b in zip(twins[0].state_dict().values(),
                                                  twins[1].state_dict().values()))
    return dict(host_ms=1000 * np.mean(host), compute_ms=1000 * np.mean(compute),
                plain_ms=1000 * (np.mean(host) + np.mean(compute)), prefetched_ms=1000 * ahead,
                same_weights=same, steps=steps)


def rl_parts(models, tok, args, steps):
    """ms a step of each RL part, over `steps` steps of the default job from the base, and of its
    host's share: the hollow model's time on the same batch (its sampling scaled to the same number
    of token steps, since its samples never end). models: (policy, ref, hollow)."""
    policy, ref, empty = models
    opts = [torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
            for m in (policy, empty)]
    full, host = ({k: [] for k in ("sample", "decode", "reference", "score", "learn")}
                  for _ in range(2))
    for step in range(steps):
        problems, seeds = nanorgra.step_prompts(args, step)
        rollout, t = timed(nanorgra.sample_batch, policy, tok, problems, seeds, args)
        full["sample"].append(t)
        hollow_rollout, t = timed(nanorgra.sample_batch, empty, tok, problems, seeds, args)
        host["sample"].append(t * rollout.tokens.size(1) / hollow_rollout.tokens.size(1))
        texts, t = timed(decode_completions, tok, rollout)
        full["decode"].append(t)
        host["decode"].append(t)
        ref_logp, t = timed(nanorgra.reference_logprobs, ref, rollout, args)
        full["reference"].append(t)
        host["reference"].append(timed(nanorgra.reference_logprobs, empty, rollout, args)[1])
        (rewards, _), t = timed(nanorgra.score_batch, problems, texts, args.format_reward)
        full["score"].append(t)
        host["score"].append(t)
        adv, keep = nanorgra.advantages_for(rewards, args.loss)
        experience = nanorgra.Experience(rollout, adv, ref_logp, args.temperature, keep)
        for model, opt, times in ((policy, opts[0], full), (empty, opts[1], host)):
            gen = torch.Generator().manual_seed(step)
            times["learn"].append(timed(nanorgra.learn, model, opt, experience, args.loss,
                                        gen)[1])
    return {part: dict(step_ms=1000 * float(np.mean(full[part])),
                       host_ms=1000 * float(np.mean(host[part]))) for part in full}


def hollow(model, tok):
    """The same layers and heads at width n_head: every op launched as often, on almost nothing."""
    c = model.config
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                       n_embd=c.n_head)
    return GPT(config, seed=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="warm-start steps a stage (60)")
    p.add_argument("--rl-steps", type=int, default=4, help="RL steps of each model (4)")
    p.add_argument("--out", default="data/results/host_and_compute.json")
    opts = p.parse_args(argv)
    t0 = time.time()
    args = nanorgra.parse_args(["--device", "cpu"])
    tok = get_tokenizer()
    warm = {}
    with rundir.torch_threads(warmstart.WARM_START_THREADS):
        for stage in warmstart.warm_stages(args):
            warm[stage.name] = warm_stage(tok, stage, args, opts.steps)
            print(stage.name, {k: round(v, 2) if isinstance(v, float) else v
                               for k, v in warm[stage.name].items()})
    base, _ = warmstart.warm_start(args, tok, torch.device("cpu"))
    ref = base.eval().requires_grad_(False)
    models = (copy.deepcopy(base).requires_grad_(True), ref, hollow(base, tok))
    rl = rl_parts(models, tok, args, opts.rl_steps)
    for part, ms in rl.items():
        print(f"RL {part:<10} {ms['step_ms']:8.1f} ms a step, host {ms['host_ms']:8.1f} ms")
    payload = dict(command="python experiments/bench_host.py " + " ".join(argv or sys.argv[1:]),
                   machine=rundir.machine(torch.device("cpu"), torch.get_num_threads(), "fp32"),
                   seconds=round(time.time() - t0, 1), warm_start=warm, rl=rl,
                   rl_steps=opts.rl_steps)
    rundir.write_atomic(Path(opts.out), json.dumps(payload, indent=1))
    print(f"written {opts.out} in {payload['seconds']} s")


if __name__ == "__main__":
    main()
