"""
experiments/sweep.py: the ablation sweep. Every loss variant below, for several seeds, from the same
cached warm-start base with the same sample budget; then a table of means with 95% intervals, the
curves and the plots.

    python experiments/sweep.py --quick --jobs 2          # 19 variants x 3 seeds, 30 RL steps
    python experiments/sweep.py --jobs 2 --seeds 5        # 19 variants x 5 seeds, 60 RL steps
    python experiments/sweep.py --variants rgra,grpo_pos,grpo_neg --seeds 3 --steps 60

Each run is `python nanorgra.py <flags> <the variant's flags> --seed s --out-dir <sweep dir>/<run>`,
so any flag of nanorgra.py given here applies to every run. The runs are run as every experiment
runs them (experiments/runner.py): a finished run is skipped (after checking that its settings are
these), an interrupted one is resumed: run the same command again to continue. --jobs runs that
many runs at once, each in its own process: on one CPU thread each (small models use a core each
better than two cores one), or on CUDA one GPU each (round robin).

Beyond one machine, the same sweep as separate commands (GNU parallel, a Slurm array, a scheduler):

    python experiments/sweep.py --quick --print-commands > sweep.txt   # one command a line
    parallel --jobs 8 < sweep.txt                                       # for example; then
    python experiments/sweep.py --quick --collect                       # tables and plots

The first printed command trains the warm start (once: the runs load it from --base-dir);
each other line is `sweep.py ... --run <run>`: one run, skipped if finished and resumed if
interrupted. The machines must share --base-dir and --sweep-dir. Writes results.md, results.json
(with the command and its seconds), curves.json and the plots to --sweep-dir.

The sweep is a screen; experiments/confirm.py holds the tests. Its analysis, fixed before the full
sweep's results were read: the table of each variant's means with 95% intervals over its seeds;
then each variant against rgra, paired by seed (the same seed gives the same first batch):
d_s = acc_s(variant) - acc_s(rgra) in greedy accuracy on the RL level, its mean with the 95%
paired t interval, the paired t test's p with Holm over the variants compared ("separable": an
adjusted p < 0.05), and the exact sign-flip p beside it, which cannot go below 2 / 2^n (0.0625
at 5 seeds): a 5-seed sweep separates nothing by the exact test.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from matplotlib.figure import Figure  # imported before any work: the plots at the end need it

import numpy as np

from data.tasks import OOD_LEVEL, RL_LEVEL
from experiments import runner
from experiments.runner import collapsed, mean_of_last_steps
from experiments.stats import ALPHA, holm, interval_text, mean_ci95, mean_text, p_text, \
    paired_summary
from rundir import save_figure, write_atomic
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
COLLECTS = "the tables and plots"  # what --collect writes


def sweep_run(variant, seed, run_flags, out):
    """One run of the sweep: <variant>-seed<seed>, with the sweep's flags and the variant's."""
    return runner.seeded_run(f"{variant}-seed{seed}", run_flags + VARIANTS[variant], seed, out)


def variant_of(run_name):
    """The variant of a sweep run's name: "grpo_neg-seed1" -> "grpo_neg"."""
    return run_name.rpartition("-seed")[0]


def seed_of(run_name):
    """The seed of a sweep run's name: "grpo_neg-seed1" -> 1."""
    return int(run_name.rpartition("-seed")[2])


# -----------------------------------------------------------------------------
# The table: means and 95% intervals over seeds


def variant_row(variant, runs, seeds):
    """One row: means and 95% intervals over the seeds of a variant (runs: runner.read_run's
    files, one a seed, of the seeds in that order)."""
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
        per_seed=dict(seed=list(seeds),
                      acc=[f["acc"] for f in rl], ood_acc=[f[OOD_LEVEL]["acc"] for f in final],
                      length=[f["len"] for f in rl],
                      careful=[f["styles"]["careful"] / sum(f["styles"].values()) for f in rl],
                      reward=[float(mean_of_last_steps(ms, "reward")) for ms in metrics]),
    )


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
        cells = [mean_text(r["acc"]), mean_text(r["gain"]), mean_text(r["ood_acc"]),
                 mean_text(r["pass_at_k"]["1"]), mean_text(r["pass_at_k"][k_max]),
                 mean_text(r["styles"]["careful"], 2), mean_text(r["styles"]["left-to-right"], 2),
                 mean_text(r["length"], 1), mean_text(r["entropy"], 2), mean_text(r["kl"], 4),
                 mean_text(r["clip_frac"], 4), f"{r['collapsed']}/{r['seeds']}"]
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# Each variant against rgra, paired by seed (decided before the full sweep's results were read)


def against_rgra(rows):
    """Each variant's greedy accuracy against rgra's, paired by seed (a seed fixes the first
    batch): d_s = acc_s(variant) - acc_s(rgra), its mean with the 95% paired t interval, the paired
    t test's p adjusted by Holm over the variants compared (the family), and the exact sign-flip p
    beside it (it cannot go below 2 / 2^n: 0.0625 at 5 seeds). [] without an rgra row."""
    reference = next((r for r in rows if r["variant"] == "rgra"), None)
    if reference is None:
        return []
    ours = dict(zip(reference["per_seed"]["seed"], reference["per_seed"]["acc"]))
    tests = []
    for row in rows:
        if row is reference:
            continue
        theirs = dict(zip(row["per_seed"]["seed"], row["per_seed"]["acc"]))
        if set(theirs) != set(ours):
            raise ValueError(f"{row['variant']} ran seeds {sorted(theirs)}, rgra {sorted(ours)}: "
                             f"a paired comparison needs the same seeds")
        seeds = sorted(ours)
        summary = paired_summary([theirs[s] for s in seeds], [ours[s] for s in seeds])
        tests.append(dict(variant=row["variant"], seeds=seeds, **summary))
    adjusted = holm([test["p_t"] for test in tests])
    for test, p_adjusted in zip(tests, adjusted):
        test["p_t_adjusted"] = p_adjusted
        test["separable"] = bool(p_adjusted < ALPHA)
    return tests


def against_rgra_markdown(tests):
    """The paired table: one line a variant."""
    lines = [f"each variant against rgra, paired by seed: d = {RL_LEVEL} acc(variant) - "
             f"acc(rgra), mean [95% paired t interval]; the paired t test's p, Holm over the "
             f"{len(tests)} variants; the exact sign-flip p (its floor at n seeds: 2 / 2^n)", "",
             "| variant | seeds | d | p (t) | adjusted p | separable | sign-flip p |",
             "|" + " --- |" * 7]
    for test in tests:
        d = interval_text(test["mean"], test["half"])
        cells = [test["variant"], str(len(test["seeds"])), d,
                 p_text(test["p_t"]), p_text(test["p_t_adjusted"]),
                 "yes" if test["separable"] else "no", p_text(test["p"])]
        lines.append("| " + " | ".join(cells) + " |")
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


def collect(runs, variants):
    """The table rows and curves of finished runs; SystemExit naming the runs not finished yet."""
    files = runner.read_finished(runs)
    rows, curves = [], {}
    for v in variants:
        names = sorted((n for n in files if variant_of(n) == v), key=seed_of)
        seed_runs = [files[n] for n in names]
        rows.append(variant_row(v, seed_runs, [seed_of(n) for n in names]))
        curves[v] = variant_curves(seed_runs)
    base = files[runs[0].name]["summary"]["base"]  # every run starts from the same base
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
    runner.add_modes(p, COLLECTS)
    return p


def parse(argv):
    """The sweep's own flags, its variants, and the sweep as the runner runs it (its runs, and the
    warm start they share), all checked before any work."""
    p = build_parser()
    args, run_flags = p.parse_known_args(argv)
    run_flags = (QUICK if args.quick else []) + run_flags
    variants, seeds = args.variants.split(","), args.seeds or 3
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {unknown}; allowed: {', '.join(VARIANTS)}")
    if seeds < 2:
        p.error(f"--seeds must be >= 2 (an interval needs two), got {seeds}")
    out = Path(args.sweep_dir or ("runs/sweep-quick" if args.quick else "runs/sweep"))
    runs = [sweep_run(v, s, run_flags, out) for v in variants for s in range(seeds)]
    sweep = runner.Experiment("experiments/sweep.py", runs, {"warm-start": run_flags}, out,
                              f"{len(variants)} variants x {seeds} seeds", COLLECTS)
    runner.check_runs(p, args.run, sweep)
    return args, variants, sweep


def write_results(out, argv, rows, curves, base, seconds):
    tests = against_rgra(rows)
    table = results_markdown(rows, base)
    if tests:
        table += "\n" + against_rgra_markdown(tests)
    command = "python experiments/sweep.py " + " ".join(argv)
    write_atomic(out / "results.md", table)
    results = dict(command=command, seconds=seconds, base=base, rows=rows, against_rgra=tests)
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    write_atomic(out / "curves.json", json.dumps(curves))
    plot(curves, rows, base, out)
    return table


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, variants, sweep = parse(argv)
    t0 = time.time()
    if not runner.run_modes(args, argv, sweep):
        return None
    rows, curves, base = collect(sweep.runs, variants)
    table = write_results(sweep.out, argv, rows, curves, base, time.time() - t0)
    print(table + f"\nsweep: {len(sweep.runs)} runs; {time.time() - t0:.0f}s; results in "
          f"{sweep.out}")
    return rows


if __name__ == "__main__":
    main()
