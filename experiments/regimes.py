"""
experiments/regimes.py: when each switch of the loss matters. For each component, its on/off pair is
run along the axis on which it is supposed to matter, with the same seeds for on and off (a seed
fixes the first batch), and every cell reports the per-seed difference on - off with its 95%
interval.

    python experiments/regimes.py --quick --jobs 2        # the reduced map: 30 runs
    python experiments/regimes.py --jobs 2                # the full map: 155 runs; resumable
    python experiments/regimes.py --print-commands        # the full map as one command a line
    python experiments/regimes.py --collect               # tables and figures of finished runs
    python experiments/regimes.py --reread data/results/regimes_first_round.json
                              # the first round's map (no per-seed values), re-tested from its
                              # saved intervals

The components and their axes (CELLS below):
  ratio and clipping   stale samples (each batch split into 8 minibatches) along the learning rate:
                       GRPO with clip against GRPO without clip (clipping), and against RGRA at the
                       same reuse (ratio and clip); CISPO and dual-clip against PPO's clip
  KL                   learning rate x beta: beta > 0 against beta = 0; read the gain, collapses,
                       and what the base knew (the atoms, ood4): forgetting
  negative feedback    positive-only against both signs, under the RGRA paper's reward (its format
                       bonus 0.1) with smaller groups than its G = 8 (4, from twice the prompts: the
                       same 128 samples a step), a larger learning rate and 120 steps; read reward,
                       entropy and length over the steps
  std and aggregation  std normalisation off against on, token-mean and seq-sum-norm against
                       seq-mean-token-mean: which habit RL selects (careful or shortcut, which
                       differ in length), and the response length

A run is `python nanorgra.py <flags>` with its own directory under --regimes-dir, named after its
flags, so a run that two cells share (the same flags and seed) runs once. As in every experiment
(experiments/runner.py) a finished run is reused and an interrupted one resumed: the same command
continues a map across sessions. Writes results.md, results.json (the command and its seconds),
and the figures.

The statistics (experiments/stats.py), fixed before the map was re-read: for each cell and
measure, d_s = on_s - off_s for each seed s, its mean with the 95% paired t interval, and the exact
two-sided sign-flip p (with 5 seeds it cannot go below 0.0625, so no 5-seed cell can be separable
at 5% by it). The families (FAMILIES): the primary measure is greedy accuracy on the RL level
(acc), one family of every cell; the atoms are a second family; every other measure is
exploratory, each its own family;
clip_frac is no test at all (0 in an unclipped arm by construction). Holm adjusts the p of each
family, and "separable" means an adjusted p < 0.05. Collapse: the rule of experiments/runner.py
(collapsed), counted per arm; since the arms share seeds, their counts are compared with McNemar's
exact test, Holm over the cells (the collapse family). Per-seed values of every measure are saved.

History, for a reader of the results: the map's cells were re-aimed after its quick form, and the
reuse cells at lr 3e-4 got 10 seeds instead of 5 after a first look at 5; the quick form's cells
were then chosen where the map measured the largest effects, and collected from the map's own runs
(a subset, not a replication). experiments/confirm.py tests the map's findings on fresh seeds.
"""

import argparse
import json
import math
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from matplotlib.figure import Figure  # imported before any work: the figures at the end need it

import numpy as np

from experiments import runner, stats
from experiments.runner import MEASURES, run_name
from rundir import save_figure, write_atomic

# Every run of the map evaluates once, at its end (and at step 60 of a longer run): greedy accuracy
# on all 500 test problems of each level, and pass@k on fewer problems than the default job (pass@k
# is not read here), so that the evaluation stays a small part of a run.
MAP_FLAGS = ["--eval-every", "60", "--pass-n", "50", "--pass-k", "16"]


@dataclass(frozen=True)
class Cell:
    """One point of one component's axis: the flags of the run with the component on and off (on top
    of the map's flags), and the seeds to spend there."""

    component: str  # "ratio and clipping", "KL", ...
    pair: str  # what on - off compares, e.g. "clip vs no clip"
    line: str  # the curve of the figure this cell is a point of, e.g. "lr 1e-3"
    x: float  # its place on the stress axis, e.g. the minibatches of a step
    on: tuple
    off: tuple
    seeds: int = 5


# A flag at its default value is left out of a run's flags, so that the cells that need the same
# run name it the same way (and it runs once): --lr 1e-4 and --beta 0.005 are the defaults.
DEFAULT_LR = "1e-4"
DEFAULT_BETA = "0.005"


def with_lr(lr):
    return () if lr == DEFAULT_LR else ("--lr", lr)


def with_beta(beta):
    return () if beta == DEFAULT_BETA else ("--beta", beta)


def reuse_cells(seeds):
    """Ratio and clipping where the samples are stale: minibatches 8 splits a step's batch into 8
    optimizer steps, so that its last minibatch is sampled 7 updates before it is learned from (as
    stale as mu = 8 passes, at the cost of one), along the learning rate, which sets how far each
    update moves the policy. At each point: GRPO with clip against GRPO without clip (what clipping
    does), and GRPO against RGRA (what ratio and clip do together); at lr 3e-4, where the policy
    moves far but does not collapse, also CISPO's and dual-clip's clipping against PPO's. Without
    reuse GRPO equals RGRA exactly (tests/test_loss.py), so every point reuses."""
    cells = []
    for lr in (DEFAULT_LR, "3e-4", "1e-3"):
        stress = with_lr(lr) + ("--minibatches", "8")
        grpo = ("--preset", "grpo") + stress
        rgra = ("--preset", "rgra") + stress
        # twice the seeds at 3e-4: with 5 the seeds' differences there spread too wide to decide
        n = 2 * seeds if lr == "3e-4" else seeds
        cells.append(Cell("ratio and clipping", "clip vs no clip", "minibatches 8", float(lr), grpo,
                          grpo + ("--no-clip",), n))
        cells.append(Cell("ratio and clipping", "grpo vs rgra", "minibatches 8", float(lr), grpo,
                          rgra, n))
    stale = ("--lr", "3e-4", "--minibatches", "8")
    grpo = ("--preset", "grpo") + stale
    for pair, variant in (("cispo vs ppo clip", ("--preset", "cispo") + stale),
                          ("dual-clip vs ppo clip", grpo + ("--clip-c", "3"))):
        cells.append(Cell("ratio and clipping", pair, "minibatches 8", 3e-4, variant, grpo, seeds))
    return cells


def kl_cells(seeds):
    """KL along the learning rate, from where the policy moves far from the base (3e-4) to where
    RGRA collapses without reuse (1e-3 and 3e-3: at the default the sweep's rgra_nokl equals rgra),
    at the paper's weight and at ten times it (at 3e-3 only ten times)."""
    cells = []
    for lr, betas in (("3e-4", (DEFAULT_BETA, "0.05")), ("1e-3", (DEFAULT_BETA, "0.05")),
                      ("3e-3", ("0.05",))):
        no_kl = ("--preset", "rgra") + with_lr(lr) + ("--beta", "0")
        for beta in betas:
            with_kl = ("--preset", "rgra") + with_lr(lr) + with_beta(beta)
            cells.append(Cell("KL", f"beta {beta} vs 0", f"beta {beta}", float(lr), with_kl, no_kl,
                              seeds))
    return cells


# The negatives' conditions: the default, then the RGRA paper's reward (its format bonus) with
# groups of 4 from twice the prompts (the same 128 samples a step; the paper's G is 8), twice the
# steps, at a learning rate where the policy moves far (3e-4) and where RGRA itself is unstable
# (1e-3)
def papers_reward(lr):
    return ("--format-reward", "0.1", "--group", "4", "--prompts", "32", "--lr", lr,
            "--steps", "120")


NEGATIVE_CONDITIONS = {
    "default": (),
    "paper's reward, G = 4, lr 3e-4, 120 steps": papers_reward("3e-4"),
    "paper's reward, G = 4, lr 1e-3, 120 steps": papers_reward("1e-3"),
}


def negative_cells(seeds):
    """Negative feedback: both signs against positive-only, under each condition (x: its index)."""
    cells = []
    for x, (name, flags) in enumerate(NEGATIVE_CONDITIONS.items()):
        both = ("--preset", "rgra") + flags
        positive_only = both + ("--adv-sign", "pos")
        cells.append(Cell("negative feedback", "both signs vs positive-only", name, x, both,
                          positive_only, seeds))
    return cells


def aggregation_cells(seeds):
    """Std normalisation and aggregation at the default operating point (x: 0): which habit RL
    selects, and the length."""
    rgra = ("--preset", "rgra")
    cells = [Cell("std and aggregation", "no std vs std", "std", 0, rgra + ("--no-std-norm",), rgra,
                  seeds)]
    for agg in ("token-mean", "seq-sum-norm"):
        cells.append(Cell("std and aggregation", f"{agg} vs seq-mean-token-mean", agg, 0,
                          rgra + ("--agg", agg), rgra, seeds))
    return cells


def full_map(seeds=5):
    return reuse_cells(seeds) + kl_cells(seeds) + negative_cells(seeds) + aggregation_cells(seeds)


# The quick form, and each component's headline cell (its trajectory figure): one cell per
# component, where the full map measured its largest effect on the RL-level accuracy (chosen after
# the map ran): ratio and clip together against RGRA at lr 3e-4 with 8 minibatches; KL at ten times
# the paper's weight at lr 1e-3; the negatives under the paper's reward at lr 1e-3, where
# positive-only runs shrink to a few tokens; token-mean aggregation at the default point.
QUICK_CELLS = {
    "ratio and clipping": ("grpo vs rgra", "minibatches 8", 3e-4),
    "KL": ("beta 0.05 vs 0", "beta 0.05", 1e-3),
    "negative feedback": ("both signs vs positive-only",
                          "paper's reward, G = 4, lr 1e-3, 120 steps", 2),
    "std and aggregation": ("token-mean vs seq-mean-token-mean", "token-mean", 0),
}
QUICK_SEEDS = 3


def quick_map():
    chosen = [c for c in full_map(QUICK_SEEDS)
              if QUICK_CELLS.get(c.component) == (c.pair, c.line, c.x)]
    assert len(chosen) == len(QUICK_CELLS), "QUICK_CELLS names a cell the full map does not have"
    return chosen


# -----------------------------------------------------------------------------
# Runs: one directory per (flags, seed), shared by the cells that need it


def map_runs(cells, run_flags, out):
    """Every run the cells need (runner.Run, named by runner.run_name), once each, in the order
    the cells name them."""
    runs = {}
    for cell in cells:
        for flags in (cell.on, cell.off):
            for seed in range(cell.seeds):
                name = run_name(flags, seed)
                runs.setdefault(name, runner.seeded_run(name, run_flags + list(flags), seed, out))
    return list(runs.values())


# -----------------------------------------------------------------------------
# The paired statistics of a cell: runner.run_measures of its runs, on against off


# The families of tests, decided before the map was re-read: Holm adjusts within each. gain is acc
# less the base's (the same test as acc), clip_frac is 0 in an unclipped arm by construction: no
# test of their own.
FAMILIES = {"acc": "primary", "atoms": "secondary"}
NOT_TESTED = ("gain", "clip_frac")


def family_of(measure):
    if measure in NOT_TESTED:
        return None
    return FAMILIES.get(measure, "exploratory")


def cell_result(cell, measured):
    """A cell's paired summaries for every measure (experiments/stats.py), every seed's value of
    each arm, and their collapses with McNemar's exact p."""
    on = [measured[run_name(cell.on, s)] for s in range(cell.seeds)]
    off = [measured[run_name(cell.off, s)] for s in range(cell.seeds)]
    diffs = {m: stats.paired_summary([r[m] for r in on], [r[m] for r in off]) for m in MEASURES}
    arms = {arm: {m: [r[m] for r in runs] for m in MEASURES + ("collapsed",)}
            for arm, runs in (("on", on), ("off", off))}
    means = {arm: {m: float(np.mean(values[m])) for m in MEASURES} for arm, values in arms.items()}
    return dict(component=cell.component, pair=cell.pair, line=cell.line, x=cell.x,
                seeds=cell.seeds, on=list(cell.on), off=list(cell.off), diff=diffs, arms=arms,
                means=means, collapsed_on=sum(arms["on"]["collapsed"]),
                collapsed_off=sum(arms["off"]["collapsed"]),
                collapse=dict(p=stats.mcnemar_exact(arms["on"]["collapsed"],
                                                    arms["off"]["collapsed"])))


def adjust_by_family(results):
    """Holm's adjusted p and "separable" (adjusted p < 0.05) for every test of every cell: each
    tested measure is adjusted over the cells (its family's tests), the collapses too."""
    for m in MEASURES:
        tests = [r["diff"][m] for r in results]
        family = family_of(m)
        adjusted = stats.holm([t["p"] if family else math.nan for t in tests])
        for test, p_adjusted in zip(tests, adjusted):
            test.update(family=family, p_adjusted=p_adjusted,
                        separable=bool(p_adjusted < stats.ALPHA))
    collapses = [r["collapse"] for r in results]
    for test, p_adjusted in zip(collapses, stats.holm([c["p"] for c in collapses])):
        test.update(p_adjusted=p_adjusted, separable=bool(p_adjusted < stats.ALPHA))
    return results


# -----------------------------------------------------------------------------
# The first round's map, saved before per-seed values were kept

REREAD_LEGEND = (
    "Re-read from a results.json saved before per-seed values were kept. d = on - off per seed: "
    "mean [95% paired t interval]; p = the paired t test's p, recovered from the interval (no "
    "exact sign-flip p without the seeds); adj. = Holm within the measure's family (primary: acc, "
    "over every cell; secondary: atoms; the rest exploratory, each measure its own family). Bold: "
    "adjusted p < 0.05. Collapsed: runs of each arm that met the collapse rule; p: Fisher's exact "
    "test (which seeds collapsed was not kept, so not McNemar's), adj. over every cell.")


def reread(payload):
    """The cells of an old results.json with the tests of a new map where its numbers allow them
    (REREAD_LEGEND): each difference's paired t p from its interval, then Holm by family."""
    results = []
    for cell in payload["cells"]:
        n = cell["seeds"]
        diff = {m: dict(mean=d["mean"], half=d["half"],
                        p=stats.t_p_from_interval(d["mean"], d["half"], n))
                for m, d in cell["diff"].items()}
        collapse = dict(p=stats.fisher_exact(cell["collapsed_on"], n, cell["collapsed_off"], n))
        # the first round called the groups of 4 "the paper's conditions"; the paper's G is 8
        line = cell["line"].replace("paper's conditions", "paper's reward, G = 4")
        results.append(dict(cell, line=line, diff=diff, collapse=collapse))
    return adjust_by_family(results)


# -----------------------------------------------------------------------------
# Tables and figures


def interval(d, digits=3):
    """ "+0.156 [+0.009, +0.303]" of a paired summary d; "n/a" where there is no number."""
    return stats.interval_text(d["mean"], d["half"], digits)


def tested(d, digits=3):
    """A test in a table cell: the interval, its raw and adjusted p; bold where separable."""
    text = f"{interval(d, digits)}, p {stats.p_text(d['p'])}, adj. {stats.p_text(d['p_adjusted'])}"
    return f"**{text}**" if d.get("separable") else text


EXPLORATORY = ("ood", "entropy", "length", "kl", "reward", "careful", "shortcut")


LEGEND = ("d = on - off per seed: mean [95% paired t interval], p = exact sign-flip p, adj. = Holm "
          "within the measure's family (primary: acc, over every cell; secondary: atoms; the rest "
          "exploratory, each measure its own family). Bold: adjusted p < 0.05. {smallest} "
          "Collapsed: runs of each arm that met the collapse rule; p: McNemar's exact test (the "
          "arms share their seeds), adj. over every cell.")


def smallest_p_text(results):
    """What the exact sign-flip test can reach at the seed counts of these cells: 2 / 2^n."""
    counts = sorted({r["seeds"] for r in results})
    each = ", ".join(f"{2 / 2 ** n:.4g} with {n} seeds" for n in counts)
    return f"The smallest possible p: {each}."


def results_markdown(results, legend=LEGEND):
    """Per component, a table of its cells: the primary test (acc) and the secondary one (atoms),
    each with its raw and Holm-adjusted p, and the collapses; then the exploratory measures."""
    lines = [legend.replace("{smallest}", smallest_p_text(results))]
    head = ["pair", "cell", "x", "seeds", "acc on", "acc off", "primary: d acc",
            "secondary: d atoms", "collapsed on / off"]
    for component in dict.fromkeys(r["component"] for r in results):
        rows = [r for r in results if r["component"] == component]
        lines += ["", f"### {component}", "", "| " + " | ".join(head) + " |",
                  "|" + " --- |" * len(head)]
        for r in rows:
            collapse = (f"{r['collapsed_on']} / {r['collapsed_off']} (p {r['collapse']['p']:.3f},"
                        f" adj. {r['collapse']['p_adjusted']:.3f})")
            cells = [r["pair"], r["line"], f"{r['x']:g}", str(r["seeds"]),
                     f"{r['means']['on']['acc']:.3f}", f"{r['means']['off']['acc']:.3f}",
                     tested(r["diff"]["acc"]), tested(r["diff"]["atoms"]), collapse]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### exploratory measures (d, raw p; not corrected across measures)", "",
              "| component | pair | cell | x | " + " | ".join(EXPLORATORY) + " |",
              "|" + " --- |" * (len(EXPLORATORY) + 4)]
    for r in results:
        cells = [f"{interval(r['diff'][m], 4 if m == 'kl' else 2)} "
                 f"(p {stats.p_text(r['diff'][m]['p'])})" for m in EXPLORATORY]
        lines.append(f"| {r['component']} | {r['pair']} | {r['line']} | {r['x']:g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def axis_of(rows):
    """Where a pair's cells sit on the x axis, and their tick labels: the learning rate on a log
    scale when the cells differ only in it; else one named category per cell."""
    lrs = [r["x"] for r in rows]
    numeric = len(rows) > 1 and len({r["line"] for r in rows}) == 1 and min(lrs) > 0
    if numeric:
        return lrs, [lr_text(x) for x in lrs], f"learning rate ({rows[0]['line']})", True
    if rows[0]["component"] in LR_AXIS:  # one cell on a learning-rate axis: name its point
        return [0], [f"lr {lr_text(rows[0]['x'])}, {rows[0]['line']}"], "", False
    return list(range(len(rows))), [r["line"] for r in rows], "", False


LR_AXIS = ("ratio and clipping", "KL")  # the components whose x is the learning rate


def lr_text(x):
    return f"{x:.0e}".replace("e-0", "e-")


def plot_component(results, component, measure, path):
    """One column per pair of the component: above, both arms' mean and 95% interval over seeds at
    each cell (so that "both arms collapsed" shows); below, the paired difference on - off with its
    interval, and under each cell its collapse counts and the difference's Holm-adjusted p."""
    groups = {}
    for r in results:
        if r["component"] == component:
            groups.setdefault(r["pair"], []).append(r)
    widths = [max(3.6, 2.6 * len(rows)) for rows in groups.values()]
    fig = Figure((sum(widths), 7.2), layout="constrained")
    axes = np.array(fig.subplots(2, len(groups), sharex="col", squeeze=False,
                                 width_ratios=widths))
    for col, (pair, rows) in enumerate(groups.items()):
        rows = sorted(rows, key=lambda r: r["x"])
        xs, labels, xlabel, log = axis_of(rows)
        joined = "o-" if log else "o"  # a line joins points of one axis, not named conditions
        top, bottom = axes[0, col], axes[1, col]
        for arm, color, shift in (("on", "tab:blue", -0.04), ("off", "tab:orange", 0.04)):
            points = [stats.mean_interval(r["arms"][arm][measure]) for r in rows]
            where = [x * (1 + shift) if log else x + shift for x in xs]
            top.errorbar(where, [m for m, _ in points], yerr=[np.nan_to_num(h) for _, h in points],
                         fmt=joined, color=color, capsize=4,
                         label=f"{arm}: " + pair.split(" vs ")[0 if arm == "on" else 1])
        diffs = [r["diff"][measure] for r in rows]
        bottom.errorbar(xs, [d["mean"] for d in diffs],
                        yerr=[np.nan_to_num(d["half"]) for d in diffs],
                        fmt=joined.replace("o", "s"), color="black", capsize=4)
        bottom.axhline(0, color="grey", lw=0.8)
        top.set(title=pair, ylabel=f"{measure}: arm mean, 95% interval")
        if measure in ("acc", "atoms"):
            top.set_ylim(-0.02, 1.02)
        top.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=2,
                   frameon=False)
        bottom.set(xlabel=xlabel, ylabel=f"d {measure} = on - off (paired)")
        ticks = [f"{textwrap.fill(label, 22)}\ncollapsed {r['collapsed_on']}/{r['collapsed_off']} "
                 f"of {r['seeds']}\nadj. p {stats.p_text(d['p_adjusted'])}"
                 for label, r, d in zip(labels, rows, diffs)]
        if log:
            bottom.set_xscale("log")
            bottom.set_xticks(xs, ticks, fontsize=8)
            bottom.minorticks_off()
            bottom.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        else:
            bottom.set_xticks(xs, ticks, fontsize=8)
            bottom.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    title = f"{component}: {measure} of each arm (mean, 95% interval) and on - off (paired)"
    fig.suptitle(textwrap.fill(title, int(9 * sum(widths))), fontsize=11)  # ~9 characters an inch
    save_figure(fig, path)


def headline_cell(results, component):
    """The component's headline cell: QUICK_CELLS's (where the full map measured its largest
    effect), or in another map the cell with the largest accuracy difference."""
    rows = [r for r in results if r["component"] == component]
    named = [r for r in rows if (r["pair"], r["line"], r["x"]) == QUICK_CELLS.get(component)]
    return named[0] if named else max(rows, key=lambda r: abs(r["diff"]["acc"]["mean"]))


def plot_trajectories(cell, histories, path):
    """Batch reward, entropy and response length per step of one cell, on and off: the mean over its
    seeds with a 95% band (how the paper saw collapse: reward and length falling, entropy too)."""
    fig = Figure((15, 4.4), layout="constrained")
    for ax, key in zip(fig.subplots(1, 3), ("reward", "entropy", "resp_len")):
        for arm in ("on", "off"):
            runs = [histories[run_name(tuple(cell[arm]), s)] for s in range(cell["seeds"])]
            steps = min(len(rows) for rows in runs)
            values = np.array([[row[key] for row in rows[:steps]] for rows in runs], dtype=float)
            mean = values.mean(0)
            half = (stats.t_quantile(0.975, len(runs) - 1) * values.std(0, ddof=1)
                    / math.sqrt(len(runs)))
            x = np.arange(1, steps + 1)
            ax.plot(x, mean, label=f"{arm}: {' '.join(cell[arm])} "
                                   f"(collapsed {cell['collapsed_' + arm]}/{cell['seeds']})")
            ax.fill_between(x, mean - half, mean + half, alpha=0.2)
        ax.set(xlabel="RL steps done", ylabel=key)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncol=1, frameon=False)
    fig.suptitle(f"{cell['component']}: {cell['pair']}, {cell['line']}, x = {cell['x']:g} "
                 f"(mean over {cell['seeds']} seeds, 95% band)")
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# The command


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Any other flag goes to every run.")
    p.add_argument("--quick", action="store_true", help="the reduced map: one cell per component")
    p.add_argument("--regimes-dir", default=None,
                   help="runs/regimes, or runs/regimes-quick with --quick")
    runner.add_modes(p, COLLECTS)
    p.add_argument("--reread", default=None, metavar="JSON",
                   help="re-read the first round's results.json (no per-seed values) with this "
                        "map's tests; writes the table beside it as .md; runs nothing")
    return p


COLLECTS = "the tables and figures"  # what --collect writes


def parse(argv):
    """The map's own flags, its cells, and the map as the runner runs it (its runs, and the warm
    start they share), all checked before any work."""
    p = build_parser()
    args, run_flags = p.parse_known_args(argv)
    cells = quick_map() if args.quick else full_map()
    out = Path(args.regimes_dir or ("runs/regimes-quick" if args.quick else "runs/regimes"))
    runs = map_runs(cells, MAP_FLAGS + run_flags, out)
    regime_map = runner.Experiment("experiments/regimes.py", runs,
                                   {"warm-start": MAP_FLAGS + run_flags}, out,
                                   f"{len(cells)} cells, {len(runs)} runs", COLLECTS)
    runner.check_runs(p, args.run, regime_map)
    return args, cells, regime_map


def collect(cells, runs):
    """The results of every cell, and the metrics rows of every run (for the trajectories)."""
    files = runner.read_finished(runs)
    measured = {name: runner.run_measures(f) for name, f in files.items()}
    histories = {name: f["metrics"] for name, f in files.items()}
    return adjust_by_family([cell_result(cell, measured) for cell in cells]), histories


def reread_file(path):
    """--reread: the table of a first-round results.json, written beside it as .md."""
    table = results_markdown(reread(json.loads(Path(path).read_text())), REREAD_LEGEND)
    write_atomic(Path(path).with_suffix(".md"), table)
    print(table)


def write_results(argv, cells, results, histories, seconds, out):
    """results.md, results.json, and each component's figures, into out; returns the table."""
    table = results_markdown(results)
    command = "python experiments/regimes.py " + " ".join(argv)
    write_atomic(out / "results.md", table)
    payload = dict(command=command, seconds=seconds, runs=len(histories), cells=results)
    write_atomic(out / "results.json", json.dumps(payload, indent=1))
    for component in dict.fromkeys(c.component for c in cells):
        slug = component.replace(" ", "_")
        plot_component(results, component, "acc", out / f"regimes_{slug}.png")
        cell = headline_cell(results, component)
        plot_trajectories(cell, histories, out / f"regimes_{slug}_trajectories.png")
    return table


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, cells, regime_map = parse(argv)
    if args.reread is not None:
        return reread_file(args.reread)
    t0 = time.time()
    if not runner.run_modes(args, argv, regime_map):
        return None
    results, histories = collect(cells, regime_map.runs)
    table = write_results(argv, cells, results, histories, time.time() - t0, regime_map.out)
    print(table + f"\nregimes: {len(regime_map.runs)} runs; {time.time() - t0:.0f}s; results in "
          f"{regime_map.out}")
    return results


if __name__ == "__main__":
    main()
