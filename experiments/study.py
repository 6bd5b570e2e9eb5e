"""
experiments/study.py: the compute-matched sampling study of "Smaller, Weaker, Yet Better"
(Bansal et al., arXiv 2408.16737) at this scale. At a fixed sampling budget, is training data
better sampled from a strong-expensive model (SE) or from a weak-cheap one (WC)?

    python experiments/study.py --quick     # 500 problems, 60-step fine-tunes, 200 test problems
    python experiments/study.py             # 2,000 problems, 200-step fine-tunes, 3 seeds each

  sampling FLOPs   C = 2 P x (generated tokens)          P = parameters: a multiply and an add each
  equal budgets    2 P_SE S_SE n L = 2 P_WC S_WC n L  =>  S_WC = (P_SE / P_WC) x S_SE
for n problems, S samples per problem, L tokens per sample. The plan assumes one L for both models;
the tokens really generated differ, so the FLOPs actually spent are reported too, and the plot
draws coverage against them.

The models, warm-started by warmstart.warm_start: SE is the size of nanorgra's flags; WC is
--wc-n-layer / --wc-n-head / --wc-n-embd; the student is WC-sized with --student-base-seed, a model
that sampled none of the data. Two worlds of warm starts (WORLDS):
  habits   the default two stages: the models write in four habits (careful, left to right,
           shortcut, bare), as the default job's base does
  skills   the skills stage only: every model writes careful steps, as the paper's models write
           chains of thought, so that coverage, diversity and false positives mean what they meant
In each world both models sample at temperature 1 on --problems fresh RL-level problems that no
model trained on and no test set holds:
  se          S_SE samples per problem from SE
  wc_compute  S_WC samples per problem from WC       (compute-matched to se)
  wc_number   the first S_SE of those                (number-matched control)
  wc_sized    wc_compute's kept samples, a random subset of as many as se kept (the control)
and every data set is kept two ways (FILTERS): the answer-correct samples (the paper's filter, the
steps unchecked) and the sound ones only (what an exact checker allows, which the paper could not
do). Three setups fine-tune one model on WC data vs on SE data: distillation (the student),
self-improvement (WC) and weak-to-strong improvement (SE), each for --seeds data orders; accuracy is
greedy on the held-out test sets.

Every fine-tune takes the same --ft-steps steps of --ft-batch examples, so a small kept set is seen
more often than a large one (SE's 106 sound samples of the quick form about 36 times, WC's 382
about 10 times): the source of the data and how often it repeats move together. The control
wc_sized holds that apart: WC's data cut to SE's size, seen as often as SE's, so that wc_sized
against se compares the data per example, and wc_compute against se the paper's question.

The verdicts (decided before the full form ran): for each world, filter and setup, Welch's t test
of the fine-tuned RL-level accuracy, WC's data against SE's, over the seeds; Holm over the twelve
equal-compute tests (one family) and, apart, over the twelve size-matched tests (the control's
family); "WC better" or "SE better" only where the adjusted p < 0.05, else "not separable" with
the difference's interval.

The step checker sorts every answer-correct sample (verifier.reasoning_kind): sound, wrong reasoning
(a false step, or an order precedence does not allow: the paper's false positive), or no reasoning
shown (a bare answer). FPR = wrong / (sound + wrong); the share of bare answers stands beside it.

A study directory holds one set of settings: the same command resumes it (samples and fine-tunes
are cached there). Every finished unit of the study also leaves a record in the repository,
data/records/<study dir name>/<unit>.json (runner.records_dir: NANORGRA_RECORDS moves the folder):
each model's evaluation before fine-tuning (base-<world>-<model>), each model's samples in full
(samples-<world>-<se|wc>: the data of the fine-tunes still to come) and each fine-tune's result
(<world>-<filter>-<setup>-<data set>-seed<n>), with its settings and where it came from: the
fingerprint of the weights of every base it used (bases.weights_fingerprint of the model it
fine-tuned or evaluated and of the models that sampled its data, by role: "habits wc", ...), the
code's commit, the CPU, the threads and its seconds. Commit the records as they come: a later
sitting, in a fresh clone without the study directory, perhaps on another machine, reads every
recorded unit back and does only the rest. It warm-starts a model only when a unit not recorded
yet needs it (so a sitting with every unit recorded writes the report without training anything),
and then refuses to go on if that model's weights are not those the records used, naming the
units to redo; the report likewise refuses records whose fingerprints differ for one role. All
six models of the full form ship in bases/ (the habits world's SE is the default base; the other
five are the ones its committed records used), because another kind of CPU trains other weights
from the same code (pitfall 11): with them shipped, a sitting on any CPU continues the same study.
The samples are recorded in full rather than drawn again for the same reason (another CPU's
arithmetic could draw other tokens from the same weights), so that no sitting ever fine-tunes on
data other than the recorded units'.
"""

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from matplotlib.figure import Figure  # imported before any work: the plot at the end needs it

import numpy as np
import torch

import batches
import evaluation
import nanorgra
import warmstart
from data.tasks import OOD_LEVEL, RL_LEVEL, prompt_text, sample_problems, test_exprs, \
    worked_solution
from data.tokenizer import get_tokenizer
from bases import weights_fingerprint
from distributed import setup_device
from experiments import runner
from experiments.stats import holm, interval_text, mean_ci95, mean_text, p_text, welch
from model import GPT
from rundir import cached_json, run_settings, save_figure, write_atomic
from verifier import false_positive_rate, no_reasoning_share, outcome_reward, reasoning_kind, \
    reasoning_counts

QUICK = ["--problems", "500", "--ft-steps", "60", "--eval-n", "200", "--pass-n", "50"]
SETUPS = {"distillation": "student", "self_improvement": "wc", "weak_to_strong": "se"}  # -> model
# the data sets fine-tuned on: se, and WC's at equal compute, at equal number, and cut to se's size
SOURCES = ("se", "wc_compute", "wc_number", "wc_sized")
WORLDS = ("habits", "skills")  # the warm starts: both stages, or the skills stage only
FILTERS = ("answer-correct", "sound")  # what of the samples is kept for fine-tuning
MODELS = ("se", "wc", "student")  # the study's models: strong-expensive, weak-cheap, the student
STREAMS = dict(problems=5, se=6, wc=7, order=8, subset=9)  # seed streams, apart from the RL run's


def compute_matched_samples(p_se, p_wc, s_se):
    """S_WC = (P_SE / P_WC) x S_SE, rounded DOWN (exact integer arithmetic), at least 1: the WC
    never plans to spend more than the SE.
        P_SE = 3 P_WC, S_SE = 4 -> 12;   P_SE = 3.4 P_WC, S_SE = 4 -> 13"""
    return max(1, p_se * s_se // p_wc)


def sampling_flops(n_params, n_tokens):
    """FLOPs of generating n_tokens tokens: 2 x P x tokens (the prompt prefill and the attention
    over the context are left out, as in the paper's estimate)."""
    return 2 * n_params * n_tokens


# -----------------------------------------------------------------------------
# Data quality


def is_correct(text, problem):
    """The paper's filter criterion: the final answer is right (the steps are not looked at)."""
    return outcome_reward(text, problem, format_reward=0.0) == 1.0


def is_sound(text, problem):
    """The exact filter: the answer right, every step line true and allowed (reasoning_kind)."""
    return reasoning_kind(text, problem) == "sound"


def coverage_at_k(problems, samples, k):
    """coverage@k = 1/n sum_i [one of the first k samples of problem i has the right answer].
    samples: a list of completion texts per problem."""
    solved = [any(is_correct(t, p) for t in s[:k]) for p, s in zip(problems, samples)]
    return float(np.mean(solved))


def diversity_at_k(problems, samples, k):
    """diversity@k = 1/n sum_i |{distinct correct texts among the first k samples of problem i}|."""
    distinct = [len({t for t in s[:k] if is_correct(t, p)}) for p, s in zip(problems, samples)]
    return float(np.mean(distinct))


def keep_answer_correct(problems, samples):
    """The paper's data: (problem, text) for every answer-correct sample, duplicates and
    false positives kept."""
    return [(p, t) for p, s in zip(problems, samples) for t in s if is_correct(t, p)]


def keep_sound(problems, samples):
    """The exact checker's data: (problem, text) for every sound sample, duplicates kept."""
    return [(p, t) for p, s in zip(problems, samples) for t in s if is_sound(t, p)]


def kept_data(problems, samples, data_filter):
    """The fine-tuning data of one of FILTERS."""
    if data_filter == "sound":
        return keep_sound(problems, samples)
    return keep_answer_correct(problems, samples)


def reasoning_of_kept(problems, samples):
    """verifier.reasoning_counts over the answer-correct samples: sound, wrong reasoning,
    no reasoning."""
    kept = keep_answer_correct(problems, samples)
    return reasoning_counts([t for _, t in kept], [p for p, _ in kept])


def data_quality(problems, samples, n_params, k, planned_tokens):
    """The metrics of one data set: the first k samples per problem, and what sampling them cost."""
    texts = [s[:k] for s in samples["texts"]]
    spent = sum(sum(t[:k]) for t in samples["tokens"])
    counts = reasoning_of_kept(problems, texts)
    planned = sampling_flops(n_params, len(problems) * k * planned_tokens)
    return dict(k=k, samples=len(problems) * k,
                kept=len(keep_answer_correct(problems, texts)),
                sound=counts["sound"], wrong=counts["wrong reasoning"], bare=counts["no reasoning"],
                coverage=coverage_at_k(problems, texts, k),
                diversity=diversity_at_k(problems, texts, k),
                fpr=false_positive_rate(counts), bare_share=no_reasoning_share(counts),
                tokens=spent, planned_flops=planned, flops=sampling_flops(n_params, spent))


# -----------------------------------------------------------------------------
# The problems, the models and their samples


def warm_start_exprs(args):
    """Every expression the warm starts of the study trained on: each step's draws of each stage
    replayed by the warm start's own warmstart.stage_pairs, for both base seeds (the model size
    does not enter the draws)."""
    exprs = set()
    for seed in {args.base_seed, args.student_base_seed}:
        for stage in warmstart.warm_stages(args):
            for step in range(stage.steps):
                pairs = warmstart.stage_pairs(stage, step, seed, args.warm_batch)
                exprs.update(p.expr for p, _ in pairs)
    return exprs


def study_problems(args, study):
    """study.problems distinct RL-level problems that no model of the study trained on and
    no test set holds."""
    exclude = set(test_exprs()) | warm_start_exprs(args)
    rng = np.random.default_rng([study.sample_seed, STREAMS["problems"]])
    return sample_problems(RL_LEVEL, study.problems, rng, exclude=exclude, distinct=True)


def model_args(args, study, world="habits"):
    """The nanorgra settings of each model of the study in a world: its size, its warm-start seed,
    and for the skills world no habits stage."""
    wc = dict(n_layer=study.wc_n_layer, n_head=study.wc_n_head, n_embd=study.wc_n_embd)
    if world == "skills":
        args = argparse.Namespace(**{**vars(args), "habit_steps": 0})
    student = {**vars(args), **wc, "base_seed": args.student_base_seed}
    return dict(se=args, wc=argparse.Namespace(**{**vars(args), **wc}),
                student=argparse.Namespace(**student))


def sample_solutions(model, tok, problems, n_samples, max_new_tokens, seed):
    """n_samples completions per problem at temperature 1: texts and generated tokens
    (EOS counted) per problem."""
    prompts = [prompt_text(p) for p in problems]
    how = evaluation.Sampling(n_samples, 1.0, max_new_tokens)
    texts, lengths = evaluation.sample_texts(model, tok, prompts, how, seed=seed)

    def per_problem(flat):
        return [flat[i * n_samples:(i + 1) * n_samples] for i in range(len(problems))]

    return dict(texts=per_problem(texts), tokens=per_problem(lengths))


def source_data(problems, samples, sets, source, data_filter):
    """The fine-tuning data of one data set of one world: the kept samples of its model's first k
    samples per problem; for wc_sized, a random subset (its own stream, seeded by the two sizes) of
    wc_compute's as large as se's."""
    model, k = sets[source]
    kept = kept_data(problems, [s[:k] for s in samples[model]["texts"]], data_filter)
    if source != "wc_sized":
        return kept
    se_model, se_k = sets["se"]
    size = len(kept_data(problems, [s[:se_k] for s in samples[se_model]["texts"]], data_filter))
    rng = np.random.default_rng([STREAMS["subset"], len(kept), size])
    chosen = sorted(rng.choice(len(kept), size=min(size, len(kept)), replace=False))
    return [kept[i] for i in chosen]


# -----------------------------------------------------------------------------
# Fine-tuning


def finetune_order(n_examples, steps, batch, seed):
    """(steps, batch) example indices: shuffled passes over the data, a new permutation per pass."""
    rng = np.random.default_rng([seed, STREAMS["order"]])
    passes = -(-steps * batch // n_examples)  # ceil
    order = np.concatenate([rng.permutation(n_examples) for _ in range(passes)])
    return order[:steps * batch].reshape(steps, batch)


def finetune(base, tok, kept, study, seed):
    """A copy of base after --ft-steps supervised steps (warmstart.supervised_step) of --ft-batch
    examples of kept at the constant rate --ft-lr. With nothing kept the copy is
    returned untrained."""
    model = GPT(base.config, precision=base.precision).to(base.device)
    model.load_state_dict(base.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=study.ft_lr, weight_decay=0.0, betas=(0.9, 0.95))
    losses = []
    order = finetune_order(len(kept), study.ft_steps, study.ft_batch, seed) if kept else []
    for idx in order:
        problems, texts = zip(*[kept[i] for i in idx])
        batch = batches.packed_examples(tok, problems, texts, base.device)
        losses.append(warmstart.supervised_step(model, opt, batch))
    return model, losses


# -----------------------------------------------------------------------------
# Tables and the plot


def verdict_tests(rows, wc_source):
    """Welch's test of the fine-tuned accuracy, wc_source's data against se's, for every world,
    filter and setup, Holm-adjusted over those twelve tests (one family): {condition: test}."""
    tests = {}
    for world in WORLDS:
        for data_filter in FILTERS:
            for setup in SETUPS:
                pick = {r["source"]: r["acc_seeds"] for r in rows
                        if (r["world"], r["filter"], r["setup"]) == (world, data_filter, setup)}
                tests[world, data_filter, setup] = welch(pick[wc_source], pick["se"])
    for test, p_adjusted in zip(tests.values(), holm([t["p"] for t in tests.values()])):
        test["p_adjusted"] = p_adjusted
        test["verdict"] = verdict(test)
    return tests


def verdict(test):
    """"WC better" or "SE better" where Holm's adjusted p < 0.05, else "not separable"."""
    if not test["p_adjusted"] < 0.05:
        return "not separable"
    return "WC better" if test["diff"] > 0 else "SE better"


def verdict_text(test):
    """ "WC better: +0.052 [+0.010, +0.094], p 0.012, adj. 0.048"."""
    return (f"{test['verdict']}: {interval_text(test['diff'], test['half'])}, "
            f"p {p_text(test['p'])}, adj. {p_text(test['p_adjusted'])}")


def study_markdown(quality, rows, bases, params, verdicts):
    lines = ["| world | data set | model (params) | S per problem | samples | kept | sound | wrong "
             "| bare | coverage@S | diversity@S | FPR | bare share | spent FLOPs |",
             "|" + " --- |" * 14]
    for world, sets in quality.items():
        for name, q in sets.items():
            m = "SE" if name == "se" else "WC"
            counts = f"{q['samples']} | {q['kept']} | {q['sound']} | {q['wrong']} | {q['bare']}"
            rates = (f"{q['coverage']:.3f} | {q['diversity']:.2f} | {q['fpr']:.3f} | "
                     f"{q['bare_share']:.3f} | {q['flops']:.3g}")
            model = f"{m} ({params[m.lower()]:,})"
            lines.append(f"| {world} | {name} | {model} | {q['k']} | {counts} | {rates} |")
    lines += ["", f"| world | kept | setup | model | data set | examples | {RL_LEVEL} acc | "
              f"{OOD_LEVEL} acc | WC against SE: Welch, Holm over the family |",
              "|" + " --- |" * 9]
    for world in WORLDS:
        for data_filter in FILTERS:
            for setup, model in SETUPS.items():
                b = bases[world][model]
                lines.append(f"| {world} | {data_filter} | {setup} | {model} | (before) | 0 | "
                             f"{b[RL_LEVEL]['acc']:.3f} | {b[OOD_LEVEL]['acc']:.3f} | |")
                for r in rows:
                    if (r["world"], r["filter"], r["setup"]) == (world, data_filter, setup):
                        family = dict(wc_compute="equal compute", wc_sized="equal size").get(
                            r["source"])
                        test = verdicts[family][world, data_filter, setup] if family else None
                        claim = f"{family}: {verdict_text(test)}" if test else ""
                        lines.append(f"| {world} | {data_filter} | {setup} | {model} | "
                                     f"{r['source']} | {r['kept']} | {mean_text(r['acc'])} | "
                                     f"{mean_text(r['ood_acc'])} | {claim} |")
    return "\n".join(lines) + "\n"


def plot_study(curves, rows, path):
    """Top left: coverage against the sampling FLOPs spent, SE and WC in both worlds (equal compute
    is one vertical line). The other panels: fine-tuned greedy accuracy per setup, one bar per data
    set, error bars the 95% intervals over seeds, one panel per world and filter."""
    fig = Figure((15, 8.5), layout="tight")
    left, *panels = fig.subplots(2, 3).flat
    for world, by_model in curves.items():
        for name, c in by_model.items():
            style = "-" if world == "habits" else "--"
            left.plot(np.array(c["flops"]) / 1e10, c["coverage"], style, marker="o", ms=3,
                      label=f"{world}: {name.upper()} (k = 1..{len(c['flops'])})")
    left.set(xlabel="sampling FLOPs spent, in 1e10 (2 x params x generated tokens)",
             ylabel=f"coverage@k on the study's {RL_LEVEL} problems",
             title="coverage against sampling compute")
    left.legend(fontsize=7, loc="lower right")
    conditions = [(w, f) for w in WORLDS for f in FILTERS]
    width = 0.8 / len(SOURCES)
    for ax, (world, data_filter) in zip(panels, conditions):
        for j, source in enumerate(SOURCES):
            picked = [next(r for r in rows if (r["world"], r["filter"], r["setup"], r["source"])
                           == (world, data_filter, s, source)) for s in SETUPS]
            heights = [r["acc"][0] for r in picked]
            errors = [0.0 if math.isnan(r["acc"][1]) else r["acc"][1] for r in picked]
            offset = (j - (len(SOURCES) - 1) / 2) * width
            ax.bar(np.arange(len(picked)) + offset, heights, width, label=source, yerr=errors,
                   capsize=3)
        ax.set_xticks(range(len(SETUPS)), list(SETUPS), fontsize=8)
        ax.set(title=f"{world} warm start, {data_filter} data:\nWC's data sets against SE's",
               ylabel=f"fine-tuned {RL_LEVEL} greedy accuracy (95%)", ylim=(0, 1.05))
    handles, labels = panels[0].get_legend_handles_labels()
    for unused in panels[len(conditions):]:
        unused.axis("off")  # the bars' legend goes here, off the data
        unused.legend(handles, labels, loc="center", title="fine-tuned on (mean, 95% interval)")
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# The units of the study and their records


def role(world, model):
    """The name of a model's role in the study, as its units' records name it: "habits wc"."""
    return f"{world} {model}"


def finetune_name(job):
    """A fine-tune's unit: "habits-sound-distillation-wc_sized-seed0"."""
    world, data_filter, setup, source, seed = job
    return f"{world}-{data_filter}-{setup}-{source}-seed{seed}"


def samplers(source, sets):
    """The models whose samples make the data set source (wc_sized is cut to se's size)."""
    return [sets[source][0]] + (["se"] if source == "wc_sized" else [])


def unit_names(jobs):
    """Every unit of the study: each model's evaluation before fine-tuning, each sampler's samples
    and each fine-tune."""
    return ([f"base-{w}-{m}" for w in WORLDS for m in MODELS]
            + [f"samples-{w}-{m}" for w in WORLDS for m in ("se", "wc")]
            + [finetune_name(job) for job in jobs])


def record_settings(study, args):
    """The settings a unit's record holds (JSON values): the study's and nanorgra's, but for where
    it ran (runner.WHERE, the study directory) and --quick (its settings are there already)."""
    mine = {f"study_{k}": v for k, v in vars(study).items() if k not in ("study_dir", "quick")}
    return json.loads(json.dumps({**run_settings(args), **mine}))


def check_one_base_per_role(records):
    """SystemExit unless the recorded units used one base per role (the same weights' fingerprint
    for, say, the habits world's WC): a WC warm-started on another kind of CPU differs in its last
    digits, and pooling its units with the others' would mix two studies. Names the units to redo:
    those off the fingerprint most units of the role used (runner.off_the_common_base)."""
    off = runner.off_the_common_base({n: r["provenance"]["bases"] for n, r in records.items()})
    if off:
        named = "; ".join(f"{n} ({', '.join(roles)}, on {records[n]['provenance']['cpu']})"
                          for n, roles in sorted(off.items()))
        raise SystemExit(f"units of the study on another base than the other units of the same "
                         f"role: {named}; delete their records and run them again on the others' "
                         f"bases (a machine of the others' kind of CPU)")


class Sitting:
    """One sitting of the study: the units recorded (in any sitting, on any machine), read back,
    and this machine's models, each warm-started when a unit not recorded yet first needs it."""

    def __init__(self, study, args, tok, device, names):
        self.study, self.args, self.tok, self.device = study, args, tok, device
        self.settings = record_settings(study, args)
        self.models, self.fingerprints, self.records = {}, {}, {}
        for name in names:
            path = self.record_path(name)
            if path.exists():
                self.records[name] = json.loads(path.read_text())
                runner.check_same_settings(self.settings, self.records[name]["settings"], path)
        check_one_base_per_role(self.records)  # refused before any work, not at the end

    def record_path(self, unit):
        return runner.record_path(self.study.study_dir / unit)

    def recorded(self, used):
        """The fingerprint the records hold for the base of the role used (they agree), or
        None."""
        return next((r["provenance"]["bases"][used] for r in self.records.values()
                     if used in r["provenance"]["bases"]), None)

    def model(self, world, name):
        """The model name of world and the path of its weights, warm-started on first use (loaded
        where cached or shipped); SystemExit, naming the units to redo, if its weights are not
        those the records used."""
        used = role(world, name)
        if used not in self.models:
            a = model_args(self.args, self.study, world)[name]
            self.models[used] = warmstart.warm_start(a, self.tok, self.device, log=print)
            self.fingerprints[used] = here = weights_fingerprint(self.models[used][1])
            recorded = self.recorded(used)
            if recorded not in (None, here):
                units = sorted(n for n, r in self.records.items()
                               if r["provenance"]["bases"].get(used) == recorded)
                cpus = sorted({self.records[n]["provenance"]["cpu"] for n in units})
                raise SystemExit(
                    f"this machine's {used} base ({self.models[used][1]}, fingerprint {here}) "
                    f"is not the one the study's records used ({recorded}, on "
                    f"{', '.join(cpus)}): another kind of CPU trains other weights from the same "
                    f"code. Continue on a machine of that kind, or delete the records of these "
                    f"{len(units)} units to redo them here: {', '.join(units)}")
        return self.models[used]

    def base_evaluation(self, world, name):
        """evaluation.base_evaluation of the model name of world."""
        model, path = self.model(world, name)
        a = model_args(self.args, self.study, world)[name]
        return evaluation.base_evaluation(model, self.tok, a, path)

    def fingerprint(self, used):
        """The fingerprint of the base of the role used: this machine's where it is warm-started,
        else the records' (it is warm-started if they have none)."""
        if used not in self.fingerprints and self.recorded(used) is None:
            self.model(*used.split())
        return self.fingerprints.get(used) or self.recorded(used)

    def unit(self, name, roles, make, cache=None):
        """The value of the unit name: its record's (made in any sitting, on any machine), else the
        study directory's cache (this machine's; cache None: none), else make()'s. A unit not
        recorded yet is recorded, with the fingerprints of the bases of roles."""
        if name in self.records:
            return self.records[name]["value"]
        made, t0 = cache is None or not Path(cache).exists(), time.time()
        value = cached_json(cache, make) if cache else json.loads(json.dumps(make()))
        provenance = dict(bases={used: self.fingerprint(used) for used in dict.fromkeys(roles)},
                          **runner.where_and_when(time.time() - t0 if made else None))
        self.records[name] = dict(unit=name, provenance=provenance, settings=self.settings,
                                  value=value)
        write_atomic(self.record_path(name), json.dumps(self.records[name]))
        return value


# -----------------------------------------------------------------------------
# The command


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Any other flag is nanorgra.py's.")
    p.add_argument("--quick", action="store_true",
                   help="add " + " ".join(QUICK) + " (flags given still win)")
    p.add_argument("--study-dir", default=None, help="runs/study, or runs/study-quick with --quick")
    p.add_argument("--wc-n-layer", type=int, default=2, help="layers of the weak-cheap model (2)")
    p.add_argument("--wc-n-head", type=int, default=4, help="heads of the WC model (4)")
    p.add_argument("--wc-n-embd", type=int, default=96, help="width of the WC model (96)")
    p.add_argument("--student-base-seed", type=int, default=1,
                   help="warm-start seed of the student (1)")
    p.add_argument("--problems", type=int, default=2000,
                   help="fresh RL-level problems to sample solutions for (2000)")
    p.add_argument("--sample-seed", type=int, default=0,
                   help="seed of the problem draw and of the sampling (0)")
    p.add_argument("--s-se", type=int, default=4,
                   help="S_SE; WC gets S_WC = floor(P_SE / P_WC x S_SE) (4)")
    p.add_argument("--ft-steps", type=int, default=200,
                   help="fine-tuning steps on a data set (200)")
    p.add_argument("--ft-batch", type=int, default=64, help="examples per fine-tuning step (64)")
    p.add_argument("--ft-lr", type=float, default=3e-4, help="fine-tuning learning rate (3e-4)")
    p.add_argument("--seeds", type=int, default=3,
                   help="fine-tuning seeds (data orders) per setup and data set (3)")
    return p


def parse(argv):
    """The study's own flags, and nanorgra's (the SE model and the warm-start recipe), both
    checked before any work."""
    p = build_parser()
    study, rest = p.parse_known_args(argv)
    if study.quick:  # the quick settings first, so that flags given still win
        study, rest = p.parse_known_args(QUICK + argv)
    for name in ("wc_n_layer", "wc_n_head", "wc_n_embd", "problems", "s_se", "ft_steps", "ft_batch",
                 "seeds"):
        if getattr(study, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(study, name)}")
    if not (math.isfinite(study.ft_lr) and study.ft_lr > 0):
        p.error(f"--ft-lr must be a finite number > 0, got {study.ft_lr}")
    if study.wc_n_embd % study.wc_n_head:
        p.error(f"--wc-n-embd ({study.wc_n_embd}) must be a multiple of --wc-n-head "
                f"({study.wc_n_head})")
    args = nanorgra.parse_args(rest)
    args.student_base_seed = study.student_base_seed
    if args.student_base_seed == args.base_seed:
        p.error(f"--student-base-seed must differ from --base-seed ({args.base_seed}): with the "
                f"same seed the student would be the WC model, which sampled the data")
    sizes = model_sizes(args, study)
    if sizes["wc"] >= sizes["se"]:
        p.error(f"--wc-n-layer/--wc-n-head/--wc-n-embd give {sizes['wc']:,} parameters, not "
                f"fewer than the SE's {sizes['se']:,} (--n-layer/--n-head/--n-embd): the WC model "
                f"must be the cheaper one")
    default_dir = "runs/study-quick" if study.quick else "runs/study"
    study.study_dir = Path(study.study_dir or default_dir)
    return study, args


def model_sizes(args, study):
    """{se, wc, student: parameters}, from the models' settings (no model is warm-started)."""
    tok = get_tokenizer()
    return {name: GPT(warmstart.model_config(a, tok)).num_params()
            for name, a in model_args(args, study).items()}


def check_study_dir(out, study, args):
    """One set of settings per study directory: a rerun with other settings is refused."""
    config = dict(study={k: str(v) for k, v in vars(study).items()},
                  run={k: str(v) for k, v in vars(args).items() if k not in ("device", "threads")})
    saved = out / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != config:
        raise SystemExit(f"{out} holds a study made with other settings; pass another --study-dir "
                         f"or remove it")
    write_atomic(saved, json.dumps(config, indent=1))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    study, args = parse(argv)
    t0, out, tok = time.time(), study.study_dir, get_tokenizer()
    device = setup_device(args)
    check_study_dir(out, study, args)
    params = model_sizes(args, study)
    ratio, s_se = params["se"] / params["wc"], study.s_se
    s_wc = compute_matched_samples(params["se"], params["wc"], s_se)
    # data set -> (the model that sampled it, samples per problem)
    sets = dict(se=("se", s_se), wc_compute=("wc", s_wc), wc_number=("wc", s_se),
                wc_sized=("wc", s_wc))
    jobs = [(w, f, setup, source, seed) for w in WORLDS for f in FILTERS for setup in SETUPS
            for source in sets for seed in range(study.seeds)]
    sitting = Sitting(study, args, tok, device, unit_names(jobs))

    bases = {world: {name: sitting.unit(f"base-{world}-{name}", [role(world, name)],
                                        functools.partial(sitting.base_evaluation, world, name))
                     for name in MODELS} for world in WORLDS}
    t_models = time.time() - t0
    problems = study_problems(args, study)
    planned_tokens = float(np.mean([len(worked_solution(p.expr)) + 1 for p in problems]))  # + EOS
    print(f"params: SE {params['se']:,}, WC {params['wc']:,}; P_SE/P_WC = {ratio:.2f}; "
          f"S_SE = {s_se}, S_WC = {s_wc}; {len(problems)} fresh {RL_LEVEL} problems")

    samples = {}
    for world in WORLDS:
        samples[world] = {}
        for name, s in (("se", s_se), ("wc", s_wc)):
            seed = int(np.random.default_rng([study.sample_seed, STREAMS[name]]).integers(2**40))

            def draw(world=world, name=name, s=s, seed=seed):
                model = sitting.model(world, name)[0]
                return sample_solutions(model, tok, problems, s, args.max_new_tokens, seed)

            samples[world][name] = sitting.unit(f"samples-{world}-{name}", [role(world, name)],
                                                draw, out / f"samples-{world}-{name}.json")
    t_sampling = time.time() - t0 - t_models

    quality = {world: {d: data_quality(problems, samples[world][m], params[m], k, planned_tokens)
                       for d, (m, k) in sets.items() if d != "wc_sized"} for world in WORLDS}
    runs = {}
    for i, (world, data_filter, setup, source, seed) in enumerate(jobs):

        def make(world=world, data_filter=data_filter, setup=setup, source=source, seed=seed):
            base = sitting.model(world, SETUPS[setup])[0]
            kept = source_data(problems, samples[world], sets, source, data_filter)
            t = time.time()
            model, losses = finetune(base, tok, kept, study, seed)
            ev = evaluation.evaluate_all(model, tok, args, full=False)
            return dict(kept=len(kept), final_loss=float(losses[-1]) if losses else None,
                        seconds=time.time() - t, eval=ev)

        name = finetune_name(jobs[i])
        used = [role(world, m) for m in (SETUPS[setup], *samplers(source, sets))]
        runs[jobs[i]] = r = sitting.unit(name, used, make, out / "finetune" / f"{name}.json")
        print(f"[study {i + 1}/{len(jobs)}] {world}, {data_filter} data, {setup} on {source}, seed "
              f"{seed}: {RL_LEVEL} acc {r['eval'][RL_LEVEL]['acc']:.3f}")
    check_one_base_per_role(sitting.records)  # every unit is recorded now: pooled only if one base

    rows = []
    for world, data_filter, setup, source in dict.fromkeys(j[:4] for j in jobs):
        done = [runs[(world, data_filter, setup, source, s)] for s in range(study.seeds)]
        accuracies = [r["eval"][RL_LEVEL]["acc"] for r in done]
        rows.append(dict(world=world, filter=data_filter, setup=setup, model=SETUPS[setup],
                         source=source, kept=done[0]["kept"], acc_seeds=accuracies,
                         acc=mean_ci95(accuracies),
                         ood_acc=mean_ci95([r["eval"][OOD_LEVEL]["acc"] for r in done])))
    curves = {}
    for world in WORLDS:
        curves[world] = {}
        for m, k_max in (("se", s_se), ("wc", s_wc)):
            texts, tokens = samples[world][m]["texts"], samples[world][m]["tokens"]
            ks = range(1, k_max + 1)
            curves[world][m] = dict(
                coverage=[coverage_at_k(problems, texts, k) for k in ks],
                flops=[sampling_flops(params[m], sum(sum(t[:k]) for t in tokens)) for k in ks])
    verdicts = {"equal compute": verdict_tests(rows, "wc_compute"),
                "equal size": verdict_tests(rows, "wc_sized")}
    table = (f"P_SE / P_WC = {params['se']:,} / {params['wc']:,} = {ratio:.2f}; S_SE = {s_se}, "
             f"S_WC = {s_wc}; {len(problems)} problems. kept = answer-correct samples, sorted by "
             f"the step checker into sound, wrong (reasoning) and bare (no reasoning shown); "
             f"FPR = wrong / (sound + wrong); fine-tuned accuracies: mean ± 95% interval over "
             f"{study.seeds} seeds. wc_sized: WC's compute-matched data cut to as many examples as "
             f"SE's (seen as often). Verdicts: Welch's test over the seeds, Holm over each family "
             f"of twelve\n\n" + study_markdown(quality, rows, bases, params, verdicts))
    seconds = time.time() - t0
    finetune_seconds = sum(r["seconds"] for r in runs.values())
    write_atomic(out / "results.md", table)
    write_atomic(out / "results.json", json.dumps(dict(
        command="python experiments/study.py " + " ".join(argv), seconds=seconds, params=params,
        times=dict(models=t_models, sampling=t_sampling, finetunes=finetune_seconds),
        ratio=ratio, s_se=s_se, s_wc=s_wc, n_problems=len(problems),
        planned_tokens_per_sample=planned_tokens, data=quality, curves=curves, bases=bases,
        rows=rows, verdicts={family: {", ".join(condition): test for condition, test in t.items()}
                             for family, t in verdicts.items()}), indent=1))
    plot_study(curves, rows, out / "study.png")
    print(table + f"\nstudy: {seconds:.0f}s; results in {out}")
    return rows


if __name__ == "__main__":
    main()
