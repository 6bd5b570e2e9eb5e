"""
experiments/first_gpu_run.py: what the first GPU run must measure, in one command that writes one
JSON of the numbers. On a machine with CUDA every step runs on the GPU; on any other machine the
same steps run on the CPU, so that anyone without a GPU (and the tests) can check the script itself.

    python experiments/first_gpu_run.py           # at most 10 minutes on one H100 (the limits)
    python experiments/first_gpu_run.py --tiny    # a tiny model, short runs: 1-2 minutes on a CPU

The steps (STEPS), each in its own process with its own time limit, each timed:
  test_gpu           tests/test_gpu.py (pytest; on a CPU its tests are collected and skipped)
  default_job_fp32   python nanorgra.py on the device: its accuracies, its RL time split (sampling,
                     scoring, the reference, learning), the largest |log rho| at its updates
  default_job_bf16   the same with --precision bf16 (which trains its own base: the base's key
                     holds the precision)
  probe_fp32         on one RL batch of the base (and of the fp32 job's policy): the sampler's
                     log-probs against the trainer's (max |log rho|), and GRPO's gradient against
                     RGRA's at mu = 1 (ratio range, clipped tokens, relative difference)
  probe_bf16         the same under bf16 (the trainer recomputes pi_old: rho must be 1)
  bench_sampler      experiments/bench_sampler.py --profile: sampled tokens per second, achieved
                     TFLOP/s beside the device's peak, aten ops and host syncs per token step
  mfu_rl             each default job's RL FLOPs (bench_sampler.rl_flops) over its seconds, part by
                     part: achieved TFLOP/s beside the peak, and a large matrix product's speed here
  torchrun_1         a short run under torchrun, one process: NCCL on CUDA, gloo on the CPU
  torchrun_2         the same with two processes, compared with torchrun_1 (2 or more GPUs only;
                     otherwise skipped, with the reason)
A step that fails or runs past its limit is recorded (status "failed" with its exit status, or
"timeout"; its seconds; the end of its output) and the next step runs; its whole output is in
logs/<step>.log. The limits add up to 10 minutes on one GPU (torchrun_2 skipped); they are too
short for the full-size jobs on a CPU (the bf16 base alone trains for many minutes there): use
--tiny. Writes runs/first-gpu/results.json (--out) after every step, and prints one line per step.
"""

import argparse
import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the path above)

import rundir  # noqa: E402
from data.tasks import OOD_LEVEL, RL_LEVEL  # noqa: E402

TINY_MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--skill-steps", "20",
              "--habit-steps", "10", "--warm-batch", "16"]
TINY_RUN = ["--steps", "4", "--prompts", "4", "--group", "4", "--eval-n", "16", "--pass-n", "8",
            "--pass-k", "4", "--max-new-tokens", "40", "--eval-every", "2"]
TAIL = 20  # lines of a step's output kept in results.json
AGREE = 1e-4  # GRPO's gradient vs RGRA's at mu = 1: largest difference / largest component

# Dense peak TFLOP/s from NVIDIA's data sheets (no sparsity): fp32 without tensor cores, bf16 on
# tensor cores. The first name a device's name contains is its row; any other device: unknown.
PEAK_TFLOPS = (("H200 NVL", 60, 835), ("H200", 67, 989), ("H100 NVL", 60, 835),
               ("H100 PCIe", 51, 756), ("H100", 67, 989), ("A100", 19.5, 312))


@dataclass(frozen=True)
class Run:
    """What every step sees: the device, the output folder, and --tiny."""
    device: str
    out: Path
    tiny: bool

    @property
    def one_thread(self):
        """The tiny form on a CPU computes at one thread: its ops are too small to share, and on
        a busy machine two threads wait on each other (a tiny job took 30 s at two threads and
        8 s at one, on the 2-core CPU beside two other jobs)."""
        return self.tiny and self.device == "cpu"


@dataclass(frozen=True)
class Step:
    """One step: its name, its time limit in seconds, its command (a function of the Run that
    returns the command as a list, or a sentence saying why it is skipped), and what is read
    after it exits 0 (a function of the Run that returns a dict of numbers, with a "line")."""
    name: str
    limit: int
    command: Callable
    read: Callable = None


# -----------------------------------------------------------------------------
# Running a step


def run_step(step, run):
    """step's command in the repository root, in a process group of its own (a timeout ends its
    children too): its status ("ok", "failed", "timeout" or "skipped"), exit status, seconds, the
    end of its output, and what step.read finds."""
    command = step.command(run)
    if isinstance(command, str):
        return dict(status="skipped", reason=command, seconds=0.0, line=f"skipped: {command}")
    log_path = run.out / "logs" / f"{step.name}.log"
    numbers = run.out / "steps" / f"{step.name}.json"
    shutil.rmtree(run.out / step.name, ignore_errors=True)  # a step starts from nothing of its own
    numbers.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = process.wait(timeout=step.limit)
        except subprocess.TimeoutExpired:
            code = None
        finally:  # the step's process and any it left behind
            end_group(process)
    record = dict(command=" ".join(map(str, command)), limit=step.limit,
                  seconds=round(time.time() - t0, 1), log=str(log_path))
    tail = log_path.read_text(errors="replace").strip().splitlines()[-TAIL:]
    if code is None:
        record.update(status="timeout", line=f"timed out after {step.limit} s")
    elif code != 0:
        record.update(status="failed", exit=code, line=f"exit {code}: {(tail or [''])[-1]}")
        if numbers.exists():  # a check that failed has written its numbers all the same
            record.update({k: v for k, v in json.loads(numbers.read_text()).items()
                           if k != "line"})
    else:
        record.update(status="ok", exit=0)
        try:
            record.update(step.read(run) if step.read else dict(line=(tail or ["done"])[-1]))
        except Exception as e:  # a step that ran but whose numbers cannot be read
            record.update(status="failed", line=f"its numbers could not be read: {e!r}")
    record["tail"] = tail
    return record


def end_group(process):
    """Ends the step's process and every process it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def this_script(name):
    """The command of one of the steps that run in this script (--step name)."""
    def command(run):
        return [sys.executable, str(Path(__file__).relative_to(REPO)), "--step", name,
                "--out", str(run.out)] + (["--tiny"] if run.tiny else [])
    return command


def written_by(name):
    """What a step run by this script (--step name) wrote: steps/<name>.json."""
    return lambda run: json.loads((run.out / "steps" / f"{name}.json").read_text())


# -----------------------------------------------------------------------------
# The jobs: nanorgra.py, alone or under torchrun


def job_flags(run, name, precision="fp32", tiny=False):
    return ["--device", run.device, "--precision", precision, "--out-dir", str(run.out / name),
            "--overwrite", "--base-dir", str(run.out / "bases"),
            *(TINY_MODEL + TINY_RUN if tiny else []), *(["--threads", "1"] * run.one_thread)]


def default_job(precision):
    name = f"default_job_{precision}"

    def command(run):
        return [sys.executable, "nanorgra.py", *job_flags(run, name, precision, run.tiny)]
    return Step(name, dict(fp32=100, bf16=180)[precision], command, lambda run: read_job(run, name))


def read_job(run, name):
    """A finished job's accuracies (base, trained), RL seconds, and the largest |log rho| of its
    updates (at mu = 1 the sampler's pi_old against the trainer's, or 0 under bf16, whose trainer
    recomputes pi_old)."""
    run_dir = run.out / name
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = rundir.read_jsonl(run_dir / "metrics.jsonl")
    accuracy = {level: [summary["base"][level]["acc"], summary["final"][level]["acc"]]
                for level in (RL_LEVEL, OOD_LEVEL)}
    times = {key: round(seconds, 2) for key, seconds in summary["times"].items()}
    ratios = [u[k] for r in rows for u in r["per_update"] for k in ("ratio_min", "ratio_max")]
    log_rho = max((abs(math.log(r)) if r > 0 else math.inf for r in ratios), default=0.0)
    accuracies = ", ".join(f"{level} {a:.3f} -> {b:.3f}" for level, (a, b) in accuracy.items())
    split = ", ".join(f"{key[2:]} {seconds:.1f}" for key, seconds in times.items())
    return dict(accuracy=accuracy, rl_seconds=times, max_abs_log_rho_at_updates=log_rho,
                line=f"{accuracies}; RL s: {split}; |log rho| at updates <= {log_rho:.1e}")


def torchrun_job(processes):
    name = f"torchrun_{processes}"

    def command(run):
        have = torch.cuda.device_count()
        if processes > 1 and have < processes:
            return (f"{have} CUDA device{'' if have == 1 else 's'} here: {processes} processes "
                    f"over NCCL need {processes} GPUs")
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}", "nanorgra.py",
                *job_flags(run, name, tiny=True)]

    def read(run):
        numbers = dict(backend="nccl" if run.device == "cuda" else "gloo", processes=processes)
        numbers.update(read_job(run, name))
        if processes > 1 and (run.out / "torchrun_1" / "summary.json").exists():
            numbers["against_1_process"] = compare_runs(run.out / "torchrun_1", run.out / name)
            numbers["line"] += f"; against 1 process: {numbers['against_1_process']}"
        return numbers
    return Step(name, 60, command, read)


def compare_runs(a, b):
    """The largest difference between two runs' logged metrics, step by step, and between their
    final accuracies."""
    rows = [rundir.read_jsonl(d / "metrics.jsonl") for d in (a, b)]
    diff = {key: max(abs(x[key] - y[key]) for x, y in zip(*rows))
            for key in ("reward", "loss", "kl", "resp_len", "grad_norm")
            if all(r[key] is not None for run_rows in rows for r in run_rows)}
    finals = [json.loads((d / "summary.json").read_text())["final"] for d in (a, b)]
    diff["final_acc"] = max(abs(finals[0][lvl]["acc"] - finals[1][lvl]["acc"]) for lvl in finals[0])
    return {key: float(f"{value:.3g}") for key, value in diff.items()}


# -----------------------------------------------------------------------------
# The steps run in this script (--step): probes and benchmarks, each writing steps/<name>.json


def device_peaks(name):
    """name's dense peak TFLOP/s, {"fp32": .., "bf16": ..}, or None (unknown)."""
    for key, fp32, bf16 in PEAK_TFLOPS:
        if key in name:
            return dict(fp32=fp32, bf16=bf16)
    return None


def device_name(device):
    return torch.cuda.get_device_name() if device == "cuda" else "CPU"


def achieved(flops, seconds, precision, peaks):
    """Achieved TFLOP/s, and its share of the device's peak in that precision (None: unknown)."""
    tflops = flops / seconds / 1e12 if seconds > 0 else 0.0
    peak = peaks[precision] if peaks else None
    return dict(tflops=round(tflops, 4), peak_tflops=peak,
                mfu=round(tflops / peak, 6) if peak else None)


def matmul_weights(config):
    """The weights a token's forward multiplies by (the blocks' and the head's; bench_sampler's
    count): 2 FLOPs each."""
    return 12 * config.n_layer * config.n_embd ** 2 + config.vocab_size * config.n_embd


def model_args(run):
    """The fp32 default job's settings (with --tiny, the tiny model's), as the probes use them."""
    import nanorgra
    return nanorgra.parse_args(job_flags(run, "default_job_fp32", "fp32", run.tiny))


def probe(run, precision):
    """The sampler against the trainer, and GRPO against RGRA at mu = 1, in precision on the
    device: on the base (the fp32 one, switched to precision) and on the job's final policy."""
    import warmstart
    from data.tokenizer import get_tokenizer
    args, tok = model_args(run), get_tokenizer()
    device = torch.device(run.device)
    base, base_path = warmstart.warm_start(args, tok, device, log=lambda *a: None)
    models, trained_step = dict(base=base), None
    checkpoint = run.out / f"default_job_{precision}" / "ckpt.pt"
    if checkpoint.exists():  # the job's last checkpoint: its final policy if it ran to the end
        saved = torch.load(checkpoint, map_location="cpu")
        models["trained"], trained_step = copy.deepcopy(base), saved["step"]
        models["trained"].load_state_dict(saved["model"])
    found = {}
    for name, model in models.items():
        model.precision = precision
        found[name] = probe_model(model, tok, args)
    agree = all(f["grpo_vs_rgra_grad"] <= AGREE for f in found.values())
    line = "; ".join(f"{name}: sampler vs trainer |log rho| <= {f['sampler_vs_trainer']:.1e}, "
                     f"GRPO rho in [{f['ratio_min']:.6f}, {f['ratio_max']:.6f}], clipped "
                     f"{f['clipped']}, |GRPO - RGRA| grad {f['grpo_vs_rgra_grad']:.1e}"
                     for name, f in found.items())
    return dict(found, base_path=str(base_path), trained_step=trained_step, precision=precision,
                grpo_equals_rgra=agree,
                line=f"GRPO == RGRA at mu = 1: {agree}; {line}"), agree


def probe_model(model, tok, args):
    """One RL batch (step 0's prompts) sampled by model; the trainer's log-probs against the
    sampler's; then learn() once with RGRA and once with GRPO (mu = 1, no KL, no clipping of the
    gradient, a learning rate of 0) on made-up rewards that vary in every group."""
    import nanorgra
    from model import completion_logprobs
    problems, seeds = nanorgra.step_prompts(args, 0)
    rollout = nanorgra.sample_batch(model, tok, problems, seeds, args)
    with torch.no_grad():
        gap = (completion_logprobs(model, rollout, args.temperature) - rollout.logprobs).abs()
    gap = gap[rollout.mask].float()
    groups, group = len(problems), args.group
    rewards = ((torch.arange(groups)[:, None] + torch.arange(group)) % 3 == 0).float()
    grads, stats = {}, {}
    for preset in ("rgra", "grpo"):
        cfg = nanorgra.loss_config(preset, args.max_new_tokens, grad_clip=0.0, beta=0.0)
        policy = copy.deepcopy(model).requires_grad_(True)
        adv, keep = nanorgra.advantages_for(rewards.to(model.device), cfg)
        experience = nanorgra.Experience(rollout, adv, None, args.temperature, keep)
        opt = torch.optim.SGD(policy.parameters(), lr=0.0)
        stats[preset] = nanorgra.learn(policy, opt, experience, cfg,
                                       torch.Generator().manual_seed(0))
        assert len(stats[preset].norms) == 1, "mu = 1 and one minibatch: one update"
        grads[preset] = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                                   .detach().double().flatten().cpu()
                                   for p in policy.parameters()])
    total = stats["grpo"].total
    difference = (grads["grpo"] - grads["rgra"]).abs().max() / grads["rgra"].abs().max()
    return dict(tokens=int(gap.numel()), sampler_vs_trainer=gap.max().item(),
                share_over_1e_3=round((gap > 1e-3).float().mean().item(), 4),
                ratio_min=total.ratio_min, ratio_max=total.ratio_max, clipped=int(total.clipped),
                grpo_vs_rgra_grad=difference.item())


def sampler_benchmark(run):
    """experiments/bench_sampler.py --profile on the device, and the KV-cache sampler's achieved
    TFLOP/s: sampled tokens per second x 2 FLOPs per weight of the benchmark's model."""
    from data.tokenizer import get_tokenizer
    from experiments import bench_sampler
    from model import GPTConfig
    flags = ["--device", run.device, "--profile"]
    if run.tiny:
        flags += ["--batch", "32", "--new-tokens", "16", "--repeats", "1"]
    flags += ["--threads", "1"] * run.one_thread
    measured = bench_sampler.main(flags)
    per_token = 2 * matmul_weights(GPTConfig(vocab_size=get_tokenizer().vocab_size))
    peaks = device_peaks(device_name(run.device))
    rates = {}
    for name, rate in measured["rates"].items():
        rates[name] = dict(tokens_per_second=round(rate))
        if name.startswith("kv-cache"):  # the full recompute does more than a token's FLOPs
            precision = "bf16" if name.endswith("bf16") else "fp32"
            rates[name].update(achieved(rate * per_token, 1.0, precision, peaks))
    kv = rates["kv-cache"]
    line = (f"kv-cache {kv['tokens_per_second']:,} tokens/s, {kv['tflops']:.3f} TFLOP/s "
            f"(peak {kv['peak_tflops'] or 'unknown'}); per token step "
            + ", ".join(f"{k}: {c['ops']:.0f} ops, {c['syncs']:.2f} syncs"
                        for k, c in measured["profile"].items()))
    return dict(command="python experiments/bench_sampler.py " + " ".join(flags), rates=rates,
                per_token_step={str(k): v for k, v in measured["profile"].items()},
                flops_per_token=per_token, line=line), True


def matmul_speed(device, dtype, size):
    """TFLOP/s of the best of five (size x size) products on device in dtype, after one to warm
    up: what this device reaches at best."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = math.inf
    for i in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0) if i else best
    return round(2 * size ** 3 / best / 1e12, 3)


def rl_mfu(run):
    """Each finished default job's RL matrix-product FLOPs (bench_sampler.rl_flops) over its
    seconds, by part and in all, beside the device's peak in the job's precision."""
    from experiments import bench_sampler
    peaks = device_peaks(device_name(run.device))
    size = 4096 if run.device == "cuda" else 1024
    dtypes = (torch.float32, torch.bfloat16) if run.device == "cuda" else (torch.float32,)
    numbers = dict(peak_tflops=peaks or "unknown",
                   matmul_tflops={str(d)[6:]: matmul_speed(run.device, d, size) for d in dtypes})
    lines = []
    for precision in ("fp32", "bf16"):
        run_dir = run.out / f"default_job_{precision}"
        if not (run_dir / "summary.json").exists():
            numbers[precision] = "no finished job"
            continue
        flops = bench_sampler.rl_flops(run_dir)
        times = json.loads((run_dir / "summary.json").read_text())["times"]
        parts = dict(sampling=(flops["sampling"], times["t_sample"]),
                     # the reference's kernels run while the host verifies (nanorgra.rl_step):
                     # on a GPU only the two together are its time
                     reference=(flops["reference"], times["t_reference"] + times["t_score"]),
                     learning=(flops["policy"], times["t_learn"]),
                     rl_step=(sum(flops.values()), sum(times.values())))
        numbers[precision] = {part: dict(tflop=round(f / 1e12, 4), seconds=round(s, 2),
                                         **achieved(f, s, precision, peaks))
                              for part, (f, s) in parts.items()}
        whole = numbers[precision]["rl_step"]
        lines.append(f"{precision} RL step {whole['tflops']:.3f} TFLOP/s (MFU "
                     f"{whole['mfu'] if whole['mfu'] is not None else 'unknown'})")
    line = "; ".join(lines) + f"; a matmul here: {numbers['matmul_tflops']} TFLOP/s"
    return dict(numbers, line=line), True


# the steps run in this script, with their limits in seconds
CHILD_STEPS = dict(probe_fp32=(40, lambda run: probe(run, "fp32")),
                   probe_bf16=(40, lambda run: probe(run, "bf16")),
                   bench_sampler=(60, sampler_benchmark), mfu_rl=(20, rl_mfu))

STEPS = [
    Step("test_gpu", 100, lambda run: [sys.executable, "-m", "pytest", "-q", "-p",
                                       "no:cacheprovider", "tests/test_gpu.py"]),
    default_job("fp32"),
    default_job("bf16"),
    *(Step(name, limit, this_script(name), written_by(name))
      for name, (limit, _) in CHILD_STEPS.items()),
    torchrun_job(1),
    torchrun_job(2),
]


def run_child(name, run):
    """One of CHILD_STEPS, in this process: writes steps/<name>.json; exit 1 if its check failed
    (its numbers are written all the same)."""
    if run.one_thread:
        torch.set_num_threads(1)
    numbers, passed = CHILD_STEPS[name][1](run)
    rundir.write_atomic(run.out / "steps" / f"{name}.json", json.dumps(numbers, indent=1))
    print(numbers["line"])
    if not passed:
        raise SystemExit(f"{name}: the check failed (see {run.out / 'steps' / f'{name}.json'})")


# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model and short runs")
    p.add_argument("--out", default="runs/first-gpu", help="where the runs and results.json go")
    p.add_argument("--step", choices=list(CHILD_STEPS), help=argparse.SUPPRESS)  # a step's process
    args = p.parse_args(argv)
    run = Run("cuda" if torch.cuda.is_available() else "cpu", (REPO / args.out).resolve(),
              args.tiny)
    if args.step:
        return run_child(args.step, run)
    results = dict(
        command="python experiments/first_gpu_run.py " + " ".join(argv or sys.argv[1:]),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=run.device,
        device_name=device_name(run.device), gpus=torch.cuda.device_count(),
        peak_tflops=device_peaks(device_name(run.device)) or "unknown",
        torch=torch.__version__, cuda=torch.version.cuda, cpu_threads=torch.get_num_threads(),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tiny=run.tiny, steps={})
    print(f"first GPU run on {run.device} ({results['device_name']}), {len(STEPS)} steps, "
          f"output in {run.out}", flush=True)
    t0 = time.time()
    for i, step in enumerate(STEPS):
        record = results["steps"][step.name] = run_step(step, run)
        results["seconds"] = round(time.time() - t0, 1)
        rundir.write_atomic(run.out / "results.json", json.dumps(results, indent=1))
        print(f"[{i + 1}/{len(STEPS)}] {step.name:<17} {record['status']:<8} "
              f"{record['seconds']:6.1f} s  {record['line']}", flush=True)
    counts = {s: sum(r["status"] == s for r in results["steps"].values())
              for s in ("ok", "failed", "timeout", "skipped")}
    print(f"{results['seconds']:.0f} s in all; " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f"; wrote {run.out / 'results.json'}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
