"""
rundir.py: what a run keeps on disk, and how nothing of it is lost. nanorgra.py calls it;
none of it is the algorithm.

A run directory (runs/<preset>-seed<seed>/ by default) holds:
    config.json     the run's settings; --resume refuses other settings
    metrics.jsonl   one row per RL step (metrics.step_metrics)
    eval.jsonl      the evaluations: the base (step -1), during the run, and at the end
    ckpt.pt         the policy and the optimizer after the last saved step
    summary.json    base -> trained, written at the end, and run.png, its plot
    tensorboard/    with --report-to tensorboard: the same numbers as TensorBoard events

Rules: a used directory is refused unless --resume (go on from ckpt.pt; the rows after it are
dropped and redone) or --overwrite (start again); every file is written whole or not at all (a
temporary file, then a rename); a damaged checkpoint or cache is named in a one-line error that
says what to do; the first Ctrl-C finishes the step, saves and stops. Under torchrun only rank 0
writes; every rank reads.

Also here: the cache of the base's evaluation, what a user sees (the progress bar, the summary
table, the plot), and --report-to: each step's metrics row, the evaluations and the settings
streamed to TensorBoard or Weights & Biases, optional packages that a run without it never imports.
"""

import contextlib
import io
import json
import os
import platform
import shutil
import signal
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.tasks import OOD_LEVEL, RL_LEVEL
from distributed import agree, barrier, rank, sum_over_ranks, teardown
from verifier import STYLE_NAMES

# -----------------------------------------------------------------------------
# Files written whole or not at all


def write_atomic(path, data):
    """Write data (str or bytes) to path through a temporary file and os.replace, so that a crash
    never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_atomic(obj, path):
    """torch.save, written atomically: a crash never leaves a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def save_figure(fig, path):
    """A matplotlib Figure as a PNG, written atomically: never a half-written plot."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path, what_to_do):
    """torch.load to the CPU, or for a damaged file (truncated, or not a checkpoint) a one-line
    exit naming it. The caller's load_state_dict moves what belongs on the device: the weights and
    the optimizer's moments; AdamW's step counters stay CPU numbers (on a GPU they would cost a host
    sync every step)."""
    try:
        return torch.load(path, map_location="cpu")
    except Exception as e:  # torch raises one of several types on a damaged file
        first_line = str(e).splitlines()[0][:80]
        damage = f"{type(e).__name__}: {first_line}"
        raise SystemExit(f"{path} is damaged ({damage}); {what_to_do}") from None


def append_jsonl(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path):
    """The rows of a JSONL file ([] if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def truncate_jsonl(path, last_step):
    """Keep the rows up to last_step: what a resumed run will write again is removed first."""
    if path.exists():
        kept = [row for row in read_jsonl(path) if row["step"] <= last_step]
        write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))


# -----------------------------------------------------------------------------
# Caches: computed once, then read. Under torchrun rank 0 decides whether the cache is there,
# for every rank.


def cached_json(path, make):
    """The JSON at path, or make() written there first (by rank 0; under torchrun every rank calls
    make(), which may be a collective computation such as an evaluation)."""
    path = Path(path)
    if not agree(path.exists()):
        value = make()
        if rank() == 0:
            write_atomic(path, json.dumps(value))
        return json.loads(json.dumps(value))  # the same types as when it is read back
    return json.loads(path.read_text())


def machine(device, threads, precision="fp32"):
    """Where a model was trained, for the record beside it: the device (on a CPU, its kind and the
    number of threads: another sums floats in another order; on a GPU, its kind), torch, and a
    precision other than float32, as "cpu (Intel(R) Xeon(R) Processor), 2 threads, torch 2.13.0"."""
    if device.type == "cuda":
        where = f"cuda, {torch.cuda.get_device_name(device)}"
    else:
        where = f"{device.type} ({cpu_name()}), {threads} threads"
    text = f"{where}, torch {torch.__version__}"
    return text if precision == "fp32" else f"{text}, {precision}"


def cpu_name():
    """The CPU's model name where the system tells it, else the machine's architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine() or "unknown"


@contextlib.contextmanager
def torch_threads(n):
    """torch's CPU threads set to n inside the block, and set back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -----------------------------------------------------------------------------
# The run directory

RUN_FILES = ("config.json", "metrics.jsonl", "eval.jsonl", "ckpt.pt", "summary.json", "run.png")


# Settings added after runs began to be recorded, at their defaults: a config.json or a record
# written before a setting existed ran as its default does (tests/test_mismatch.py checks that
# these are today's defaults). A record or a checkpoint of a long form thus stays valid.
ADDED_LATER = dict(sampler_precision=None,
                   loss=dict(old_logprobs="auto", correction="none", correction_level="token",
                             correction_c=2.0, masked_denominator="leaves"))


def with_later_defaults(settings):
    """settings (a config.json's) with every setting added later at its default where absent."""
    filled = dict(settings)
    for name, default in ADDED_LATER.items():
        if isinstance(default, dict) and isinstance(filled.get(name), dict):
            filled[name] = {**default, **filled[name]}
        elif name not in filled:
            filled[name] = default
    return filled


def run_settings(args):
    """The run's settings as config.json holds them: JSON values, without what does not change the
    run (--resume, --overwrite, --retrain-base, --report-to)."""
    settings = {k: asdict(v) if is_dataclass(v) else v for k, v in vars(args).items()
                if k not in ("resume", "overwrite", "retrain_base", "report_to")}
    return json.loads(json.dumps(settings))


class StopFlag:
    """Set by the first Ctrl-C; a second one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.asked = False

    def on_ctrl_c(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        print("\nCtrl-C: finishing this step, saving a checkpoint, then exiting "
              "(Ctrl-C again to abort)")

    def requested(self):
        """Whether a stop was asked for on any rank: the same answer everywhere, so all ranks
        stop together."""
        return sum_over_ranks(dict(asked=self.asked), op="max")["asked"] > 0


class RunDir:
    """The files of one run. Made before the warm start, so that a run that would be refused
    stops at once."""

    def __init__(self, args, device, log=print):
        self.args, self.dir, self.device = args, Path(args.out_dir), device
        self.writes = rank() == 0
        self.log = log if self.writes else (lambda *a, **k: None)
        self.step, self.saved = None, None  # the step in progress, the last one saved
        self.reporter = Reporter()  # --report-to's, made by start(); this one reports nothing
        now = run_settings(args)
        held = [name for name in RUN_FILES if (self.dir / name).exists()]
        if args.resume and not (self.dir / "ckpt.pt").exists():
            raise SystemExit(f"--resume: no checkpoint at {self.dir / 'ckpt.pt'}, "
                             f"so nothing to resume")
        saved = json.loads((self.dir / "config.json").read_text()) if args.resume else now
        saved = with_later_defaults(saved)
        changed = {k: (saved.get(k), now.get(k)) for k in saved.keys() | now.keys()
                   if saved.get(k) != now.get(k)}
        if changed:
            raise SystemExit(f"--resume: the settings differ from {self.dir / 'config.json'} "
                             f"(saved, now): {changed}")
        if held and not (args.resume or args.overwrite):
            raise SystemExit(f"{self.dir} already holds a run ({', '.join(held)}): continue it "
                             f"with --resume, replace it with --overwrite, or pass another "
                             f"--out-dir")
        self.ckpt = None
        if args.resume:
            what_to_do = "start again with --overwrite"
            self.ckpt = load_checkpoint(self.dir / "ckpt.pt", what_to_do)

    def start(self, policy, opt):
        """The first step to run. A resumed run loads the checkpoint's policy and optimizer and
        drops the log rows after it; a fresh run clears the directory (only --overwrite finds files
        there) and writes config.json."""
        if self.ckpt is not None:
            policy.load_state_dict(self.ckpt["model"])
            opt.load_state_dict(self.ckpt["opt"])
            self.saved = self.ckpt["step"]
            if self.writes:
                for name in ("metrics.jsonl", "eval.jsonl"):
                    truncate_jsonl(self.dir / name, self.saved)
            self.log(f"resumed {self.dir} after step {self.saved}")
            self.start_reporting()  # after the rows it redoes are dropped
            return self.saved + 1
        if self.writes:
            self.dir.mkdir(parents=True, exist_ok=True)
            for name in RUN_FILES:
                (self.dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.dir / TENSORBOARD_DIR, ignore_errors=True)  # the replaced run's
            write_atomic(self.dir / "config.json", json.dumps(run_settings(self.args), indent=1))
        self.saved = -1
        self.start_reporting()
        return 0

    def start_reporting(self):
        """The reporter of --report-to, on rank 0 (the others report nothing). It starts anew and
        is given the rows a resumed run keeps first: what it shows is always what the files hold,
        each step once."""
        report_to = getattr(self.args, "report_to", "none")  # a Namespace made by hand has none
        if not self.writes or report_to == "none":
            return
        self.reporter = make_reporter(report_to, self.dir, run_settings(self.args), self.log)
        kept = [(row["step"] + 1, 0, numbers_of(row)) for row in
                read_jsonl(self.dir / "metrics.jsonl")]
        kept += [(ev.pop("step") + 1, 1, numbers_of(ev, "eval/")) for ev in
                 read_jsonl(self.dir / "eval.jsonl")]
        for x, _, numbers in sorted(kept, key=lambda kept_row: kept_row[:2]):  # a step's row first
            self.reporter.report(numbers, x)

    def steps(self, first_step):
        """The RL steps from first_step on, with a progress bar."""
        self.bar = progress(range(first_step, self.args.steps), f"RL {self.args.preset}",
                            initial=first_step, total=self.args.steps)
        for step in self.bar:
            self.step = step
            yield step

    def log_step(self, row):
        if self.writes:
            append_jsonl(self.dir / "metrics.jsonl", row)
        self.reporter.report(numbers_of(row), row["step"] + 1)
        self.bar.set_postfix(reward=f"{row['reward']:.2f}", len=f"{row['resp_len']:.0f}")

    def log_eval(self, step, ev):
        """An evaluation after step (-1: the base). It replaces any row of its step or later: a
        resumed run redoes them."""
        if self.writes:
            truncate_jsonl(self.dir / "eval.jsonl", step - 1)
            append_jsonl(self.dir / "eval.jsonl", dict(step=step, **ev))
        self.reporter.report(numbers_of(ev, "eval/"), step + 1)
        accuracies = ", ".join(f"{level} acc {v['acc']:.3f}" for level, v in ev.items())
        self.log(f"eval @ step {step}: {accuracies}")

    def save_checkpoint(self, policy, opt, step):
        if self.writes:
            state = {"model": policy.state_dict(), "opt": opt.state_dict(), "step": step}
            save_atomic(state, self.dir / "ckpt.pt")
        self.saved = step

    @contextlib.contextmanager
    def stop_on_ctrl_c(self):
        """Yields a StopFlag that the first Ctrl-C sets; the previous Ctrl-C handler is
        restored after."""
        flag = StopFlag()
        previous = signal.signal(signal.SIGINT, flag.on_ctrl_c)
        try:
            yield flag
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def stop_on_non_finite(self):
        """A non-finite loss or gradient (learn() raises FloatingPointError) stops the run with a
        message; the last good checkpoint is left as it was."""
        try:
            yield
        except FloatingPointError as e:
            raise SystemExit(f"stopping at step {self.step}: {e}. The last good checkpoint, "
                             f"{self.dir / 'ckpt.pt'} (step {self.saved}), was not touched. "
                             f"Try a lower --lr.") from None

    def finish(self, base_path, solutions=()):
        """summary.json and run.png, from the logs and what the model writes before and after
        (solutions); the summary (on every rank)."""
        if self.writes:
            rows = read_jsonl(self.dir / "metrics.jsonl")
            evals = read_jsonl(self.dir / "eval.jsonl")
            smoothed = ("reward", "kl", "entropy", "resp_len")
            last_steps = {key: mean_of_last(rows, key) for key in smoothed}
            times = {key: sum(r.get(key, 0.0) for r in rows) for key in TIME_KEYS}
            summary = dict(base=evals[0], final=evals[-1], steps=len(rows),
                           base_path=str(base_path), last_steps=last_steps, times=times,
                           solutions=list(solutions))
            write_atomic(self.dir / "summary.json", json.dumps(summary, indent=1))
            plot_run(self.dir, rows, evals)
        self.reporter.close()
        barrier()
        return json.loads((self.dir / "summary.json").read_text())


# where a step's time goes (nanorgra.rl_step): the sampler, the verifier, the reference's forward
# (with the gather and the advantages), and learn()
TIME_KEYS = ("t_sample", "t_score", "t_reference", "t_learn")


def mean_of_last(rows, key, n=5):
    """The mean of key over the last n rows (smoothed for the summary), None where it is
    not logged."""
    if rows[-1][key] is None:
        return None
    return float(np.mean([row[key] for row in rows[-n:]]))


# -----------------------------------------------------------------------------
# Experiment tracking, --report-to: the metrics rows and the evaluations as TensorBoard or Weights &
# Biases (W&B) see them (TRL's report_to). Their packages are optional: not in requirements.txt,
# imported only by a run that asks; a run that asks without one is refused at start-up (flags.py).
# The x axis is the number of RL steps done, as in run.png: a step's row at step + 1, the base's
# evaluation at 0.

TENSORBOARD_DIR = "tensorboard"  # in the run directory: tensorboard --logdir runs


def numbers_of(row, prefix=""):
    """The numbers of a metrics row or an evaluation, {tag: value}: nested dicts flattened as
    "styles/careful", the step (the x axis), lists (per_update: summed up in the row already),
    text and None left out."""
    numbers = {}
    for key, value in row.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            numbers.update(numbers_of(value, f"{tag}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and tag != "step":
            numbers[tag] = value
    return numbers


class Reporter:
    """--report-to none: reports nothing. The others have the same three methods."""

    def report(self, numbers, step):
        pass

    def close(self):
        pass


class TensorBoardReporter(Reporter):
    """Events under log_dir (<run dir>/tensorboard), made anew: each number a scalar stored as a
    float64 (the value of the JSON file, not rounded to float32), the settings as text."""

    def __init__(self, log_dir, settings):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        shutil.rmtree(log_dir, ignore_errors=True)  # a resumed run's events are written again
        self.writer = SummaryWriter(log_dir)
        self.writer.add_text("config", "```\n" + json.dumps(settings, indent=1) + "\n```")

    def report(self, numbers, step):
        for tag, value in numbers.items():
            self.writer.add_scalar(tag, value, step, new_style=True, double_precision=True)
        self.writer.flush()  # a TensorBoard open beside the run sees each step at once

    def close(self):
        self.writer.close()


class WandbReporter(Reporter):
    """A W&B run named after the run directory, its files under <run dir>/wandb, the settings as
    its config; offline (`wandb sync` uploads it later) unless WANDB_MODE says otherwise. A resumed
    run is a new W&B run (given the kept rows first)."""

    def __init__(self, run_dir, settings, log):
        import wandb

        mode = None if "WANDB_MODE" in os.environ else "offline"  # None: wandb reads WANDB_MODE
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "nanorgra"),
                              name=run_dir.name, dir=str(run_dir), config=settings, mode=mode)
        if mode == "offline":
            log(f"W&B offline, under {run_dir / 'wandb'} (set WANDB_MODE=online to upload as it "
                f"runs, or upload later with `wandb sync`)")

    def report(self, numbers, step):
        self.run.log(numbers, step=step)

    def close(self):
        self.run.finish()


def make_reporter(report_to, run_dir, settings, log=print):
    """The Reporter of --report-to report_to for the run in run_dir (flags.reporter_problem has
    checked that its package is there)."""
    if report_to == "tensorboard":
        return TensorBoardReporter(Path(run_dir) / TENSORBOARD_DIR, settings)
    if report_to == "wandb":
        return WandbReporter(Path(run_dir), settings, log)
    return Reporter()


# -----------------------------------------------------------------------------
# What a user sees


def progress(iterable, desc, **kwargs):
    """A tqdm progress bar on rank 0 (off where the output is not a terminal, and on
    other ranks)."""
    return tqdm(iterable, desc=desc, disable=None if rank() == 0 else True, **kwargs)


def end_job(summary, run_dir, seconds):
    """The end of a job: the summary printed (by rank 0; none if a Ctrl-C stopped the run), and
    the processes of torchrun released."""
    if summary is not None and rank() == 0:
        print_summary(summary, Path(run_dir), seconds)
    teardown()


def print_summary(summary, run_dir, seconds):
    """The base -> trained table, the styles of the greedy outputs, and where the time went."""
    base, final = summary["base"], summary["final"]
    lines = [summary_table(base, final), style_line(base, final),
             *solution_lines(summary.get("solutions", [])),
             time_line(summary["times"], run_dir, seconds)]
    print("\n".join(lines))


def summary_table(base, final):
    """One row per number evaluated at the start and at the end: accuracy, length, the
    atoms, pass@k."""
    rows = [(f"{level} greedy accuracy", base[level]["acc"], final[level]["acc"])
            for level in (RL_LEVEL, OOD_LEVEL)]
    rows.append((f"{RL_LEVEL} length (tokens)", base[RL_LEVEL]["len"], final[RL_LEVEL]["len"]))
    for kind, before in base[RL_LEVEL]["steps"].items():  # the atoms, each posed alone
        rows.append((f"{RL_LEVEL} step, {kind}", before, final[RL_LEVEL]["steps"][kind]))
    for k, before in base[RL_LEVEL]["pass@k"].items():
        rows.append((f"{RL_LEVEL} pass@{k}", before, final[RL_LEVEL]["pass@k"][k]))
    lines = [f"{'':>28} {'base':>8} {'trained':>8}"]
    lines += [f"{name:>28} {before:8.3f} {after:8.3f}" for name, before, after in rows]
    return "\n".join(lines)


def style_line(base, final):
    changes = [f"{style} {n} -> {final[RL_LEVEL]['styles'][style]}"
               for style, n in base[RL_LEVEL]["styles"].items()]
    return f"{RL_LEVEL} greedy outputs by solution style, base -> trained: " + ", ".join(changes)


def solution_lines(solutions):
    """What the model writes, before and after, a problem at a time (evaluate.before_and_after)."""
    if not solutions:
        return []
    lines = [f"what the model writes (greedy) for the first {len(solutions)} {RL_LEVEL} test "
             f"problems, base -> trained:"]
    for shown in solutions:
        lines.append(f"  Q:{shown['expr']}  (answer {shown['answer']})")
        for who in ("base", "trained"):
            lines.append(f"    {who + ':':<9}{written_line(shown[who])}")
    return lines


def written_line(written):
    """One completion on one line, with what the verifier says of it (evaluate.written_solutions):
    "9*6=54 4+54=58 58-3=55 A:55   right, careful"."""
    verdict = "right" if written["right"] else "wrong"
    return f"{written['text'].replace(chr(10), ' '):<36} {verdict}, {written['style']}"


def time_line(times, run_dir, seconds):
    return (f"RL time: sampling {times['t_sample']:.0f}s, scoring {times['t_score']:.0f}s, "
            f"reference {times.get('t_reference', 0):.0f}s, learning {times['t_learn']:.0f}s; "
            f"whole job {seconds:.0f}s; "
            f"plot {run_dir / 'run.png'}")


def plot_run(run_dir, rows, evals):
    """run.png: batch reward, held-out greedy accuracy, response length, the styles of the
    samples, and the sampler's mismatch with the trainer (a log scale), per step."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    x = [r["step"] + 1 for r in rows]
    x_eval = [e["step"] + 1 for e in evals]
    panels = {
        "batch reward (samples at T=1)": {"": (x, [r["reward"] for r in rows])},
        "greedy accuracy": {level: (x_eval, [e[level]["acc"] for e in evals])
                            for level in (RL_LEVEL, OOD_LEVEL)},
        "response length (tokens)": {"": (x, [r["resp_len"] for r in rows])},
        "share of the sampled completions": {s: (x, [r["styles"][s] for r in rows])
                                             for s in STYLE_NAMES},
        "KL(sampler || trainer), k3 per token": {"": (x, [r.get("mismatch_kl_k3") for r in rows])},
        "max |log pi_trainer - log pi_sampler|": {"": (x, [r.get("mismatch_max") for r in rows])},
    }
    fig = Figure((15, 7), layout="tight")
    for ax, (ylabel, curves) in zip(fig.subplots(2, 3).flat, panels.items()):
        for label, (xs, ys) in curves.items():
            ys = [float("nan") if y is None else y for y in ys]  # sft samples nothing
            ax.plot(xs, ys, label=label or None, marker="o" if len(xs) < 20 else None)
        ax.set(xlabel="RL steps done", ylabel=ylabel)
        if ylabel.startswith(("KL(sampler", "max |log")):
            ax.set_yscale("log")  # float32: ~1e-6; a bf16 sampler: ~1e-2
        if len(curves) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(str(run_dir))
    save_figure(fig, run_dir / "run.png")
