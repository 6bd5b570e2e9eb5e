"""
sample.py: ask a trained model (or the base it started from) about expressions of your own, and see
what the verifier says of each completion.

    python sample.py 4+9*6-3                            # the default run's policy, greedy
    python sample.py 4+9*6-3 7*6+6*2 --k 8 --temperature 1   # 8 samples of each
    python sample.py 4+9*6-3 --base                     # the base the run started from
    python sample.py 4+9*6-3 --run runs/grpo-seed0      # another run

A run is a directory that `python nanorgra.py` wrote (config.json for the model's size, ckpt.pt for
its weights; --base reads summary.json for the base's file). An expression is non-negative integers
joined by + - * (no spaces, no parentheses); anything else is refused with the reason. Each line:
the completion (its lines joined by spaces), right or wrong, its style (verifier.solution_style) and
how its answer was reached (verifier.reasoning_kind). Completions come from
evaluation.written_solutions, which the summary and the notebook use too.
"""

import argparse
import json
from pathlib import Path

import torch

import evaluation
from bases import load_base
from data.tasks import Problem, evaluate, parse_expression, prompt_text
from data.tokenizer import check_text, get_tokenizer
from distributed import DEVICES, absent_device, pick_device
from model import GPT, GPTConfig
from rundir import load_checkpoint, written_line


def problem_of(expr):
    """The Problem of a typed expression, or ValueError saying what is wrong with it."""
    if not expr:
        raise ValueError("an empty expression: type one such as 4+9*6-3")
    check_text(expr)  # characters outside the vocabulary, named
    parse_expression(expr)  # the form: numbers joined by + - *
    return Problem(expr=expr, answer=evaluate(expr), level="typed")


def load_model(run_dir, base, device):
    """The policy of a run directory (its last checkpoint), or with base the base it started from;
    and a line saying which file it is."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise SystemExit(f"{run_dir} holds no run (no config.json): run python nanorgra.py "
                         f"first, or pass --run")
    settings = json.loads(config_path.read_text())
    config = GPTConfig(vocab_size=get_tokenizer().vocab_size, n_layer=settings["n_layer"],
                       n_head=settings["n_head"], n_embd=settings["n_embd"])
    model = GPT(config, precision=settings.get("precision", "fp32")).to(device)
    if base:
        summary = run_dir / "summary.json"
        if not summary.exists():
            raise SystemExit(f"{run_dir} has no summary.json yet (the run has not finished), so "
                             f"the file of its base is not known")
        path = Path(json.loads(summary.read_text())["base_path"])
        load_base(model, path)  # refused if its bytes are not the ones its record names
        return model.eval(), f"{path} (the base)"
    path = run_dir / "ckpt.pt"
    state = load_checkpoint(path, "run python nanorgra.py again to rewrite it")
    model.load_state_dict(state["model"])
    return model.eval(), f"{path} (after step {state['step']})"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("exprs", nargs="+", metavar="EXPR", help="expressions such as 4+9*6-3")
    p.add_argument("--run", default="runs/rgra-seed0", help="a run directory (runs/rgra-seed0)")
    p.add_argument("--base", action="store_true", help="the base the run started from")
    p.add_argument("--k", type=int, default=1, help="completions per expression (1)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (the default); 1 = as RL samples")
    p.add_argument("--max-new-tokens", type=int, default=72, help="completion budget (72)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (0)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto = cuda, then mps, then cpu")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if absent_device(args.device):  # before the run directory is looked for
        p.error(absent_device(args.device))
    try:
        problems = [problem_of(expr) for expr in args.exprs]
    except ValueError as e:
        p.error(str(e))
    if args.k < 1 or args.temperature < 0 or args.max_new_tokens < 1:
        p.error(f"--k and --max-new-tokens must be >= 1 and --temperature >= 0, got {args.k}, "
                f"{args.max_new_tokens} and {args.temperature}")
    longest = max(len(prompt_text(problem)) for problem in problems)
    if longest + args.max_new_tokens > GPTConfig().block_size:
        p.error(f"a prompt of {longest} tokens and --max-new-tokens {args.max_new_tokens} do not "
                f"fit the model's {GPTConfig().block_size} positions: a shorter expression, or "
                f"fewer new tokens")
    if args.k > 1 and args.temperature == 0:
        p.error("--k > 1 with --temperature 0 would print one greedy completion k times: "
                "pass --temperature 1")
    model, which = load_model(args.run, args.base, pick_device(args.device))
    sampling = evaluation.Sampling(args.k, args.temperature, args.max_new_tokens)
    written = evaluation.written_solutions(model, get_tokenizer(), problems, sampling, args.seed)
    mode = "greedy" if args.temperature == 0 else f"temperature {args.temperature:g}"
    print(f"{which}, {mode}")
    for problem, completions in zip(problems, written):
        print(f"Q:{problem.expr}  (answer {problem.answer})")
        for i, w in enumerate(completions, start=1):
            print(f"  {i:>2}. {written_line(w)}, {w['reasoning']}")
    return written


if __name__ == "__main__":
    with torch.inference_mode():
        main()
