"""
experiments/mismatch.py: one declared cell of the mismatch lab (REFERENCE.md, section 10). Does a
sampler that computes in other arithmetic than the trainer matter at this scale, and does truncated
importance sampling (TIS) repair it? Declared here (arms, measures, seeds, analysis) and committed
before any of its runs started; reported whatever it shows (a null at this scale is a finding).

    python experiments/mismatch.py --jobs 2            # every run (resumable, recorded), the report
    python experiments/mismatch.py --print-commands    # one command a line, for a scheduler
    python experiments/mismatch.py --collect           # the report of the finished runs

The cell: GRPO (ratio and clip, where the source of pi_old matters) with the default job's
settings, 60 steps on the shipped base 0, a float32 trainer, and four samplers:
  fp32      the sampler in float32 (the default job's arithmetic; GRPO == RGRA at mu = 1)
  bf16      the sampler under bf16 autocast, its log-probs as pi_old: the mismatch, uncorrected
  bf16+tis  the same sampler, pi_old from the trainer, token-level TIS with C = 2
  fp16      the sampler under fp16 autocast, its log-probs as pi_old (the FP16 paper's cure)

The hypotheses, each d = a - b > 0 per seed on the primary measure, tested two-sided:
  the mismatch costs accuracy      fp32 - bf16
  TIS repairs it                   bf16+tis - bf16
  fp16 beats bf16                  fp16 - bf16
Primary measure (declared): the final greedy accuracy on the 500 mix3 test problems ("acc" of
runner.run_measures). The analysis: the exact two-sided sign-flip p of each test, paired by seed
(the arms share their seeds and so their prompts), Holm over the three; "confirmed" where adjusted
p < 0.05 with d > 0, a significant d < 0 reported as the opposite direction, and a test that is not
significant read by its interval, never as "no effect". Beside it, exploratory (raw p): ood4
accuracy, the atoms, the share of tokens clipped, and the mismatch itself per arm (the mean over
steps of mismatch_kl_k3 and of mismatch_max, as the metrics log them).

Seeds: RL seeds from SEED_OFFSET (no earlier run used them). How many: no earlier run measured
these effects, so no power calculation can set the count; SEEDS_PER_ARM = 10 is the confirmation
set's floor, at which an exact sign-flip test can pass Holm's strictest level (0.05 / 3) with
room (its smallest p is 2 / 1024), and the default job's spread over seeds 0-2 (0.884 to 0.904)
says what a difference of a few points means here. Runs go seed by seed, every arm of a seed
together, so an interrupted cell has whole seeds; every finished run leaves a record.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

import numpy as np

from experiments import runner, stats
from experiments.confirm import CONFIRMED_CELL, outcome
from experiments.regimes import MAP_FLAGS
from experiments.runner import run_name
from rundir import write_atomic

CELL = ("--base-seed", "0", "--preset", "grpo")
ARMS = {
    "fp32": (),
    "bf16": ("--sampler-precision", "bf16"),
    "bf16+tis": ("--sampler-precision", "bf16", "--old-logprobs", "trainer",
                 "--correction", "tis"),
    "fp16": ("--sampler-precision", "fp16"),
}
TESTS = (("the mismatch costs accuracy", "fp32", "bf16"),
         ("TIS repairs it", "bf16+tis", "bf16"),
         ("fp16 beats bf16", "fp16", "bf16"))
SEED_OFFSET = 3000
SEEDS_PER_ARM = 10
SEEDS = tuple(SEED_OFFSET + i for i in range(SEEDS_PER_ARM))
EXPLORATORY = ("ood", "atoms", "clip_frac")
MISMATCH = ("mismatch_kl_k3", "mismatch_max")


def arm_flags(arm):
    return CELL + ARMS[arm]


def mismatch_runs(run_flags, out):
    """Every run, in the declared order: seed by seed, each arm of the seed."""
    return [runner.seeded_run(run_name(arm_flags(arm), seed), run_flags + list(arm_flags(arm)),
                              seed, out)
            for seed in SEEDS for arm in ARMS]


def measures(files):
    """The numbers of one finished run the cell reads: runner.run_measures, and the mismatch
    averaged over its steps."""
    measured = runner.run_measures(files)
    for key in MISMATCH:
        measured[key] = float(np.mean([m[key] for m in files["metrics"]]))
    return measured


def analyse(measured):
    """The three tests, Holm over them, each one's outcome; and each arm's mismatch."""
    per_arm = {arm: [measured[run_name(arm_flags(arm), s)] for s in SEEDS] for arm in ARMS}
    tests = []
    for name, a, b in TESTS:
        primary = stats.paired_summary([r["acc"] for r in per_arm[a]],
                                       [r["acc"] for r in per_arm[b]])
        exploratory = {m: stats.paired_summary([r[m] for r in per_arm[a]],
                                               [r[m] for r in per_arm[b]]) for m in EXPLORATORY}
        tests.append(dict(name=name, a=a, b=b, primary=primary, exploratory=exploratory))
    adjusted = stats.holm([t["primary"]["p"] for t in tests])
    for test, p_adj in zip(tests, adjusted):
        test["p_adjusted"] = p_adj
        test.update(outcome(test["primary"]["mean"], p_adj, direction=1))
    arms = {arm: {k: [r[k] for r in runs] for k in ("acc",) + EXPLORATORY + MISMATCH}
            for arm, runs in per_arm.items()}
    return tests, arms


def report_markdown(tests, arms):
    lines = [
        f"GRPO, 60 steps, base 0, a float32 trainer, {SEEDS_PER_ARM} seeds an arm; acc: final "
        "greedy accuracy on mix3; d = a - b per seed, its 95% paired t interval; p: exact "
        "sign-flip; p adj: Holm over the three tests; confirmed: p adj < 0.05 with d > 0.", "",
        "| test | a | b | d (acc), 95% interval | p | p adj | confirmed |",
        "|" + " --- |" * 7]
    for t in tests:
        cells = [t["name"], t["a"], t["b"],
                 stats.interval_text(t["primary"]["mean"], t["primary"]["half"]),
                 stats.p_text(t["primary"]["p"]), stats.p_text(t["p_adjusted"]),
                 CONFIRMED_CELL[t["outcome"]]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each arm, mean over seeds with its 95% interval; the mismatch is each run's "
              "mean over its steps of what metrics.jsonl logs (read at the first update of a "
              "step).",
              "", "| sampler | acc | ood4 | atoms | KL(sampler \\|\\| trainer), k3 | "
              "max \\|log pi_trainer - log pi_sampler\\| | share clipped |", "|" + " --- |" * 7]
    for arm, values in arms.items():
        cells = [stats.mean_text(stats.mean_ci95(values["acc"])),
                 stats.mean_text(stats.mean_ci95(values["ood"])),
                 stats.mean_text(stats.mean_ci95(values["atoms"])),
                 f"{np.mean(values['mismatch_kl_k3']):.2e}",
                 f"{np.mean(values['mismatch_max']):.2e}",
                 f"{np.mean(values['clip_frac']):.2e}"]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Exploratory (raw p): d = a - b of each measure.", ""]
    lines += stats.exploratory_table(["test"], [([t["name"]], t["exploratory"]) for t in tests],
                                     EXPLORATORY)
    return "\n".join(lines) + "\n"


def parse(argv):
    return runner.declared_command(argv, "experiments/mismatch.py", __doc__.split("\n\n")[0],
                                   mismatch_runs, (0,), MAP_FLAGS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, experiment = parse(argv)
    t0 = time.time()
    measured = runner.measured_runs(args, argv, experiment, measures)
    if measured is None:
        return None
    tests, arms = analyse(measured)
    table = report_markdown(tests, arms)
    write_atomic(experiment.out / "results.md", table)
    payload = dict(command="python experiments/mismatch.py " + " ".join(argv),
                   seconds=time.time() - t0, runs=len(measured), seeds=list(SEEDS), tests=tests,
                   arms=arms)
    write_atomic(experiment.out / "results.json", json.dumps(payload, indent=1))
    print(table + f"\nmismatch: {len(measured)} runs; results in {experiment.out}")
    return tests


if __name__ == "__main__":
    main()
