"""
experiments/study.py: the compute-matched sampling study of "Smaller, Weaker, Yet Better" (Bansal et al., arXiv
2408.16737) at this scale. At a fixed sampling budget, is training data better sampled from a strong-expensive
model (SE) or from a weak-cheap one (WC)?

    python experiments/study.py --quick     # 500 problems, 60-step fine-tunes: 1,068 s measured (one thread,
                                            # the two WC-size warm starts, 593 s of it, included)
    python experiments/study.py             # 2,000 problems, 200-step fine-tunes, 3 seeds each

  sampling FLOPs   C = 2 P x (generated tokens)          P = parameters: a multiply and an add per parameter
  equal budgets    2 P_SE S_SE n L = 2 P_WC S_WC n L  =>  S_WC = (P_SE / P_WC) x S_SE
for n problems, S samples per problem, L tokens per sample. The plan assumes one L for both models; the tokens
really generated differ, so the FLOPs actually spent are reported too, and the plot draws coverage against them.

The models, all warm-started by nanorgra.warm_start with the same recipe: SE is the size given by nanorgra's
flags; WC is --wc-n-layer / --wc-n-head / --wc-n-embd; the student is WC-sized with --student-base-seed, a model
that sampled none of the data. They sample at temperature 1 on --problems fresh RL-level problems that no model
trained on and no test set holds, and the answer-correct samples are the data (steps unchecked, as in the paper):
  se          S_SE samples per problem from SE
  wc_compute  S_WC samples per problem from WC       (compute-matched to se)
  wc_number   the first S_SE of those                (number-matched control)
Three setups fine-tune one model on WC data vs on SE data: distillation (the student), self-improvement (WC) and
weak-to-strong improvement (SE), each for --seeds data orders; accuracy is greedy on the held-out test sets. The
step checker measures the false positive rate exactly, where the paper needed human raters.

A study directory holds one set of settings: the same command resumes it (samples and fine-tunes are cached).
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for nanorgra

from matplotlib.figure import Figure  # imported before any work starts: the plot at the end needs it

import numpy as np
import torch

import nanorgra
from data.tasks import OOD_LEVEL, RL_LEVEL, corpus_examples, prompt_text, sample_problems, \
    test_exprs, worked_solution
from data.tokenizer import get_tokenizer
from distributed import setup_device
from experiments.sweep import mean_ci95
from model import GPT, GPTConfig
from rundir import cached_json, save_figure, write_atomic
from verifier import is_false_positive, outcome_reward


QUICK = ["--problems", "500", "--ft-steps", "60", "--eval-n", "200", "--pass-n", "50"]  # what --quick sets
SETUPS = {"distillation": "student", "self_improvement": "wc", "weak_to_strong": "se"}  # -> the model fine-tuned
BUDGETS = {"compute": "wc_compute", "number": "wc_number"}  # budget -> the WC data set compared with "se"
STREAMS = dict(problems=5, se=6, wc=7, order=8)  # step_rngs-style stream ids, apart from the RL run's


def compute_matched_samples(p_se, p_wc, s_se):
    """S_WC = (P_SE / P_WC) x S_SE, rounded DOWN (exact integer arithmetic), at least 1: the WC never plans to
    spend more than the SE. P_SE = 3 P_WC, S_SE = 4 -> 12;  P_SE = 3.4 P_WC, S_SE = 4 -> 13 (13.6 rounded down)."""
    return max(1, p_se * s_se // p_wc)


def sampling_flops(n_params, n_tokens):
    """FLOPs of generating n_tokens tokens: 2 x P x tokens (the prompt prefill and the attention over the context
    are left out, as in the paper's estimate)."""
    return 2 * n_params * n_tokens


def is_correct(text, problem):
    """The paper's filter criterion: the final answer is right (the steps are not looked at)."""
    return outcome_reward(text, problem, format_reward=0.0) == 1.0


def coverage_at_k(problems, samples, k):
    """coverage@k = 1/n sum_i [one of the first k samples of problem i has the right answer]. samples: a list of
    completion texts per problem."""
    return float(np.mean([any(is_correct(t, p) for t in s[:k]) for p, s in zip(problems, samples)]))


def diversity_at_k(problems, samples, k):
    """diversity@k = 1/n sum_i |{distinct correct texts among the first k samples of problem i}|."""
    return float(np.mean([len({t for t in s[:k] if is_correct(t, p)}) for p, s in zip(problems, samples)]))


def keep_answer_correct(problems, samples):
    """The filtered data: (problem, text) for every answer-correct sample, duplicates and false positives kept."""
    return [(p, t) for p, s in zip(problems, samples) for t in s if is_correct(t, p)]


def false_positive_rate(problems, samples):
    """FPR = |kept samples whose steps are not sound (verifier.is_false_positive)| / |kept samples|; nan if none."""
    kept = keep_answer_correct(problems, samples)
    return float(np.mean([is_false_positive(t, p) for p, t in kept])) if kept else math.nan


def warm_start_exprs(args):
    """Every expression the warm starts of the study trained on, regenerated draw by draw as nanorgra.train_stage
    makes them (the model size does not enter the draws)."""
    exprs = set()
    for seed in {args.base_seed, args.student_base_seed}:
        for _, corpus, steps, _, stream in nanorgra.warm_stages(args):
            for step in range(steps):
                rng = nanorgra.step_rngs(seed, step, stream)[0]
                exprs.update(p.expr for p, _ in corpus_examples(corpus, args.warm_batch, rng))
    return exprs


def study_problems(args, study):
    """study.problems distinct RL-level problems that no model of the study trained on and no test set holds."""
    exclude = set(test_exprs()) | warm_start_exprs(args)
    rng = np.random.default_rng([study.sample_seed, STREAMS["problems"]])
    return sample_problems(RL_LEVEL, study.problems, rng, exclude=exclude, distinct=True)


def model_args(args, study):
    """The nanorgra settings of each model of the study: its size and warm-start seed."""
    wc = dict(n_layer=study.wc_n_layer, n_head=study.wc_n_head, n_embd=study.wc_n_embd)
    return dict(se=args, wc=argparse.Namespace(**{**vars(args), **wc}),
                student=argparse.Namespace(**{**vars(args), **wc, "base_seed": args.student_base_seed}))


def sample_solutions(model, tok, problems, n_samples, max_new_tokens, device, seed):
    """n_samples completions per problem at temperature 1: texts and generated tokens (EOS counted) per problem."""
    prompts = [prompt_text(p) for p in problems]
    how = nanorgra.Sampling(n_samples, 1.0, max_new_tokens)
    texts, lengths = nanorgra.sample_texts(model, tok, prompts, how, seed=seed)

    def per_problem(flat):
        return [flat[i * n_samples:(i + 1) * n_samples] for i in range(len(problems))]

    return dict(texts=per_problem(texts), tokens=per_problem(lengths))


def data_quality(problems, samples, n_params, k, planned_tokens):
    """The metrics of one data set: the first k samples per problem, and what sampling them cost."""
    texts, spent = [s[:k] for s in samples["texts"]], sum(sum(t[:k]) for t in samples["tokens"])
    return dict(k=k, samples=len(problems) * k, kept=len(keep_answer_correct(problems, texts)),
                coverage=coverage_at_k(problems, texts, k), diversity=diversity_at_k(problems, texts, k),
                fpr=false_positive_rate(problems, texts), tokens=spent,
                planned_flops=sampling_flops(n_params, len(problems) * k * planned_tokens),
                flops=sampling_flops(n_params, spent))


def finetune_order(n_examples, steps, batch, seed):
    """(steps, batch) example indices: shuffled passes over the data, a new permutation per pass."""
    rng = np.random.default_rng([seed, STREAMS["order"]])
    passes = -(-steps * batch // n_examples)  # ceil
    return np.concatenate([rng.permutation(n_examples) for _ in range(passes)])[:steps * batch].reshape(steps, batch)


def finetune(base, tok, kept, study, seed, device):
    """A copy of base after --ft-steps supervised steps (nanorgra.learn with advantage 1) of --ft-batch examples
    of kept at the constant rate --ft-lr. With nothing kept the copy is returned untrained."""
    model = GPT(base.config).to(device)
    model.load_state_dict(base.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=study.ft_lr, weight_decay=0.0, betas=(0.9, 0.95))
    losses = []
    for step, idx in enumerate(finetune_order(len(kept), study.ft_steps, study.ft_batch, seed) if kept else []):
        problems, texts = zip(*[kept[i] for i in idx])
        batch = nanorgra.packed_examples(tok, problems, texts, device)
        losses.append(nanorgra.supervised_step(model, opt, batch))
    return model, losses


def study_markdown(quality, rows, bases, params, study):
    fmt = lambda mc: f"{mc[0]:.3f} ± {mc[1]:.3f}" if not math.isnan(mc[1]) else f"{mc[0]:.3f}"
    lines = ["| data set | model (params) | S per problem | samples | kept | coverage@S | diversity@S | FPR | "
             "planned FLOPs | spent FLOPs |", "|" + " --- |" * 10]
    for name, q in quality.items():
        m = "SE" if name == "se" else "WC"
        lines.append(f"| {name} | {m} ({params[m.lower()]:,}) | {q['k']} | {q['samples']} | {q['kept']} | "
                     f"{q['coverage']:.3f} | {q['diversity']:.2f} | {q['fpr']:.3f} | {q['planned_flops']:.3g} | "
                     f"{q['flops']:.3g} |")
    lines += ["", f"| setup | model fine-tuned | data set | kept examples | {RL_LEVEL} acc | {OOD_LEVEL} acc |",
              "|" + " --- |" * 6]
    for setup, model in SETUPS.items():
        b = bases[model]
        lines.append(f"| {setup} | {model} | (none: before fine-tuning) | 0 | {b[RL_LEVEL]['acc']:.3f} | "
                     f"{b[OOD_LEVEL]['acc']:.3f} |")
        lines += [f"| {setup} | {model} | {r['source']} | {r['kept']} | {fmt(r['acc'])} | {fmt(r['ood_acc'])} |"
                  for r in rows if r["setup"] == setup]
    return "\n".join(lines) + "\n"


def plot_study(curves, rows, path):
    """Left: coverage against the sampling FLOPs spent, SE and WC (equal compute is one vertical line). Right:
    fine-tuned greedy accuracy per setup, one bar per data set, error bars the 95% intervals over seeds."""
    fig = Figure((12, 4.8), layout="tight")
    left, right = fig.subplots(1, 2)
    for name, c in curves.items():
        left.plot(c["flops"], c["coverage"], marker="o", ms=3, label=f"{name.upper()} (k = 1..{len(c['flops'])})")
    left.axvline(curves["se"]["flops"][-1], color="grey", ls="--", label="SE's whole budget (equal compute)")
    left.set(xlabel="sampling FLOPs spent (2 x params x generated tokens)",
             ylabel=f"coverage@k on the study's {RL_LEVEL} problems")
    left.legend(fontsize=8)
    sources = ["se", *BUDGETS.values()]
    for j, source in enumerate(sources):
        rs = [next(r for r in rows if r["setup"] == s and r["source"] == source) for s in SETUPS]
        right.bar(np.arange(len(rs)) + (j - 1) * 0.27, [r["acc"][0] for r in rs], 0.27, label=source,
                  yerr=[0.0 if math.isnan(r["acc"][1]) else r["acc"][1] for r in rs], capsize=3)
    right.set_xticks(range(len(SETUPS)), list(SETUPS))
    right.set_ylabel(f"fine-tuned {RL_LEVEL} greedy accuracy (95% interval)")
    right.legend(fontsize=8)
    save_figure(fig, path)


def parse(argv):
    """The study's own flags, and nanorgra's (the SE model and the warm-start recipe), both checked up front."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Any other flag is nanorgra.py's.")
    p.add_argument("--quick", action="store_true", help="add " + " ".join(QUICK) + " (flags given still win)")
    p.add_argument("--study-dir", default=None, help="runs/study, or runs/study-quick with --quick")
    p.add_argument("--wc-n-layer", type=int, default=2, help="layers of the weak-cheap model (2)")
    p.add_argument("--wc-n-head", type=int, default=4, help="heads of the WC model (4)")
    p.add_argument("--wc-n-embd", type=int, default=96, help="width of the WC model (96)")
    p.add_argument("--student-base-seed", type=int, default=1, help="warm-start seed of the student (1)")
    p.add_argument("--problems", type=int, default=2000, help="fresh RL-level problems to sample solutions for")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the problem draw and of the sampling (0)")
    p.add_argument("--s-se", type=int, default=4, help="S_SE; WC gets S_WC = floor(P_SE / P_WC x S_SE) (4)")
    p.add_argument("--ft-steps", type=int, default=200, help="fine-tuning steps on a data set (200)")
    p.add_argument("--ft-batch", type=int, default=64, help="examples per fine-tuning step (64)")
    p.add_argument("--ft-lr", type=float, default=3e-4, help="fine-tuning learning rate, constant (3e-4)")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds (data orders) per setup and data (3)")
    study, rest = p.parse_known_args(argv)
    if study.quick:  # the quick settings first, so that flags given still win
        study, rest = p.parse_known_args(QUICK + argv)
    for name in ("wc_n_layer", "wc_n_head", "wc_n_embd", "problems", "s_se", "ft_steps", "ft_batch", "seeds"):
        if getattr(study, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(study, name)}")
    if not (math.isfinite(study.ft_lr) and study.ft_lr > 0):
        p.error(f"--ft-lr must be a finite number > 0, got {study.ft_lr}")
    if study.wc_n_embd % study.wc_n_head:
        p.error(f"--wc-n-embd ({study.wc_n_embd}) must be a multiple of --wc-n-head ({study.wc_n_head})")
    args = nanorgra.parse_args(rest)
    args.student_base_seed = study.student_base_seed
    if args.student_base_seed == args.base_seed:
        p.error(f"--student-base-seed must differ from --base-seed ({args.base_seed}): with the same seed the "
                f"student would be the WC model, which sampled the data")
    sizes = {name: GPT(GPTConfig(vocab_size=get_tokenizer().vocab_size, n_layer=a.n_layer, n_head=a.n_head,
                                          n_embd=a.n_embd)).num_params() for name, a in model_args(args, study).items()}
    if sizes["wc"] >= sizes["se"]:
        p.error(f"--wc-n-layer/--wc-n-head/--wc-n-embd give {sizes['wc']:,} parameters, not fewer than the SE's "
                f"{sizes['se']:,} (--n-layer/--n-head/--n-embd): the WC model must be the cheaper one")
    study.study_dir = Path(study.study_dir or ("runs/study-quick" if study.quick else "runs/study"))
    return study, args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    study, args = parse(argv)
    t0, out, tok = time.time(), study.study_dir, get_tokenizer()
    device = setup_device(args)
    config = dict(study={k: str(v) for k, v in vars(study).items()}, run={k: str(v) for k, v in vars(args).items()
                                                                         if k not in ("device", "threads")})
    if (out / "config.json").exists() and json.loads((out / "config.json").read_text()) != config:
        raise SystemExit(f"{out} holds a study made with other settings; pass another --study-dir or remove it")
    write_atomic(out / "config.json", json.dumps(config, indent=1))
    models, bases, params = {}, {}, {}
    for name, a in model_args(args, study).items():
        models[name], path = nanorgra.warm_start(a, tok, device, log=print)
        bases[name] = nanorgra.base_evaluation(models[name], tok, a, path)
        params[name] = models[name].num_params()
    ratio, t_models = params["se"] / params["wc"], time.time() - t0
    s_se = study.s_se
    s_wc = compute_matched_samples(params["se"], params["wc"], s_se)
    problems = study_problems(args, study)
    planned_tokens = float(np.mean([len(worked_solution(p.expr)) + 1 for p in problems]))  # + EOS
    print(f"params: SE {params['se']:,}, WC {params['wc']:,}; P_SE/P_WC = {ratio:.2f}; S_SE = {s_se}, S_WC = {s_wc}; "
          f"{len(problems)} fresh {RL_LEVEL} problems")
    samples = {name: cached_json(out / f"samples-{name}.json", lambda name=name, s=s: sample_solutions(
        models[name], tok, problems, s, args.max_new_tokens, device,
        seed=int(np.random.default_rng([study.sample_seed, STREAMS[name]]).integers(2**40))))
        for name, s in (("se", s_se), ("wc", s_wc))}
    t_sampling = time.time() - t0 - t_models
    sets = dict(se=("se", s_se), wc_compute=("wc", s_wc), wc_number=("wc", s_se))  # data set -> (model, k)
    quality = {d: data_quality(problems, samples[m], params[m], k, planned_tokens) for d, (m, k) in sets.items()}
    kept = {d: keep_answer_correct(problems, [s[:k] for s in samples[m]["texts"]]) for d, (m, k) in sets.items()}
    runs, jobs = {}, [(setup, source, seed) for setup in SETUPS for source in sets for seed in range(study.seeds)]
    for i, (setup, source, seed) in enumerate(jobs):
        def make(setup=setup, source=source, seed=seed):
            t = time.time()
            model, losses = finetune(models[SETUPS[setup]], tok, kept[source], study, seed, device)
            return dict(kept=len(kept[source]), final_loss=losses[-1] if losses else None, seconds=time.time() - t,
                        eval=nanorgra.evaluate_all(model, tok, args, full=False))
        runs[(setup, source, seed)] = r = cached_json(out / "finetune" / f"{setup}-{source}-seed{seed}.json", make)
        print(f"[study {i + 1}/{len(jobs)}] {setup} on {source}, seed {seed}: {RL_LEVEL} acc "
              f"{r['eval'][RL_LEVEL]['acc']:.3f}")
    rows = [dict(setup=setup, model=SETUPS[setup], source=source, kept=len(kept[source]),
                 acc=mean_ci95([runs[(setup, source, s)]["eval"][RL_LEVEL]["acc"] for s in range(study.seeds)]),
                 ood_acc=mean_ci95([runs[(setup, source, s)]["eval"][OOD_LEVEL]["acc"] for s in range(study.seeds)]))
            for setup in SETUPS for source in sets]
    curves = {m: dict(coverage=[coverage_at_k(problems, samples[m]["texts"], k) for k in range(1, k_max + 1)],
                      flops=[sampling_flops(params[m], sum(sum(t[:k]) for t in samples[m]["tokens"]))
                             for k in range(1, k_max + 1)]) for m, k_max in (("se", s_se), ("wc", s_wc))}
    table = (f"P_SE / P_WC = {params['se']:,} / {params['wc']:,} = {ratio:.2f}; S_SE = {s_se}, S_WC = {s_wc}; "
             f"{len(problems)} problems. kept = answer-correct samples (steps unchecked); FPR = share of kept samples "
             f"whose steps are not sound; fine-tuned accuracies: mean ± 95% interval over {study.seeds} seeds\n\n"
             + study_markdown(quality, rows, bases, params, study))
    write_atomic(out / "results.md", table)
    write_atomic(out / "results.json", json.dumps(dict(
        command="python experiments/study.py " + " ".join(argv), seconds=time.time() - t0, params=params,
        times=dict(models=t_models, sampling=t_sampling, finetunes=sum(r["seconds"] for r in runs.values())),
        ratio=ratio, s_se=s_se, s_wc=s_wc, n_problems=len(problems), planned_tokens_per_sample=planned_tokens,
        data=quality, curves=curves, bases=bases, rows=rows), indent=1))
    plot_study(curves, rows, out / "study.png")
    print(table + f"\nstudy: {time.time() - t0:.0f}s; results in {out}")
    return rows


if __name__ == "__main__":
    main()
