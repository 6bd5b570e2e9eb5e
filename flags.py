"""
flags.py: the command line of nanorgra.py. One flag per setting of a run (RUN_FLAGS, below) and one
per field of the LossConfig (made from the fields: their help and allowed values are the fields'
metadata), checked here so that a value that cannot work stops the run at start-up, naming its flag,
before anything is written.

    args = parse_args(nanorgra.loss_config, nanorgra.PRESETS, ["--preset", "grpo", "--mu", "2"])
    args.loss    # nanorgra.loss_config("grpo", 72, mu=2): the preset with the switches on top
"""

import argparse
import importlib.util
import math
from dataclasses import field, fields
from typing import NamedTuple

import torch

from data.tasks import OOD_LEVEL, RL_LEVEL, TEST_SET_SIZE, load_test_set, prompt_text, \
    worked_solution
from distributed import DEVICES, absent_device, prepare_deterministic, processes_started
from model import PRECISIONS, GPTConfig

# The trainer's precisions: fp16 would need loss scaling, which nanoRGRA leaves out; a sampler may
# compute in any of model.PRECISIONS (--sampler-precision, the mismatch lab)
TRAINER_PRECISIONS = ("fp32", "bf16")


class Flag(NamedTuple):
    """A setting of a run: its flag, its default (whose type is the flag's type), its help, and the
    values it allows: a finite number > above or >= at_least (None: any value)."""
    name: str
    default: object
    help: str
    above: float | None = None
    at_least: float | None = None


RUN_FLAGS = {
    "run": [
        Flag("--seed", 0, "seed of the RL run"),
        Flag("--steps", 60, "RL steps", at_least=1),
        Flag("--lr", 1e-4, "RL lr", above=0),
        Flag("--threads", 0, "CPU threads for torch, 0 = default", at_least=0),
        Flag("--ckpt-every", 10, "steps between saves", at_least=1),
    ],
    "warm start": [
        Flag("--base-seed", 0, "seed of the warm start"),
        Flag("--n-layer", 4, "transformer blocks", at_least=1),
        Flag("--n-head", 4, "attention heads", at_least=1),
        Flag("--n-embd", 128, "width", at_least=1),
        Flag("--warm-batch", 64, "examples per step", at_least=1),
        Flag("--skill-steps", 1800, "steps of the skills stage", at_least=0),
        Flag("--skill-lr", 2.5e-3, "its peak lr", above=0),
        Flag("--habit-steps", 400, "steps of the habits stage", at_least=0),
        Flag("--habit-lr", 1e-3, "its peak lr", above=0),
    ],
    "reward": [
        Flag("--format-reward", 0.0, "bonus for a well-formed answer line, right or wrong, on top "
             "of 1 for the right answer (the RGRA paper: 0.1)", at_least=0),
    ],
    "sampling": [
        Flag("--prompts", 16, "prompts per RL step", at_least=1),
        Flag("--group", 8, "completions per prompt, G", at_least=1),
        Flag("--temperature", 1.0, "also in the loss", above=0),
        Flag("--max-new-tokens", 72, "completion budget", at_least=1),
    ],
    "evaluation": [
        Flag("--eval-every", 20, "RL steps between evaluations", at_least=1),
        Flag("--eval-n", 500, "test problems for greedy accuracy", at_least=1),
        Flag("--pass-n", 100, "test problems for pass@k", at_least=1),
        Flag("--pass-k", 64, "largest k of the pass@k curve, k = 1, 2, 4, ...", at_least=1),
    ],
}


# -----------------------------------------------------------------------------
# The LossConfig's switches: nanorgra.py declares each field with switch(...), whose metadata gives
# its flag's help and the values it allows; building a LossConfig runs check_switches and its own
# rules(), so that a value that cannot work is refused in Python as on the command line.


def switch(default, help, choices=None, above=None, at_least=None, below=None):
    """A field of LossConfig: its default, the help of its command-line flag, and the values it
    allows (one of choices, or a finite number > above, >= at_least, < below)."""
    allowed = dict(help=help, choices=choices, above=above, at_least=at_least, below=below)
    return field(default=default, metadata=allowed)


class SwitchError(ValueError):
    """A LossConfig value that cannot work: .switch names its field, .problem says what is
    wrong with it."""

    def __init__(self, switch, problem):
        super().__init__(f"{switch} {problem}")
        self.switch = switch
        self.problem = problem


def check_switches(config):
    """SwitchError for the first field of config (a LossConfig) outside its allowed values: the
    metadata its switch() declared. The rules between switches are LossConfig.rules()."""
    for f in fields(config):
        check_switch(f.name, getattr(config, f.name), f.metadata)


def check_switch(name, value, allowed):
    """SwitchError unless value is one of allowed["choices"], or a finite number inside
    allowed's bounds."""
    if allowed["choices"] is not None:
        if value not in allowed["choices"]:
            choices = ", ".join(allowed["choices"])
            raise SwitchError(name, f"must be one of {choices}; got {value!r}")
        return
    bounds = [(allowed["above"], "> {}", lambda x, b: x > b),
              (allowed["at_least"], ">= {}", lambda x, b: x >= b),
              (allowed["below"], "< {}", lambda x, b: x < b)]
    bounds = [(bound, text, holds) for bound, text, holds in bounds if bound is not None]
    if not bounds:
        return
    if not math.isfinite(value) or not all(holds(value, bound) for bound, _, holds in bounds):
        rule = " and ".join(text.format(bound) for bound, text, _ in bounds)
        raise SwitchError(name, f"must be a finite number {rule}; got {value!r}")


# -----------------------------------------------------------------------------
# The parser


def build_parser(presets):
    """The parser: the run's flags, then one flag per field of the presets' LossConfig, whose
    default is None (None: the preset's value)."""
    description = "Warm start, then GRPO / RGRA with every loss component a switch."
    epilog = "presets: " + "; ".join(f"{name}: {config}" for name, config in presets.items())
    p = argparse.ArgumentParser(description=description, epilog=epilog)
    a = p.add_argument_group("run")
    a.add_argument("--preset", default="rgra", choices=list(presets),
                   help="named set of loss switches (rgra)")
    a.add_argument("--out-dir", default=None,
                   help="run directory (default: runs/<preset>-seed<seed>)")
    either = a.add_mutually_exclusive_group()
    either.add_argument("--resume", action="store_true",
                        help="continue the run in --out-dir from its checkpoint")
    either.add_argument("--overwrite", action="store_true",
                        help="delete the run in --out-dir and start again")
    a.add_argument("--precision", default="fp32", choices=list(TRAINER_PRECISIONS),
                   help="fp32: float32 everywhere | bf16: the linear layers under bf16 autocast "
                        "(on a GPU with native bf16, or the CPU), the attention, the head and the "
                        "log-probs in float32 (fp32)")
    a.add_argument("--sampler-precision", default=None, choices=list(PRECISIONS),
                   help="the sampler's precision, apart from the trainer's: its log-probs then "
                        "differ from the trainer's (the mismatch lab; see --old-logprobs, "
                        "--correction) (default: --precision)")
    a.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (torch.use_deterministic_algorithms, "
                        "CUBLAS_WORKSPACE_CONFIG): on CUDA, the same seed gives the same run; "
                        "the CPU run is deterministic without it")
    a.add_argument("--compile", action="store_true",
                   help="the sampler's decode step and the policy's forward (learn()'s, the "
                        "sampler's prefill, the evaluations') through torch.compile: the same "
                        "functions to float rounding; the first steps wait for the compiler; "
                        "slower on a CPU (docs/gpu.md)")
    a.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: cuda, mps, cpu")
    a.add_argument("--report-to", default="none", choices=REPORTERS,
                   help="also stream each step's metrics, the evaluations and the settings to "
                        "TensorBoard (<run dir>/tensorboard) or Weights & Biases (offline unless "
                        "WANDB_MODE is set); their packages are optional (none)")
    add_base_flags(a)
    for group, flags in RUN_FLAGS.items():
        a = p.add_argument_group(group) if group != "run" else a
        for flag in flags:
            a.add_argument(flag.name, type=type(flag.default), default=flag.default,
                           help=f"{flag.help} ({flag.default})")
    add_switches(p, presets["rgra"])
    return p


def add_base_flags(group):
    """Where the warm start's bases are cached, and whether to train one again."""
    group.add_argument("--base-dir", default="runs/bases",
                       help="cache of the bases this machine trains (runs/bases); the shipped "
                            "ones are in bases/")
    group.add_argument("--retrain-base", action="store_true",
                       help="train the base again even if one is shipped or cached for these "
                            "settings, and cache it under --base-dir")


def parse_warm_start_args(argv=None):
    """The command line of warmstart.py: the warm start's own flags, and where it runs."""
    p = argparse.ArgumentParser(description="The warm start: the supervised base before RL.")
    a = p.add_argument_group("warm start")
    a.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: cuda, mps, cpu")
    a.add_argument("--precision", default="fp32", choices=list(TRAINER_PRECISIONS),
                   help="(fp32)")
    add_base_flags(a)
    for flag in RUN_FLAGS["warm start"]:
        a.add_argument(flag.name, type=type(flag.default), default=flag.default,
                       help=f"{flag.help} ({flag.default})")
    args = p.parse_args(argv)
    if absent_device(args.device):
        p.error(absent_device(args.device))
    for flag in RUN_FLAGS["warm start"]:
        problem = check_run_flag(flag, getattr(args, flag.name[2:].replace("-", "_")))
        if problem:
            p.error(problem)
    return args


def add_switches(parser, default_config):
    """One flag per field of the LossConfig; a bool field gets --name and --no-name."""
    title = "loss switches (default: the preset's; README.md names each in TRL and verl)"
    a = parser.add_argument_group(title)
    for f in fields(default_config):
        flag = "--" + f.name.replace("_", "-")
        kind = dict(action=argparse.BooleanOptionalAction) if f.type is bool else dict(type=f.type)
        text = f"{f.metadata['help']} (rgra: {getattr(default_config, f.name)})"
        a.add_argument(flag, default=None, choices=f.metadata["choices"], help=text, **kind)


def check_run_flag(flag, value):
    """The problem with value for flag (a Flag), or None if it is allowed."""
    if flag.above is not None and not (math.isfinite(value) and value > flag.above):
        return f"{flag.name} must be a finite number > {flag.above}, got {value}"
    if flag.at_least is not None and not (math.isfinite(value) and value >= flag.at_least):
        return f"{flag.name} must be a finite number >= {flag.at_least}, got {value}"
    return None


def run_problems(args):
    """The problems with the run's settings taken together (None: none), the LossConfig's apart."""
    loss = args.loss
    group_std = loss.std_norm and loss.std_over == "group"
    needs_group = group_std or loss.baseline in ("mean", "loo") or loss.objective == "raft"
    if args.group < 2 and needs_group:
        return (f"--group must be >= 2 with a group baseline, the group std or raft, "
                f"got {args.group}")
    if args.n_embd % args.n_head:
        return f"--n-embd ({args.n_embd}) must be a multiple of --n-head ({args.n_head})"
    if max(args.eval_n, args.pass_n) > TEST_SET_SIZE:
        return f"--eval-n and --pass-n must be <= {TEST_SET_SIZE}, the size of a test set"
    need = sorted(len(worked_solution(p.expr)) + 1 for p in load_test_set(RL_LEVEL))  # EOS too
    if args.max_new_tokens < need[0]:  # then no careful sample could ever be right
        return (f"--max-new-tokens {args.max_new_tokens} is shorter than every careful {RL_LEVEL} "
                f"solution ({need[0]} to {need[-1]} tokens with EOS)")
    if args.prompts % processes_started():
        return (f"--prompts ({args.prompts}) must be a multiple of the number of processes "
                f"({processes_started()})")
    return length_problem(args) or device_problem(args) or reporter_problem(args.report_to)


# --report-to (rundir.py streams the numbers): optional packages, not in requirements.txt
REPORTERS = ("none", "tensorboard", "wandb")


def reporter_problem(report_to):
    """Why --report-to report_to cannot work here (its package is absent), or None."""
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        return (f"--report-to {report_to}: the {report_to} package is not installed; run "
                f"`pip install {report_to}` (it is optional, not in requirements.txt)")
    return None


def length_problem(args):
    """A completion budget beyond the model's positions: prompt and completion share the
    block_size positions of the position table, so the longest prompt the run poses leaves
    block_size - its length."""
    block_size = GPTConfig().block_size
    longest = max(len(prompt_text(p)) for level in (RL_LEVEL, OOD_LEVEL)  # one token a character
                  for p in load_test_set(level))
    if longest + args.max_new_tokens > block_size:
        return (f"--max-new-tokens {args.max_new_tokens}: the model has {block_size} positions "
                f"and the longest prompt it is asked ({OOD_LEVEL}) takes {longest}, so at most "
                f"{block_size - longest} tokens can follow")
    return None


def device_problem(args):
    """A device that is not there, or bf16 where it would be emulated."""
    absent = absent_device(args.device)
    if absent:
        return absent
    uses_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    native_bf16 = uses_cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    bf16 = "--precision" if args.precision == "bf16" else None
    if getattr(args, "sampler_precision", None) == "bf16":
        bf16 = "--sampler-precision"
    if bf16 and uses_cuda and not native_bf16:
        return (f"{bf16} bf16: {torch.cuda.get_device_name()} has no native bf16 (before "
                f"Ampere), so it would be emulated, slowly; use fp32 (or fp16 for the sampler)")
    if bf16 and (args.device == "mps" or (
            args.device == "auto" and not uses_cuda and torch.backends.mps.is_available())):
        return f"{bf16} bf16 runs on CUDA or the CPU, not on MPS; use fp32"
    return None


def parse_args(loss_config, presets, argv=None):
    """The command line as a namespace whose .loss is loss_config(--preset, --max-new-tokens, the
    switches given) (nanorgra.loss_config). A value that cannot work stops here with exit status 2
    and a message naming its flag and what it allows."""
    parser = build_parser(presets)
    args = parser.parse_args(argv)
    problem = prepare_deterministic(args)  # first: the checks below may start CUDA
    if problem:
        parser.error(problem)
    switches = [f.name for f in fields(presets["rgra"])]
    given = {name: getattr(args, name) for name in switches if getattr(args, name) is not None}
    for name in switches:
        delattr(args, name)
    for flag in [f for flags in RUN_FLAGS.values() for f in flags]:
        problem = check_run_flag(flag, getattr(args, flag.name[2:].replace("-", "_")))
        if problem:
            parser.error(problem)
    try:
        args.loss = loss_config(args.preset, args.max_new_tokens, **given)
    except SwitchError as e:  # e.switch names the field
        parser.error(f"--{e.switch.replace('_', '-')} {e.problem}")
    problem = run_problems(args)
    if problem:
        parser.error(problem)
    args.out_dir = args.out_dir or f"runs/{args.preset}-seed{args.seed}"
    return args
