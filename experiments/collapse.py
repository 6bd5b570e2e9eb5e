"""
experiments/collapse.py: a declared test of the RGRA paper's second claim, that without negative
feedback the policy collapses: its completions shrink and it stops exploring. Declared here (arms,
measures, seeds, analysis) and committed before any of its runs started; reported whatever it shows.

    python experiments/collapse.py --jobs 2            # every run (resumable, recorded), the report
    python experiments/collapse.py --print-commands    # one command a line, for a scheduler
    python experiments/collapse.py --collect           # the report of the finished runs

The hypothesis: under the paper's conditions (its reward: 1 for the right answer + 0.1 for a
well-formed answer line; its G = 8; 120 steps), positive-only (--adv-sign pos) ends with shorter
completions than both signs. Two learning rates: 1e-3, where the quick regime map saw it, and 3e-4,
where both signs still learn; a shrinking read only where both signs lose accuracy too cannot tell
the paper's mechanism from a step size that breaks any run, so each arm's accuracy is reported
beside its length at both rates.

Primary measure (declared): the mean length in tokens of the final policy's greedy completions on
the 500 mix3 test problems ("length" of runner.run_measures, the measure the map read). d = both
signs - positive-only per seed (the arms share their seeds), declared direction d > 0. The analysis:
the exact two-sided sign-flip p on each of the four tests (2 rates x 2 bases), Holm over the four;
"confirmed" where adjusted p < 0.05 with d > 0; a significant d < 0 is reported as the opposite
direction. Beside it, exploratory (raw p): accuracy, the sampled length of the last 5 steps, the
share of zero-variance groups, the batch reward.

The collapse indicator (declared, apart from the runner's general collapse rule): a run shrank when
the mean sampled completion length of its last 5 steps is below SHRINK times that of its first 5,
or when every group of its last 5 steps got one reward for all its G completions (the reward
variance within each group reached 0: nothing left to compare). Counts per arm, with McNemar's
exact test (paired by seed).

Seeds: RL seeds from SEED_OFFSET (no earlier run used them: the map used 0-9, the confirmations
1000-1023), on the shipped bases 0 and 1. How many: the fewest at which a paired test at the
family's strictest Holm level (0.05 / 4) has 80% power against the quick map's length difference
and spread (+12.8 [-21.2, +46.8] tokens over 3 seeds, data/results/regimes_quick.json), at least 10
(an exact sign-flip test of fewer cannot reach that level unless every sign agrees). Runs go in
the order lr 1e-3 base 0, base 1, then lr 3e-4, whole pairs first, so an interrupted test has whole
pairs of its most informative cells; every finished run leaves a record (experiments/runner.py).
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from matplotlib.figure import Figure  # imported before any work: the figure at the end needs it

import numpy as np

from experiments import runner, stats
from experiments.confirm import CONFIRMED_CELL, map_sd, outcome
from experiments.regimes import MAP_FLAGS
from experiments.runner import run_name
from rundir import save_figure, write_atomic

PAPERS_CONDITIONS = ("--preset", "rgra", "--format-reward", "0.1", "--group", "8",
                     "--steps", "120")
BOTH, POSITIVE_ONLY = (), ("--adv-sign", "pos")
RATES = ("1e-3", "3e-4")
BASES = (0, 1)
TESTS_IN_FAMILY = len(RATES) * len(BASES)
SEED_OFFSET = 2000
MAP_EFFECT, MAP_SD = 12.839, map_sd(33.998, 3)  # the quick map's length d, both - positive-only
SHRINK = 0.5  # a run shrank: its final sampled length below this share of its first
WINDOW = 5  # steps at the start and at the end that the indicator compares
PLANNED_SEEDS = max(10, stats.seeds_for_power(MAP_EFFECT, MAP_SD, stats.ALPHA / TESTS_IN_FAMILY))
PLANNED_POWER = stats.power_of(PLANNED_SEEDS, MAP_EFFECT, MAP_SD, stats.ALPHA / TESTS_IN_FAMILY)
SEEDS = tuple(SEED_OFFSET + i for i in range(PLANNED_SEEDS))
EXPLORATORY = ("acc", "sampled_length", "zero_var", "reward")


def arm(rate, base_seed, sign):
    """The flags of one arm: the paper's conditions at rate on base base_seed, with sign."""
    return ("--base-seed", str(base_seed)) + PAPERS_CONDITIONS + ("--lr", rate) + sign


def collapse_runs(run_flags, out):
    """Every run, in the declared order: rates, bases, seeds, then both arms of the seed."""
    runs = []
    for rate in RATES:
        for base_seed in BASES:
            for seed in SEEDS:
                for sign in (BOTH, POSITIVE_ONLY):
                    flags = arm(rate, base_seed, sign)
                    name = run_name(flags, seed)
                    runs.append(runner.seeded_run(name, run_flags + list(flags), seed, out))
    return runs


# -----------------------------------------------------------------------------
# What a run measured, and whether it shrank


def shrank(lengths, zero_var):
    """The declared indicator: per step, the mean sampled length and the share of groups whose
    rewards are all equal. The final window's length below SHRINK times the first's, or every
    group of the final window without reward variance."""
    first, last = np.mean(lengths[:WINDOW]), np.mean(lengths[-WINDOW:])
    return bool(last < SHRINK * first or np.mean(zero_var[-WINDOW:]) == 1.0)


def measures(files):
    """The numbers of one finished run (runner.read_run's files) that the test reads, and its
    trajectories for the figure."""
    metrics = files["metrics"]
    lengths = [m["resp_len"] for m in metrics]
    zero_var = [m["zero_var"] for m in metrics]
    final = files["summary"]["final"]["mix3"]
    return dict(length=final["len"], acc=final["acc"],
                sampled_length=runner.mean_of_last_steps(metrics, "resp_len", WINDOW),
                zero_var=runner.mean_of_last_steps(metrics, "zero_var", WINDOW),
                reward=runner.mean_of_last_steps(metrics, "reward", WINDOW),
                shrank=shrank(lengths, zero_var), lengths=lengths, zero_vars=zero_var)


# -----------------------------------------------------------------------------
# The analysis, as declared


def test_result(rate, base_seed, measured):
    """One test: both signs against positive-only at one rate on one base, paired by seed."""
    both = [measured[run_name(arm(rate, base_seed, BOTH), s)] for s in SEEDS]
    pos = [measured[run_name(arm(rate, base_seed, POSITIVE_ONLY), s)] for s in SEEDS]
    primary = stats.paired_summary([r["length"] for r in both], [r["length"] for r in pos])
    exploratory = {m: stats.paired_summary([r[m] for r in both], [r[m] for r in pos])
                   for m in EXPLORATORY}
    kept = ("length",) + EXPLORATORY + ("shrank", "lengths", "zero_vars")
    arms = {name: {k: [r[k] for r in runs] for k in kept}
            for name, runs in (("both", both), ("positive-only", pos))}
    return dict(rate=rate, base_seed=base_seed, seeds=list(SEEDS), primary=primary,
                exploratory=exploratory, arms=arms,
                shrank=[sum(arms["both"]["shrank"]), sum(arms["positive-only"]["shrank"])],
                shrank_p=stats.mcnemar_exact(arms["both"]["shrank"],
                                             arms["positive-only"]["shrank"]))


def analyse(measured):
    """The four tests, Holm over them, each one's outcome (confirmed only when significant and
    d > 0, the declared direction)."""
    tests = [test_result(rate, b, measured) for rate in RATES for b in BASES]
    adjusted = stats.holm([t["primary"]["p"] for t in tests])
    for test, p_adj in zip(tests, adjusted):
        test["p_adjusted"] = p_adj
        test.update(outcome(test["primary"]["mean"], p_adj, direction=1))
    return tests


def report_markdown(tests):
    lines = [
        "Each row: both signs against positive-only at one learning rate on one base, under the "
        "paper's reward and G = 8, 120 steps. length: the final greedy completions' mean length "
        "(tokens); d = both - positive-only per seed, its 95% paired t interval; p: exact "
        "sign-flip; p adj: Holm over the four tests; confirmed: p adj < 0.05 with d > 0. "
        "Accuracy beside it; shrank: runs meeting the declared indicator, McNemar's exact p.", "",
        "| lr | base | seeds | length, both | length, positive-only | d, 95% interval | p | "
        "p adj | confirmed | acc, both | acc, positive-only | shrank both / pos (p) |",
        "|" + " --- |" * 12]
    for t in tests:
        both, pos = t["arms"]["both"], t["arms"]["positive-only"]
        cells = [t["rate"], str(t["base_seed"]), str(len(t["seeds"])),
                 stats.mean_text(stats.mean_ci95(both["length"]), 1),
                 stats.mean_text(stats.mean_ci95(pos["length"]), 1),
                 stats.interval_text(t["primary"]["mean"], t["primary"]["half"], 1),
                 stats.p_text(t["primary"]["p"]), stats.p_text(t["p_adjusted"]),
                 CONFIRMED_CELL[t["outcome"]],
                 stats.mean_text(stats.mean_ci95(both["acc"])),
                 stats.mean_text(stats.mean_ci95(pos["acc"])),
                 f"{t['shrank'][0]} / {t['shrank'][1]} ({stats.p_text(t['shrank_p'])})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Exploratory (raw p): d = both - positive-only of each measure.", ""]
    rows = [([t["rate"], str(t["base_seed"])], t["exploratory"]) for t in tests]
    lines += stats.exploratory_table(["lr", "base"], rows, EXPLORATORY)
    return "\n".join(lines) + "\n"


def plot_trajectories(tests, path):
    """One row per test: the sampled length and the share of zero-variance groups over the steps,
    each arm's mean over its seeds with its 95% interval."""
    fig = Figure((10, 2.6 * len(tests)), layout="constrained")
    axes = fig.subplots(len(tests), 2, squeeze=False)
    for (ax_len, ax_var), t in zip(axes, tests):
        for name, color in (("both", "tab:blue"), ("positive-only", "tab:red")):
            for ax, key in ((ax_len, "lengths"), (ax_var, "zero_vars")):
                curves = np.array(t["arms"][name][key])  # (seeds, steps)
                mean_half = [stats.mean_ci95(curves[:, i]) for i in range(curves.shape[1])]
                mean, half = np.array(mean_half).T
                steps = np.arange(1, len(mean) + 1)
                ax.plot(steps, mean, color=color, label=name)
                ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.2)
        title = f"lr {t['rate']}, base {t['base_seed']}"
        ax_len.set(title=f"{title}: sampled length", xlabel="RL step", ylabel="tokens")
        ax_var.set(title=f"{title}: groups without reward variance", xlabel="RL step",
                   ylabel="share of groups", ylim=(-0.02, 1.02))
        ax_len.legend(fontsize=8)
    fig.suptitle("Both signs against positive-only: mean over seeds, 95% interval")
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# The command


def parse(argv):
    return runner.declared_command(argv, "experiments/collapse.py", __doc__.split("\n\n")[0],
                                   collapse_runs, BASES, MAP_FLAGS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, experiment = parse(argv)
    t0 = time.time()
    measured = runner.measured_runs(args, argv, experiment, measures)
    if measured is None:
        return None
    tests = analyse(measured)
    table = report_markdown(tests)
    write_atomic(experiment.out / "results.md", table)
    payload = dict(command="python experiments/collapse.py " + " ".join(argv),
                   seconds=time.time() - t0, runs=len(measured), planned_seeds=PLANNED_SEEDS,
                   planned_power=PLANNED_POWER, tests=tests)
    write_atomic(experiment.out / "results.json", json.dumps(payload, indent=1))
    plot_trajectories(tests, experiment.out / "collapse.png")
    print(table + f"\ncollapse: {len(measured)} runs; results in {experiment.out}")
    return tests


if __name__ == "__main__":
    main()
