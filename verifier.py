"""Scores model output for an arithmetic problem. Never raises on any output string.

Three questions are asked of a completion:

  * Is the final answer right? (outcome_reward, the RL reward) The answer is the integer right after
    the FIRST "A:" in the text. Only the first counts, so listing several guesses earns nothing.
    Answers are compared as canonical decimal strings ("007" -> "7", "-0" -> "0"), never through
    int(), which raises on numbers of more than 4300 digits.

  * Are the steps sound? (check_steps) Every line before the answer line is a step
    "<numbers joined by + - *>=<number>", of one operation ("9*6=54") or several ("4+9*6=58").
    Replayed in order on the asked expression, a step replaces a part of what is left by the
    number it writes, and that part must be one that may be computed at once
    (may_compute_at_once, the one rule):

        one operation   precedence allows it next: * always; + or - when the operator on its left
                        is absent or + and the one on its right is absent or not *
        several         a group of the expression as precedence groups it (products first,
                        then + and - from the left): a run of factors of one product, or the
                        terms from the start up to the end of a term

    In 4+9*6-3 = ((4+(9*6))-3) a first line may be 9*6=54, 4+9*6=58 or 4+9*6-3=55, but not
    9*6-3=51. The steps are sound when each is true, its left side valued with precedence
    (steps_true), and they end at one number that the answer line copies (computes_expr).

  * How was a right answer reached? (reasoning_kind) "sound": by sound steps; "no reasoning":
    nothing is written before the answer line (a bare "A:55"); "wrong reasoning": anything else, be
    it a false step, an order precedence does not allow, or lines that do not compute the asked
    expression. Wrong reasoning is a false positive (is_false_positive), the quantity the
    "Smaller, Weaker, Yet Better" paper needed human graders for; here it is exact, and

        FPR = wrong reasoning / (sound + wrong reasoning)     (false_positive_rate)

    leaves the bare answers out: they show no reasoning to be right or wrong about.
"""
import dataclasses
import math
import re

from data.tasks import Problem, canonical_position, is_legal_reduction, parse_expression, reduce_at

# ----------------------------------------------------------------------------
# Final answer

ANSWER_MARKER = "A:"
# outcome_reward's default bonus for a well-formed answer line: off. A run's bonus is its
# --format-reward (nanorgra.score_batch); the RGRA paper used 0.1
FORMAT_REWARD = 0.0

# [0-9] rather than \d: \d also matches digits of other scripts ("٣"), which are no answers here.
_INTEGER = re.compile(r"-?[0-9]+")
_ANSWER_LINE_END = re.compile(r"-?[0-9]+(?:\n|\Z)")


def canonical_integer(digits):
    """ "-007" -> "-7", "-0" -> "0": one spelling per integer, computed on the string so that
    any length is cheap."""
    negative = digits.startswith("-")
    magnitude = digits.lstrip("-").lstrip("0") or "0"
    return "-" + magnitude if negative and magnitude != "0" else magnitude


def extract_answer(text):
    """The canonical integer right after the first "A:" in text, or None when there is no marker or
    no integer directly after the first one."""
    if not isinstance(text, str):
        return None
    start = text.find(ANSWER_MARKER)
    if start < 0:
        return None
    match = _INTEGER.match(text, start + len(ANSWER_MARKER))
    return canonical_integer(match.group()) if match else None


def has_answer_line(text):
    """Whether the first "A:" starts a line and is followed by an integer that ends the line
    (or the text)."""
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
    """1.0 if the final answer is right, else 0.0; plus format_reward if has_answer_line(text),
    right or wrong. So with format_reward=0.1: 1.1 right and well formed, 1.0 right, 0.1 wrong but
    well formed, 0.0 otherwise."""
    is_number = isinstance(format_reward, (int, float))
    if not (is_number and math.isfinite(format_reward) and format_reward >= 0):
        raise ValueError(f"format_reward must be a finite number >= 0, got {format_reward!r}")
    reward = 1.0 if extract_answer(text) == gold_answer(problem_or_answer) else 0.0
    if format_reward > 0 and has_answer_line(text):
        reward += float(format_reward)
    return reward


# ----------------------------------------------------------------------------
# Steps: reading a line

# Longer numbers, or more operations in one line, are no honest step of these tasks (the longest
# level, ood4, has 5 operations); refusing them keeps checking cheap.
MAX_STEP_DIGITS = 50
MAX_STEP_OPS = 10
# A line within both bounds is no longer: MAX_STEP_OPS + 2 signed numbers, the operators and "=".
_MAX_STEP_CHARS = (MAX_STEP_OPS + 2) * (MAX_STEP_DIGITS + 2)
_SIGNED = r"-?[0-9]+"  # intermediate results can be negative: "3-8=-5" then "-5+4=-1"
_STEP = re.compile(rf"({_SIGNED})((?:[+\-*]{_SIGNED})+)=({_SIGNED})")
_OPERATION = re.compile(rf"([+\-*])({_SIGNED})")


@dataclasses.dataclass(frozen=True)
class Step:
    """A line such as "4+9*6=58": numbers (4, 9, 6), ops ("+", "*") and value 58, the number written
    after "=", true or not."""

    numbers: tuple
    ops: tuple
    value: int


def parse_step(line):
    """The Step that line writes, or None when it is no step "<numbers joined by + - *>=<number>"
    or is too long: more than MAX_STEP_OPS operations or a number of more than
    MAX_STEP_DIGITS digits."""
    if len(line) > _MAX_STEP_CHARS:
        return None
    match = _STEP.fullmatch(line)
    if match is None:
        return None
    first, rest, value = match.groups()
    operations = _OPERATION.findall(rest)  # [(op, number), ...]: "+9*6" -> [("+", "9"), ("*", "6")]
    written = [first] + [number for _, number in operations] + [value]
    longest = max(len(number.lstrip("-")) for number in written)
    if len(operations) > MAX_STEP_OPS or longest > MAX_STEP_DIGITS:
        return None
    numbers = tuple(int(number) for number in written[:-1])
    return Step(numbers, tuple(op for op, _ in operations), int(value))


def value_of(numbers, ops):
    """numbers[0] ops[0] numbers[1] ... valued with precedence: * first, then + and - left to right.
    Unlike data.tasks.evaluate it takes numbers, negative ones included, not a string."""
    numbers, ops = list(numbers), list(ops)
    while ops:
        numbers, ops = reduce_at(numbers, ops, canonical_position(ops))
    return numbers[0]


def is_true(step):
    """Whether the value written is what the left side comes to with precedence: "4+9*6=58" is true,
    "4+9*6=78" (left to right) is not."""
    return value_of(step.numbers, step.ops) == step.value


# ----------------------------------------------------------------------------
# Steps: what one line may compute at once (the one rule)


def may_compute_at_once(ops, i, j):
    """Whether one line may replace numbers i..j of an expression with operators ops (the span's
    operators are ops[i..j-1]) by their value. check_steps, solution_style and reasoning_kind all
    replay steps through this function and no other.

      one operation (j = i+1)   precedence allows it next (data.tasks.is_legal_reduction):
                                * always; + or - when the operator on its left is absent or +
                                and the one on its right is absent or not *.
      several (j > i+1)         the span is a group of the expression's precedence parse, which
                                groups products first and then + and - from the left:
                                    4+9*6-3 = ((4 + (9*6)) - 3)
                                Its groups of several numbers are a run of factors inside one
                                product (* is associative, so any run: 2*3, 3*4 and 2*3*4 in
                                1+2*3*4) and the terms from the start up to the end of a term
                                (4+9*6 and 4+9*6-3 above).

    In 4+9*6-3: 9*6 yes; 4+9 no (the 9 is a factor of 9*6); 4+9*6 yes; 4+9*6-3 yes; 9*6-3 no, it is
    no group, although 4+(9*6-3) comes to 55 as well. The rule is structural: whether a span may be
    computed at once never depends on the numbers, so no coincidence of values makes a line legal.

    One operation may regroup + and -: 54-3 in 4+54-3 is allowed because a+(b-c) = a+b-c, the rule
    this checker has always had, and every such single step keeps the value. Several operations in
    one line may not regroup: the line must be read the way the expression is grouped. So the
    three lines 9*6=54 / 54-3=51 / 4+51=55 are sound, but the two lines 9*6-3=51 / 4+51=55 are not.
    """
    if not (isinstance(i, int) and isinstance(j, int) and 0 <= i < j <= len(ops)):
        raise ValueError(f"numbers {i!r}..{j!r} are no span of two or more numbers of an "
                         f"expression with {len(ops)} operators")
    if j == i + 1:
        return is_legal_reduction(ops, i)
    inside_one_product = all(op == "*" for op in ops[i:j])
    if inside_one_product:
        return True
    ends_a_term = j == len(ops) or ops[j] != "*"
    return i == 0 and ends_a_term


def start_states(expr):
    """The expression expr as the one state replay_step starts from: {(numbers, ops)}, tuples."""
    numbers, ops = parse_expression(expr)
    return {(tuple(numbers), tuple(ops))}


def replay_step(states, step):
    """Every expression reachable from states by one step: a span whose numbers and operators are
    the step's left side, and which may_compute_at_once allows, replaced by the step's value.

    A set, because the same left side can occur at two allowed places ("1+1+1") and which one the
    step meant only shows in the steps that follow. The value is taken as written: a false value is
    steps_true's business, not this one's."""
    width = len(step.ops)
    reached = set()
    for numbers, ops in states:
        for i in range(len(ops) - width + 1):
            j = i + width
            matches = numbers[i : j + 1] == step.numbers and ops[i:j] == step.ops
            if matches and may_compute_at_once(ops, i, j):
                reached.add((numbers[:i] + (step.value,) + numbers[j + 1 :], ops[:i] + ops[j:]))
    return reached


def final_numbers(states):
    """The numbers of the states reduced to one number (no operator left)."""
    return {numbers[0] for numbers, ops in states if not ops}


# ----------------------------------------------------------------------------
# Step checker

# What a completion gets wrong first (first_error); "right" is there so that counts over all
# outputs add up.
ERROR_KINDS = ("right", "no answer", "not a step", "wrong operands", "false step", "stops early",
               "wrong answer line")


@dataclasses.dataclass(frozen=True)
class StepCheck:
    steps_true: bool  # every step's value is what its left side comes to (is_true)
    computes_expr: bool  # the steps replay on the expression (replay_step), ending at the answer
    n_steps: int  # lines before the answer line
    error: str | None  # the first problem found, for humans
    error_kind: str | None = None  # the kind of that problem, one of ERROR_KINDS


def check_steps(text, expr):
    """Check the step lines of text against expr (a trusted expression; see the module docstring).
    Nothing before the answer line counts as steps that stop before the expression is computed."""
    if not isinstance(text, str):
        return StepCheck(False, False, 0, f"expected a str, got {type(text).__name__}", "no answer")
    start = text.find(ANSWER_MARKER)
    if start < 0:
        return StepCheck(False, False, 0, "no answer marker 'A:'", "no answer")
    before = text[:start]
    if before and not before.endswith("\n"):
        message = "the answer marker 'A:' does not start a line"
        return StepCheck(False, False, 0, message, "not a step")
    lines = before.split("\n")[:-1]

    states = start_states(expr)
    steps_true, errors = True, []  # errors: (kind, message) in the order they are met
    for k, line in enumerate(lines, start=1):
        step = parse_step(line)
        if step is None:  # nothing after it can be replayed; an earlier error, if any, stays first
            not_a_step = ("not a step", f"line {k} {line!r} is not a step like 9*6=54 or 4+9*6=58")
            kind, error = (errors + [not_a_step])[0]
            return StepCheck(False, False, len(lines), error, kind)
        if states:  # a step the expression does not allow is the first thing wrong with it
            states = replay_step(states, step)
            if not states:
                message = f"line {k} {line!r} is not a part that precedence allows to compute now"
                errors.append(("wrong operands", message))
        if not is_true(step):
            steps_true = False
            errors.append(("false step", f"line {k} {line!r} is false"))

    answer = extract_answer(text)
    finals = {str(number) for number in final_numbers(states)}  # str: answers compare as strings
    computes_expr = answer in finals
    if states and not finals:
        message = "the steps stop before the expression is reduced to one number"
        errors.append(("stops early", message))
    elif answer is None:
        errors.append(("no answer", "no integer after the answer marker"))
    elif finals and not computes_expr:
        message = f"the steps end at {min(finals)} but the answer line says {answer}"
        errors.append(("wrong answer line", message))
    kind, error = errors[0] if errors else (None, None)
    return StepCheck(steps_true, computes_expr, len(lines), error, kind)


# ----------------------------------------------------------------------------
# Solution style

# data.tasks.STYLES, then "other"
STYLE_NAMES = ("careful", "left-to-right", "shortcut", "bare", "other")


def replay_left_to_right(state, step):
    """The expression after step, if step is one operation on the leftmost operator of state
    (ignoring precedence); else None."""
    numbers, ops = state
    if not ops or step.numbers != numbers[:2] or step.ops != ops[:1]:
        return None
    return (step.value,) + numbers[2:], ops[1:]


def solution_style(text, expr):
    """Which of the styles of data.tasks.STYLES text is written in, by its form, right or wrong:
      "bare"           nothing before the answer line
      "shortcut"       steps that replay on expr (replay_step) down to one number, and some line
                       does several operations ("4+9*6=58")
      "careful"        the same, one operation per line
      "left-to-right"  one operation per line, always the leftmost operator, down to one number
      "other"          anything else: no answer, a line that is no step, operands from nowhere,
                       an order precedence does not allow, stopping early
    Where precedence does not change the order, careful and left-to-right texts are the same text:
    careful. Values are taken as written, so a careful solution with a false step is still careful.
    The lines are replayed as check_steps replays them, so a text is "careful" or "shortcut" exactly
    when its steps carry the expression down to one number there."""
    if not isinstance(text, str) or ANSWER_MARKER not in text:
        return "other"
    before = text[: text.find(ANSWER_MARKER)]
    if not before:
        return "bare"
    if not before.endswith("\n"):
        return "other"
    steps = [parse_step(line) for line in before.split("\n")[:-1]]
    if any(step is None for step in steps):
        return "other"
    states = start_states(expr)
    left_to_right = next(iter(states))
    for step in steps:
        states = replay_step(states, step)
        left_to_right = replay_left_to_right(left_to_right, step) if left_to_right else None
    if final_numbers(states):
        several_at_once = any(len(step.ops) > 1 for step in steps)
        return "shortcut" if several_at_once else "careful"
    if left_to_right is not None and not left_to_right[1]:
        return "left-to-right"
    return "other"


# ----------------------------------------------------------------------------
# Summaries

# How a sample was reached: the first three split the answer-correct samples; "wrong answer" is
# there so that counts over all samples add up.
REASONING_KINDS = ("sound", "wrong reasoning", "no reasoning", "wrong answer")


def reasoning_kind(text, problem):
    """One of REASONING_KINDS for a sample text of problem:
      "wrong answer"     the final answer is not right (outcome_reward 0)
      "no reasoning"     right, and nothing before the answer line: the text starts with "A:"
      "sound"            right, and check_steps finds the steps true and computing the expression:
                         every line true, each an allowed part of what is left, down to one number
                         that the answer line copies
      "wrong reasoning"  right, and anything else before the answer line: a false step (even one
                         that a second error compensates), an order precedence does not allow, or
                         lines that do not compute the expression. The false positive."""
    if not isinstance(problem, Problem):
        raise TypeError(f"expected a Problem, got {type(problem).__name__}")
    if extract_answer(text) != gold_answer(problem):
        return "wrong answer"
    if text.startswith(ANSWER_MARKER):
        return "no reasoning"
    check = check_steps(text, problem.expr)
    return "sound" if check.steps_true and check.computes_expr else "wrong reasoning"


def is_false_positive(text, problem):
    """A right final answer reached by wrong reasoning (reasoning_kind "wrong reasoning"). A bare
    right answer is none: it shows no reasoning at all."""
    return reasoning_kind(text, problem) == "wrong reasoning"


def reasoning_counts(texts, problems):
    """{kind: how many samples are of that kind} for every one of REASONING_KINDS;
    texts[k] is a sample for problems[k]."""
    texts, problems = list(texts), list(problems)
    if len(texts) != len(problems):
        raise ValueError(f"expected one problem per text, got {len(texts)} texts and "
                         f"{len(problems)} problems")
    counts = dict.fromkeys(REASONING_KINDS, 0)
    for text, problem in zip(texts, problems):
        counts[reasoning_kind(text, problem)] += 1
    return counts


def _counted(counts, kind):
    if not isinstance(counts, dict) or kind not in counts:
        raise ValueError(f"expected reasoning_counts' dict, with a count for {kind!r}; "
                         f"got {counts!r}")
    return counts[kind]


def false_positive_rate(counts):
    """FPR = wrong reasoning / (sound + wrong reasoning): of the right answers that show reasoning,
    the share whose reasoning is wrong; nan when there are none. counts: from reasoning_counts."""
    wrong = _counted(counts, "wrong reasoning")
    shown = _counted(counts, "sound") + wrong
    return wrong / shown if shown else math.nan


def no_reasoning_share(counts):
    """no reasoning / (sound + wrong reasoning + no reasoning): the share of the right answers that
    are bare; nan when there are none. counts: from reasoning_counts."""
    bare = _counted(counts, "no reasoning")
    right = _counted(counts, "sound") + _counted(counts, "wrong reasoning") + bare
    return bare / right if right else math.nan


def first_error(text, problem):
    """"right" when the final answer is right (sound steps or not); "no answer" when there is
    none; else the kind of the first thing check_steps finds wrong, reading the lines in order:
      "not a step"         a line that is no step
      "wrong operands"     a step whose left side is no part of what is left of the expression
                           that may_compute_at_once allows now: it lost track of the
                           expression, or of precedence
      "false step"         a step whose value is false: it knows where it is, not the fact
      "stops early"        steps that end before one number is left (a bare "A:7" included)
      "wrong answer line"  sound steps, and an answer line that does not copy their result"""
    if extract_answer(text) == gold_answer(problem):
        return "right"
    if extract_answer(text) is None:
        return "no answer"
    return check_steps(text, problem.expr).error_kind


def score(text, problem, format_reward=FORMAT_REWARD):
    """What the verifier says about one completion, in one dict, for the tests and the notebook.
    Training and evaluation (nanorgra.py) do not call it: they use
    outcome_reward and solution_style."""
    check = check_steps(text, problem.expr)
    kind = reasoning_kind(text, problem)
    return {
        "answer": extract_answer(text),
        "correct": kind != "wrong answer",
        "reward": outcome_reward(text, problem, format_reward),
        "steps_true": check.steps_true,
        "computes_expr": check.computes_expr,
        "reasoning": kind,
        "false_positive": kind == "wrong reasoning",
    }
