"""The synthetic arithmetic task family: expressions, their worked solutions, and frozen test sets.

An expression is non-negative integers (no leading zeros) joined by the binary operators + - *, with no
parentheses and the usual precedence: * first, then + and - from left to right. Example: "12+3*4-5".

The worked solution reduces one operation per line, all multiplications first (leftmost first), then + and -
left to right, and ends with the answer line:

    Q:12+3*4-5        <- prompt_text(problem)
    3*4=12            <- sft_completion(problem) starts here
    12+12=24
    24-5=19
    A:19              <- the caller appends EOS after this

Difficulty levels live in LEVELS, the one place to tune them. Each level has a frozen test set of
TEST_SET_SIZE problems in data/test_sets/<level>.jsonl; every training draw excludes the test expressions of
ALL levels, because a short expression of one level can also be drawn at another level.
Regenerate the test sets with:  python -m data.tasks
"""
import dataclasses
import functools
import json
import os
import re
import tempfile
import zlib
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------
# Levels

OPERATORS = "+-*"
MAX_DIGITS = 18  # numpy draws int64 operands, and 10**18 - 1 is the largest power-of-ten bound that fits


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class Level:
    """One difficulty level. Operands are uniform in [min_operand, 10**n_digits - 1]; an operand next to a "*" is
    uniform in [min_operand, 10**mul_digits - 1] instead, which keeps products (and the lines that compute them)
    short. min_operand=1 leaves out zeros, which make many long expressions trivial (0*7*...)."""

    name: str
    n_ops: tuple  # (min, max) number of operators, both inclusive
    n_digits: int
    operators: str  # a subset of "+-*"
    mul_digits: int = 1
    min_operand: int = 0

    def __post_init__(self):
        validate_level(self)


def validate_level(level):
    """Raise ValueError naming the first bad field of level."""
    if not isinstance(level.name, str) or not level.name:
        raise ValueError(f"level name must be a non-empty str, got {level.name!r}")
    n_ops = level.n_ops
    if not (isinstance(n_ops, tuple) and len(n_ops) == 2 and all(_is_int(k) for k in n_ops)):
        raise ValueError(f"level {level.name!r}: n_ops must be a (min, max) tuple of two ints, got {n_ops!r}")
    if n_ops[0] < 1:
        raise ValueError(f"level {level.name!r}: n_ops min must be >= 1, got {n_ops[0]}")
    if n_ops[1] < n_ops[0]:
        raise ValueError(f"level {level.name!r}: n_ops max must be >= min, got {n_ops!r}")
    if not _is_int(level.n_digits) or not 1 <= level.n_digits <= MAX_DIGITS:
        raise ValueError(f"level {level.name!r}: n_digits must be an int in [1, {MAX_DIGITS}], got {level.n_digits!r}")
    if not isinstance(level.operators, str) or not level.operators:
        raise ValueError(f"level {level.name!r}: operators must be a non-empty str, got {level.operators!r}")
    for op in level.operators:
        if op not in OPERATORS:
            raise ValueError(f"level {level.name!r}: unknown operator {op!r}; expected some of {OPERATORS!r}")
    if len(set(level.operators)) != len(level.operators):
        # A repeated operator would silently be drawn more often than the others.
        raise ValueError(f"level {level.name!r}: operators must not repeat, got {level.operators!r}")
    if not _is_int(level.mul_digits) or not 1 <= level.mul_digits <= level.n_digits:
        raise ValueError(
            f"level {level.name!r}: mul_digits must be an int in [1, n_digits={level.n_digits}], got {level.mul_digits!r}"
        )
    if not _is_int(level.min_operand) or not 0 <= level.min_operand < 10**level.mul_digits - 1:
        raise ValueError(f"level {level.name!r}: min_operand must be an int in [0, {10**level.mul_digits - 2}] "
                         f"(below the largest operand), got {level.min_operand!r}")


# Easy to hard. SFT teaches the format on the first two, RL trains on the third, the fourth is never trained on.
LEVELS = {
    "add1": Level("add1", n_ops=(1, 1), n_digits=2, operators="+-"),
    "mix2": Level("mix2", n_ops=(1, 3), n_digits=1, operators="+-*"),
    "mix3": Level("mix3", n_ops=(3, 3), n_digits=1, operators="+-*"),
    "ood4": Level("ood4", n_ops=(4, 5), n_digits=1, operators="+-*"),
}
SFT_LEVELS = ("add1", "mix2")
RL_LEVEL = "mix3"
OOD_LEVEL = "ood4"


def get_level(level):
    """The Level for a level name (or the Level itself)."""
    if isinstance(level, Level):
        return level
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {list(LEVELS)}")
    return LEVELS[level]


# ----------------------------------------------------------------------------
# Expressions: parse, reduce, evaluate

# [0-9] rather than \d: \d also matches other scripts' digits, which int() would then happily accept.
_NUMBER = r"(?:0|[1-9][0-9]*)"
_EXPRESSION = re.compile(rf"{_NUMBER}(?:[+\-*]{_NUMBER})*")


def parse_expression(expr):
    """Split "12+3*4" into ([12, 3, 4], ["+", "*"]). Raises ValueError on anything else."""
    if not isinstance(expr, str) or not _EXPRESSION.fullmatch(expr):
        raise ValueError(
            f"malformed expression {expr!r}; expected non-negative integers without leading zeros "
            f"joined by operators from {OPERATORS!r}"
        )
    numbers = [int(n) for n in re.split(r"[+\-*]", expr)]
    ops = re.findall(r"[+\-*]", expr)
    return numbers, ops


def apply_op(x, op, y):
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    raise ValueError(f"unknown operator {op!r}; expected one of {OPERATORS!r}")


def is_legal_reduction(ops, i):
    """Whether precedence allows computing ops[i] before the others: * always; + or - only when the operator
    on its left is absent or + (a-(b+c) != a-b+c) and the one on its right is absent or not * (a+b*c)."""
    if ops[i] == "*":
        return True
    left_ok = i == 0 or ops[i - 1] == "+"
    right_ok = i == len(ops) - 1 or ops[i + 1] != "*"
    return left_ok and right_ok


def reduce_at(numbers, ops, i):
    """The expression with numbers[i] ops[i] numbers[i+1] replaced by its value (new lists)."""
    value = apply_op(numbers[i], ops[i], numbers[i + 1])
    return numbers[:i] + [value] + numbers[i + 2 :], ops[:i] + ops[i + 1 :]


def canonical_position(ops):
    """The canonical next reduction: the leftmost *, or else the leftmost operator."""
    return ops.index("*") if "*" in ops else 0


def solution_steps(expr):
    """The canonical reductions of expr as (x, op, y, z) tuples, in order."""
    numbers, ops = parse_expression(expr)
    steps = []
    while ops:
        i = canonical_position(ops)
        x, op, y = numbers[i], ops[i], numbers[i + 1]
        numbers, ops = reduce_at(numbers, ops, i)
        steps.append((x, op, y, numbers[i]))
    return steps, numbers[0]


def evaluate(expr):
    """The value of expr under standard precedence."""
    return solution_steps(expr)[1]


def worked_solution(expr):
    """One line "x<op>y=z" per reduction, then "A:<answer>", joined by newlines."""
    steps, answer = solution_steps(expr)
    lines = [f"{x}{op}{y}={z}" for x, op, y, z in steps]
    return "\n".join(lines + [f"A:{answer}"])


# ----------------------------------------------------------------------------
# Problems and their text


@dataclasses.dataclass(frozen=True)
class Problem:
    expr: str
    answer: int
    level: str


def prompt_text(problem):
    return f"Q:{problem.expr}\n"


def sft_completion(problem):
    """The target completion for supervised fine-tuning (the caller appends EOS)."""
    return worked_solution(problem.expr)


def direct_completion(problem):
    """The bare answer with no work shown, "A:59": how much of real text states results (the caller appends EOS)."""
    return f"A:{problem.answer}"


# ----------------------------------------------------------------------------
# Sampling

# A run of this many rejected draws in a row means the level has (almost) no admissible problems left.
MAX_REJECTIONS_IN_A_ROW = 10_000


def draw_expression(level, rng):
    """A random expression of level, drawn with rng (a np.random.Generator)."""
    n_ops = int(rng.integers(level.n_ops[0], level.n_ops[1] + 1))
    ops = [level.operators[int(rng.integers(len(level.operators)))] for _ in range(n_ops)]
    parts = []
    for i in range(n_ops + 1):
        multiplied = (i > 0 and ops[i - 1] == "*") or (i < n_ops and ops[i] == "*")
        digits = level.mul_digits if multiplied else level.n_digits
        parts.append(str(int(rng.integers(level.min_operand, 10**digits))))
        if i < n_ops:
            parts.append(ops[i])
    return "".join(parts)


def make_problem(level, rng):
    level = get_level(level)
    expr = draw_expression(level, rng)
    return Problem(expr=expr, answer=evaluate(expr), level=level.name)


def sample_problems(level, n, rng, exclude=frozenset(), distinct=False):
    """n problems of level whose expressions are not in exclude (and, if distinct, not repeated)."""
    level = get_level(level)
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    problems, seen, rejected = [], set(), 0
    while len(problems) < n:
        problem = make_problem(level, rng)
        if problem.expr in exclude or (distinct and problem.expr in seen):
            rejected += 1
            if rejected >= MAX_REJECTIONS_IN_A_ROW:
                raise ValueError(
                    f"level {level.name!r}: {rejected} draws in a row were excluded or repeated after "
                    f"{len(problems)} of {n} problems; the level's problem space is too small for this request"
                )
            continue
        rejected = 0
        seen.add(problem.expr)
        problems.append(problem)
    return problems


# ----------------------------------------------------------------------------
# Frozen test sets

TEST_SET_DIR = Path(__file__).resolve().parent / "test_sets"
TEST_SET_SIZE = 500
TEST_SET_SEED = 20_260_318


def test_set_path(level):
    return TEST_SET_DIR / f"{get_level(level).name}.jsonl"


def test_set_rng(level):
    # Seeded by the level's name (crc32, stable across runs, unlike the salted hash()), so adding, removing
    # or reordering levels leaves the other levels' test sets unchanged.
    name = get_level(level).name
    return np.random.default_rng([TEST_SET_SEED, zlib.crc32(name.encode())])


def generate_test_set(level):
    """The test set of level, regenerated from its fixed seed: TEST_SET_SIZE distinct problems."""
    return sample_problems(level, TEST_SET_SIZE, test_set_rng(level), distinct=True)


@functools.cache
def _read_test_set(name):
    problems = []
    with open(test_set_path(name)) as f:
        for line in f:
            row = json.loads(line)
            problem = Problem(expr=row["expr"], answer=row["answer"], level=name)
            if evaluate(problem.expr) != problem.answer:
                raise ValueError(f"{test_set_path(name)}: wrong answer {problem.answer} for {problem.expr!r}")
            problems.append(problem)
    return tuple(problems)


def load_test_set(level):
    return list(_read_test_set(get_level(level).name))


def test_exprs(levels=None):
    """The union of the test expressions of levels (default: all levels), to keep out of every training draw."""
    names = LEVELS if levels is None else levels
    return frozenset(p.expr for name in names for p in load_test_set(name))


def write_atomic(path, text):
    """Write text to path via a temporary file and os.replace, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_test_sets():
    """Regenerate every level's test set file; returns {level name: number of problems}."""
    counts = {}
    for name in LEVELS:
        problems = generate_test_set(name)
        rows = [json.dumps({"expr": p.expr, "answer": p.answer}) + "\n" for p in problems]
        write_atomic(test_set_path(name), "".join(rows))
        counts[name] = len(problems)
    _read_test_set.cache_clear()
    return counts


# ----------------------------------------------------------------------------
# Training draws


def train_problems(level, n, rng):
    """n problems of level for training: never an expression from any level's test set."""
    return sample_problems(level, n, rng, exclude=test_exprs())


def sft_examples(levels, n, rng):
    """n training problems split evenly over levels (the first ones get the remainder), shuffled together."""
    if not levels:
        raise ValueError(f"levels must name at least one level, got {levels!r}")
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    problems = []
    for k, name in enumerate(levels):
        share = n // len(levels) + (1 if k < n % len(levels) else 0)
        problems += train_problems(name, share, rng)
    return [problems[i] for i in rng.permutation(len(problems))]


if __name__ == "__main__":
    for name, count in write_test_sets().items():
        print(f"{test_set_path(name)}: {count} problems")
