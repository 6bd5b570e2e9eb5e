"""The arithmetic task family: parsing, worked solutions, deterministic sampling, frozen test sets."""
import json

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
    "bad", ["", "1+", "+1", "1++2", "-1+2", "01+2", "1+02", "1/2", "1 + 2", "1+2\n", "(1+2)", "١+2", "A:3"]
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
        text = tasks.sft_completion(problem)
        check = verifier.check_steps(text, problem.expr)
        assert check.steps_true and check.computes_expr, (problem, check)
        assert check.n_steps == len(parse_expression(problem.expr)[1])
        assert verifier.outcome_reward(text, problem) == 1.0
        assert not verifier.is_false_positive(text, problem)


def test_prompt_and_completion_formats():
    problem = Problem(expr="12+3*4-5", answer=19, level="mix3")
    assert tasks.prompt_text(problem) == "Q:12+3*4-5\n"
    assert tasks.sft_completion(problem) == worked_solution("12+3*4-5")


# ----------------------------------------------------------------------------
# Levels


def test_levels_run_from_easy_to_hard_and_name_themselves():
    assert all(level.name == name for name, level in tasks.LEVELS.items())
    assert set(tasks.SFT_LEVELS) | {tasks.RL_LEVEL, tasks.OOD_LEVEL} <= set(tasks.LEVELS)
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
    ],
)
def test_invalid_level_parameters_raise_value_error_with_the_reason(kwargs, reason):
    fields = dict(name="bad", n_ops=(1, 2), n_digits=2, operators="+-*", mul_digits=1) | kwargs
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        Level(**fields)


def test_unknown_level_name_raises_value_error_listing_the_levels():
    with pytest.raises(ValueError, match="add1"):
        tasks.make_problem("nope", rng())


# ----------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("name", list(tasks.LEVELS))
def test_same_seed_gives_the_same_problems(name):
    assert generated(name, seed=7) == generated(name, seed=7)
    assert generated(name, seed=7) != generated(name, seed=8)


@pytest.mark.parametrize("name", list(tasks.LEVELS))
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


def test_sft_examples_split_evenly_over_levels_and_mix_them():
    examples = tasks.sft_examples(tasks.SFT_LEVELS, 101, rng())
    counts = {name: sum(p.level == name for p in examples) for name in tasks.SFT_LEVELS}
    assert counts == {"add1": 51, "mix2": 50}
    assert [p.level for p in examples] != sorted(p.level for p in examples)


# ----------------------------------------------------------------------------
# Frozen test sets


@pytest.mark.parametrize("name", list(tasks.LEVELS))
def test_test_set_files_hold_distinct_problems_and_match_regeneration_from_the_seed(name):
    problems = tasks.load_test_set(name)
    assert len(problems) == tasks.TEST_SET_SIZE
    assert len({p.expr for p in problems}) == len(problems)
    assert problems == tasks.generate_test_set(name), "stale test set: run `python -m data.tasks`"


def test_test_set_rows_are_expr_and_answer():
    with open(tasks.test_set_path("mix3")) as f:
        row = json.loads(f.readline())
    assert set(row) == {"expr", "answer"} and evaluate(row["expr"]) == row["answer"]


def test_test_exprs_is_the_union_over_levels():
    union = tasks.test_exprs()
    assert union == frozenset().union(*(tasks.test_exprs([name]) for name in tasks.LEVELS))
    assert len(union) > tasks.TEST_SET_SIZE


def test_plain_sampling_would_hit_the_test_sets_so_exclusion_matters():
    drawn = {p.expr for p in tasks.sample_problems("add1", 5000, rng(3))}
    assert drawn & tasks.test_exprs()


@pytest.mark.parametrize("name", list(tasks.LEVELS))
def test_training_draws_share_no_expression_with_any_test_set(name):
    drawn = {p.expr for p in tasks.train_problems(name, 5000, rng(3))}
    assert not drawn & tasks.test_exprs()


def test_sft_examples_exclude_every_test_set():
    examples = tasks.sft_examples(tasks.SFT_LEVELS, 5000, rng(4))
    assert not {p.expr for p in examples} & tasks.test_exprs()


def test_write_test_sets_reproduces_the_committed_files(tmp_path, monkeypatch):
    committed = {name: tasks.test_set_path(name).read_text() for name in tasks.LEVELS}
    monkeypatch.setattr(tasks, "TEST_SET_DIR", tmp_path)
    counts = tasks.write_test_sets()
    assert counts == {name: tasks.TEST_SET_SIZE for name in tasks.LEVELS}
    assert {name: (tmp_path / f"{name}.jsonl").read_text() for name in tasks.LEVELS} == committed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{name}.jsonl" for name in tasks.LEVELS)
