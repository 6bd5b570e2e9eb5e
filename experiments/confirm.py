"""
experiments/confirm.py: the confirmation set. Three hypotheses that the regime map raised, each
declared here (arms, primary measure, seeds, analysis) and committed before any of its runs started,
then run on seeds that no earlier run used and on two warm-start bases, and reported whatever they
show.

    python experiments/confirm.py --jobs 2            # every run (resumable), then the report
    python experiments/confirm.py --print-commands    # one command a line, for a scheduler
    python experiments/confirm.py --collect           # the report of the finished runs
    python experiments/confirm.py --reread data/results/confirm.json   # its report again, from
                                                      # the per-seed values it stored; runs nothing

Why a confirmation set: the regime map chose its cells, and added seeds to two of them, after
looking at results; a cell chosen for its large effect overstates it (the winner's curse). A test
whose hypothesis, measure, seeds and analysis are fixed before its data exist does not.

The hypotheses (HYPOTHESES below), each "on - off > 0" on its primary measure (its direction),
tested two-sided:
  negative feedback   both signs against positive-only (--adv-sign pos) under the RGRA paper's
                      reward (0.1 for a well-formed answer line + 1 for the right answer) and its
                      G = 8, at lr 3e-4, where both signs were stable in the map, 120 steps;
                      primary: greedy accuracy on the RL level (acc). The paper: negative feedback
                      is essential.
  ratio and clipping  GRPO (ratio + clip) against RGRA with each batch split into 8 minibatches
                      (stale samples) at lr 3e-4, 60 steps; primary: acc. The paper: ratio and
                      clipping are unnecessary (it ran one update per batch, where the two are equal
                      exactly).
  KL                  beta 0.05 against beta 0 (RGRA) at lr 1e-3, 60 steps; primary: the mean greedy
                      accuracy on the atoms (atoms): does KL hold what the base knew?

The analysis, fixed here: on each base, d_s = on_s - off_s per seed; the exact two-sided sign-flip
p (experiments/stats.py) of the primary measure; the family is the six tests (3 hypotheses x 2
bases), Holm-adjusted; "confirmed" on a base means adjusted p < 0.05 there with the mean difference
in the declared direction (a significant difference the other way is reported as such, never as
confirmed), and a finding of the method (not of one warm start) is one confirmed on both bases.
Beside it: the 95% paired t interval, every other measure (exploratory: raw p only), and the
collapse counts with the exact McNemar test.

Seeds: RL seeds SEED_OFFSET, SEED_OFFSET + 1, ... (no earlier run used a seed above 9), on the
default base (--base-seed 0) and a second one (--base-seed 1). How many: the fewest at which a
paired test at the family's strictest Holm level (0.05 / 6) has 80% power against the effect and
spread the map measured (stats.seeds_for_power), at most MOST_SEEDS for the CPU budget and at least
10; PLANNED_POWER says what each hypothesis gets. The map's effects were chosen for being large, so
these powers are optimistic.
"""

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from matplotlib.figure import Figure  # imported before any work: the figure at the end needs it

import numpy as np

import nanorgra
from experiments import runner, stats
from experiments.regimes import MAP_FLAGS
from experiments.runner import MEASURES, run_name
from rundir import save_figure, write_atomic


@dataclass(frozen=True)
class Hypothesis:
    """One declared comparison: the flags of its two arms (on top of the map's), its primary
    measure (a key of experiments.runner.run_measures), and what the regime map measured of it
    (the effect and the spread of the per-seed differences that size its seeds)."""

    name: str
    claim: str  # in words: what on - off would show
    on: tuple
    off: tuple
    measure: str
    map_effect: float  # the regime map's mean difference of the measure
    map_sd: float  # the sd of its per-seed differences (from its 95% interval and seed count)
    direction: int = 1  # the declared sign of on - off: +1, "on beats off" (all three claims)


SEED_OFFSET = 1000
BASES = (0, 1)
TESTS_IN_FAMILY = 3 * len(BASES)
MOST_SEEDS = 24
PAPERS_REWARD = ("--format-reward", "0.1", "--group", "8", "--steps", "120")


def map_sd(half, seeds):
    """The sd of the per-seed differences behind a 95% interval of half-width `half`."""
    return half * math.sqrt(seeds) / stats.t_quantile(0.975, seeds - 1)


HYPOTHESES = (
    # the map: +0.067 +- 0.090 over 5 seeds (groups of 4, 32 prompts)
    Hypothesis("negative feedback",
               "both signs beat positive-only under the paper's reward and G = 8 (lr 3e-4)",
               on=("--preset", "rgra", "--lr", "3e-4") + PAPERS_REWARD,
               off=("--preset", "rgra", "--lr", "3e-4") + PAPERS_REWARD + ("--adv-sign", "pos"),
               measure="acc", map_effect=0.067, map_sd=map_sd(0.090, 5), direction=1),
    # the map: +0.156 +- 0.147 over 10 seeds
    Hypothesis("ratio and clipping",
               "GRPO beats RGRA when each batch is split into 8 minibatches (lr 3e-4)",
               on=("--preset", "grpo", "--lr", "3e-4", "--minibatches", "8"),
               off=("--preset", "rgra", "--lr", "3e-4", "--minibatches", "8"),
               measure="acc", map_effect=0.156, map_sd=map_sd(0.147, 10), direction=1),
    # the map: atoms +0.311 +- 0.199 over 5 seeds
    Hypothesis("KL",
               "beta 0.05 keeps more of the atoms than beta 0 (lr 1e-3)",
               on=("--preset", "rgra", "--lr", "1e-3", "--beta", "0.05"),
               off=("--preset", "rgra", "--lr", "1e-3", "--beta", "0"),
               measure="atoms", map_effect=0.311, map_sd=map_sd(0.199, 5), direction=1),
)


def planned_seeds(hypothesis):
    """Seeds per arm and base: 80% power at alpha 0.05 / TESTS_IN_FAMILY, at most MOST_SEEDS, and
    at least 10 (an exact sign-flip test of fewer seeds cannot reach that alpha unless every sign
    agrees: 2 / 2^8 = 0.0078)."""
    alpha = stats.ALPHA / TESTS_IN_FAMILY
    n = stats.seeds_for_power(hypothesis.map_effect, hypothesis.map_sd, alpha)
    return min(MOST_SEEDS, max(10, n))


PLANNED_SEEDS = {h.name: planned_seeds(h) for h in HYPOTHESES}
PLANNED_POWER = {h.name: stats.power_of(PLANNED_SEEDS[h.name], h.map_effect, h.map_sd,
                                        stats.ALPHA / TESTS_IN_FAMILY) for h in HYPOTHESES}


def seeds_of(hypothesis):
    return [SEED_OFFSET + i for i in range(PLANNED_SEEDS[hypothesis.name])]


# -----------------------------------------------------------------------------
# Runs: one directory per (base, flags, seed)


def arm_flags(base_seed, flags):
    return ("--base-seed", str(base_seed)) + tuple(flags)


def confirmation_runs(run_flags, out):
    """Every run of the set, in the order of the hypotheses, bases, seeds and arms (so that an
    interrupted set has whole pairs done)."""
    runs = {}
    for hypothesis in HYPOTHESES:
        for base_seed in BASES:
            for seed in seeds_of(hypothesis):
                for flags in (hypothesis.on, hypothesis.off):
                    arm = arm_flags(base_seed, flags)
                    name = run_name(arm, seed)
                    runs.setdefault(name, runner.seeded_run(name, run_flags + list(arm), seed, out))
    return list(runs.values())


# -----------------------------------------------------------------------------
# The analysis


def test_result(hypothesis, base_seed, measured):
    """One test: the per-seed pairs of one hypothesis on one base, its primary measure's paired
    summary, every measure's (exploratory), and the collapses with McNemar's exact p."""
    seeds = seeds_of(hypothesis)
    on = [measured[run_name(arm_flags(base_seed, hypothesis.on), s)] for s in seeds]
    off = [measured[run_name(arm_flags(base_seed, hypothesis.off), s)] for s in seeds]
    measures = {m: stats.paired_summary([r[m] for r in on], [r[m] for r in off])
                for m in MEASURES}
    kept = MEASURES + ("collapsed",) + tuple(k for k in ("collapsed_before_mend",) if k in on[0])
    arms = {arm: {m: [r[m] for r in runs] for m in kept}
            for arm, runs in (("on", on), ("off", off))}
    collapsed_on, collapsed_off = arms["on"]["collapsed"], arms["off"]["collapsed"]
    return dict(hypothesis=hypothesis.name, claim=hypothesis.claim, base_seed=base_seed,
                measure=hypothesis.measure, direction=hypothesis.direction, seeds=seeds,
                on=list(hypothesis.on),
                off=list(hypothesis.off), primary=measures[hypothesis.measure],
                measures=measures, arms=arms, collapsed_on=sum(collapsed_on),
                collapsed_off=sum(collapsed_off),
                collapse_p=stats.mcnemar_exact(collapsed_on, collapsed_off))


CONFIRMED, OPPOSITE, NOT_SIGNIFICANT = ("confirmed", "significant in the opposite direction",
                                         "not significant")


def outcome(mean, p_adjusted, direction):
    """One test's outcome: significant after Holm, and whether its mean difference has the
    declared sign. Only both together confirm."""
    significant = bool(p_adjusted < stats.ALPHA)
    in_direction = bool(np.sign(mean) == direction)
    word = (CONFIRMED if in_direction else OPPOSITE) if significant else NOT_SIGNIFICANT
    return dict(significant=significant, in_direction=in_direction,
                confirmed=significant and in_direction, outcome=word)


def analyse(measured):
    """The six tests, their Holm-adjusted p over the family, each test's outcome (confirmed only
    when significant and in the declared direction) and each hypothesis's verdict."""
    tests = [test_result(h, b, measured) for h in HYPOTHESES for b in BASES]
    adjusted = stats.holm([t["primary"]["p"] for t in tests])
    for test, p_adj in zip(tests, adjusted):
        test["p_adjusted"] = p_adj
        test.update(outcome(test["primary"]["mean"], p_adj, test["direction"]))
    verdicts = {h.name: verdict([t for t in tests if t["hypothesis"] == h.name])
                for h in HYPOTHESES}
    return tests, verdicts


def verdict(tests):
    """In words, from a hypothesis's tests on every base: where it is confirmed, where its effect
    is significant in the opposite direction, where neither."""
    bases = {word: [str(t["base_seed"]) for t in tests if t["outcome"] == word]
             for word in (CONFIRMED, OPPOSITE, NOT_SIGNIFICANT)}
    if len(bases[CONFIRMED]) == len(tests):
        return "confirmed on every base"
    if len(bases[OPPOSITE]) == len(tests):
        return f"{OPPOSITE} on every base"
    if not bases[CONFIRMED] and not bases[OPPOSITE]:
        return "not confirmed on any base"
    return "; ".join(f"{word} on base {', '.join(b)}" for word, b in bases.items() if b)


# -----------------------------------------------------------------------------
# Re-reading a stored report: its per-seed values, the mended collapse rule


def measured_from(payload):
    """The measures of every run of a stored results.json, keyed as collect keys them, from its
    tests' per-seed values (each test's arms must be the ones declared here)."""
    declared = {h.name: h for h in HYPOTHESES}
    measured = {}
    for t in payload["tests"]:
        h = declared[t["hypothesis"]]
        assert (tuple(t["on"]), tuple(t["off"])) == (h.on, h.off), h.name
        for arm, flags in (("on", h.on), ("off", h.off)):
            values = t["arms"][arm]
            old = values.get("collapsed_before_mend", values["collapsed"])
            for i, seed in enumerate(t["seeds"]):
                run = {m: values[m][i] for m in MEASURES}
                run["collapsed_before_mend"] = old[i]
                run["collapsed"] = collapse_after_mend(run, old[i], flags)
                measured[run_name(arm_flags(t["base_seed"], flags), seed)] = run
    return measured


def collapse_after_mend(run, collapsed_before, flags):
    """Whether a run that the collapse rule judged before its mend (experiments/runner.py: a moved
    length counts only in a run that did not learn) meets the mended rule, from its stored numbers.
    The mended rule flags a subset of the old one's runs. A flagged run whose accuracy ended no
    higher than the base's did not learn: it stays flagged. One whose accuracy rose is spared when
    its final reward (its last 5 steps) rose too; its start window's reward is not stored, but it
    is sampled from the base, so a final reward above twice the base's greedy accuracy plus the
    format reward counts as risen, and anything less keeps the flag (as the old rule had it)."""
    if not collapsed_before or run["gain"] <= 0:
        return bool(collapsed_before)
    args = nanorgra.parse_args(MAP_FLAGS + list(flags))
    base_acc = run["acc"] - run["gain"]
    return not run["reward"] > 2 * (base_acc + args.format_reward)


def reread(path):
    """The report of a stored results.json again, from its per-seed values: the analysis as
    declared, the collapses under the mended rule; runs nothing. Rewrites the JSON's derived fields
    (its command and seconds stay those of its collection) and writes the table and figure beside
    it."""
    path = Path(path)
    payload = json.loads(path.read_text())
    tests, verdicts = analyse(measured_from(payload))
    payload.update(tests=tests, verdicts=verdicts,
                   reread=f"python experiments/confirm.py --reread {path}")
    table = report_markdown(tests, verdicts)
    write_atomic(path.with_suffix(".md"), table)
    write_atomic(path, json.dumps(payload, indent=1))
    plot_confirmations(tests, path.with_suffix(".png"))
    print(table)
    return tests, verdicts


def interval_text(summary):
    """ "+0.156 [+0.009, +0.303]" of a paired summary."""
    return stats.interval_text(summary["mean"], summary["half"])


def report_markdown(tests, verdicts):
    lines = [
        "Each row: one hypothesis on one base; d = on - off per seed; the 95% paired t interval; "
        "p: exact two-sided sign-flip p; p adj: Holm over the six tests (the family); declared: "
        "the direction each hypothesis claims; confirmed: p adj < 0.05 with d in that direction "
        "(a significant d the other way reads \"no: opposite direction\"). Collapses: runs of "
        "each arm that met the collapse rule, with McNemar's exact p (the arms share their "
        "seeds).", "",
        "| hypothesis | base | seeds | measure | on | off | d, 95% interval | p | p adj | "
        "declared | confirmed | collapsed on / off (p) |", "|" + " --- |" * 12]
    for t in tests:
        m = t["measure"]
        cells = [t["hypothesis"], str(t["base_seed"]), str(len(t["seeds"])), m,
                 f"{np.mean(t['arms']['on'][m]):.3f}", f"{np.mean(t['arms']['off'][m]):.3f}",
                 interval_text(t["primary"]), stats.p_text(t["primary"]["p"]),
                 stats.p_text(t["p_adjusted"]), "on > off" if t["direction"] > 0 else "on < off",
                 CONFIRMED_CELL[t["outcome"]],
                 f"{t['collapsed_on']} / {t['collapsed_off']} ({stats.p_text(t['collapse_p'])})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Verdicts: " + "; ".join(f"{name}: {v}" for name, v in verdicts.items()) + "."]
    lines += ["", "Exploratory (raw p, no correction): every measure of every test.", "",
              "| hypothesis | base | " + " | ".join(MEASURES) + " |",
              "|" + " --- |" * (len(MEASURES) + 2)]
    for t in tests:
        cells = [stats.effect_text(t["measures"][m]) for m in MEASURES]
        lines.append(f"| {t['hypothesis']} | {t['base_seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CONFIRMED_CELL = {CONFIRMED: "yes", OPPOSITE: "no: opposite direction", NOT_SIGNIFICANT: "no"}
ARM_NAMES = {"negative feedback": ("positive-only", "both signs"),
             "ratio and clipping": ("RGRA", "GRPO"), "KL": ("beta 0", "beta 0.05")}


def plot_confirmations(tests, path):
    """One panel per hypothesis and base: each seed's on and off values joined by a line, the
    arms' means with their 95% intervals, and the difference's interval and adjusted p in the
    title."""
    fig = Figure((4.2 * len(BASES) * len(HYPOTHESES) / 2, 8), layout="constrained")
    axes = fig.subplots(2, len(tests) // 2).T.flat
    for ax, t in zip(axes, tests):
        m = t["measure"]
        on, off = np.array(t["arms"]["on"][m]), np.array(t["arms"]["off"][m])
        for a, b in zip(off, on):
            ax.plot([0, 1], [a, b], color="grey", alpha=0.35, lw=0.8)
        for x, values in ((0, off), (1, on)):
            mean, half = stats.mean_interval(values)
            ax.errorbar([x], [mean], yerr=[half], fmt="o", color="black", capsize=5, ms=6)
        off_name, on_name = ARM_NAMES[t["hypothesis"]]
        ax.set_xticks([0, 1], [f"off: {off_name}\ncollapsed {t['collapsed_off']} of {len(off)}",
                               f"on: {on_name}\ncollapsed {t['collapsed_on']} of {len(on)}"])
        ax.set_xlim(-0.4, 1.4)
        ax.set_ylabel(m)
        ax.set_title(f"{t['hypothesis']}, base {t['base_seed']}\n"
                     f"d {interval_text(t['primary'])}, p adj {stats.p_text(t['p_adjusted'])}",
                     fontsize=9)
    fig.suptitle("The confirmation set: each grey line one seed (off -> on); black: arm mean, "
                 "95% interval")
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# The command


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Any other flag goes to every run.")
    p.add_argument("--confirm-dir", default="runs/confirm", help="where the runs go (runs/confirm)")
    runner.add_modes(p, COLLECTS)
    p.add_argument("--reread", default=None, metavar="JSON",
                   help="the report again from a stored results.json's per-seed values (the "
                        "analysis, the mended collapse rule); rewrites its derived fields and "
                        "writes its table and figure beside it; runs nothing")
    return p


COLLECTS = "the report"  # what --collect writes


def parse(argv):
    """The set's own flags, and the set as the runner runs it (its runs, and the warm start of
    each base), all checked before any work."""
    p = build_parser()
    args, run_flags = p.parse_known_args(argv)
    confirmations = runner.over_bases(p, "experiments/confirm.py", MAP_FLAGS + run_flags,
                                      Path(args.confirm_dir), confirmation_runs, BASES)
    runner.check_runs(p, args.run, confirmations)
    return args, confirmations


def collect(runs):
    """The measures of every finished run (runner.run_measures), by run name."""
    return {name: runner.run_measures(f) for name, f in runner.read_finished(runs).items()}


def write_report(argv, measured, seconds, out):
    """The analysis of the measured runs, written into out: results.md, results.json (the command,
    its seconds, the plan, the tests and verdicts) and confirm.png. Returns the table and the
    tests."""
    tests, verdicts = analyse(measured)
    table = report_markdown(tests, verdicts)
    write_atomic(out / "results.md", table)
    payload = dict(command="python experiments/confirm.py " + " ".join(argv), seconds=seconds,
                   runs=len(measured), planned_seeds=PLANNED_SEEDS, planned_power=PLANNED_POWER,
                   tests=tests, verdicts=verdicts)
    write_atomic(out / "results.json", json.dumps(payload, indent=1))
    plot_confirmations(tests, out / "confirm.png")
    return table, tests


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, confirmations = parse(argv)
    if args.reread is not None:
        return reread(args.reread)
    t0 = time.time()
    if not runner.run_modes(args, argv, confirmations):
        return None
    measured = collect(confirmations.runs)
    table, tests = write_report(argv, measured, time.time() - t0, confirmations.out)
    print(table + f"\nconfirm: {len(measured)} runs; {time.time() - t0:.0f}s; results in "
          f"{confirmations.out}")
    return tests


if __name__ == "__main__":
    main()
