"""The verifier: first-marker answers compared as strings, an exact step checker that reads lines of
one or several operations, the three kinds of right answer, and no exception on any text."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.tasks import (
    RL_LEVEL,
    STYLES,
    Problem,
    bare_answer,
    evaluate,
    left_to_right_solution,
    precedence_matters,
    sample_problems,
    shortcut_solution,
    worked_solution,
)
from data.tokenizer import VOCAB
from verifier import (
    ERROR_KINDS,
    FORMAT_REWARD,
    MAX_STEP_OPS,
    REASONING_KINDS,
    STYLE_NAMES,
    check_steps,
    extract_answer,
    false_positive_rate,
    first_error,
    has_answer_line,
    is_false_positive,
    may_compute_at_once,
    no_reasoning_share,
    outcome_reward,
    reasoning_counts,
    reasoning_kind,
    score,
    solution_style,
    value_of,
)


def problem(expr):
    return Problem(expr=expr, answer=evaluate(expr), level="mix3")


P = problem("12+3*4-5")  # answer 19
SCORE_KEYS = {"answer", "correct", "reward", "steps_true", "computes_expr", "reasoning",
              "false_positive"}

# ----------------------------------------------------------------------------
# Never raises


def assert_scores_cleanly(text, format_reward):
    result = score(text, P, format_reward=format_reward)
    assert set(result) == SCORE_KEYS
    assert result["reward"] in {0.0, 1.0, format_reward, 1.0 + format_reward}
    assert result["correct"] == (result["answer"] == "19")
    check = check_steps(text, P.expr)
    assert isinstance(check.steps_true, bool) and isinstance(check.computes_expr, bool)
    sound = check.steps_true and check.computes_expr
    assert (check.error is None) == sound == (check.error_kind is None)
    assert check.error_kind is None or check.error_kind in ERROR_KINDS


@settings(max_examples=200, deadline=None)
@given(st.text(), st.sampled_from([0.0, 0.1]))
def test_arbitrary_unicode_text_never_raises(text, format_reward):
    assert_scores_cleanly(text, format_reward)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=VOCAB, max_size=80), st.sampled_from([0.0, 0.1]))
def test_text_over_the_vocabulary_never_raises(text, format_reward):
    assert_scores_cleanly(text, format_reward)


step_line = st.from_regex(r"-?[0-9]{1,3}[+\-*]-?[0-9]{1,3}=-?[0-9]{1,4}", fullmatch=True)
known_step = st.sampled_from(
    worked_solution(P.expr).split("\n")[:-1] + ["12-5=7", "12+7=19", "3*4=13"]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(step_line, known_step), max_size=5),
    st.from_regex(r"A:-?[0-9]{0,3}", fullmatch=True),
)
def test_step_shaped_text_never_raises(lines, answer_line):
    assert_scores_cleanly("\n".join(lines + [answer_line]), 0.0)


@pytest.mark.parametrize(
    "text",
    ["", "A:", "A:-", "A:--5", "-", "\n\n", "A:\n", "é", "A:١٩", "A:１９", "\x00A:19",
     "A:" + "9" * 5000,
     "9" * 5000 + "+1=1\nA:19", "3*4=" + "1" * 60 + "\nA:19", "<|eos|>", "A:19<|eos|>",
     "1+" * 5000 + "1=5001\nA:19", "12+3*" + "4" * 5000 + "=1\nA:19"],
)
def test_hand_picked_odd_texts_never_raise(text):
    assert_scores_cleanly(text, 0.1)


def test_non_string_output_scores_zero_instead_of_raising():
    assert score(None, P)["reward"] == 0.0
    assert not check_steps(None, P.expr).steps_true


# ----------------------------------------------------------------------------
# Final answer


@pytest.mark.parametrize(
    "text, answer",
    [
        ("", None),
        ("19", None),
        ("A:", None),
        ("A:-", None),
        ("A: 19", None),
        ("A:19", "19"),
        ("A:19abc", "19"),
        ("A:-19", "-19"),
        ("A:007", "7"),
        ("A:-007", "-7"),
        ("A:-0", "0"),
        ("A:000", "0"),
        ("A:١٩", None),  # digits of other scripts are not answers
        ("3*4=12\nA:19\nA:20", "19"),
        ("A:x\nA:19", None),  # only the first marker counts, even when it holds no integer
        ("A:" + "1" * 5000, "1" * 5000),
    ],
)
def test_extract_answer_reads_the_integer_after_the_first_marker_canonically(text, answer):
    assert extract_answer(text) == answer


def test_leading_zeros_and_negative_zero_still_earn_the_reward():
    assert outcome_reward("A:019", P) == 1.0
    assert outcome_reward("A:-0", 0) == 1.0
    assert outcome_reward("A:-19", 19) == 0.0
    assert outcome_reward("A:-19", -19) == 1.0


def test_several_answer_markers_earn_only_for_the_first():
    assert outcome_reward("A:18\nA:19", P) == 0.0
    assert outcome_reward("A:19\nA:18", P) == 1.0


def test_a_5000_digit_answer_is_compared_without_int_conversion():
    assert outcome_reward("A:" + "9" * 5000, P) == 0.0
    assert outcome_reward("A:" + "0" * 5000 + "19", P) == 1.0


def test_format_reward_is_off_by_default():
    assert FORMAT_REWARD == 0.0
    assert outcome_reward("A:18", P) == 0.0


@pytest.mark.parametrize(
    "text, reward",
    [("A:19", 1.1), ("3*4=12\nA:19\n", 1.1), ("A:18", 0.1), ("xA:19", 1.0), ("A:19x", 1.0),
     ("A:", 0.0), ("", 0.0)],
)
def test_format_reward_adds_for_a_well_formed_answer_line(text, reward):
    assert outcome_reward(text, P, format_reward=0.1) == pytest.approx(reward)


def test_answer_line_must_start_a_line_and_end_with_the_integer():
    assert has_answer_line("1+2=3\nA:3") and has_answer_line("A:-3\n")
    assert not has_answer_line("1+2=3 A:3")
    assert not has_answer_line("A:3 ")
    assert has_answer_line("A:3\nA:")  # only the first marker's line is judged


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1"])
def test_bad_format_reward_raises_value_error(bad):
    with pytest.raises(ValueError, match="format_reward"):
        outcome_reward("A:19", P, format_reward=bad)


@pytest.mark.parametrize("bad", ["19", 19.0, True, None])
def test_gold_answer_must_be_a_problem_or_an_int(bad):
    with pytest.raises(ValueError, match="Problem or an int"):
        outcome_reward("A:19", bad)


# ----------------------------------------------------------------------------
# Step checker


def test_canonical_solution_is_sound_and_not_a_false_positive():
    text = worked_solution(P.expr)
    check = check_steps(text, P.expr)
    found = (check.steps_true, check.computes_expr, check.n_steps, check.error)
    assert found == (True, True, 3, None)
    assert not is_false_positive(text, P)
    assert score(text, P) == {
        "answer": "19", "correct": True, "reward": 1.0, "steps_true": True, "computes_expr": True,
        "reasoning": "sound", "false_positive": False,
    }


def test_a_legal_non_canonical_order_is_accepted():
    # 12+12-5: the minus may go first because a+(b-c) == a+b-c.
    assert check_steps("3*4=12\n12-5=7\n12+7=19\nA:19", P.expr).computes_expr
    # 1+1+1: which "1+1" the first step reduced only shows in the second step; both
    # readings are legal.
    assert check_steps("1+1=2\n1+2=3\nA:3", "1+1+1").computes_expr
    assert check_steps("1+1=2\n2+1=3\nA:3", "1+1+1").computes_expr


def test_a_right_answer_after_a_precedence_violation_is_a_false_positive():
    text = "12+3=15\n15*4=60\n60-41=19\nA:19"  # all true, but adds before multiplying
    check = check_steps(text, P.expr)
    assert check.steps_true and not check.computes_expr
    assert "line 1" in check.error
    assert is_false_positive(text, P)


def test_a_right_answer_after_a_false_step_is_a_false_positive():
    text = "3*4=12\n12+12=25\n25-5=19\nA:19"  # 12+12=25 is false, 25-5=19 is false too
    check = check_steps(text, P.expr)
    assert not check.steps_true and check.computes_expr
    assert check.error == "line 2 '12+12=25' is false"
    assert is_false_positive(text, P)
    assert score(text, P)["false_positive"] and score(text, P)["reward"] == 1.0


def test_subtraction_reduced_against_its_left_minus_is_illegal():
    text = "5+3=8\n20-8=12\nA:12"  # 20-5+3 is 18, not 20-(5+3)
    check = check_steps(text, "20-5+3")
    assert check.steps_true and not check.computes_expr


@pytest.mark.parametrize(
    "text, error_part",
    [
        ("3*4=12\nA:19", "stop before"),  # stops early
        ("3*4=12\n12+12=24\n24-5=19\n19+0=19\nA:19", "line 4"),  # one step too many
        ("19*1=19\nA:19", "line 1"),  # true steps about another expression
        ("3*4=12\n12+12=24\n24-5=19\n\nA:19", "line 4"),  # a blank line is not a step
        ("3*4=12\n12+12=24\nso 24-5=19\nA:19", "line 3"),  # prose is not a step
        ("3*4=12\n12+12=24\n24-5=19 A:19", "does not start a line"),
        ("3*4=12\n12+12=24\n24-5=19", "no answer marker"),
    ],
)
def test_right_answers_with_incomplete_or_malformed_steps_are_false_positives(text, error_part):
    check = check_steps(text, P.expr)
    assert not (check.steps_true and check.computes_expr)
    assert error_part in check.error
    assert is_false_positive(text, P) == (extract_answer(text) == "19")


def test_a_bare_right_answer_shows_no_reasoning_and_is_no_false_positive():
    check = check_steps("A:19", P.expr)
    assert not check.computes_expr and "stop before" in check.error  # it has no steps
    assert reasoning_kind("A:19", P) == "no reasoning"
    assert not is_false_positive("A:19", P)
    assert score("A:19", P)["reasoning"] == "no reasoning"


def test_steps_ending_at_a_different_number_than_the_answer_line_do_not_compute_it():
    check = check_steps("3*4=12\n12+12=24\n24-5=19\nA:20", P.expr)
    assert check.steps_true and not check.computes_expr
    assert "end at 19" in check.error


def test_numbers_longer_than_50_digits_make_a_step_invalid_not_slow():
    big = "1" * 60
    check = check_steps(f"{big}*1={big}\nA:19", P.expr)
    assert not check.steps_true and "line 1" in check.error


def test_wrong_answers_are_never_false_positives():
    assert not is_false_positive("12+3=15\nA:18", P)
    assert not is_false_positive("", P)


# ----------------------------------------------------------------------------
# Several operations in one line: the one rule (may_compute_at_once)


def with_careful_rest(expr, line):
    """line, then the careful lines of what is left of expr once line's left side is replaced by the
    value line writes (true or not), then their answer."""
    left, value = line.split("=")
    return line + "\n" + worked_solution(expr.replace(left, value, 1))


@pytest.mark.parametrize("where, expr, line, verdict", [
    ("start", "4+9*6-3", "4+9*6=58", "allowed"),
    ("start", "4+9*6-3", "4+9*6=78", "false"),
    ("start", "2*3+4*5", "2*3+4=10", "crosses precedence"),  # the 4 is a factor of 4*5
    ("middle", "1+2*3*4-5", "2*3*4=24", "allowed"),
    ("middle", "1+2*3*4-5", "2*3*4=25", "false"),
    ("middle", "4+9*6-3+1", "9*6-3=51", "crosses precedence"),
    ("end", "8-2*3*4", "2*3*4=24", "allowed"),
    ("end", "8-2*3*4", "2*3*4=25", "false"),
    ("end", "4+9*6-3", "9*6-3=51", "crosses precedence"),  # the example of issue 20
])
def test_a_line_of_several_operations_is_sound_false_or_crossing_precedence_anywhere(
        where, expr, line, verdict):
    check = check_steps(with_careful_rest(expr, line), expr)
    expected_kind = {"allowed": None, "false": "false step", "crosses precedence": "wrong operands"}
    assert check.steps_true == (verdict != "false"), where
    assert check.computes_expr == (verdict != "crosses precedence"), where
    assert check.error_kind == expected_kind[verdict], where


def test_of_the_spans_of_4_plus_9_times_6_minus_3_the_groups_of_its_parse_are_allowed():
    ops = ("+", "*", "-")  # 4+9*6-3 = ((4 + (9*6)) - 3)
    spans = [(i, j) for i in range(len(ops)) for j in range(i + 1, len(ops) + 1)]
    allowed = {(i, j) for i, j in spans if may_compute_at_once(ops, i, j)}
    # 9*6, 4+9*6 and 4+9*6-3; not 4+9 nor 6-3 (each cuts 9*6), nor 9*6-3 (no group of the parse)
    assert allowed == {(1, 2), (0, 2), (0, 3)}


def test_one_operation_may_regroup_plus_and_minus_but_a_line_of_several_may_not():
    q = problem("4+9*6-3")
    assert reasoning_kind("9*6=54\n54-3=51\n4+51=55\nA:55", q) == "sound"  # 4+(54-3)
    assert reasoning_kind("9*6-3=51\n4+51=55\nA:55", q) == "wrong reasoning"


def test_any_run_of_factors_of_one_product_may_be_computed_at_once():
    ops = ("-", "*", "*", "*", "+")  # 1-2*3*4*5+6
    runs = [(1, 2), (2, 3), (3, 4), (1, 3), (2, 4), (1, 4)]  # 2*3, 3*4, 4*5, 2*3*4, 3*4*5, 2*3*4*5
    assert all(may_compute_at_once(ops, i, j) for i, j in runs)
    assert not may_compute_at_once(ops, 2, 5)  # 3*4*5+6: a run of factors, then a term more
    assert may_compute_at_once(ops, 0, 4)  # 1-2*3*4*5: the terms from the start


def test_computing_an_allowed_span_at_once_keeps_the_value_of_the_expression():
    rng = np.random.default_rng(11)
    for n_ops in range(1, 6):
        for ops in itertools.product("+-*", repeat=n_ops):
            numbers = [int(x) for x in rng.integers(2, 10, size=n_ops + 1)]
            spans = [(i, j) for i in range(n_ops) for j in range(i + 1, n_ops + 1)]
            for i, j in [(i, j) for i, j in spans if may_compute_at_once(ops, i, j)]:
                part = value_of(numbers[i : j + 1], ops[i:j])
                rest = numbers[:i] + [part] + numbers[j + 1 :], ops[:i] + ops[j:]
                assert value_of(*rest) == value_of(numbers, ops), (numbers, ops, i, j)


def test_a_span_that_is_no_span_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="numbers 2..2"):
        may_compute_at_once(("+", "*"), 2, 2)
    with pytest.raises(ValueError, match="numbers 0..3"):
        may_compute_at_once(("+", "*"), 0, 3)


def test_a_line_of_more_than_MAX_STEP_OPS_operations_is_not_a_step():
    fits, too_long = "+".join(["1"] * (MAX_STEP_OPS + 1)), "+".join(["1"] * (MAX_STEP_OPS + 2))
    check = check_steps(f"{fits}={MAX_STEP_OPS + 1}\nA:{MAX_STEP_OPS + 1}", fits)
    assert check.steps_true and check.computes_expr
    check = check_steps(f"{too_long}={MAX_STEP_OPS + 2}\nA:{MAX_STEP_OPS + 2}", too_long)
    assert check.error_kind == "not a step"


def test_a_number_longer_than_50_digits_in_a_line_of_several_operations_makes_it_no_step():
    big = "1" * 51
    assert check_steps(f"12+3*{big}=1\nA:19", P.expr).error_kind == "not a step"


# ----------------------------------------------------------------------------
# Where a wrong completion first goes wrong (the evaluation counts these)


@pytest.mark.parametrize("text, kind", [
    ("3*4=12\n12+12=24\n24-5=19\nA:19", "right"),
    ("A:19", "right"),  # a right bare answer is right: first_error judges the outcome first
    ("3*4=12\n12+12=25\n25-5=20\nA:20", "false step"),
    ("12+3=15\n15*4=60\n60-5=55\nA:55", "wrong operands"),  # ignored precedence
    ("3*4=12\n12+3=15\n15-5=10\nA:10", "wrong operands"),  # lost track of which numbers are left
    ("3*4=12\n12+12=24\nA:24", "stops early"),
    ("A:7", "stops early"),
    ("3*4=12\n12+12=24\n24-5=19\nA:18", "wrong answer line"),
    ("3*4=12\nhmm\nA:7", "not a step"),
    ("3*4=12A:12", "not a step"),
    ("3*4=12\n12+12=24", "no answer"),
    ("A:", "no answer"),
])
def test_first_error_names_the_first_thing_a_completion_gets_wrong(text, kind):
    assert first_error(text, P) == kind


def test_check_steps_reports_a_false_line_before_a_later_line_that_is_not_a_step():
    check = check_steps("3*4=13\nhmm\nA:19", P.expr)
    assert (check.error, check.error_kind) == ("line 1 '3*4=13' is false", "false step")


def test_first_error_reports_the_earliest_line_when_several_are_wrong():
    # line 1 is false, line 2 then also uses numbers the expression does not have
    assert first_error("3*4=13\n1+1=2\n2-5=-3\nA:-3", P) == "false step"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=VOCAB, max_size=80)))
def test_first_error_never_raises_and_returns_one_of_the_kinds(text):
    assert first_error(text, P) in ERROR_KINDS


# ----------------------------------------------------------------------------
# Solution style: which habit a completion shows, judged by its form


@pytest.mark.parametrize("style", list(STYLES))
def test_every_style_the_corpus_writes_is_recognised_where_its_text_differs_from_careful(style):
    for p in sample_problems(RL_LEVEL, 1000, np.random.default_rng(5)):
        text = STYLES[style](p.expr)
        same_as_careful = style == "left-to-right" and text == worked_solution(p.expr)
        expected = "careful" if same_as_careful else style
        assert solution_style(text, p.expr) == expected, (p.expr, text)


@pytest.mark.parametrize("text,style", [
    # the order is careful; a false step is another matter
    ("3*4=13\n12+13=25\n25-5=20\nA:20", "careful"),
    ("12+3=15\n15*4=61\n61-5=56\nA:56", "left-to-right"),
    ("12+3*4=25\n25-5=20\nA:20", "shortcut"),
    ("A:7", "bare"),
    ("3*4=12\nA:19", "other"),  # stops early
    ("3*4=12\n12+12=24\n2-5=-3\nA:-3", "other"),  # operands from nowhere
    ("3*4=12\nso 24\nA:19", "other"),  # a line that is no step
    ("3*4=12\n12+12=24\n24-5=19", "other"),  # no answer line
    ("3*4=12 A:19", "other"),  # the marker does not start a line
    ("", "other"),
    (None, "other"),
])
def test_solution_style_on_hand_examples(text, style):
    assert solution_style(text, P.expr) == style


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=VOCAB, max_size=80)))
def test_solution_style_never_raises_and_returns_one_of_the_names(text):
    assert solution_style(text, P.expr) in STYLE_NAMES



# ----------------------------------------------------------------------------
# How a right answer was reached: sound, wrong reasoning (a false positive) or no reasoning


def assert_judges_agree(text, p):
    """check_steps, solution_style, first_error and reasoning_kind read the lines the same way."""
    check, style = check_steps(text, p.expr), solution_style(text, p.expr)
    kind = reasoning_kind(text, p)
    order_right = style in ("careful", "shortcut")
    order_errors = ("not a step", "wrong operands", "stops early")
    if check.computes_expr:
        assert order_right
    if order_right:
        assert check.error_kind not in order_errors and first_error(text, p) not in order_errors
    right = kind != "wrong answer"
    assert (first_error(text, p) == "right") == right
    sound_steps = check.steps_true and check.computes_expr
    assert (kind == "sound") == (right and style != "bare" and sound_steps)
    assert (kind == "no reasoning") == (right and style == "bare")
    false_positive = kind == "wrong reasoning"
    assert is_false_positive(text, p) == false_positive == score(text, p)["false_positive"]


Q = problem("3+3*1-2")  # 4; left to right, (3+3)*1-2, happens to give 4 as well


@pytest.mark.parametrize("text, style, kind", [
    ("3*1=3\n3+3=6\n6-2=4\nA:4", "careful", "sound"),
    ("3*1=3\n3-2=1\n3+1=4\nA:4", "careful", "sound"),  # another order precedence allows
    ("3+3=6\n6*1=6\n6-2=4\nA:4", "left-to-right", "wrong reasoning"),  # right by coincidence
    ("3+3=6\n6*1=6\n6-2=4\nA:5", "left-to-right", "wrong answer"),
    ("3+3*1=6\n6-2=4\nA:4", "shortcut", "sound"),
    ("3+3*1-2=4\nA:4", "shortcut", "sound"),  # the whole expression in one line
    ("3+3*1=7\n7-2=5\nA:5", "shortcut", "wrong answer"),
    # several operations across precedence
    ("3*1-2=1\n3+1=4\nA:4", "other", "wrong reasoning"),
    ("A:4", "bare", "no reasoning"),
    ("A:5", "bare", "wrong answer"),
    # a false step, and a second one that makes up for it
    ("3*1=4\n3+4=6\n6-2=4\nA:4", "careful", "wrong reasoning"),
    ("2+2=4\nA:4", "other", "wrong reasoning"),  # a true step of another expression
    ("3*1=3\n3+3=6\nA:4", "other", "wrong reasoning"),  # stops early
    ("the answer is\nA:4", "other", "wrong reasoning"),  # prose is no reasoning checked, but shown
    ("\nA:4", "other", "wrong reasoning"),  # only nothing at all before "A:" is no reasoning
])
def test_reasoning_kind_and_style_of_hand_written_samples_of_every_style(text, style, kind):
    assert solution_style(text, Q.expr) == style
    assert reasoning_kind(text, Q) == kind
    assert_judges_agree(text, Q)


@pytest.mark.parametrize("level", ["mix2", "mix3", "ood4"])
def test_careful_and_shortcut_are_sound_bare_is_no_reasoning_left_to_right_sound_only_as_careful(
        level):
    for p in sample_problems(level, 200, np.random.default_rng(7)):
        careful, left_to_right = worked_solution(p.expr), left_to_right_solution(p.expr)
        if left_to_right == careful:
            expected = "sound"
        else:
            expected = "wrong answer" if precedence_matters(p.expr) else "wrong reasoning"
        for text, kind in [(careful, "sound"), (shortcut_solution(p.expr), "sound"),
                           (bare_answer(p.expr), "no reasoning"), (left_to_right, expected)]:
            assert reasoning_kind(text, p) == kind, (p.expr, text)
            assert_judges_agree(text, p)
        assert solution_style(shortcut_solution(p.expr), p.expr) == "shortcut", p.expr


def test_reasoning_counts_give_the_false_positive_rate_and_the_share_of_bare_answers():
    texts = ["3*1=3\n3+3=6\n6-2=4\nA:4", "3+3*1=6\n6-2=4\nA:4", "3+3=6\n6*1=6\n6-2=4\nA:4",
             "A:4", "A:4", "A:5"]
    counts = reasoning_counts(texts, [Q] * len(texts))
    assert counts == {"sound": 2, "wrong reasoning": 1, "no reasoning": 2, "wrong answer": 1}
    assert false_positive_rate(counts) == pytest.approx(1 / 3)  # wrong / (sound + wrong)
    assert no_reasoning_share(counts) == pytest.approx(2 / 5)  # bare / right answers
    assert list(counts) == list(REASONING_KINDS)


def test_without_right_answers_the_rates_are_nan():
    counts = reasoning_counts(["A:5", "A:4"], [Q, Q])
    assert math.isnan(false_positive_rate(reasoning_counts(["A:5"], [Q])))
    assert math.isnan(false_positive_rate(counts))  # a bare answer shows no reasoning to rate
    assert no_reasoning_share(counts) == 1.0


def test_summaries_name_what_they_were_given_wrong():
    with pytest.raises(ValueError, match="2 texts and 1 problems"):
        reasoning_counts(["A:4", "A:4"], [Q])
    with pytest.raises(ValueError, match="'wrong reasoning'"):
        false_positive_rate({"sound": 3})
    with pytest.raises(TypeError, match="expected a Problem, got int"):
        reasoning_kind("A:4", 4)


multi_step_line = st.from_regex(r"-?[0-9]{1,2}(?:[+\-*]-?[0-9]{1,2}){1,4}=-?[0-9]{1,4}",
                                fullmatch=True)
known_line = st.sampled_from(["3*4=12", "12+12=24", "24-5=19", "12+3*4=24", "12+3*4-5=19",
                              "3*4-5=7", "12+7=19", "12+3*4=60", "12-5=7"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(step_line, multi_step_line, known_line), max_size=5),
    st.sampled_from(["A:19", "A:7", "A:24", "A:", "", "A:19\n"]),
)
def test_on_step_shaped_text_of_several_operations_the_judges_agree_and_never_raise(
        lines, answer_line):
    text = "\n".join(lines + [answer_line])
    assert_scores_cleanly(text, 0.0)
    assert_judges_agree(text, P)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=VOCAB, max_size=80)))
def test_reasoning_kind_never_raises_and_returns_one_of_the_kinds(text):
    assert reasoning_kind(text, P) in REASONING_KINDS
    assert_judges_agree(text, P)
