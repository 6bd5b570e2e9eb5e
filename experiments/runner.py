"""
experiments/runner.py: what the experiments that run nanorgra.py many times share (sweep.py,
regimes.py, confirm.py): a run and its directory, the warm starts its runs share, running the runs
here or in worker processes, the modes of their command lines, and reading a finished run back.

    Run, seeded_run, run_name    a run: its name, its directory and its nanorgra.py command line
    warm_start_once              a base and its evaluation, made once before the runs share them
    run_one, run_all             one run (skipped if finished, resumed if interrupted), or every
                                 run, --jobs at a time, each in its own process
    Experiment, add_modes,       --jobs and one of --print-commands, --run NAME and --collect:
    check_runs, run_modes        checked before any work, then done alike by every experiment
    read_finished, run_measures, a finished run's files, the numbers the experiments compare of it,
    collapsed                    and the collapse rule

The same command continues an experiment across sessions: a finished run is skipped (after checking
that its settings are the experiment's), an interrupted one resumed from its checkpoint.

Every finished run also leaves a record in the repository, data/records/<experiment dir>/<run>.json
(NANORGRA_RECORDS moves the folder): what --collect reads (its summary, its metrics a step, its
evaluations) and where it came from: the fingerprint of its base's weights, the commit of the code
that ran it, the CPU, the threads and its seconds. Commit the records as they come: a later sitting,
on another machine, skips every run that has one and collects from them, and collecting refuses to
pool runs whose bases' fingerprints differ, naming the runs to redo. study.py records its units the
same way (record_path, where_and_when, check_same_settings, off_the_common_base).
"""

import argparse
import json
import math
import multiprocessing
import os
import shlex
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import bases
import evaluation
import nanorgra
import warmstart
from data.tasks import OOD_LEVEL, RL_LEVEL
from data.tokenizer import get_tokenizer
from distributed import setup_device
from rundir import cpu_name, read_jsonl, run_settings, with_later_defaults, write_atomic

# -----------------------------------------------------------------------------
# A run


@dataclass(frozen=True)
class Run:
    """One nanorgra.py run of an experiment: its name (its directory's), its directory, and its
    command line."""

    name: str
    dir: Path
    argv: list


def seeded_run(name, flags, seed, out):
    """The run `name` in the folder out: nanorgra.py with flags, --seed seed and --out-dir
    out/name."""
    directory = Path(out) / name
    return Run(name, directory, list(flags) + ["--seed", str(seed), "--out-dir", str(directory)])


def run_name(flags, seed):
    """A directory name from a run's flags: "--preset grpo --mu 4" -> "preset-grpo_mu-4-seed0"."""
    words = [w.lstrip("-") for w in flags]
    parts = ["-".join(words[i:i + 2]) for i in range(0, len(words), 2)]
    return "_".join(parts) + f"-seed{seed}"


# -----------------------------------------------------------------------------
# Running: the warm start once, then the runs


def warm_start_once(run_flags):
    """The warm start and its evaluation, once, before the runs share them (loaded if found)."""
    args = nanorgra.parse_args(run_flags)
    device = setup_device(args)
    tok = get_tokenizer()
    base, base_path = warmstart.warm_start(args, tok, device, log=print)
    evaluation.base_evaluation(base, tok, args, base_path)


def run_one(argv):
    """One run, in a worker process or in this one: skipped if it has a record or is finished
    (its record written if missing), resumed if it has a checkpoint. Returns "done", "ran" or
    "stopped"."""
    run_dir = Path(argv[argv.index("--out-dir") + 1])
    record = record_path(run_dir)
    resume = ["--resume"] if (run_dir / "ckpt.pt").exists() else []
    args = nanorgra.parse_args(argv + resume)
    if record.exists():  # finished here or in another sitting, perhaps on another machine
        check_settings(json.loads(record.read_text())["settings"], args, record)
        return "done"
    if (run_dir / "summary.json").exists():  # finished; one made with other settings must not pass
        check_settings(json.loads((run_dir / "config.json").read_text()), args, run_dir)
        write_record(run_dir, record, seconds=None)
        return "done"
    args.overwrite = not args.resume  # a run that died before its first checkpoint starts again
    t0 = time.time()
    if nanorgra.train(args, log=lambda *a: None) is None:
        return "stopped"
    write_record(run_dir, record, seconds=time.time() - t0)
    return "ran"


# the settings that say where a run ran, not what it computes: a record made elsewhere still counts
WHERE = ("out_dir", "base_dir", "threads", "device", "resume", "overwrite")


def check_settings(settings, args, where):
    """SystemExit unless settings (a config.json's) are those of args, but for WHERE."""
    check_same_settings(run_settings(args), settings, where)


def check_same_settings(ours, theirs, where):
    """SystemExit unless the settings ours and theirs (JSON values) are the same, but for WHERE,
    naming where the finished work is (a run's directory, a record) and the settings that
    differ."""
    ours = {k: v for k, v in with_later_defaults(ours).items() if k not in WHERE}
    theirs = {k: v for k, v in with_later_defaults(theirs).items() if k not in WHERE}
    if ours != theirs:
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise SystemExit(f"{where} holds a finished run with other settings ({', '.join(differ)}); "
                         f"pass another directory")


# -----------------------------------------------------------------------------
# Records: a finished run in the repository, with where it came from


def records_dir():
    """Where the records go: NANORGRA_RECORDS, or data/records in the repository."""
    default = Path(__file__).resolve().parent.parent / "data" / "records"
    return Path(os.environ.get("NANORGRA_RECORDS", default))


def record_path(run_dir):
    """The record of the run in run_dir: <records>/<its experiment's dir>/<its name>.json."""
    return records_dir() / Path(run_dir).parent.name / f"{Path(run_dir).name}.json"


def code_commit():
    """The commit of the code that runs, "+changes" if tracked files differ from it."""
    def git(*words):
        done = subprocess.run(["git", *words], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent)
        return done.stdout.strip() if done.returncode == 0 else ""
    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def write_record(run_dir, record, seconds):
    """The record of a finished run: read_run's files and its provenance (written whole)."""
    files = read_run(run_dir)
    settings = json.loads((run_dir / "config.json").read_text())
    base_path = Path(files["summary"]["base_path"])
    provenance = dict(base_fingerprint=bases.weights_fingerprint(base_path),
                      base_file=base_path.name, base_seed=settings["base_seed"],
                      **where_and_when(seconds))
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps(dict(provenance=provenance, settings=settings, **files)))


def where_and_when(seconds):
    """What a record says of where its work ran, beside its bases: the code's commit, the CPU,
    torch's threads and version, and the seconds it took (None where unknown)."""
    return dict(commit=code_commit(), cpu=cpu_name(), threads=torch.get_num_threads(),
                torch=torch.__version__, seconds=seconds and round(seconds, 1))


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


# -----------------------------------------------------------------------------
# The modes of an experiment's command line


@dataclass(frozen=True)
class Experiment:
    """An experiment as its command runs it: its script, its runs, the warm starts they share
    (name -> nanorgra.py flags), its directory (the script's --<name>-dir flag), what it plans
    in words (e.g. "19 variants x 3 seeds") and what --collect writes."""

    script: str  # "experiments/sweep.py"
    runs: list
    warm_starts: dict
    out: Path
    plan: str
    collects: str  # "the tables and plots"

    @property
    def name(self):
        return Path(self.script).stem


def over_bases(p, script, run_flags, out, runs_of, bases):
    """An experiment whose runs fix --base-seed and --seed themselves (p.error if run_flags, the
    flags given for every run, name either): its runs runs_of(run_flags, out), one warm start for
    each of bases."""
    if "--base-seed" in run_flags or "--seed" in run_flags:
        p.error(f"{script} fixes --base-seed and --seed itself")
    runs = runs_of(run_flags, out)
    warm_starts = {f"warm-start-base{b}": run_flags + ["--base-seed", str(b)] for b in bases}
    return Experiment(script, runs, warm_starts, out, f"{len(runs)} runs", "the report")


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


def check_runs(p, run, experiment):
    """Before any work: --run (run) names a warm start or a run of the experiment, and every run's
    flags are nanorgra.py's (else p.error, exit status 2)."""
    names = list(experiment.warm_starts) + [r.name for r in experiment.runs]
    if run is not None and run not in names:
        p.error(f"--run: {experiment.script} has no run {run!r}; --print-commands lists them")
    for r in experiment.runs:
        nanorgra.parse_args(r.argv)


def print_commands(argv, experiment):
    """The warm starts, then every run, as one shell command a line (comments start with #)."""
    me = f"python {experiment.script} " + shlex.join(a for a in argv if a != "--print-commands")
    several = len(experiment.warm_starts) > 1
    print(f"# 1. the warm start{'s' if several else ''} (cached in --base-dir): run "
          f"{'them' if several else 'it'} first, once")
    for name in experiment.warm_starts:
        print(f"{me} --run {name}")
    print(f"# 2. the runs, in any order, anywhere --base-dir and --{experiment.name}-dir are "
          f"shared")
    for run in experiment.runs:
        print(f"{me} --run {run.name}")
    print(f"# 3. when every run has finished: {experiment.collects}")
    print(f"# {me} --collect")


def run_everything(experiment, jobs):
    """Every warm start, then every run, jobs at a time. Returns whether every run finished."""
    for flags in experiment.warm_starts.values():
        warm_start_once(flags)  # once, before the runs share it
    print(f"{experiment.name}: {experiment.plan} into {experiment.out}, {jobs} at a time")
    if "stopped" in run_all(experiment.runs, jobs):
        print(f"{experiment.name} stopped; run the same command again to continue")
        return False
    return True


def declared_command(argv, script, description, runs_of, bases, run_flags_first):
    """The command of a declared experiment (collapse.py, mismatch.py): its --<name>-dir, the
    modes, and its runs runs_of(run_flags_first + the other flags given, out) over bases. Returns
    the parsed args and the Experiment (argparse's error, exit status 2, for a bad flag)."""
    name = Path(script).stem
    p = argparse.ArgumentParser(description=description,
                                epilog="Any other flag goes to every run.")
    p.add_argument(f"--{name}-dir", default=f"runs/{name}", help="where the runs go")
    add_modes(p, "the report")
    args, run_flags = p.parse_known_args(argv)
    out = Path(getattr(args, f"{name}_dir"))
    experiment = over_bases(p, script, run_flags_first + run_flags, out, runs_of, bases)
    check_runs(p, args.run, experiment)
    return args, experiment


def measured_runs(args, argv, experiment, measures):
    """Does the command's mode (run_modes); when it goes on to collect, {run name: measures(files)}
    of every finished run, else None."""
    if not run_modes(args, argv, experiment):
        return None
    return {name: measures(files) for name, files in read_finished(experiment.runs).items()}


def run_modes(args, argv, experiment):
    """Does the work of the command's mode: prints the commands (--print-commands), runs one warm
    start or run (--run NAME), or, without --collect, every warm start and run. Returns whether
    the command goes on to collect the finished runs: with --collect, or when every run
    finished."""
    if args.print_commands:
        print_commands(argv, experiment)
        return False
    if args.run in experiment.warm_starts:
        warm_start_once(experiment.warm_starts[args.run])
        return False
    if args.run is not None:
        run_one(next(r for r in experiment.runs if r.name == args.run).argv)
        return False
    return args.collect or run_everything(experiment, args.jobs)


# -----------------------------------------------------------------------------
# A finished run: its files, what it measured, whether it collapsed


def read_run(run_dir):
    """The files of a finished run: its summary, its metrics a step, its evaluations."""
    return dict(summary=json.loads((run_dir / "summary.json").read_text()),
                metrics=read_jsonl(run_dir / "metrics.jsonl"),
                evals=read_jsonl(run_dir / "eval.jsonl"))


def read_finished(runs):
    """{run name: read_run's files} of every run, from its record (else its directory);
    SystemExit naming the runs not finished yet, or the runs whose base differs from the others
    of their base seed."""
    records = {r.name: record_path(r.dir) for r in runs}
    missing = [r.name for r in runs
               if not records[r.name].exists() and not (r.dir / "summary.json").exists()]
    if missing:
        named = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise SystemExit(f"not finished yet: {len(missing)} of {len(runs)} runs ({named}); run "
                         f"them first (see --print-commands)")
    found = {}
    for r in runs:
        if not records[r.name].exists():  # finished before records were kept: one is made now
            write_record(r.dir, records[r.name], seconds=None)
        found[r.name] = json.loads(records[r.name].read_text())
    check_one_base_per_seed(found)
    return {name: {k: record[k] for k in ("summary", "metrics", "evals")}
            for name, record in found.items()}


def check_one_base_per_seed(records):
    """SystemExit unless the runs of each base seed ran on one base (the same weights'
    fingerprint): a base trained on another machine differs in its last digits, and pooling its
    runs with the others' would mix two experiments. Names the runs to redo: those off the
    fingerprint most runs of their seed share."""
    fingerprints = {n: {r["provenance"]["base_seed"]: r["provenance"]["base_fingerprint"]}
                    for n, r in records.items()}
    redo = off_the_common_base(fingerprints)
    if redo:
        named = ", ".join(sorted(redo))
        raise SystemExit(f"runs on another base than the others of their base seed: {named}; "
                         f"delete their records and run them again on the shipped base")


def off_the_common_base(fingerprints):
    """{unit: [the roles it is off in]} of the units whose base differs from the one most units of
    the same role used, in the units' order (a tie goes to the fingerprint met first).
    fingerprints: {unit: {role: the fingerprint of the base it used in that role}}, a role being
    e.g. a base seed, or a model of a study."""
    off = {}
    for role in sorted({role for used in fingerprints.values() for role in used}, key=str):
        mine = {n: used[role] for n, used in fingerprints.items() if role in used}
        common, _ = Counter(mine.values()).most_common(1)[0]
        for n, fingerprint in mine.items():
            if fingerprint != common:
                off.setdefault(n, []).append(role)
    return {n: off[n] for n in fingerprints if n in off}


def mean_of_last_steps(metrics, key, n=5):
    """A run's mean of key over its last n steps (nan where it is not logged)."""
    if metrics[-1][key] is None:
        return math.nan
    return np.mean([m[key] for m in metrics[-n:]])


MEASURES = ("acc", "gain", "atoms", "atoms_min", "ood", "length", "entropy", "kl", "clip_frac",
            "reward", "careful", "shortcut", "left_to_right", "bare")


def run_measures(files):
    """The numbers (MEASURES, and whether it collapsed) read from one finished run (read_run's
    files), which the paired experiments compare."""
    final, base = files["summary"]["final"], files["summary"]["base"]
    metrics = files["metrics"]
    rl = final[RL_LEVEL]
    styles = {s: n / sum(rl["styles"].values()) for s, n in rl["styles"].items()}
    atoms = list(rl["steps"].values())
    return dict(
        acc=rl["acc"],
        gain=rl["acc"] - base[RL_LEVEL]["acc"],
        atoms=float(np.mean(atoms)),
        atoms_min=float(np.min(atoms)),
        ood=final[OOD_LEVEL]["acc"],
        length=rl["len"],
        entropy=mean_of_last_steps(metrics, "entropy"),
        kl=mean_of_last_steps(metrics, "kl"),
        clip_frac=float(np.mean([m["clip_frac"] for m in metrics])),
        reward=mean_of_last_steps(metrics, "reward"),
        careful=styles["careful"],
        shortcut=styles["shortcut"],
        left_to_right=styles["left-to-right"],
        bare=styles["bare"],
        collapsed=collapsed([m["reward"] for m in metrics], [m["resp_len"] for m in metrics],
                            rl["acc"], base[RL_LEVEL]["acc"]),
    )


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
