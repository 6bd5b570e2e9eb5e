"""
experiments/sweep.py: the ablation sweep. Every loss variant below, for several seeds, from the same cached
warm-start base with the same sample budget; then a table of means with 95% intervals, the curves, and plots.

    python experiments/sweep.py --quick --jobs 2            # 13 variants x 3 seeds, 30 RL steps: 871 s measured
    python experiments/sweep.py --jobs 2 --seeds 5          # 13 variants x 5 seeds, 60 RL steps: about 45 min
    python experiments/sweep.py --variants rgra,grpo_pos,grpo_neg --seeds 3 --steps 60

Times measured on a 2-core CPU with the warm-start base already cached (training it first adds about 7 minutes).

Each run is `python nanorgra.py <flags> <the variant's flags> --seed s --out-dir <sweep dir>/<variant>-seed<s>`, so
any flag of nanorgra.py given here applies to every run. A finished run is skipped (after checking that its
settings are these), an interrupted one is resumed: run the same command again to continue. --jobs runs that many
runs at once, each in its own process on one thread (small models use a core each better than two cores one).
Writes results.md, results.json (with the command and its seconds), curves.json and the plots to --sweep-dir.
"""

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for nanorgra

from matplotlib.figure import Figure  # imported before any work starts: the plots at the end need it

import numpy as np

import nanorgra
from data.tasks import OOD_LEVEL, RL_LEVEL, write_atomic
from verifier import STYLE_NAMES


VARIANTS = {  # name -> the flags that make it from the default run (RGRA); each changes one thing
    "rgra": ["--preset", "rgra"],
    "grpo": ["--preset", "grpo"],  # ratio and clipping; at mu = 1 the same gradient as rgra
    "grpo_pos": ["--preset", "grpo_pos"],  # positive advantages only (the paper's GRPO-pos)
    "grpo_neg": ["--preset", "grpo", "--adv-sign", "neg"],  # negative advantages only
    "reinforce": ["--preset", "reinforce"],  # raw reward, no group baseline
    "raft": ["--preset", "raft"],  # cross-entropy on the best of each group
    "sft": ["--preset", "sft"],  # cross-entropy on gold worked solutions of the same problems
    "rgra_nokl": ["--preset", "rgra", "--beta", "0"],
    "rgra_nostd": ["--preset", "rgra", "--no-std-norm"],
    "grpo_mu4": ["--preset", "grpo", "--mu", "4"],  # each batch used for 4 updates: clipping can act
    "grpo_mu4_noclip": ["--preset", "grpo", "--mu", "4", "--no-clip"],
    "rgra_lr": ["--preset", "rgra", "--lr", "1e-3"],  # a learning rate at which the policy drifts
    "rgra_lr_nokl": ["--preset", "rgra", "--lr", "1e-3", "--beta", "0"],
}
QUICK = ["--steps", "30", "--eval-every", "10", "--eval-n", "200", "--pass-n", "50"]  # what --quick adds
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci95(values):
    """Mean and half-width of its 95% confidence interval over seeds: t_{0.975, n-1} * sample std / sqrt(n), from
    a table of Student's t (1.96 beyond 30 seeds). One value has no interval (half-width nan)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan
    t = T_975[len(x) - 2] if len(x) - 1 <= len(T_975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


def collapsed(rewards, lengths, window=5, drop=0.5, min_len=3):
    """The collapse rule: over the last `window` steps against the first, the mean reward fell below `drop` times
    its start (from a start above 0.05), or the mean response length fell below `drop` times its start, or the
    responses became degenerate (mean length < min_len tokens)."""
    if len(rewards) < 2 * window:
        return False
    r0, r1 = np.mean(rewards[:window]), np.mean(rewards[-window:])
    l0, l1 = np.mean(lengths[:window]), np.mean(lengths[-window:])
    return bool((r0 > 0.05 and r1 < drop * r0) or l1 < drop * l0 or l1 < min_len)


def run_argv(run_flags, variant, seed, sweep_dir):
    """The nanorgra.py command line of one run: the sweep's flags, the variant's, its seed and directory."""
    return run_flags + VARIANTS[variant] + ["--seed", str(seed), "--out-dir", str(sweep_dir / f"{variant}-seed{seed}")]


def run_one(argv):
    """One run, in a worker process or in this one: resumed if it has a checkpoint, skipped if it is finished."""
    run_dir = Path(argv[argv.index("--out-dir") + 1])
    args = nanorgra.parse_args(argv + (["--resume"] if (run_dir / "ckpt.pt").exists() else []))
    if (run_dir / "summary.json").exists():  # finished: but a run made with other settings must not pass for this
        if json.loads((run_dir / "config.json").read_text()) != nanorgra.run_settings(args):
            raise SystemExit(f"{run_dir} holds a finished run with other settings; pass another --sweep-dir")
        return "done"
    args.overwrite = not args.resume  # a run that died before its first checkpoint starts again
    return "stopped" if nanorgra.train(args, log=lambda *a: None) is None else "ran"


def seed_curve(rows_per_seed, key, x="step"):
    """Per x that every seed has: mean and 95% interval over seeds of key."""
    xs = sorted(set.intersection(*[{r[x] for r in rows} for rows in rows_per_seed]))
    values = [[next(key(r) for r in rows if r[x] == v) for rows in rows_per_seed] for v in xs]
    return dict(x=[v + 1 for v in xs], y=[list(mean_ci95(v)) for v in values])  # x = RL steps done


def variant_row(variant, runs):
    """One row: means and 95% intervals over the seeds of a variant (runs: one dict of files per seed)."""
    ci, final = mean_ci95, [r["summary"]["final"] for r in runs]
    base = runs[0]["summary"]["base"]
    last = lambda key: ci([np.mean([m[key] for m in r["metrics"][-5:]]) if r["metrics"][-1][key] is not None
                           else math.nan for r in runs])
    return dict(
        variant=variant, seeds=len(runs), base_acc=base[RL_LEVEL]["acc"],
        acc=ci([f[RL_LEVEL]["acc"] for f in final]), ood_acc=ci([f[OOD_LEVEL]["acc"] for f in final]),
        gain=ci([f[RL_LEVEL]["acc"] - base[RL_LEVEL]["acc"] for f in final]),
        pass_at_k={k: ci([f[RL_LEVEL]["pass@k"][k] for f in final]) for k in base[RL_LEVEL]["pass@k"]},
        styles={s: ci([f[RL_LEVEL]["styles"][s] / sum(f[RL_LEVEL]["styles"].values()) for f in final])
                for s in STYLE_NAMES},
        length=ci([f[RL_LEVEL]["len"] for f in final]), entropy=last("entropy"), kl=last("kl"),
        clip_frac=ci([np.mean([m["clip_frac"] for m in r["metrics"]]) for r in runs]),
        reward=last("reward"), rl_seconds=ci([sum(r["summary"]["times"].values()) for r in runs]),
        collapsed=sum(collapsed([m["reward"] for m in r["metrics"]], [m["resp_len"] for m in r["metrics"]])
                      for r in runs))


def results_markdown(rows, base):
    fmt = lambda mc, d=3: "n/a" if math.isnan(mc[0]) else f"{mc[0]:.{d}f}" + ("" if math.isnan(mc[1]) else
                                                                           f" ± {mc[1]:.{d}f}")
    k_max = list(base[RL_LEVEL]["pass@k"])[-1]
    head = [f"{RL_LEVEL} acc", "gain over base", f"{OOD_LEVEL} acc", "pass@1", f"pass@{k_max}", "careful share",
            "left-to-right share", "length", "entropy", "KL to base", "clip fraction", "collapsed"]
    lines = [f"base: {RL_LEVEL} acc {base[RL_LEVEL]['acc']:.3f}, {OOD_LEVEL} acc {base[OOD_LEVEL]['acc']:.3f}, pass@1 "
             f"{base[RL_LEVEL]['pass@k']['1']:.3f}, pass@{k_max} {base[RL_LEVEL]['pass@k'][k_max]:.3f}; mean ± 95% "
             f"interval over seeds (Student's t); shares of the {RL_LEVEL} greedy outputs", "",
             "| variant | seeds | " + " | ".join(head) + " |", "|" + " --- |" * (len(head) + 2)]
    for r in rows:
        cells = [fmt(r["acc"]), fmt(r["gain"]), fmt(r["ood_acc"]), fmt(r["pass_at_k"]["1"]), fmt(r["pass_at_k"][k_max]),
                 fmt(r["styles"]["careful"], 2), fmt(r["styles"]["left-to-right"], 2), fmt(r["length"], 1),
                 fmt(r["entropy"], 2), fmt(r["kl"], 4), fmt(r["clip_frac"], 4), f"{r['collapsed']}/{r['seeds']}"]
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def band(ax, curve, label, **kw):
    """A mean curve with its 95% band over seeds."""
    y, h = np.array([c[0] for c in curve["y"]]), np.nan_to_num(np.array([c[1] for c in curve["y"]]))
    ax.plot(curve["x"], y, label=label, **kw)
    ax.fill_between(curve["x"], y - h, y + h, alpha=0.15, color=ax.lines[-1].get_color())


def plot(curves, rows, base, out):
    """sweep_acc.png and sweep_reward.png (every variant, with 95% bands), sweep_pass_at_k.png (base and the
    variants that separate feedback signs), sweep_rgra_styles.png and sweep_length.png."""
    for key, ylabel in (("acc", f"held-out {RL_LEVEL} greedy accuracy"), ("reward", "batch reward")):
        fig = Figure((9, 5.5), layout="tight")
        ax = fig.subplots()
        for i, (variant, c) in enumerate(curves.items()):
            band(ax, c[key], variant, linestyle="-" if i < 10 else "--", marker="o" if key == "acc" else None, ms=3)
        ax.set(xlabel="RL steps done", ylabel=ylabel + " (mean, 95% band over seeds)")
        ax.legend(fontsize=7, ncol=2)
        nanorgra.save_figure(fig, out / f"sweep_{key}.png")
    fig = Figure((7, 5), layout="tight")
    ax = fig.subplots()
    ks = [int(k) for k in base[RL_LEVEL]["pass@k"]]
    ax.plot(ks, list(base[RL_LEVEL]["pass@k"].values()), "k--", marker="o", ms=3, label="base")
    for r in rows:
        if r["variant"] in ("rgra", "grpo_pos", "grpo_neg", "raft", "sft"):
            y, h = np.array([r["pass_at_k"][str(k)] for k in ks]).T
            ax.errorbar(ks, y, yerr=np.nan_to_num(h), marker="o", ms=3, capsize=2, label=r["variant"])
    ax.set(xscale="log", xlabel="k (samples per problem)", ylabel=f"{RL_LEVEL} pass@k (mean, 95% interval)")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend()
    nanorgra.save_figure(fig, out / "sweep_pass_at_k.png")
    if "rgra" in curves:
        fig = Figure((8, 5), layout="tight")
        ax = fig.subplots()
        for s in STYLE_NAMES:
            band(ax, curves["rgra"]["styles"][s], s)
        ax.set(xlabel="RL steps done", ylabel="rgra: share of the sampled completions (95% band)")
        ax.legend()
        nanorgra.save_figure(fig, out / "sweep_rgra_styles.png")
    fig = Figure((9, 5), layout="tight")
    ax = fig.subplots()
    for i, (variant, c) in enumerate(curves.items()):
        band(ax, c["length"], variant, linestyle="-" if i < 10 else "--")
    ax.set(xlabel="RL steps done", ylabel="response length in tokens (mean, 95% band over seeds)")
    ax.legend(fontsize=7, ncol=2)
    nanorgra.save_figure(fig, out / "sweep_length.png")


def parse(argv):
    """The sweep's own flags, the run flags every run gets, and every run's command line, all checked up front."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Any other flag goes to every run.")
    p.add_argument("--quick", action="store_true", help="add " + " ".join(QUICK) + " (flags given still win)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..n-1 per variant (default 3)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    p.add_argument("--sweep-dir", default=None, help="runs/sweep, or runs/sweep-quick with --quick")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process on one thread")
    args, run_flags = p.parse_known_args(argv)
    run_flags = (QUICK if args.quick else []) + run_flags
    variants, seeds = args.variants.split(","), args.seeds or 3
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {unknown}; allowed: {', '.join(VARIANTS)}")
    if seeds < 2 or args.jobs < 1:
        p.error(f"--seeds must be >= 2 (an interval needs two) and --jobs >= 1, got {seeds} and {args.jobs}")
    out = Path(args.sweep_dir or ("runs/sweep-quick" if args.quick else "runs/sweep"))
    runs = [run_argv(run_flags, v, s, out) for v in variants for s in range(seeds)]
    for argv_ in runs:
        nanorgra.parse_args(argv_)  # every run's flags are checked before any work starts
    return args, variants, seeds, out, runs


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, variants, seeds, out, runs = parse(argv)
    t0 = time.time()
    base_args = nanorgra.parse_args(runs[0])  # the warm start and its evaluation, once, before the runs share them
    device = nanorgra.pick_device(base_args.device)
    base, base_path = nanorgra.warm_start(base_args, nanorgra.get_tokenizer(), device, log=print)
    nanorgra.base_evaluation(base, nanorgra.get_tokenizer(), base_args, device, base_path)
    print(f"sweep: {len(variants)} variants x {seeds} seeds into {out}, {args.jobs} at a time")
    if args.jobs == 1:
        statuses = [run_one(a) for a in runs]
    else:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:  # spawn: no fork of torch's threads
            statuses = pool.map(run_one, [a + ["--threads", "1"] for a in runs], chunksize=1)
    if "stopped" in statuses:
        return print("sweep stopped; run the same command again to continue")
    rows, curves = [], {}
    for v in variants:
        dirs = [out / f"{v}-seed{s}" for s in range(seeds)]
        files = [dict(summary=json.loads((d / "summary.json").read_text()), metrics=nanorgra.read_jsonl(
            d / "metrics.jsonl"), evals=nanorgra.read_jsonl(d / "eval.jsonl")) for d in dirs]
        rows.append(variant_row(v, files))
        curves[v] = dict(acc=seed_curve([f["evals"] for f in files], lambda e: e[RL_LEVEL]["acc"]),
                         reward=seed_curve([f["metrics"] for f in files], lambda m: m["reward"]),
                         length=seed_curve([f["metrics"] for f in files], lambda m: m["resp_len"]),
                         styles={s: seed_curve([f["metrics"] for f in files], lambda m, s=s: m["styles"][s])
                                 for s in STYLE_NAMES})
    base = files[0]["summary"]["base"]
    table = results_markdown(rows, base)
    command = "python experiments/sweep.py " + " ".join(argv)
    write_atomic(out / "results.md", table)
    write_atomic(out / "results.json", json.dumps(dict(command=command, seconds=time.time() - t0, base=base,
                                                       rows=rows), indent=1))
    write_atomic(out / "curves.json", json.dumps(curves))
    plot(curves, rows, base, out)
    print(table + f"\nsweep: {len(runs)} runs; {time.time() - t0:.0f}s; results in {out}")
    return rows


if __name__ == "__main__":
    main()
