"""
experiments/bench_sampler.py: check the KV-cache sampler (model.generate) against the full recompute
(model.generate_naive) and measure both, in sampled tokens per second.

    python experiments/bench_sampler.py                  # 256 rows of mix3 prompts, 64 new tokens
    python experiments/bench_sampler.py --compare-hf     # also transformers' generate() (CPU)
    python experiments/bench_sampler.py --profile        # also aten ops and host syncs per step
    python experiments/bench_sampler.py --rl-limit runs/rgra-seed0   # a run's RL time vs its floor
    python experiments/bench_sampler.py --device cuda    # on a GPU, with a bf16 row

The self-check first: the same 8 prompts x 2 samples from both samplers must give the same tokens
and log-probs (in float32 on the device; tests/test_gpu.py checks bf16 on CUDA, where a near-tie
between two tokens may be decided differently). Then the timing: every row runs for the whole
budget (an EOS id outside the vocabulary), the samplers take turns over --repeats rounds so that
load from other processes hits them alike, and the best round of each is reported.

Where the sampler's time went on the CPU (torch.profiler, measured when this was `python model.py`):
with SDPA in the one-token decode step, half of it went to that attention (2-3.5 ms per layer and
step at one thread: one tiny matrix product per row and head) and a third to the linear layers.
GPT.decode_step now writes attention as elementwise products and sums streaming through a
slot-major cache (slot s of every row is one contiguous block), a scratch buffer takes the products,
and the mask is built once per step (and not at all when nothing is padding): that attention takes
about 1 ms per layer and step at one thread (0.7 at two), bound by reading the cache from memory,
and the linear layers are the largest share (~40%). Dropping finished rows matters for RL batches,
whose rows end at very different steps.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

import numpy as np
import torch

from data.tasks import LEVELS, RL_LEVEL, load_test_set, prompt_text, sample_problems
from data.tokenizer import get_tokenizer
from distributed import pick_device
from model import CHECK_EVERY, GPT, GPTConfig, completion_logprobs, generate, generate_naive, \
    left_pad

# An EOS id outside the vocabulary keeps every row running for the full budget: a fixed-length
# timing.
NEVER = -1


def self_check(model, prompts, pad_id):
    """The KV cache changes the cost, not the result: the same tokens and log-probs as the full
    recompute, and the sampler's log-probs equal to the training forward's. Returns the largest
    |sampler - training| log-prob difference."""
    few = prompts[:8]
    a = generate(model, few, 16, NEVER, pad_id, num_samples=2, seeds=range(8))
    b = generate_naive(model, few, 16, NEVER, pad_id, num_samples=2, seeds=range(8))
    assert torch.equal(a.tokens, b.tokens), "KV-cache and full-recompute samples differ"
    same_logprobs = torch.allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert same_logprobs, "KV-cache and full-recompute log-probs differ"
    with torch.no_grad():
        logp = completion_logprobs(model, a, 1.0)
    return (logp - a.logprobs).abs().max().item()


def timed_rates(samplers, repeats, device):
    """Sampled tokens per second of each sampler (name -> a function that samples the batch and
    returns how many tokens it sampled), from the best of `repeats` timings. The samplers take
    turns (A, B, C, A, B, C, ...) so that load from other processes hits them alike."""
    best, tokens = {}, {}
    for _ in range(repeats):
        for name, sample in samplers.items():
            t0 = time.perf_counter()
            tokens[name] = sample()
            if device.type == "cuda":
                torch.cuda.synchronize()  # kernels run asynchronously: wait for them first
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    return {name: tokens[name] / best[name] for name in samplers}


def our_sampler(sampler, model, prompts, pad_id, new_tokens):
    """One of our samplers on the benchmark batch at temperature 1, as a function for
    timed_rates."""
    def sample():
        out = sampler(model, prompts, new_tokens, NEVER, pad_id, temperature=1.0,
                      seeds=range(len(prompts)))
        return out.mask.sum().item()
    return sample


def bf16_copy(model):
    """The model with precision "bf16" (the same weights)."""
    copy = GPT(model.config, precision="bf16").to(model.device)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def hf_sampler(config, prompts, pad_id, max_new_tokens):
    """Hugging Face transformers' generate() (KV cache on, sampling, top-k off) on a GPT-2 of the
    same size and the same left-padded batch, as a function for timed_rates; and its parameter
    count. transformers is not a dependency of nanoRGRA: this runs only where it is installed."""
    from transformers import GPT2Config, GPT2LMHeadModel
    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size,
                           n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                           bos_token_id=pad_id, eos_token_id=pad_id, pad_token_id=pad_id)
    hf = GPT2LMHeadModel(hf_config).eval()
    idx, valid = left_pad(prompts, pad_id, "cpu")

    def sample():
        # min_new_tokens keeps every row running, like the EOS-free timing of ours
        with torch.no_grad():
            out = hf.generate(input_ids=idx, attention_mask=valid.long(), do_sample=True, top_k=0,
                              use_cache=True, max_new_tokens=max_new_tokens,
                              min_new_tokens=max_new_tokens)
        return (out.size(1) - idx.size(1)) * out.size(0)

    return sample, sum(p.numel() for p in hf.parameters())


def profile_decode(model, prompts, pad_id, steps=(20, 40), check_every=None):
    """aten ops and host syncs per token step of generate, counted by torch.profiler: generate is
    run for steps[0] and for steps[1] new tokens (no row ever ends) and the counts' difference is
    divided by the difference of steps, which leaves the prefill and the set-up out. A host sync is
    an op that copies a number from the device to Python (aten::_local_scalar_dense: int(), bool(),
    .item(), .tolist()) or has a size only the device knows (aten::nonzero); on a GPU each one waits
    for every kernel before it. Returns, per token step, the aten ops Python called ("ops"), the
    same with the aten ops they call inside ("nested_ops"), and the host syncs ("syncs")."""
    from torch.profiler import ProfilerActivity, profile

    counts = []
    for n in steps:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(model, prompts, n, NEVER, pad_id, temperature=1.0, seeds=range(len(prompts)),
                     check_every=check_every)
        aten = [e for e in prof.events() if e.name.startswith("aten::")]
        # the ops Python called: not the ops an aten op calls inside itself
        called = [e for e in aten if e.cpu_parent is None
                  or not e.cpu_parent.name.startswith("aten::")]
        syncs = sum(e.name in ("aten::_local_scalar_dense", "aten::nonzero") for e in aten)
        counts.append(np.array([len(called), len(aten), syncs]))
    per_step = (counts[1] - counts[0]) / (steps[1] - steps[0])
    return dict(ops=float(per_step[0]), nested_ops=float(per_step[1]), syncs=float(per_step[2]))


def matmul_peak(size=2048, repeats=5):
    """This machine's float32 matrix-product speed at torch's thread count, in FLOP/s: the best of
    a few (size x size) @ (size x size) products, 2 size^3 FLOPs each."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def rl_flops(run_dir):
    """The matrix-product FLOPs a finished run's RL steps needed, counted on real tokens only
    (padding and finished rows left out; the completions' lengths from the run's metrics, a
    prompt's length the mean of the test set's): per token a forward costs 2 FLOPs per weight of the
    blocks and the head (the embeddings are lookups), a backward twice that. Sampling runs the
    forward once per generated token and once per prompt token of each prompt (the prefill); the
    reference runs it on every prompt and completion token; the policy forward and backward, 3
    forwards' worth, on the same tokens. Returns FLOPs per part for the whole run."""
    settings = json.loads((run_dir / "config.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tok = get_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=settings["n_layer"],
                       n_head=settings["n_head"], n_embd=settings["n_embd"])
    weights = 12 * config.n_layer * config.n_embd ** 2 + config.vocab_size * config.n_embd
    forward = 2 * weights  # FLOPs per token
    rows = settings["prompts"] * settings["group"]
    prompt_tokens = np.mean([len(prompt_text(p)) for p in load_test_set(RL_LEVEL)])
    generated = sum(m["resp_len"] for m in metrics) * rows
    prompts = len(metrics) * settings["prompts"] * prompt_tokens
    trained = generated + len(metrics) * rows * prompt_tokens
    reference = trained if settings["loss"]["beta"] > 0 else 0
    return dict(sampling=forward * (generated + prompts), reference=forward * reference,
                policy=3 * forward * trained)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="rows sampled at once (256)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (64)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats, the samplers taking turns; the best is reported (3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="auto", help="auto = cuda, then mps, then cpu")
    p.add_argument("--rl-limit", default=None, metavar="RUN_DIR",
                   help="a finished run's RL time split beside the time its matrix products need "
                        "at this machine's measured matmul speed; samples nothing else")
    p.add_argument("--profile", action="store_true",
                   help="also count aten ops and host syncs per token step (torch.profiler)")
    p.add_argument("--compare-hf", action="store_true",
                   help="also time transformers' GPT-2 generate() at the same size "
                        "(needs transformers)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rl_limit:
        return rl_limit(Path(args.rl_limit))
    tok = get_tokenizer()
    device = pick_device(args.device)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=128)
    model = GPT(config, seed=0).to(device).eval()
    problems = sample_problems(LEVELS[RL_LEVEL], args.batch, np.random.default_rng(0))
    prompts = [tok.encode(prompt_text(p)) for p in problems]

    gap = self_check(model, prompts, tok.pad_id)
    print(f"self-check ok on {device}: KV-cache == full recompute; sampler vs training log-probs "
          f"max |diff| = {gap:.2e}")
    lens = [len(p) for p in prompts]
    where = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{torch.get_num_threads()} threads"
    print(f"model: {model.num_params():,} params ({config.n_layer} layers, {config.n_head} heads, "
          f"{config.n_embd} dims), batch {args.batch} rows, prompts {min(lens)}-{max(lens)} "
          f"tokens, {args.new_tokens} new tokens, on {device} ({where})")

    samplers = {"kv-cache": our_sampler(generate, model, prompts, tok.pad_id, args.new_tokens),
                "full-recompute": our_sampler(generate_naive, model, prompts, tok.pad_id,
                                              args.new_tokens)}
    if device.type == "cuda":  # and as --precision bf16 samples there
        samplers["kv-cache, bf16"] = our_sampler(generate, bf16_copy(model), prompts, tok.pad_id,
                                                 args.new_tokens)
    hf_params = None
    if args.compare_hf and device.type != "cpu":
        print("--compare-hf times transformers on the CPU only; pass --device cpu to compare")
    elif args.compare_hf:
        samplers["hf generate"], hf_params = hf_sampler(config, prompts, tok.pad_id,
                                                        args.new_tokens)
    counts = {}
    if args.profile:  # as this device samples, and with the loop's look every CHECK_EVERY steps
        for check_every in dict.fromkeys([None, CHECK_EVERY]):
            counts[check_every or "default"] = c = profile_decode(model, prompts, tok.pad_id,
                                                                  check_every=check_every)
            when = f"looking every {check_every} steps" if check_every else "as generate runs here"
            print(f"per token step of generate, {when}: {c['ops']:.1f} aten ops called from "
                  f"Python ({c['nested_ops']:.1f} with the ops they call), {c['syncs']:.3f} host "
                  f"syncs (torch.profiler)")
    rates = timed_rates(samplers, args.repeats, device)
    for name, rate in rates.items():
        note = f" (transformers GPT-2, {hf_params:,} params)" if name == "hf generate" else ""
        print(f"{name:>15}: {rate:,.0f} sampled tokens/s{note}")
    print(f"speed-up (kv-cache / full-recompute): "
          f"{rates['kv-cache'] / rates['full-recompute']:.1f}x")
    if "hf generate" in rates:
        print(f"kv-cache / hf generate: {rates['kv-cache'] / rates['hf generate']:.2f}x")
    return dict(rates=rates, profile=counts, device=str(device), where=where)


def rl_limit(run_dir):
    """Print and return a run's RL seconds (sampling, scoring, learning) beside the seconds its
    matrix products need at the measured peak."""
    peak = matmul_peak()
    flops = rl_flops(run_dir)
    times = json.loads((run_dir / "summary.json").read_text())["times"]
    floor = {part: f / peak for part, f in flops.items()}
    parts = ", ".join(f"{key[2:]} {seconds:.1f}s" for key, seconds in times.items())
    print(f"{run_dir}: RL took {parts} ({sum(times.values()):.1f}s)")
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads): the matrix "
          f"products need sampling {floor['sampling']:.1f}s, reference {floor['reference']:.1f}s, "
          f"policy {floor['policy']:.1f}s ({sum(floor.values()):.1f}s, "
          f"{sum(flops.values()) / 1e12:.2f} TFLOP)")
    return dict(times=times, peak_flops=peak, flops=flops, floor_seconds=floor)


if __name__ == "__main__":
    main()
