"""experiments/study.py, the compute-matched sampling study: FLOPs accounting, the data-quality
metrics, the problem set that no model trained on, fine-tuning, and the whole command
(its --quick form) on tiny models.

The records of the study's units (in a folder of each test's own: NANORGRA_RECORDS) are tested on a
smaller study, one world and one filter (29 units), run once for the module.

The hand-made sample sets use one problem, 2*3+4-1 = 9, which has two sound worked solutions: the
canonical one (2*3, then 6+4, then 10-1) and one that computes 4-1 before the addition, which
precedence also allows."""

import json
import math
import shutil
import zlib

import numpy as np
import pytest
import torch

import bases
import data.tasks as tasks
import evaluation
import nanorgra
import warmstart
from data.tasks import Problem, evaluate, worked_solution
from data.tokenizer import get_tokenizer
from experiments import study
from model import GPT, GPTConfig
from verifier import false_positive_rate, no_reasoning_share

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32",
        "--wc-n-layer", "1", "--wc-n-head", "2", "--wc-n-embd", "16",
        "--skill-steps", "3", "--habit-steps", "2", "--warm-batch", "8",
        "--problems", "4", "--s-se", "2", "--ft-steps", "2", "--ft-batch", "4",
        "--eval-n", "4", "--pass-n", "2", "--pass-k", "2", "--max-new-tokens", "24",
        "--seeds", "2", "--device", "cpu"]


def problem(expr):
    return Problem(expr=expr, answer=evaluate(expr), level="mix3")


P1, P2 = problem("2*3+4-1"), problem("5-2+1")
CANONICAL = "2*3=6\n6+4=10\n10-1=9\nA:9"
OTHER_ORDER = "2*3=6\n4-1=3\n6+3=9\nA:9"  # also sound: precedence lets 4-1 go before 6+4
WRONG_STEP = "2*3=5\n5+4=10\n10-1=9\nA:9"  # a right answer from a false first step: false positive
WRONG_ANSWER = "2*3=6\n6+4=10\n10-1=8\nA:8"
PROBLEMS = [P1, P2]
# P1: 4 answer-correct, 3 distinct of them; P2: never right
SAMPLES = [[WRONG_ANSWER, CANONICAL, CANONICAL, OTHER_ORDER, WRONG_STEP],
           ["A:3", "5-2=3\n3+1=5\nA:5", "A:5", "A:5", "A:5"]]  # P2 = 4: never right


@pytest.fixture(autouse=True)
def own_records(tmp_path, monkeypatch):
    """Each test's records in a folder of its own: a study directory of the same name in another
    test must not find them."""
    monkeypatch.setenv("NANORGRA_RECORDS", str(tmp_path / "records"))


def stand_in_reward(text, p, *a, **k):
    """A stand-in verifier that passes some samples of an untrained model, so that fine-tunes have
    data."""
    return float(zlib.crc32(text.encode()) % 3 == 0)


def study_argv(tmp_path, *extra):
    dirs = ["--study-dir", str(tmp_path / "study"), "--base-dir", str(tmp_path / "bases")]
    return ["--quick", *TINY, *dirs, *extra]


def run_args(*flags):
    return nanorgra.parse_args(list(flags))


# -----------------------------------------------------------------------------
# FLOPs accounting


def test_s_wc_is_the_parameter_ratio_times_s_se():
    assert study.compute_matched_samples(p_se=3000, p_wc=1000, s_se=4) == 12
    assert study.compute_matched_samples(p_se=1000, p_wc=1000, s_se=4) == 4


def test_s_wc_of_a_non_integer_ratio_is_rounded_down_never_over_the_se_budget():
    assert study.compute_matched_samples(p_se=3400, p_wc=1000, s_se=4) == 13  # 13.6
    # 2.999: no float rounding up to 3
    assert study.compute_matched_samples(p_se=2999, p_wc=1000, s_se=1) == 2
    p_se, p_wc, s_se = 807_936, 236_640, 4  # the default SE and WC sizes
    s_wc = study.compute_matched_samples(p_se, p_wc, s_se)
    assert p_wc * s_wc <= p_se * s_se < p_wc * (s_wc + 1)


def test_sampling_flops_are_two_times_params_times_generated_tokens():
    assert study.sampling_flops(1000, 50) == 100_000


def test_compute_matched_budgets_plan_equal_flops_and_number_matched_ones_do_not():
    p_se, p_wc, s_se = 3 * 236_640, 236_640, 4
    s_wc = study.compute_matched_samples(p_se, p_wc, s_se)

    def planned(params, samples):
        return study.sampling_flops(params, 500 * samples * 27.5)

    assert planned(p_wc, s_wc) == pytest.approx(planned(p_se, s_se))
    assert planned(p_wc, s_se) == pytest.approx(planned(p_se, s_se) / 3)


# -----------------------------------------------------------------------------
# Data quality on hand-made samples


def test_hand_made_solutions_are_what_their_names_say():
    from verifier import is_false_positive
    judged = [is_false_positive(t, P1) for t in (CANONICAL, OTHER_ORDER, WRONG_STEP)]
    assert judged == [False, False, True]
    assert not study.is_correct(WRONG_ANSWER, P1) and study.is_correct(WRONG_STEP, P1)


def test_coverage_at_k_counts_problems_with_a_right_answer_among_the_first_k():
    assert study.coverage_at_k(PROBLEMS, SAMPLES, 1) == 0.0  # P1's first sample is wrong
    assert study.coverage_at_k(PROBLEMS, SAMPLES, 2) == 0.5
    assert study.coverage_at_k(PROBLEMS, SAMPLES, 5) == 0.5  # P2 is never solved


def test_diversity_at_k_counts_a_duplicate_correct_solution_once():
    assert study.diversity_at_k(PROBLEMS, SAMPLES, 3) == 0.5  # P1: CANONICAL twice is 1; P2: 0
    assert study.diversity_at_k(PROBLEMS, SAMPLES, 4) == 1.0  # + OTHER_ORDER
    assert study.diversity_at_k(PROBLEMS, SAMPLES, 5) == 1.5  # + WRONG_STEP: right, and distinct


def test_filter_keeps_answer_correct_solutions_with_duplicates_and_false_positives():
    kept = study.keep_answer_correct(PROBLEMS, SAMPLES)
    assert kept == [(P1, CANONICAL), (P1, CANONICAL), (P1, OTHER_ORDER), (P1, WRONG_STEP)]


def fpr_of(problems, samples):
    return false_positive_rate(study.reasoning_of_kept(problems, samples))


def test_false_positive_rate_is_the_share_of_kept_solutions_with_wrong_reasoning():
    assert fpr_of(PROBLEMS, SAMPLES) == 0.25
    assert fpr_of(PROBLEMS, [[CANONICAL, OTHER_ORDER], []]) == 0.0
    assert math.isnan(fpr_of([P2], [["A:3"]]))  # nothing kept: no rate


def test_bare_answers_are_counted_apart_from_the_false_positives():
    """A bare right answer shows no reasoning: it is neither sound nor wrong reasoning."""
    samples = [[CANONICAL, "A:9", "A:9", WRONG_STEP], []]
    counts = study.reasoning_of_kept(PROBLEMS, samples)
    assert (counts["sound"], counts["wrong reasoning"], counts["no reasoning"]) == (1, 1, 2)
    assert false_positive_rate(counts) == 0.5 and no_reasoning_share(counts) == 0.5


def test_the_sound_filter_keeps_only_true_steps_in_an_allowed_order():
    shortcut = "2*3+4=10\n10-1=9\nA:9"  # two operations at once, in an order precedence allows
    samples = [[CANONICAL, OTHER_ORDER, WRONG_STEP, "A:9", shortcut, WRONG_ANSWER], []]
    sound = [(P1, CANONICAL), (P1, OTHER_ORDER), (P1, shortcut)]
    assert study.keep_sound(PROBLEMS, samples) == sound
    assert len(study.kept_data(PROBLEMS, samples, "answer-correct")) == 5


def test_data_quality_reads_the_first_k_samples_and_their_tokens():
    tokens = [[10, 20, 30, 40, 50], [1, 2, 3, 4, 5]]
    samples = dict(texts=SAMPLES, tokens=tokens)
    q = study.data_quality(PROBLEMS, samples, n_params=100, k=2, planned_tokens=5)
    assert (q["samples"], q["kept"], q["coverage"], q["diversity"]) == (4, 1, 0.5, 0.5)
    assert q["fpr"] == 0.0
    assert (q["sound"], q["wrong"], q["bare"], q["bare_share"]) == (1, 0, 0, 0.0)
    assert (q["tokens"], q["flops"], q["planned_flops"]) == (33, 2 * 100 * 33, 2 * 100 * 2 * 2 * 5)


# -----------------------------------------------------------------------------
# The problems: fresh, never trained on


def test_the_warm_starts_draws_are_replayed_by_its_own_stage_pairs_and_all_kept_apart(
        tmp_path, monkeypatch):
    """What every step of a warm start packed, in order: warmstart.stage_pairs draws the same
    pairs (the same problems, styles and order), and warm_start_exprs holds every problem."""
    args = run_args(*TINY[:6], "--skill-steps", "4", "--habit-steps", "3", "--warm-batch", "16",
                    "--base-seed", "3", "--base-dir", str(tmp_path))
    args.student_base_seed = 3  # one warm start here, so both seeds are the same one
    packed = []  # per step: (expression, text) of each example
    real_pack = warmstart.packed_examples

    def recording_pack(tok, problems, texts, *rest):
        packed.append([(p.expr, t) for p, t in zip(problems, texts)])
        return real_pack(tok, problems, texts, *rest)

    monkeypatch.setattr(warmstart, "packed_examples", recording_pack)
    warmstart.warm_start(args, get_tokenizer(), torch.device("cpu"), log=lambda *a: None)
    replayed = [[(p.expr, tasks.STYLES[style](p.expr))
                 for p, style in warmstart.stage_pairs(stage, step, 3, 16)]
                for stage in warmstart.warm_stages(args) for step in range(stage.steps)]
    assert len(packed) == 4 + 3 and packed == replayed
    trained = {expr for step in packed for expr, _ in step}
    assert len(trained) > 16 and study.warm_start_exprs(args) == trained


def test_study_problems_avoid_every_test_set_and_every_warm_start_draw(monkeypatch):
    args = run_args("--skill-steps", "50", "--habit-steps", "20", "--warm-batch", "64")
    args.student_base_seed = 7
    settings = study.parse(["--problems", "300"])[0]
    excluded = []
    real_sample = study.sample_problems
    def recording_sample(*a, exclude, **k):
        excluded.append(exclude)
        return real_sample(*a, exclude=exclude, **k)

    monkeypatch.setattr(study, "sample_problems", recording_sample)
    problems = study.study_problems(args, settings)
    never = tasks.test_exprs() | study.warm_start_exprs(args)
    assert never <= excluded[0]  # the draw was told to skip them all ...
    exprs = {p.expr for p in problems}
    assert len(exprs) == 300 and not exprs & never  # ... and none came back; all distinct
    assert {p.level for p in problems} == {tasks.RL_LEVEL}
    assert study.study_problems(args, settings) == problems  # the same seed, the same problems


def test_sampling_is_fixed_by_the_seed_and_does_not_depend_on_the_chunking(monkeypatch):
    tok = get_tokenizer()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32))
    problems = tasks.sample_problems("mix3", 5, np.random.default_rng(0))
    def draw(seed):
        return study.sample_solutions(model, tok, problems, 3, 12, seed)

    a = draw(0)
    assert [len(t) for t in a["texts"]] == [3] * 5
    assert all(1 <= n <= 12 for t in a["tokens"] for n in t)
    monkeypatch.setattr(evaluation, "SAMPLE_ROWS", 6)  # 2 problems of 3 samples a call
    assert draw(0) == a
    assert draw(1) != a


# -----------------------------------------------------------------------------
# Fine-tuning


def test_finetune_order_passes_over_every_example_in_a_seeded_order():
    order = study.finetune_order(n_examples=10, steps=5, batch=4, seed=0)
    assert order.shape == (5, 4)
    assert sorted(order.flatten()[:10]) == list(range(10))  # the first pass: every example once
    assert (order == study.finetune_order(10, 5, 4, seed=0)).all()
    assert not (order == study.finetune_order(10, 5, 4, seed=1)).all()


def test_finetune_lowers_the_loss_on_its_data_and_leaves_the_base_untouched():
    tok = get_tokenizer()
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    problems = tasks.sample_problems("mix3", 8, np.random.default_rng(0))
    kept = [(p, worked_solution(p.expr)) for p in problems]
    settings = study.parse(["--ft-steps", "20", "--ft-batch", "8", "--ft-lr", "1e-2"])[0]
    tuned, losses = study.finetune(base, tok, kept, settings, seed=0)
    assert len(losses) == 20 and losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    untouched, none = study.finetune(base, tok, [], settings, seed=0)
    assert none == [] and all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


# -----------------------------------------------------------------------------
# The command


def test_tiny_quick_study_writes_results_and_a_rerun_resumes_without_redoing_anything(tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setattr(study, "outcome_reward", stand_in_reward)
    study.main(study_argv(tmp_path))
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    assert {"command", "seconds", "params", "ratio", "s_se", "s_wc", "n_problems", "data", "curves",
            "bases", "rows", "verdicts"} <= set(results)
    assert results["command"].startswith("python experiments/study.py --quick")
    params = results["params"]
    assert params["wc"] == params["student"] < params["se"]
    assert results["s_wc"] == study.compute_matched_samples(params["se"], params["wc"], 2)
    assert set(results["data"]) == set(study.WORLDS)
    for world in study.WORLDS:
        data, curves = results["data"][world], results["curves"][world]
        assert set(data) == {"se", "wc_compute", "wc_number"}
        assert (data["wc_compute"]["k"], data["wc_number"]["k"]) == (results["s_wc"], 2)
        assert [len(curves[m]["coverage"]) for m in ("se", "wc")] == [2, results["s_wc"]]
        assert curves["se"]["flops"][-1] == data["se"]["flops"]  # the x: FLOPs spent, not samples
        assert all(a < b for m in ("se", "wc") for a, b in zip(curves[m]["flops"],
                                                                 curves[m]["flops"][1:]))
    rows = {(r["world"], r["filter"], r["setup"], r["source"]): r for r in results["rows"]}
    assert set(rows) == {(w, f, s, d) for w in study.WORLDS for f in study.FILTERS
                         for s in study.SETUPS for d in study.SOURCES}
    assert all(len(r["acc"]) == 2 and len(r["ood_acc"]) == 2 for r in rows.values())  # mean, 95%
    assert all(len(r["acc_seeds"]) == 2 for r in rows.values())  # one accuracy per seed
    for key, row in rows.items():  # the control: WC's data cut to SE's size
        if key[3] == "wc_sized":
            assert row["kept"] == min(rows[key[:3] + ("se",)]["kept"],
                                      rows[key[:3] + ("wc_compute",)]["kept"])
    assert set(results["verdicts"]) == {"equal compute", "equal size"}
    for family in results["verdicts"].values():
        assert len(family) == 12
        assert {t["verdict"] for t in family.values()} <= {"WC better", "SE better",
                                                            "not separable"}
    runs = [json.loads(p.read_text()) for p in (out / "finetune").glob("*.json")]
    assert len(runs) == 2 * 2 * 3 * 4 * 2  # worlds x filters x setups x data sets x seeds
    assert any(r["kept"] > 0 and r["final_loss"] is not None for r in runs)
    table = (out / "results.md").read_text()
    assert "coverage@S" in table and "weak_to_strong" in table and (out / "study.png").exists()
    assert "equal size" in table and "equal compute" in table

    calls = []
    monkeypatch.setattr(study, "finetune", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(study, "sample_solutions", lambda *a, **k: calls.append(a))
    study.main(study_argv(tmp_path))
    assert calls == []  # samples and every fine-tune were read back from their records
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]


def test_study_directory_refuses_a_rerun_with_other_settings(tmp_path):
    study.main(study_argv(tmp_path))
    with pytest.raises(SystemExit) as e:
        study.main(study_argv(tmp_path, "--ft-lr", "0.5"))
    assert "other settings" in str(e.value) and "--study-dir" in str(e.value)


def test_quick_study_takes_the_quick_settings_unless_a_flag_overrides_them():
    settings, args = study.parse(["--quick", "--ft-steps", "5"])
    got = (str(settings.study_dir), settings.problems, args.eval_n, settings.ft_steps)
    assert got == ("runs/study-quick", 500, 200, 5)


@pytest.mark.parametrize("flags,name", [
    (["--s-se", "0"], "--s-se"),
    (["--problems", "0"], "--problems"),
    (["--ft-lr", "0"], "--ft-lr"),
    (["--seeds", "0"], "--seeds"),
    (["--wc-n-embd", "30", "--wc-n-head", "4"], "--wc-n-embd"),
    (["--wc-n-layer", "2", "--wc-n-embd", "64"], "--wc-n-layer"),  # WC bigger than the tiny SE
    (["--student-base-seed", "0"], "--student-base-seed"),  # the student would be the WC model
    (["--lr", "inf"], "--lr"),  # nanorgra's own flags are checked too
])
def test_bad_study_flags_stop_at_start_up_naming_the_flag(tmp_path, capsys, flags, name):
    with pytest.raises(SystemExit) as e:
        study.main(study_argv(tmp_path, *flags))
    assert e.value.code == 2  # argparse's usage error
    assert name in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "study").exists() and not (tmp_path / "bases").exists()


def test_a_verdict_is_separable_only_after_holm_over_its_family():
    rows = []
    for world in study.WORLDS:
        for data_filter in study.FILTERS:
            for setup in study.SETUPS:
                se = [0.30, 0.31, 0.32]
                wc = [0.50, 0.51, 0.52] if (world, setup) == ("habits", "distillation") else se
                rows += [dict(world=world, filter=data_filter, setup=setup, source="se",
                              acc_seeds=se),
                         dict(world=world, filter=data_filter, setup=setup, source="wc_compute",
                              acc_seeds=wc)]
    tests = study.verdict_tests(rows, "wc_compute")
    assert len(tests) == 12
    clear = tests["habits", "sound", "distillation"]
    assert clear["verdict"] == "WC better" and clear["p_adjusted"] == pytest.approx(
        min(1.0, 12 * clear["p"]))
    assert tests["skills", "sound", "distillation"]["verdict"] == "not separable"


# -----------------------------------------------------------------------------
# The records: a later sitting, without the study directory, goes on where the last one stopped


def shrink(patch):
    """One world and one filter (3 evaluations, 2 samplings, 24 fine-tunes), the stand-in
    verifier."""
    patch.setattr(study, "WORLDS", ("habits",))
    patch.setattr(study, "FILTERS", ("answer-correct",))
    patch.setattr(study, "outcome_reward", stand_in_reward)


def report(out):
    """What a study wrote, but for its command and times: its results and its table."""
    results = json.loads((out / "results.json").read_text())
    for key in ("command", "seconds", "times"):
        del results[key]
    return results, (out / "results.md").read_text()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A small study run once, uninterrupted: the folder of its records, and its report."""
    root = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as patch:
        shrink(patch)
        patch.setenv("NANORGRA_RECORDS", str(root / "records"))
        study.main(study_argv(root))
    return root, report(root / "study")


@pytest.fixture
def small(monkeypatch):
    shrink(monkeypatch)


class Stopped(Exception):
    """A sitting stopped in the middle (by a Ctrl-C, the machine going away, ...)."""


def counted(monkeypatch, module, name, calls, stop_after=None):
    """module.name, counting its calls in calls[name] (Stopped at call stop_after + 1)."""
    real = getattr(module, name)

    def counting(*a, **k):
        if len(calls.setdefault(name, [])) == stop_after:
            raise Stopped
        calls[name].append(a)
        return real(*a, **k)

    monkeypatch.setattr(module, name, counting)


def records_of(tmp_path, recorded):
    """A copy of the recorded study's records, as this test's records folder."""
    shutil.copytree(recorded[0] / "records", tmp_path / "records")
    return {p.stem: p for p in (tmp_path / "records" / "study").glob("*.json")}


def edit(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_recorded_units_carry_their_bases_fingerprints_and_are_skipped_in_a_new_sitting(
        tmp_path, monkeypatch, small, recorded):
    records = records_of(tmp_path, recorded)
    assert len(records) == 3 + 2 + 3 * 4 * 2  # evaluations, samplings, fine-tunes
    tuned = json.loads(records["habits-answer-correct-distillation-wc_sized-seed1"].read_text())
    used = tuned["provenance"]["bases"]
    assert set(used) == {"habits student", "habits wc", "habits se"}  # tuned, and the samplers
    assert len(set(used.values())) == 3 and tuned["provenance"]["seconds"] >= 0  # not None
    assert {"commit", "cpu", "threads", "torch"} <= set(tuned["provenance"])
    assert tuned["value"]["eval"] and tuned["settings"]["study_seeds"] == 2
    settings, args = study.parse(study_argv(recorded[0]))  # with the recorded sitting's bases
    wc_args = study.model_args(args, settings)["wc"]
    _, wc_path = warmstart.warm_start(wc_args, get_tokenizer(), torch.device("cpu"),
                                      log=lambda *a: None)
    assert used["habits wc"] == study.weights_fingerprint(wc_path)  # the weights' hash
    samples = json.loads(records["samples-habits-wc"].read_text())
    assert samples["provenance"]["bases"] == {"habits wc": used["habits wc"]}

    calls = {}
    for module, name in ((warmstart, "warm_start"), (evaluation, "base_evaluation"),
                         (study, "sample_solutions"), (study, "finetune")):
        counted(monkeypatch, module, name, calls)
    study.main(study_argv(tmp_path / "fresh clone"))  # no study directory, no bases
    assert calls == {}  # every unit read back from its record: nothing trained, sampled or tuned
    assert report(tmp_path / "fresh clone" / "study") == recorded[1]


def test_a_sitting_interrupted_and_resumed_without_its_study_directory_gives_the_same_report(
        tmp_path, monkeypatch, small, recorded):
    calls, real_finetune = {}, study.finetune
    counted(monkeypatch, study, "finetune", calls, stop_after=5)
    with pytest.raises(Stopped):
        study.main(study_argv(tmp_path / "first"))
    recorded_here = list((tmp_path / "records" / "study").glob("*.json"))
    assert len(recorded_here) == 3 + 2 + 5

    calls = {}
    monkeypatch.setattr(study, "finetune", real_finetune)
    counted(monkeypatch, study, "finetune", calls)
    counted(monkeypatch, study, "sample_solutions", calls)
    study.main(study_argv(tmp_path / "second"))  # a fresh clone: the records only
    assert len(calls["finetune"]) == 24 - 5 and "sample_solutions" not in calls
    assert report(tmp_path / "second" / "study") == recorded[1]  # as if never interrupted


def test_units_on_two_bases_of_one_role_are_refused_naming_the_units_to_redo(
        tmp_path, monkeypatch, small, recorded):
    records = records_of(tmp_path, recorded)
    other = "habits-answer-correct-self_improvement-se-seed1"  # WC tuned on SE's samples

    def other_wc(record):
        record["provenance"]["bases"]["habits wc"] = "0123456789abcdef"
        record["provenance"]["cpu"] = "another CPU"

    edit(records[other], other_wc)  # as if tuned from a WC trained on another machine
    calls = {}
    counted(monkeypatch, warmstart, "warm_start", calls)
    with pytest.raises(SystemExit) as e:
        study.main(study_argv(tmp_path))
    message = str(e.value)
    assert f"{other} (habits wc, on another CPU)" in message and "delete their records" in message
    assert "seed0" not in message and "samples-habits-wc" not in message  # the others pool
    assert calls == {}  # refused before any work


def test_a_base_of_this_machine_unlike_the_recorded_one_is_refused_before_it_is_used(
        tmp_path, monkeypatch, small, recorded):
    """The WC warm-started here is not the WC the records used (as on another kind of CPU): the
    sitting stops, naming the recorded units that used that WC."""
    records = records_of(tmp_path, recorded)
    uses_wc = []
    for name, path in records.items():
        if "habits wc" in json.loads(path.read_text())["provenance"]["bases"]:
            uses_wc.append(name)
            edit(path, lambda r: r["provenance"]["bases"].update({"habits wc": "0123456789abcdef"}))
    left = "habits-answer-correct-self_improvement-se-seed0"
    records[left].unlink()  # the unit still to do: it fine-tunes WC
    calls = {}
    counted(monkeypatch, study, "finetune", calls)
    with pytest.raises(SystemExit) as e:
        study.main(study_argv(tmp_path))
    message = str(e.value)
    assert "habits wc" in message and "0123456789abcdef" in message
    named = message.rsplit(": ", 1)[1].split(", ")
    assert sorted(named) == sorted(n for n in uses_wc if n != left)
    assert "habits-answer-correct-distillation-se-seed0" not in named  # it used no WC
    assert calls == {}  # no unit was tuned on the other WC


def test_records_made_with_other_settings_are_refused(tmp_path, small, recorded):
    records_of(tmp_path, recorded)
    with pytest.raises(SystemExit) as e:
        study.main(study_argv(tmp_path, "--ft-lr", "0.5"))  # no study directory: the records
    assert "other settings (study_ft_lr)" in str(e.value)


@pytest.mark.parametrize("world", study.WORLDS)
def test_the_full_studys_bases_are_shipped_with_the_weights_its_records_used(world):
    """Every model of the full study is found in bases/ (so no machine trains its own, and a
    sitting on another kind of CPU continues the same study), and its weights are those the
    committed records of data/records/study name for its role."""
    settings, args = study.parse([])
    records = bases.REPO / "data" / "records" / "study"  # the committed ones, not a test's
    for name, model_args in study.model_args(args, settings, world).items():
        *_, file_name = warmstart.stage_keys(model_args, get_tokenizer())[-1]
        shipped = bases.SHIPPED_DIR / file_name
        assert shipped.exists(), f"bases/ has no {file_name}: the study's {world} {name}"
        sidecar = json.loads(shipped.with_suffix(".json").read_text())
        assert sidecar["sha256"] == bases.file_sha256(shipped)
        evaluated = json.loads((records / f"base-{world}-{name}.json").read_text())
        used = evaluated["provenance"]["bases"][study.role(world, name)]
        assert bases.weights_fingerprint(shipped) == used
