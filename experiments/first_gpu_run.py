"""
experiments/first_gpu_run.py: what the first GPU run must measure, in one command that writes one
JSON of the numbers. On a machine with CUDA every step runs on the GPU; on any other machine the
same steps run on the CPU, so that anyone without a GPU (and the tests) can check the script itself.

    python experiments/first_gpu_run.py           # at most about 10 minutes on a GPU
    python experiments/first_gpu_run.py --tiny    # a tiny model and short runs: about a minute

The steps, each in its own process with its own time limit, each timed:
  1. tests/test_gpu.py       the GPU tests (pytest; on a CPU they are collected and skipped)
  2. the default job          python nanorgra.py on the device: warm start, 60 RL steps, evaluation;
                              its accuracies and its RL time split into sampling, scoring, learning
  3. the sampler benchmark    experiments/bench_sampler.py --profile: sampled tokens per second,
                              and aten ops and host syncs per token step
  4. torchrun, one process    a short run under torchrun: NCCL on CUDA, gloo on the CPU
A step that fails is recorded (its exit status and the end of its output) and the next one runs.
Writes runs/first-gpu/results.json (--out).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the path above)

from data.tasks import OOD_LEVEL, RL_LEVEL  # noqa: E402
from experiments import bench_sampler  # noqa: E402
from rundir import write_atomic  # noqa: E402

TINY_MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--skill-steps", "20",
              "--habit-steps", "10", "--warm-batch", "16"]
TINY_RUN = ["--steps", "4", "--prompts", "4", "--group", "4", "--eval-n", "16", "--pass-n", "8",
            "--pass-k", "4", "--max-new-tokens", "40", "--eval-every", "2"]
LIMITS = dict(test_gpu=180, default_job=420, torchrun=120)  # seconds each step may take


def run_step(command, seconds):
    """A command in the repository root: its exit status, its seconds and the end of its
    output (a timed-out command: status "timeout")."""
    t0 = time.time()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        status, output = "timeout", (e.stdout or b"").decode(errors="replace")
    return dict(command=" ".join(command), status=status, seconds=round(time.time() - t0, 1),
                tail=output.strip().splitlines()[-3:])


def default_job(device, out, tiny):
    """python nanorgra.py on device, and what its summary says."""
    run_dir = out / "default-job"
    flags = ["--device", device, "--out-dir", str(run_dir), "--overwrite",
             "--base-dir", str(out / "bases")]
    if tiny:
        flags += TINY_MODEL + TINY_RUN
    step = run_step([sys.executable, "nanorgra.py", *flags], LIMITS["default_job"])
    summary_path = run_dir / "summary.json"
    if step["status"] == 0 and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        step.update(accuracy={level: [summary["base"][level]["acc"], summary["final"][level]["acc"]]
                              for level in (RL_LEVEL, OOD_LEVEL)},
                    rl_seconds={k: round(v, 1) for k, v in summary["times"].items()})
    return step


def sampler_benchmark(device, tiny):
    """experiments/bench_sampler.py --profile, in this process: tokens/s and the counts."""
    flags = ["--device", device, "--profile"]
    if tiny:
        flags += ["--batch", "32", "--new-tokens", "16", "--repeats", "1"]
    t0 = time.time()
    measured = bench_sampler.main(flags)
    rates = {name: round(rate) for name, rate in measured["rates"].items()}
    return dict(command="python experiments/bench_sampler.py " + " ".join(flags),
                seconds=round(time.time() - t0, 1), tokens_per_second=rates,
                per_token_step={str(k): v for k, v in measured["profile"].items()})


def torchrun_job(device, out):
    """A short run under torchrun with one process: the collective calls on the device's
    backend."""
    flags = ["--device", device, "--out-dir", str(out / "torchrun"), "--overwrite",
             "--base-dir", str(out / "bases"), *TINY_MODEL, *TINY_RUN]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=1", "nanorgra.py", *flags]
    step = run_step(command, LIMITS["torchrun"])
    step["backend"] = "nccl" if device == "cuda" else "gloo"
    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model and short runs")
    p.add_argument("--out", default="runs/first-gpu", help="where the runs and results.json go")
    args = p.parse_args(argv)
    out = (REPO / args.out).resolve()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = dict(
        command="python experiments/first_gpu_run.py " + " ".join(argv or sys.argv[1:]),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=device,
        device_name=torch.cuda.get_device_name() if device == "cuda" else "CPU",
        torch=torch.__version__, cuda=torch.version.cuda, cpu_threads=torch.get_num_threads())
    t0 = time.time()
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    results["test_gpu"] = run_step(pytest, LIMITS["test_gpu"])
    results["default_job"] = default_job(device, out, args.tiny)
    results["bench_sampler"] = sampler_benchmark(device, args.tiny)
    results["torchrun"] = torchrun_job(device, out)
    results["seconds"] = round(time.time() - t0, 1)
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(f"wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
