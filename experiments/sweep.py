"""
experiments/sweep.py: the ablation sweep. Every loss variant below, for several seeds, from the same
cached warm-start base with the same sample budget; then a table of means with 95% intervals, the
curves and the plots.

    python experiments/sweep.py --quick --jobs 2          # 19 variants x 3 seeds, 30 RL steps
    python experiments/sweep.py --jobs 2 --seeds 5        # 19 variants x 5 seeds, 60 RL steps
    python experiments/sweep.py --variants rgra,grpo_pos,grpo_neg --seeds 3 --steps 60

Each run is `python nanorgra.py <flags> <the variant's flags> --seed s --out-dir <sweep dir>/<run>`,
so any flag of nanorgra.py given here applies to every run. A finished run is skipped (after
checking that its settings are these), an interrupted one is resumed: run the same command again
to continue. --jobs runs that many runs at once, each in its own process: on one CPU thread each
(small models use a core each better than two cores one), or on CUDA one GPU each (round robin).

Beyond one machine, the same sweep as separate commands (GNU parallel, a Slurm array, a scheduler):

    python experiments/sweep.py --quick --print-commands > sweep.txt   # one command a line
    parallel --jobs 8 < sweep.txt                                       # for example; then
    python experiments/sweep.py --quick --collect                       # tables and plots

The first printed command trains the warm start (once: the runs load it from --base-dir);
each other line is `sweep.py ... --run <run>`: one run, skipped if finished and resumed if
interrupted. The machines must share --base-dir and --sweep-dir. Writes results.md, results.json
(with the command and its seconds), curves.json and the plots to --sweep-dir.
"""

import argparse
import json
import math
import multiprocessing
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from matplotlib.figure import Figure  # imported before any work: the plots at the end need it

import numpy as np
import torch

import nanorgra
from data.tasks import OOD_LEVEL, RL_LEVEL
from data.tokenizer import get_tokenizer
from distributed import setup_device
from rundir import read_jsonl, run_settings, save_figure, write_atomic
from verifier import STYLE_NAMES

# name -> the flags that make it from the default run (RGRA); the first 13 change one thing each
VARIANTS = {
    "rgra": ["--preset", "rgra"],
    "grpo": ["--preset", "grpo"],  # ratio and clipping; at mu = 1 the same gradient as rgra
    "grpo_pos": ["--preset", "grpo_pos"],  # positive advantages only (the paper's GRPO-pos)
    "grpo_neg": ["--preset", "grpo", "--adv-sign", "neg"],  # negative advantages only
    "reinforce": ["--preset", "reinforce"],  # raw reward, no group baseline
    "raft": ["--preset", "raft"],  # cross-entropy on the best of each group
    "sft": ["--preset", "sft"],  # cross-entropy on gold worked solutions of the same problems
    "rgra_nokl": ["--preset", "rgra", "--beta", "0"],
    "rgra_nostd": ["--preset", "rgra", "--no-std-norm"],
    "grpo_mu4": ["--preset", "grpo", "--mu", "4"],  # each batch used 4 times: clipping can act
    "grpo_mu4_noclip": ["--preset", "grpo", "--mu", "4", "--no-clip"],
    "rgra_lr": ["--preset", "rgra", "--lr", "1e-3"],  # a learning rate at which the policy drifts
    "rgra_lr_nokl": ["--preset", "rgra", "--lr", "1e-3", "--beta", "0"],
    # the recipes since GRPO, each its preset (several switches at once; REFERENCE.md section 6)
    "dr_grpo": ["--preset", "dr_grpo"],  # no std, seq-sum-norm
    "dapo": ["--preset", "dapo"],  # clip-higher, token-mean, zero-variance groups dropped, no KL
    "gspo": ["--preset", "gspo"],  # one ratio per completion; at mu = 1 grpo's gradient
    "cispo": ["--preset", "cispo"],  # clipped detached weight; at mu = 1 rgra with token-mean
    "reinforce_pp": ["--preset", "reinforce_pp"],  # batch baseline and batch std
    "rloo": ["--preset", "rloo"],  # leave-one-out, no std, seq-sum-norm
}
QUICK = ["--steps", "30", "--eval-every", "10", "--eval-n", "200", "--pass-n", "50"]  # --quick adds
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]  # Student's t, 0.975 quantile, 1 to 30 degrees of freedom


def mean_ci95(values):
    """Mean and half-width of its 95% confidence interval over seeds,
    t_{0.975, n-1} * sample std / sqrt(n), from a table of Student's t (1.96 beyond 30 seeds).
    One value has no interval (nan)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else math.nan), math.nan
    t = T_975[len(x) - 2] if len(x) - 1 <= len(T_975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


COLLAPSE_WINDOW = 5  # steps at the start and at the end that the collapse rule compares
COLLAPSE_DROP = 0.5  # "fell": below this share of its start (or, for the length, rose above 1/it)
MIN_LEN = 3  # tokens: a mean response shorter than this is degenerate


def collapsed(rewards, lengths, acc=None, base_acc=None):
    """The collapse rule. Over the last COLLAPSE_WINDOW steps against the first: the mean batch
    reward fell below COLLAPSE_DROP times its start (from a start above 0.05). Given the final
    greedy accuracy on the RL level and the base's: it fell below COLLAPSE_DROP times the base's
    (a run that collapses within its first steps has a start window that has collapsed too, which
    the reward rule would compare with itself). And the mean response length fell below
    COLLAPSE_DROP times its start, rose above its start divided by it (the model babbles to the
    length cap) or went below MIN_LEN tokens (degenerate), in a run that did not learn: its reward
    ended no higher than its start, or its accuracy no higher than the base's.

    The length counts only with that last condition because a run that answers better than it
    began has not broken down: shorter (or longer) completions that earn more reward are a change
    of style. Without it the rule flagged runs at the top of their arm (base 0, seed 1014 of the
    confirmations' positive-only arm: accuracy 0.906, the best of its 18 runs, reward 0.878),
    flagged by the length alone. Whether completions shrink (the RGRA paper's collapse) is a
    question for the length itself, not for this rule."""
    w = COLLAPSE_WINDOW
    if len(rewards) < 2 * w:
        return False
    r0, r1 = np.mean(rewards[:w]), np.mean(rewards[-w:])
    l0, l1 = np.mean(lengths[:w]), np.mean(lengths[-w:])
    reward_fell = r0 > 0.05 and r1 < COLLAPSE_DROP * r0
    accuracy_fell = acc is not None and acc < COLLAPSE_DROP * base_acc
    length_moved = l1 < COLLAPSE_DROP * l0 or l1 > l0 / COLLAPSE_DROP or l1 < MIN_LEN
    learned = r1 > r0 and (acc is None or acc > base_acc)
    return bool(reward_fell or accuracy_fell or (length_moved and not learned))


# -----------------------------------------------------------------------------
# The runs


class Run:
    """One run of the sweep: its name (<variant>-seed<seed>) and its nanorgra.py command line."""

    def __init__(self, variant, seed, run_flags, sweep_dir):
        self.variant, self.seed = variant, seed
        self.name = f"{variant}-seed{seed}"
        self.dir = Path(sweep_dir) / self.name
        own = ["--seed", str(seed), "--out-dir", str(self.dir)]
        self.argv = run_flags + VARIANTS[variant] + own


def run_argv(run_flags, variant, seed, sweep_dir):
    """The nanorgra.py command line of one run: the sweep's flags, the variant's, its seed
    and directory."""
    return Run(variant, seed, run_flags, sweep_dir).argv


def run_one(argv):
    """One run, in a worker process or in this one: resumed if it has a checkpoint, skipped if
    it is finished."""
    run_dir = Path(argv[argv.index("--out-dir") + 1])
    resume = ["--resume"] if (run_dir / "ckpt.pt").exists() else []
    args = nanorgra.parse_args(argv + resume)
    if (run_dir / "summary.json").exists():  # finished; one made with other settings must not pass
        if json.loads((run_dir / "config.json").read_text()) != run_settings(args):
            raise SystemExit(f"{run_dir} holds a finished run with other settings; pass another "
                             f"--sweep-dir")
        return "done"
    args.overwrite = not args.resume  # a run that died before its first checkpoint starts again
    return "stopped" if nanorgra.train(args, log=lambda *a: None) is None else "ran"


def claim_a_gpu(gpus):
    """Pool initializer: this worker sees only the next GPU of the queue (before CUDA starts
    in it)."""
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def run_all(runs, jobs):
    """Every run, `jobs` at a time: in this process, or in worker processes (one CPU thread each, or
    one GPU each where CUDA has several). Returns each run's status."""
    if jobs == 1:
        return [run_one(r.argv) for r in runs]
    context = multiprocessing.get_context("spawn")  # spawn: no fork of torch's threads
    n_gpus = torch.cuda.device_count()
    if n_gpus > 1:
        gpus = context.Queue()
        for worker in range(jobs):
            gpus.put(worker % n_gpus)
        pool = context.Pool(jobs, initializer=claim_a_gpu, initargs=(gpus,))
        argvs = [r.argv for r in runs]
    else:
        pool = context.Pool(jobs)
        argvs = [r.argv + ["--threads", "1"] for r in runs]
    with pool:
        return pool.map(run_one, argvs, chunksize=1)


def warm_start_once(run_flags):
    """The warm start and its evaluation, once, before the runs share them (loaded if cached)."""
    args = nanorgra.parse_args(run_flags)
    device = setup_device(args)
    tok = get_tokenizer()
    base, base_path = nanorgra.warm_start(args, tok, device, log=print)
    nanorgra.base_evaluation(base, tok, args, base_path)


# -----------------------------------------------------------------------------
# The table: means and 95% intervals over seeds


def mean_of_last_steps(metrics, key, n=5):
    """A run's mean of key over its last n steps (nan where it is not logged)."""
    if metrics[-1][key] is None:
        return math.nan
    return np.mean([m[key] for m in metrics[-n:]])


def variant_row(variant, runs):
    """One row: means and 95% intervals over the seeds of a variant (runs: one dict of
    files a seed)."""
    final = [r["summary"]["final"] for r in runs]
    base = runs[0]["summary"]["base"]
    rl = [f[RL_LEVEL] for f in final]
    metrics = [r["metrics"] for r in runs]
    shares = {s: mean_ci95([f["styles"][s] / sum(f["styles"].values()) for f in rl])
              for s in STYLE_NAMES}
    collapses = sum(collapsed([m["reward"] for m in ms], [m["resp_len"] for m in ms],
                              f["acc"], base[RL_LEVEL]["acc"])
                    for ms, f in zip(metrics, rl))
    return dict(
        variant=variant,
        seeds=len(runs),
        base_acc=base[RL_LEVEL]["acc"],
        acc=mean_ci95([f["acc"] for f in rl]),
        ood_acc=mean_ci95([f[OOD_LEVEL]["acc"] for f in final]),
        gain=mean_ci95([f["acc"] - base[RL_LEVEL]["acc"] for f in rl]),
        pass_at_k={k: mean_ci95([f["pass@k"][k] for f in rl]) for k in base[RL_LEVEL]["pass@k"]},
        styles=shares,
        length=mean_ci95([f["len"] for f in rl]),
        entropy=mean_ci95([mean_of_last_steps(ms, "entropy") for ms in metrics]),
        kl=mean_ci95([mean_of_last_steps(ms, "kl") for ms in metrics]),
        clip_frac=mean_ci95([np.mean([m["clip_frac"] for m in ms]) for ms in metrics]),
        reward=mean_ci95([mean_of_last_steps(ms, "reward") for ms in metrics]),
        rl_seconds=mean_ci95([sum(r["summary"]["times"].values()) for r in runs]),
        collapsed=collapses,
        per_seed=dict(acc=[f["acc"] for f in rl], ood_acc=[f[OOD_LEVEL]["acc"] for f in final],
                      length=[f["len"] for f in rl],
                      careful=[f["styles"]["careful"] / sum(f["styles"].values()) for f in rl],
                      reward=[float(mean_of_last_steps(ms, "reward")) for ms in metrics]),
    )


def fmt(mean_and_half, digits=3):
    """ "0.683 ± 0.111"; "n/a" where there is no number."""
    mean, half = mean_and_half
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def results_markdown(rows, base):
    k_max = list(base[RL_LEVEL]["pass@k"])[-1]
    head = [f"{RL_LEVEL} acc", "gain over base", f"{OOD_LEVEL} acc", "pass@1", f"pass@{k_max}",
            "careful share", "left-to-right share", "length", "entropy", "KL to base",
            "clip fraction", "collapsed"]
    b = base[RL_LEVEL]
    lines = [f"base: {RL_LEVEL} acc {b['acc']:.3f}, {OOD_LEVEL} acc {base[OOD_LEVEL]['acc']:.3f}, "
             f"pass@1 {b['pass@k']['1']:.3f}, pass@{k_max} {b['pass@k'][k_max]:.3f}; mean ± 95% "
             f"interval over seeds (Student's t); shares of the {RL_LEVEL} greedy outputs", "",
             "| variant | seeds | " + " | ".join(head) + " |", "|" + " --- |" * (len(head) + 2)]
    for r in rows:
        cells = [fmt(r["acc"]), fmt(r["gain"]), fmt(r["ood_acc"]), fmt(r["pass_at_k"]["1"]),
                 fmt(r["pass_at_k"][k_max]), fmt(r["styles"]["careful"], 2),
                 fmt(r["styles"]["left-to-right"], 2), fmt(r["length"], 1), fmt(r["entropy"], 2),
                 fmt(r["kl"], 4), fmt(r["clip_frac"], 4), f"{r['collapsed']}/{r['seeds']}"]
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_curve(rows_per_seed, key, x="step"):
    """Per x that every seed has: mean and 95% interval over seeds of key."""
    xs = sorted(set.intersection(*[{r[x] for r in rows} for rows in rows_per_seed]))
    values = [[next(key(r) for r in rows if r[x] == v) for rows in rows_per_seed] for v in xs]
    return dict(x=[v + 1 for v in xs], y=[list(mean_ci95(v)) for v in values])  # x = RL steps done


def variant_curves(files):
    """The curves of one variant over its seeds: held-out accuracy, batch reward, length, styles."""
    evals = [f["evals"] for f in files]
    metrics = [f["metrics"] for f in files]
    styles = {s: seed_curve(metrics, lambda m, s=s: m["styles"][s]) for s in STYLE_NAMES}
    return dict(acc=seed_curve(evals, lambda e: e[RL_LEVEL]["acc"]),
                reward=seed_curve(metrics, lambda m: m["reward"]),
                length=seed_curve(metrics, lambda m: m["resp_len"]),
                styles=styles)


def read_run(run_dir):
    return dict(summary=json.loads((run_dir / "summary.json").read_text()),
                metrics=read_jsonl(run_dir / "metrics.jsonl"),
                evals=read_jsonl(run_dir / "eval.jsonl"))


def collect(runs, variants):
    """The table rows and curves of finished runs; SystemExit naming the runs not finished yet."""
    missing = [r.name for r in runs if not (r.dir / "summary.json").exists()]
    if missing:
        raise SystemExit(f"not finished yet: {', '.join(missing)}; run them first "
                         f"(see --print-commands)")
    rows, curves = [], {}
    for v in variants:
        files = [read_run(r.dir) for r in runs if r.variant == v]
        rows.append(variant_row(v, files))
        curves[v] = variant_curves(files)
    base = read_run(runs[0].dir)["summary"]["base"]  # every run starts from the same base
    return rows, curves, base


# -----------------------------------------------------------------------------
# The plots


def band(ax, curve, label, **kw):
    """A mean curve with its 95% band over seeds."""
    y = np.array([c[0] for c in curve["y"]])
    h = np.nan_to_num(np.array([c[1] for c in curve["y"]]))
    ax.plot(curve["x"], y, label=label, **kw)
    ax.fill_between(curve["x"], y - h, y + h, alpha=0.15, color=ax.lines[-1].get_color())


def plot_curves(curves, key, ylabel, path):
    """One curve with its band per variant (solid for the first ten, dashed after)."""
    fig = Figure((9, 5.5), layout="tight")
    ax = fig.subplots()
    for i, (variant, c) in enumerate(curves.items()):
        style = dict(linestyle="-" if i < 10 else "--", marker="o" if key == "acc" else None, ms=3)
        band(ax, c[key], variant, **style)
    ax.set(xlabel="RL steps done", ylabel=ylabel + " (mean, 95% band over seeds)")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_pass_at_k(rows, base, path):
    """pass@k of the base and of the variants that separate feedback signs."""
    fig = Figure((7, 5), layout="tight")
    ax = fig.subplots()
    ks = [int(k) for k in base[RL_LEVEL]["pass@k"]]
    ax.plot(ks, list(base[RL_LEVEL]["pass@k"].values()), "k--", marker="o", ms=3, label="base")
    for r in rows:
        if r["variant"] in ("rgra", "grpo_pos", "grpo_neg", "raft", "sft"):
            y, h = np.array([r["pass_at_k"][str(k)] for k in ks]).T
            ax.errorbar(ks, y, yerr=np.nan_to_num(h), marker="o", ms=3, capsize=2,
                        label=r["variant"])
    ax.set(xscale="log", xlabel="k (samples per problem)",
           ylabel=f"{RL_LEVEL} pass@k (mean, 95% interval)")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend()
    save_figure(fig, path)


def plot_rgra_styles(curves, path):
    fig = Figure((8, 5), layout="tight")
    ax = fig.subplots()
    for s in STYLE_NAMES:
        band(ax, curves["rgra"]["styles"][s], s)
    ax.set(xlabel="RL steps done", ylabel="rgra: share of the sampled completions (95% band)")
    ax.legend()
    save_figure(fig, path)


def plot(curves, rows, base, out):
    """sweep_acc.png, sweep_reward.png, sweep_length.png (every variant, with 95% bands),
    sweep_pass_at_k.png and sweep_rgra_styles.png."""
    plot_curves(curves, "acc", f"held-out {RL_LEVEL} greedy accuracy", out / "sweep_acc.png")
    plot_curves(curves, "reward", "batch reward", out / "sweep_reward.png")
    plot_curves(curves, "length", "response length in tokens", out / "sweep_length.png")
    plot_pass_at_k(rows, base, out / "sweep_pass_at_k.png")
    if "rgra" in curves:
        plot_rgra_styles(curves, out / "sweep_rgra_styles.png")


# -----------------------------------------------------------------------------
# The command


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Any other flag goes to every run.")
    p.add_argument("--quick", action="store_true",
                   help="add " + " ".join(QUICK) + " (flags given still win)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..n-1 per variant (default 3)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--sweep-dir", default=None, help="runs/sweep, or runs/sweep-quick with --quick")
    add_modes(p, "the tables and plots")
    return p


def at_least_one(text):
    """An int of at least 1, or argparse's error naming the value."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_modes(p, what):
    """The flags every experiment shares: --jobs, and one of --print-commands, --run NAME and
    --collect (what: what --collect writes)."""
    p.add_argument("--jobs", type=at_least_one, default=1,
                   help="runs at once, each in its own process (one CPU thread, or one GPU, each)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true",
                      help="print the commands of the warm start and of every run, one a line; "
                           "run nothing")
    mode.add_argument("--run", default=None, metavar="NAME",
                      help="one run by its directory name, or the warm start, as "
                           "--print-commands prints them")
    mode.add_argument("--collect", action="store_true",
                      help=f"write {what} of the finished runs; run nothing")


def parse(argv):
    """The sweep's own flags, the flags every run gets, and the runs, all checked before
    any work."""
    p = build_parser()
    args, run_flags = p.parse_known_args(argv)
    run_flags = (QUICK if args.quick else []) + run_flags
    variants, seeds = args.variants.split(","), args.seeds or 3
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {unknown}; allowed: {', '.join(VARIANTS)}")
    if seeds < 2:
        p.error(f"--seeds must be >= 2 (an interval needs two), got {seeds}")
    out = Path(args.sweep_dir or ("runs/sweep-quick" if args.quick else "runs/sweep"))
    runs = [Run(v, s, run_flags, out) for v in variants for s in range(seeds)]
    names = ["warm-start"] + [r.name for r in runs]
    if args.run is not None and args.run not in names:
        p.error(f"--run: no run {args.run!r} in this sweep; its runs: {', '.join(names)}")
    for run in runs:
        nanorgra.parse_args(run.argv)  # every run's flags are checked before any work starts
    return args, run_flags, variants, out, runs


def print_commands(argv, runs):
    """The warm start, then every run, as one shell command a line (comments start with #)."""
    sweep = "python experiments/sweep.py " + shlex.join(a for a in argv if a != "--print-commands")
    print("# 1. the warm start (cached in --base-dir): run it first, once")
    print(f"{sweep} --run warm-start")
    print("# 2. the runs, in any order, anywhere --base-dir and --sweep-dir are shared")
    for run in runs:
        print(f"{sweep} --run {run.name}")
    print("# 3. when every run has finished: the tables and plots")
    print(f"# {sweep} --collect")


def write_results(out, argv, rows, curves, base, seconds):
    table = results_markdown(rows, base)
    command = "python experiments/sweep.py " + " ".join(argv)
    write_atomic(out / "results.md", table)
    results = dict(command=command, seconds=seconds, base=base, rows=rows)
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    write_atomic(out / "curves.json", json.dumps(curves))
    plot(curves, rows, base, out)
    return table


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, run_flags, variants, out, runs = parse(argv)
    if args.print_commands:
        return print_commands(argv, runs)
    if args.run == "warm-start":
        return warm_start_once(run_flags)
    if args.run is not None:
        return run_one(next(r for r in runs if r.name == args.run).argv)
    t0 = time.time()
    if not args.collect:
        warm_start_once(run_flags)  # once, before the runs share it
        print(f"sweep: {len(variants)} variants x {len(runs) // len(variants)} seeds into {out}, "
              f"{args.jobs} at a time")
        if "stopped" in run_all(runs, args.jobs):
            return print("sweep stopped; run the same command again to continue")
    rows, curves, base = collect(runs, variants)
    table = write_results(out, argv, rows, curves, base, time.time() - t0)
    print(table + f"\nsweep: {len(runs)} runs; {time.time() - t0:.0f}s; results in {out}")
    return rows


if __name__ == "__main__":
    main()
