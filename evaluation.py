"""
evaluation.py: how a model is judged, on the frozen test sets (data/test_sets/): greedy accuracy and
the styles of the greedy outputs on the RL level and on a longer level it never trained on (OOD);
the atoms (each step of a careful solution posed alone); pass@k; and what the model writes, before
and after RL, for the summary, the notebook and sample.py. Under torchrun every process samples its
share of the prompts and the texts are gathered, so every process returns the same numbers.
"""

import functools
import math
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import bases
import rundir
from batches import decode_completions
from data.tasks import OOD_LEVEL, RL_LEVEL, STEP_KINDS, atom_check_steps, load_test_set, \
    prompt_text
from distributed import agree, gather_objects, my_share
from model import generate
from verifier import STYLE_NAMES, outcome_reward, reasoning_kind, solution_style

SAMPLE_ROWS = 1024  # rows sampled at once: bounds the memory of evaluation batches


class Sampling(NamedTuple):
    """How evaluation samples: k completions per prompt at temperature (0 = greedy),
    each at most max_new_tokens long."""
    k: int
    temperature: float
    max_new_tokens: int


@torch.no_grad()
def sample_texts(model, tok, prompts, sampling, seed=0):
    """sampling.k completions per prompt text (a Sampling), as texts (prompt-major), and their
    lengths in tokens (EOS included). Prompt i's samples are seeded by seed + i, so neither the
    chunking nor the processes change them. Under torchrun each process samples its share of the
    prompts (my_share) and the texts are gathered (gather_objects)."""
    numbered = my_share(list(enumerate(prompts)))  # this process's prompts, with their numbers
    per_chunk = max(1, SAMPLE_ROWS // sampling.k)
    texts, lengths = [], []
    for i in range(0, len(numbered), per_chunk):
        chunk = numbered[i:i + per_chunk]
        ids = [tok.encode(p) for _, p in chunk]
        seeds = [seed + j for j, _ in chunk]
        rollout = generate(model, ids, sampling.max_new_tokens, tok.eos_id, tok.pad_id,
                           sampling.k, sampling.temperature, seeds=seeds)
        texts += decode_completions(tok, rollout)
        lengths += rollout.mask.sum(1).tolist()
    return gather_objects(texts), gather_objects(lengths)


def evaluate(model, tok, level, n, max_new_tokens):
    """Greedy outputs on the first n test problems of level: accuracy, mean length, and how many
    outputs are in each solution style (verifier.solution_style)."""
    problems = load_test_set(level)[:n]
    prompts = [prompt_text(p) for p in problems]
    texts, lengths = sample_texts(model, tok, prompts, Sampling(1, 0.0, max_new_tokens))
    right = [outcome_reward(t, p) >= 1 for t, p in zip(texts, problems)]
    styles = Counter(solution_style(t, p.expr) for t, p in zip(texts, problems))
    return dict(acc=float(np.mean(right)), len=float(np.mean(lengths)),
                styles={s: styles[s] for s in STYLE_NAMES})


def step_accuracy(model, tok, level, max_new_tokens):
    """The atoms: up to 200 distinct steps x<op>y of each kind that occurs in the careful solutions
    of level (atom_check_steps), each posed as a problem of its own ("Q:4+54"). Greedy accuracy
    per step kind."""
    atoms = atom_check_steps(level)
    steps = [(expr, z, kind) for kind, facts in atoms.items() for expr, z in facts.items()]
    prompts = [f"Q:{expr}\n" for expr, _, _ in steps]
    texts, _ = sample_texts(model, tok, prompts, Sampling(1, 0.0, max_new_tokens))
    right = [(outcome_reward(t, z) >= 1, kind) for t, (_, z, kind) in zip(texts, steps)]
    return {k: float(np.mean([ok for ok, kind in right if kind == k])) for k in STEP_KINDS}


def pass_at_k(model, tok, level, n, k_max, max_new_tokens):
    """pass@k, k = 1, 2, 4, ..., k_max, on the first n test problems: from k_max samples each at
    T = 1, the unbiased 1 - C(k_max - c, k) / C(k_max, k) for c right, averaged. RL that sharpens
    lifts small k, not large k."""
    problems = load_test_set(level)[:n]
    prompts = [prompt_text(p) for p in problems]
    texts, _ = sample_texts(model, tok, prompts, Sampling(k_max, 1.0, max_new_tokens))
    per_problem = [texts[i * k_max:(i + 1) * k_max] for i in range(len(problems))]
    right = [sum(outcome_reward(t, p) >= 1 for t in ts) for ts, p in zip(per_problem, problems)]
    ks = sorted({2**j for j in range(int(math.log2(k_max)) + 1)} | {k_max})
    unbiased = {k: [1 - math.comb(k_max - c, k) / math.comb(k_max, k) for c in right] for k in ks}
    return {str(k): float(np.mean(values)) for k, values in unbiased.items()}


def evaluate_all(model, tok, args, full=True):
    """Greedy on the RL and OOD levels; with full (base and final), also the RL level's
    atoms and pass@k."""
    results = {level: evaluate(model, tok, level, args.eval_n, args.max_new_tokens)
               for level in (RL_LEVEL, OOD_LEVEL)}
    if full:
        results[RL_LEVEL]["steps"] = step_accuracy(model, tok, RL_LEVEL, args.max_new_tokens)
        results[RL_LEVEL]["pass@k"] = pass_at_k(model, tok, RL_LEVEL, args.pass_n, args.pass_k,
                                               args.max_new_tokens)
    return results


# What the summary shows the model writing: the first test problems of the RL level (the first is
# 4+9*6-3, precedence's example), greedy, before and after RL.
SHOWN_PROBLEMS = 3


def written_solutions(model, tok, problems, sampling, seed=0):
    """What the model writes: sampling.k completions of each problem (a Sampling), each with what
    the verifier says of it: [[{text, reward, right, style, reasoning}, ...] per problem].
    reasoning is verifier.reasoning_kind: sound, wrong reasoning, no reasoning or wrong answer."""
    prompts = [prompt_text(p) for p in problems]
    texts, _ = sample_texts(model, tok, prompts, sampling, seed)
    written = []
    for i, problem in enumerate(problems):
        own = texts[i * sampling.k:(i + 1) * sampling.k]
        written.append([dict(text=t, reward=outcome_reward(t, problem),
                             right=outcome_reward(t, problem) >= 1,
                             style=solution_style(t, problem.expr),
                             reasoning=reasoning_kind(t, problem)) for t in own])
    return written


def before_and_after(base, policy, tok, args):
    """The first SHOWN_PROBLEMS test problems of the RL level, and the base's and the trained
    policy's greedy solution of each (written_solutions), for the summary."""
    problems = load_test_set(RL_LEVEL)[:SHOWN_PROBLEMS]
    greedy = Sampling(1, 0.0, args.max_new_tokens)
    base_writes = written_solutions(base, tok, problems, greedy)
    trained_writes = written_solutions(policy, tok, problems, greedy)
    return [dict(expr=p.expr, answer=p.answer, base=b[0], trained=t[0])
            for p, b, t in zip(problems, base_writes, trained_writes)]


def base_evaluation(base, tok, args, base_path):
    """evaluate_all of the base, cached beside its weights (shipped with the shipped bases) or
    under --base-dir, so that every run from the same base starts from the same numbers."""
    path = base_evaluation_path(args, base_path, base.device.type, base.precision)
    return rundir.cached_json(path, functools.partial(evaluate_all, base, tok, args))


def base_evaluation_path(args, base_path, device_type, precision):
    """Where the base's evaluation is cached, named by a key of what the evaluation reads: its
    settings, the test problems and atoms it poses, its code and the model's, the device kind and
    precision it samples with, and the base's own bytes."""
    levels = (RL_LEVEL, OOD_LEVEL)
    content = dict(settings=(args.eval_n, args.pass_n, args.pass_k, args.max_new_tokens),
                   levels=levels, test_sets=bases.test_sets_fingerprint(levels),
                   atoms=bases.digest(atom_check_steps(RL_LEVEL)),
                   code=bases.code_fingerprint(evaluate_all),  # and the sampler's model:
                   model_code=bases.file_fingerprint(bases.REPO / "model.py"),
                   numerics=(device_type, precision),
                   base=bases.file_sha256(base_path))
    name = Path(base_path).with_suffix(f".eval-{bases.digest(content)[:8]}.json").name
    beside = Path(base_path).with_name(name)  # a shipped base's evaluation ships with it
    return beside if agree(beside.exists()) else Path(args.base_dir) / name
