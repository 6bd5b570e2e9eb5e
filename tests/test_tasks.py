"""The arithmetic tasks: parsing, worked solutions, deterministic sampling, frozen test sets."""
import json
from collections import Counter

import numpy as np
import pytest

# The module, not its names: pytest would collect an imported `test_exprs` as a test.
import data.tasks as tasks
import verifier
from data.tasks import Level, Problem, evaluate, parse_expression, worked_solution


def rng(seed=0):
    return np.random.default_rng(seed)


def generated(level, n=200, seed=0):
    return tasks.sample_problems(level, n, rng(seed))


# ----------------------------------------------------------------------------
# Expressions


def test_parse_expression_splits_numbers_and_operators():
    assert parse_expression("47*8+15") == ([47, 8, 15], ["*", "+"])
    assert parse_expression("0-0") == ([0, 0], ["-"])


@pytest.mark.parametrize(
    "bad", ["", "1+", "+1", "1++2", "-1+2", "1+-2", "01+2", "1+02", "1/2", "1 + 2", "1+2\n",
            "(1+2)", "١+2", "A:3"]
)
def test_parse_expression_rejects_malformed_expressions_naming_them(bad):
    with pytest.raises(ValueError, match="malformed expression"):
        parse_expression(bad)


def test_parse_expression_rejects_non_strings():
    with pytest.raises(ValueError):
        parse_expression(12)


def test_multiplication_binds_tighter_and_minus_is_left_associative():
    assert evaluate("2+3*4") == 14
    assert evaluate("10-2-3") == 5
    assert evaluate("10-2+3") == 11
    assert evaluate("2*3*4-5*6") == -6


@pytest.mark.parametrize("name", list(tasks.LEVELS))
def test_evaluate_agrees_with_python_on_generated_expressions(name):
    for problem in generated(name, n=300):
        assert evaluate(problem.expr) == eval(problem.expr) == problem.answer


# ----------------------------------------------------------------------------
# Worked solutions and text formats


def test_worked_solution_does_multiplications_first_then_left_to_right():
    assert worked_solution("12+3*4-5") == "3*4=12\n12+12=24\n24-5=19\nA:19"
    assert worked_solution("2*3-4*5") == "2*3=6\n4*5=20\n6-20=-14\nA:-14"


def test_worked_solution_carries_negative_intermediate_results():
    assert worked_solution("3-8+4") == "3-8=-5\n-5+4=-1\nA:-1"


def test_worked_solution_of_one_operation_is_one_step_and_the_answer():
    assert worked_solution("47-8") == "47-8=39\nA:39"


@pytest.mark.parametrize("name", list(tasks.LEVELS))
def test_worked_solutions_pass_the_step_checker_at_every_level(name):
    for problem in generated(name, n=300, seed=1):
        text = worked_solution(problem.expr)
        check = verifier.check_steps(text, problem.expr)
        assert check.steps_true and check.computes_expr, (problem, check)
        assert check.n_steps == len(parse_expression(problem.expr)[1])
        assert verifier.outcome_reward(text, problem) == 1.0
        assert not verifier.is_false_positive(text, problem)


def test_prompt_and_completion_formats():
    problem = Problem(expr="12+3*4-5", answer=19, level="mix3")
    assert tasks.prompt_text(problem) == "Q:12+3*4-5\n"
    assert tasks.STYLES["careful"](problem.expr) == worked_solution("12+3*4-5")


# ----------------------------------------------------------------------------
# Levels


def test_levels_run_from_easy_to_hard_and_name_themselves():
    assert all(level.name == name for name, level in tasks.LEVELS.items())
    roles = {tasks.RL_LEVEL, tasks.OOD_LEVEL, tasks.ATOM_LEVEL}
    named = set(tasks.SKILLS) | set(tasks.HABITS) | roles
    assert named <= set(tasks.LEVELS)
    max_ops = [level.n_ops[1] for level in tasks.LEVELS.values()]
    assert max_ops == sorted(max_ops)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(n_digits=0), "n_digits"),
        (dict(n_digits=-1), "n_digits"),
        (dict(n_digits=19), "n_digits"),
        (dict(n_ops=(0, 2)), "min must be >= 1"),
        (dict(n_ops=(-2, -1)), "min must be >= 1"),
        (dict(n_ops=(3, 2)), "max must be >= min"),
        (dict(n_ops=(1, 2, 3)), "n_ops"),
        (dict(n_ops=[1, 2]), "n_ops"),
        (dict(operators="+/"), "unknown operator '/'"),
        (dict(operators=""), "non-empty"),
        (dict(operators="++"), "must not repeat"),
        (dict(mul_digits=0), "mul_digits"),
        (dict(mul_digits=3), "mul_digits"),
        (dict(name=""), "name"),
        (dict(needs_precedence=True, operators="+-"), "needs_precedence"),
        (dict(needs_precedence=True, n_ops=(1, 2)), "needs_precedence"),
        (dict(steps_of="bad"), "steps_of must name another level"),
        (dict(steps_of=""), "steps_of must name another level"),
        (dict(steps_of="mix3"), "a level of steps has n_ops"),
    ],
)
def test_invalid_level_parameters_raise_value_error_with_the_reason(kwargs, reason):
    fields = dict(name="bad", n_ops=(1, 2), n_digits=2, operators="+-*", mul_digits=1) | kwargs
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        Level(**fields)


def test_unknown_level_name_raises_value_error_listing_the_levels():
    with pytest.raises(ValueError, match="mix2"):
        tasks.make_problem("nope", rng())


# ----------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("name", list(tasks.LEVELS))
def test_same_seed_gives_the_same_problems(name):
    assert generated(name, seed=7) == generated(name, seed=7)
    assert generated(name, seed=7) != generated(name, seed=8)


@pytest.mark.parametrize("name", [name for name, level in tasks.LEVELS.items()
                                  if level.steps_of is None])
def test_generated_problems_respect_the_level(name):
    level = tasks.LEVELS[name]
    for problem in generated(name, n=300):
        numbers, ops = parse_expression(problem.expr)
        assert level.n_ops[0] <= len(ops) <= level.n_ops[1]
        assert set(ops) <= set(level.operators)
        for i, n in enumerate(numbers):
            multiplied = (i > 0 and ops[i - 1] == "*") or (i < len(ops) and ops[i] == "*")
            assert len(str(n)) <= (level.mul_digits if multiplied else level.n_digits)
        assert problem.level == name


def test_sample_problems_never_returns_an_excluded_expression():
    tiny = Level("tiny", n_ops=(1, 1), n_digits=1, operators="+")  # 100 expressions in all
    excluded = frozenset(f"{a}+{b}" for a in range(10) for b in range(10) if a != 3)
    problems = tasks.sample_problems(tiny, 50, rng(), exclude=excluded)
    assert {p.expr for p in problems} <= {f"3+{b}" for b in range(10)}


def test_sample_problems_fails_clearly_when_the_level_runs_out_of_problems():
    tiny = Level("tiny", n_ops=(1, 1), n_digits=1, operators="+")
    with pytest.raises(ValueError, match="too small"):
        tasks.sample_problems(tiny, 101, rng(), distinct=True)


def test_no_level_chains_products_or_goes_below_zero_and_every_rl_problem_needs_precedence():
    for name in (tasks.RL_LEVEL, tasks.OOD_LEVEL, "mix2"):
        for p in generated(name, n=500):
            assert "**" not in "".join(parse_expression(p.expr)[1])
            assert all(z >= 0 for *_, z in tasks.solution_steps(p.expr)[0])
    for p in generated(tasks.RL_LEVEL, n=500):  # a * right after a + or a -
        pattern = "".join(parse_expression(p.expr)[1])
        assert "+*" in pattern or "-*" in pattern


def test_atoms_are_single_steps_of_rl_level_solutions_drawn_with_the_stated_kind_weights():
    atoms = generated(tasks.ATOM_LEVEL, n=4000)
    kinds = [tasks.expression_kind(p.expr) for p in atoms]
    total = sum(tasks.STEP_KINDS.values())
    # 4000 * 1/9 = 444 or 4000 * 3/9 = 1333; noise about +-30
    for kind, weight in tasks.STEP_KINDS.items():
        assert abs(kinds.count(kind) - len(atoms) * weight / total) < 120, (kind, kinds.count(kind))
    # every step kind of the RL level's careful solutions is a STEP_KIND: the atoms cover them all
    rl_steps = {tasks.step_kind(x, op, y) for p in generated(tasks.RL_LEVEL, n=2000)
                for x, op, y, _ in tasks.solution_steps(p.expr)[0]}
    assert rl_steps == set(tasks.STEP_KINDS)


def rejection_step(level, kind, rng):
    """What step_table replaces: draw expressions until one has a step of kind; take one of them."""
    while True:
        steps = tasks.solution_steps(tasks.draw_expression(level, rng))[0]
        matching = [f"{x}{op}{y}" for x, op, y, _ in steps if tasks.step_kind(x, op, y) == kind]
        if matching:
            return matching[int(rng.integers(len(matching)))]


@pytest.mark.parametrize("kind", ["1-digit -", "multi-digit +"])
def test_the_step_table_gives_each_step_the_chance_rejection_sampling_gives_it(kind):
    """draw_step draws from step_table, which reads every expression once instead of rejecting
    draws: on a small level, the mean operands and result of 20,000 rejection-sampled steps fall
    within 4 standard errors of the table's exact expectation."""
    level = Level("small", n_ops=(2, 2), n_digits=1, operators="+-*", nonnegative=True)
    steps, probabilities = tasks.step_table(level)[kind]
    values = np.array([parse_expression(step)[0] + [tasks.evaluate(step)] for step in steps])
    expected = np.asarray(probabilities) @ values  # (3,): E[x], E[y], E[x op y]
    generator = rng(7)
    drawn = np.array([parse_expression(step)[0] + [tasks.evaluate(step)]
                      for step in (rejection_step(level, kind, generator) for _ in range(20_000))])
    standard_error = drawn.std(0) / np.sqrt(len(drawn))
    assert (np.abs(drawn.mean(0) - expected) < 4 * standard_error).all()


def test_a_level_too_large_to_read_every_expression_of_is_refused_naming_its_size():
    huge = Level("huge", n_ops=(5, 5), n_digits=3, operators="+-*")
    with pytest.raises(ValueError, match="huge.*more than MAX_ENUMERATED"):
        tasks.step_table(huge)


def test_a_step_kind_that_the_parent_level_never_makes_fails_clearly():
    no_mul = Level("nomul", n_ops=(2, 2), n_digits=1, operators="+-")
    steps = Level("steps", n_ops=(1, 1), n_digits=1, operators="+-*", steps_of="nomul")
    with pytest.MonkeyPatch.context() as m:
        m.setitem(tasks.LEVELS, "nomul", no_mul)
        with pytest.raises(ValueError, match="no step of kind"):
            [tasks.draw_expression(steps, rng(seed)) for seed in range(40)]


def test_apportion_gives_exact_counts_in_proportion_with_ties_to_the_earlier_name():
    assert tasks.apportion(64, {"a": 1, "b": 1, "c": 1}) == {"a": 22, "b": 21, "c": 21}
    weights = {"careful": 1, "left-to-right": 2, "bare": 1}
    assert tasks.apportion(64, weights) == {"careful": 16, "left-to-right": 32, "bare": 16}
    assert sum(tasks.apportion(101, {"x": 0.3, "y": 0.7}).values()) == 101
    with pytest.raises(ValueError, match="weights"):
        tasks.apportion(10, {"a": 0})


@pytest.mark.parametrize("corpus", ["SKILLS", "HABITS"])
def test_corpus_examples_give_every_level_and_style_in_the_stated_shares_shuffled(corpus):
    corpus, n = getattr(tasks, corpus), 64
    examples = tasks.corpus_examples(corpus, n, rng())
    counts = Counter((p.level, style) for p, style in examples)
    for level, count in tasks.apportion(n, {level: w for level, (w, _) in corpus.items()}).items():
        styles = corpus[level][1]
        assert {style: counts[(level, style)] for style in styles} == tasks.apportion(count, styles)
    assert [p.level for p, _ in examples] != sorted(p.level for p, _ in examples)


def test_the_habits_corpus_is_messy_where_the_skills_corpus_is_careful():
    assert all(styles == tasks.CAREFUL for _, styles in tasks.SKILLS.values())
    messy = [level for level, (_, styles) in tasks.HABITS.items()
             if set(styles) == set(tasks.STYLES)]
    # styles differ on multi-step problems
    assert messy and all(tasks.LEVELS[level].n_ops[1] > 1 for level in messy)


def test_corpus_examples_exclude_every_test_set():
    for corpus in (tasks.SKILLS, tasks.HABITS):
        examples = tasks.corpus_examples(corpus, 5000, rng(4))
        assert not {p.expr for p, _ in examples} & tasks.test_exprs()


def test_unknown_levels_and_styles_of_a_corpus_are_refused_by_name():
    with pytest.raises(ValueError, match="nope"):
        tasks.corpus_examples({"nope": (1, tasks.CAREFUL)}, 4, rng())
    with pytest.raises(ValueError, match="sloppy"):
        tasks.corpus_examples({"mix2": (1, {"sloppy": 1})}, 4, rng())


# ----------------------------------------------------------------------------
# Solution styles


def test_every_style_on_the_hand_example():
    assert tasks.STYLES["careful"]("12+3*4-5") == "3*4=12\n12+12=24\n24-5=19\nA:19"
    assert tasks.STYLES["left-to-right"]("12+3*4-5") == "12+3=15\n15*4=60\n60-5=55\nA:55"
    assert tasks.STYLES["shortcut"]("12+3*4-5") == "12+3*4=24\n24-5=19\nA:19"
    assert tasks.STYLES["bare"]("12+3*4-5") == "A:19"


def test_left_to_right_is_wrong_exactly_where_precedence_matters_and_its_steps_are_all_true():
    for p in generated(tasks.RL_LEVEL, n=2000, seed=2):
        text = tasks.left_to_right_solution(p.expr)
        right = verifier.outcome_reward(text, p) == 1.0
        assert right == (not tasks.precedence_matters(p.expr))
        # the facts are right; the order is the misconception
        assert verifier.check_steps(text, p.expr).steps_true
        # its text is the careful text exactly when no * follows a + or a -
        no_conflict = "*" not in p.expr.lstrip("0123456789*")
        assert (text == tasks.worked_solution(p.expr)) == no_conflict


def test_precedence_matters_on_most_of_the_rl_level():
    problems = generated(tasks.RL_LEVEL, n=2000, seed=3)
    share = sum(tasks.precedence_matters(p.expr) for p in problems) / 2000
    # every problem has a * after + or -; the rest are coincidences (x*1, 0*x, ...)
    assert 0.75 < share < 0.9


def test_shortcut_lines_are_true_sub_expressions_two_operations_at_a_time():
    for p in generated(tasks.RL_LEVEL, n=500, seed=4):
        lines = tasks.shortcut_solution(p.expr).split("\n")
        assert lines[-1] == f"A:{p.answer}"
        for line in lines[:-1]:
            expr, value = line.rsplit("=", 1)
            assert evaluate(expr) == int(value)
        assert max(len(parse_expression(line.rsplit("=", 1)[0])[1]) for line in lines[:-1]) == 2


def test_bare_is_the_right_answer_alone():
    problems = generated(tasks.RL_LEVEL, n=100)
    assert all(tasks.bare_answer(p.expr) == f"A:{p.answer}" for p in problems)


# ----------------------------------------------------------------------------
# Frozen test sets


@pytest.mark.parametrize("name", tasks.TESTED_LEVELS)
def test_test_set_files_hold_distinct_problems_and_match_regeneration_from_the_seed(name):
    problems = tasks.load_test_set(name)
    assert len(problems) == tasks.TEST_SET_SIZE
    assert len({p.expr for p in problems}) == len(problems)
    assert problems == tasks.generate_test_set(name), "stale test set: run `python -m data.tasks`"


def test_test_set_rows_are_expr_and_answer():
    with open(tasks.test_set_path("mix3")) as f:
        row = json.loads(f.readline())
    assert set(row) == {"expr", "answer"} and evaluate(row["expr"]) == row["answer"]


def test_test_exprs_is_the_union_over_the_levels_with_a_test_set():
    union = tasks.test_exprs()
    assert union == frozenset().union(*(tasks.test_exprs([name]) for name in tasks.TESTED_LEVELS))
    assert len(union) > tasks.TEST_SET_SIZE


def test_a_level_of_steps_has_no_test_set_and_no_test_set_holds_a_single_step():
    assert tasks.ATOM_LEVEL not in tasks.TESTED_LEVELS
    with pytest.raises(ValueError, match="no test set"):
        tasks.load_test_set(tasks.ATOM_LEVEL)
    # so every one-digit fact can be trained on as a single-step problem, and no
    # training draw holds a test problem
    assert all(len(parse_expression(e)[1]) >= 2 for e in tasks.test_exprs())


def test_plain_sampling_would_hit_the_test_sets_so_exclusion_matters():
    drawn = {p.expr for p in tasks.sample_problems("mix2", 5000, rng(3))}
    assert drawn & tasks.test_exprs()


@pytest.mark.parametrize("name", list(tasks.LEVELS))
def test_training_draws_share_no_expression_with_any_test_set(name):
    drawn = {p.expr for p in tasks.train_problems(name, 5000, rng(3))}
    assert not drawn & tasks.test_exprs()


def test_write_test_sets_reproduces_the_committed_files(tmp_path, monkeypatch):
    committed = {name: tasks.test_set_path(name).read_text() for name in tasks.TESTED_LEVELS}
    monkeypatch.setattr(tasks, "TEST_SET_DIR", tmp_path)
    counts = tasks.write_test_sets()
    assert counts == {name: tasks.TEST_SET_SIZE for name in tasks.TESTED_LEVELS}
    written = {name: (tmp_path / f"{name}.jsonl").read_text() for name in tasks.TESTED_LEVELS}
    assert written == committed
    files = sorted(f"{name}.jsonl" for name in tasks.TESTED_LEVELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
