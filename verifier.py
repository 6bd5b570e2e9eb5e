"""Scores model output for an arithmetic problem. Never raises on any output string.

Two questions are asked of a completion:

  * Is the final answer right? (outcome_reward, the RL reward) The answer is the integer right after the FIRST
    "A:" in the text. Only the first counts, so listing several guesses earns nothing. Answers are compared as
    canonical decimal strings ("007" -> "7", "-0" -> "0"), never through int(), which raises on numbers of more
    than 4300 digits.

  * Is the reasoning sound? (check_steps) The lines before the answer line must each be a step "x<op>y=z" that
    is arithmetically true (steps_true) and, replayed in order on the asked expression, combines two adjacent
    numbers that precedence allows to combine next, until one number is left and it equals the final answer
    (computes_expr). A right answer without sound reasoning is a false positive (is_false_positive), the
    quantity the "Smaller, Weaker, Yet Better" paper needed human graders for; here it is exact.
"""
import dataclasses
import math
import re

from data.tasks import Problem, apply_op, is_legal_reduction, parse_expression

# ----------------------------------------------------------------------------
# Final answer

ANSWER_MARKER = "A:"
FORMAT_REWARD = 0.0  # the optional small bonus for a well-formed answer line (the RGRA paper used 0.1); off

# [0-9] rather than \d: \d also matches digits of other scripts ("٣"), which are not answers in this task.
_INTEGER = re.compile(r"-?[0-9]+")
_ANSWER_LINE_END = re.compile(r"-?[0-9]+(?:\n|\Z)")


def canonical_integer(digits):
    """ "-007" -> "-7", "-0" -> "0": one spelling per integer, computed on the string so any length is cheap."""
    negative = digits.startswith("-")
    magnitude = digits.lstrip("-").lstrip("0") or "0"
    return "-" + magnitude if negative and magnitude != "0" else magnitude


def extract_answer(text):
    """The canonical integer right after the first "A:" in text, or None when there is no marker or no
    integer directly after the first one."""
    if not isinstance(text, str):
        return None
    start = text.find(ANSWER_MARKER)
    if start < 0:
        return None
    match = _INTEGER.match(text, start + len(ANSWER_MARKER))
    return canonical_integer(match.group()) if match else None


def has_answer_line(text):
    """Whether the first "A:" starts a line and is followed by an integer that ends the line (or the text)."""
    if not isinstance(text, str):
        return False
    start = text.find(ANSWER_MARKER)
    if start < 0 or (start > 0 and text[start - 1] != "\n"):
        return False
    return _ANSWER_LINE_END.match(text, start + len(ANSWER_MARKER)) is not None


def gold_answer(problem_or_answer):
    """The right answer as a canonical string, from a Problem or an int."""
    if isinstance(problem_or_answer, Problem):
        return str(problem_or_answer.answer)
    if isinstance(problem_or_answer, int) and not isinstance(problem_or_answer, bool):
        return str(problem_or_answer)
    raise ValueError(f"expected a Problem or an int answer, got {type(problem_or_answer).__name__}")


def outcome_reward(text, problem_or_answer, format_reward=FORMAT_REWARD):
    """1.0 if the final answer is right, else 0.0; plus format_reward if has_answer_line(text), right or wrong.
    So with format_reward=0.1: 1.1 right and well formed, 1.0 right, 0.1 wrong but well formed, 0.0 otherwise."""
    if not (isinstance(format_reward, (int, float)) and math.isfinite(format_reward) and format_reward >= 0):
        raise ValueError(f"format_reward must be a finite number >= 0, got {format_reward!r}")
    reward = 1.0 if extract_answer(text) == gold_answer(problem_or_answer) else 0.0
    if format_reward > 0 and has_answer_line(text):
        reward += float(format_reward)
    return reward


# ----------------------------------------------------------------------------
# Step checker

MAX_STEP_DIGITS = 50  # longer numbers are no honest step of these tasks; refusing them keeps checking cheap
_STEP = re.compile(r"(-?[0-9]+)([+\-*])(-?[0-9]+)=(-?[0-9]+)")


# What a completion gets wrong first (first_error); "right" is there so that counts over all outputs add up.
ERROR_KINDS = ("right", "no answer", "not a step", "wrong operands", "false step", "stops early", "wrong answer line")


@dataclasses.dataclass(frozen=True)
class StepCheck:
    steps_true: bool  # every step line x<op>y=z is arithmetically true
    computes_expr: bool  # the steps are legal reductions of the expression, ending at the final answer
    n_steps: int  # lines before the answer line
    error: str | None  # the first problem found, for humans
    error_kind: str | None = None  # the kind of that problem, one of ERROR_KINDS


def parse_step(line):
    """(x, op, y, z) from "x<op>y=z", or None if the line is not a step or has a number that is too long."""
    match = _STEP.fullmatch(line)
    if match is None:
        return None
    x, op, y, z = match.groups()
    if max(len(x), len(y), len(z)) > MAX_STEP_DIGITS + 1:  # +1 for a minus sign
        return None
    return int(x), op, int(y), int(z)


def replay_step(states, step):
    """Every expression reachable from states by one legal reduction that matches step, with z put in place.

    A set, because the same "x op y" can occur at two legal places ("1+1+1") and which one the step meant only
    shows in the steps that follow. z is taken as written: a false z is steps_true's business, not this one's.
    """
    x, op, y, z = step
    reached = set()
    for numbers, ops in states:
        for i in range(len(ops)):
            if (numbers[i], ops[i], numbers[i + 1]) == (x, op, y) and is_legal_reduction(ops, i):
                reached.add((numbers[:i] + (z,) + numbers[i + 2 :], ops[:i] + ops[i + 1 :]))
    return reached


def check_steps(text, expr):
    """Check the step lines of text against expr (a trusted expression; see the module docstring)."""
    if not isinstance(text, str):
        return StepCheck(False, False, 0, f"expected a str, got {type(text).__name__}", "no answer")
    start = text.find(ANSWER_MARKER)
    if start < 0:
        return StepCheck(False, False, 0, "no answer marker 'A:'", "no answer")
    before = text[:start]
    if before and not before.endswith("\n"):
        return StepCheck(False, False, 0, "the answer marker 'A:' does not start a line", "not a step")
    lines = before.split("\n")[:-1]

    numbers, ops = parse_expression(expr)
    states = {(tuple(numbers), tuple(ops))}
    steps_true, errors = True, []  # errors: (kind, message) in the order they are met
    for k, line in enumerate(lines, start=1):
        step = parse_step(line)
        if step is None:  # nothing after it can be replayed; an earlier error, if any, stays the first
            kind, error = (errors + [("not a step", f"line {k} {line!r} is not a step x<op>y=z")])[0]
            return StepCheck(False, False, len(lines), error, kind)
        if states:  # a step the expression does not allow is the first thing wrong with it, true or not
            states = replay_step(states, step)
            if not states:
                errors.append(("wrong operands", f"line {k} {line!r} is not a reduction that precedence allows next"))
        x, op, y, z = step
        if apply_op(x, op, y) != z:
            steps_true = False
            errors.append(("false step", f"line {k} {line!r} is false"))

    answer = extract_answer(text)
    finals = {str(nums[0]) for nums, ops_left in states if not ops_left}  # str: answers compare as strings
    computes_expr = answer in finals
    if states and not finals:
        errors.append(("stops early", "the steps stop before the expression is reduced to one number"))
    elif answer is None:
        errors.append(("no answer", "no integer after the answer marker"))
    elif finals and not computes_expr:
        errors.append(("wrong answer line", f"the steps end at {min(finals)} but the answer line says {answer}"))
    kind, error = errors[0] if errors else (None, None)
    return StepCheck(steps_true, computes_expr, len(lines), error, kind)


# ----------------------------------------------------------------------------
# Solution style

STYLE_NAMES = ("careful", "left-to-right", "shortcut", "bare", "other")  # data.tasks.STYLES, then "other"
_TWO_OPS = re.compile(r"-?[0-9]+[+\-*][0-9]+[+\-*][0-9]+=-?[0-9]+")


def replay_left_to_right(state, step):
    """The expression after step, if step reduces the leftmost operator of state (ignoring precedence); else None."""
    (numbers, ops), (x, op, y, z) = state, step
    if not ops or (numbers[0], ops[0], numbers[1]) != (x, op, y):
        return None
    return (z,) + numbers[2:], ops[1:]


def solution_style(text, expr):
    """Which of the styles of data.tasks.STYLES text is written in, judged by its form, right or wrong:
      "bare"           nothing before the answer line
      "shortcut"       every line is a step, and some line does two operations at once ("4+9*6=58")
      "careful"        one operation per line, each a reduction precedence allows next, down to one number
      "left-to-right"  one operation per line, always the leftmost operator, down to one number
      "other"          anything else: no answer, a line that is no step, operands from nowhere, stopping early
    Where precedence does not change the order, careful and left-to-right texts are the same text: careful.
    Numbers are taken as written, so a careful solution with a false step is still careful."""
    if not isinstance(text, str) or ANSWER_MARKER not in text:
        return "other"
    before = text[: text.find(ANSWER_MARKER)]
    if not before:
        return "bare"
    if not before.endswith("\n"):
        return "other"
    lines = before.split("\n")[:-1]
    steps = [parse_step(line) for line in lines]
    if any(step is None for step in steps):
        both = all(step is not None or _TWO_OPS.fullmatch(line) for step, line in zip(steps, lines))
        return "shortcut" if both else "other"
    numbers, ops = parse_expression(expr)
    careful, left_to_right = {(tuple(numbers), tuple(ops))}, (tuple(numbers), tuple(ops))
    for step in steps:
        careful = replay_step(careful, step)
        left_to_right = replay_left_to_right(left_to_right, step) if left_to_right else None
    if any(not ops_left for _, ops_left in careful):
        return "careful"
    if left_to_right is not None and not left_to_right[1]:
        return "left-to-right"
    return "other"


# ----------------------------------------------------------------------------
# Summaries


def is_false_positive(text, problem):
    """Right final answer, but reached without true steps that compute the asked expression."""
    if outcome_reward(text, problem, format_reward=0.0) != 1.0:
        return False
    check = check_steps(text, problem.expr)
    return not (check.steps_true and check.computes_expr)


def first_error(text, problem):
    """"right" when the final answer is right (sound steps or not); "no answer" when there is none; else the kind
    of the first thing check_steps finds wrong, reading the lines in order: a line that is not a step "x<op>y=z";
    a step combining numbers that are not next to each other in what is left of the expression, or that
    precedence does not allow next ("wrong operands": it lost track of the expression); a step whose arithmetic
    is false ("false step": it knows where it is, not the fact); steps that end before one number is left ("stops
    early", a bare "A:" included); or sound steps and an answer line that does not copy their result."""
    if extract_answer(text) == gold_answer(problem):
        return "right"
    if extract_answer(text) is None:
        return "no answer"
    return check_steps(text, problem.expr).error_kind


def score(text, problem, format_reward=FORMAT_REWARD):
    """Everything the trainer logs about one completion."""
    check = check_steps(text, problem.expr)
    correct = extract_answer(text) == gold_answer(problem)
    return {
        "answer": extract_answer(text),
        "correct": correct,
        "reward": outcome_reward(text, problem, format_reward),
        "steps_true": check.steps_true,
        "computes_expr": check.computes_expr,
        "false_positive": correct and not (check.steps_true and check.computes_expr),
    }
