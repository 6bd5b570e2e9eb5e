"""The synthetic arithmetic task family: expressions, their worked solutions in four styles, the
corpora of the two warm-start stages, and frozen test sets.

An expression is non-negative integers (no leading zeros) joined by the binary operators + - *,
with no parentheses and the usual precedence: * first, then + and - from left to right.
Example: "4+9*6-3".

The careful worked solution reduces one operation per line, all multiplications first (leftmost
first), then + and - left to right, and ends with the answer line:

    Q:4+9*6-3         <- prompt_text(problem)
    9*6=54            <- worked_solution(problem.expr) starts here
    4+54=58
    58-3=55
    A:55              <- the caller appends EOS after this

STYLES writes the same answer in three more ways, the habits of a messy corpus: left to right
ignoring precedence, two operations in one line, and the bare answer. SKILLS and HABITS are the
corpora of the two warm-start stages.

Difficulty levels live in LEVELS, the one place to tune them. Each level has a frozen test set of
TEST_SET_SIZE problems in data/test_sets/<level>.jsonl; every training draw excludes the test
expressions of ALL levels, because a short expression of one level can also be drawn at another
level (and a step is an expression of one operation).
Regenerate the test sets with:  python -m data.tasks
"""
import dataclasses
import functools
import itertools
import json
import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch

# ----------------------------------------------------------------------------
# Levels

OPERATORS = "+-*"
# numpy draws int64 operands, and 10**18 - 1 is the largest power-of-ten bound that fits
MAX_DIGITS = 18


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class Level:
    """One difficulty level. Operands are uniform in [min_operand, 10**n_digits - 1]; an operand
    next to a "*" is uniform in [min_operand, 10**mul_digits - 1] instead, which keeps products
    (and the lines that compute them) short. min_operand=1 leaves out zeros, which make many long
    expressions trivial (0*7*...).
    A level with steps_of set is a level of atoms: each problem is one step "x<op>y" taken from the
    careful solution of a random expression of the level steps_of names (draw_step), and its own
    digit fields are unused."""

    name: str
    n_ops: tuple  # (min, max) number of operators, both inclusive
    n_digits: int
    operators: str  # a subset of "+-*"
    mul_digits: int = 1
    min_operand: int = 0
    # whether two * may follow each other ("2*3*4"), making multi-digit products
    mul_chains: bool = True
    # a * right after a + or -: left to right gives another order (and value)
    needs_precedence: bool = False
    nonnegative: bool = False  # no step of the careful solution goes below zero
    steps_of: str | None = None  # the level whose solution steps this level poses as problems

    def __post_init__(self):
        validate_level(self)


def validate_level(level):
    """Raise ValueError naming the first bad field of level."""
    if not isinstance(level.name, str) or not level.name:
        raise ValueError(f"level name must be a non-empty str, got {level.name!r}")
    n_ops = level.n_ops
    if not (isinstance(n_ops, tuple) and len(n_ops) == 2 and all(_is_int(k) for k in n_ops)):
        raise ValueError(f"level {level.name!r}: n_ops must be a (min, max) tuple of two ints, "
                         f"got {n_ops!r}")
    if n_ops[0] < 1:
        raise ValueError(f"level {level.name!r}: n_ops min must be >= 1, got {n_ops[0]}")
    if n_ops[1] < n_ops[0]:
        raise ValueError(f"level {level.name!r}: n_ops max must be >= min, got {n_ops!r}")
    if not _is_int(level.n_digits) or not 1 <= level.n_digits <= MAX_DIGITS:
        raise ValueError(f"level {level.name!r}: n_digits must be an int in [1, {MAX_DIGITS}], "
                         f"got {level.n_digits!r}")
    if not isinstance(level.operators, str) or not level.operators:
        raise ValueError(f"level {level.name!r}: operators must be a non-empty str, "
                         f"got {level.operators!r}")
    for op in level.operators:
        if op not in OPERATORS:
            raise ValueError(f"level {level.name!r}: unknown operator {op!r}; "
                             f"expected some of {OPERATORS!r}")
    if len(set(level.operators)) != len(level.operators):
        # A repeated operator would silently be drawn more often than the others.
        raise ValueError(f"level {level.name!r}: operators must not repeat, "
                         f"got {level.operators!r}")
    if not _is_int(level.mul_digits) or not 1 <= level.mul_digits <= level.n_digits:
        raise ValueError(
            f"level {level.name!r}: mul_digits must be an int in [1, n_digits={level.n_digits}], "
            f"got {level.mul_digits!r}"
        )
    if not _is_int(level.min_operand) or not 0 <= level.min_operand < 10**level.mul_digits - 1:
        raise ValueError(f"level {level.name!r}: min_operand must be an int "
                         f"in [0, {10**level.mul_digits - 2}] (below the largest operand), "
                         f"got {level.min_operand!r}")
    mixes_mul_and_add = "*" in level.operators and set(level.operators) & set("+-")
    if level.needs_precedence and not (mixes_mul_and_add and n_ops[0] >= 2):
        raise ValueError(f"level {level.name!r}: needs_precedence needs '*' and '+' or '-' among "
                         f"the operators and at least 2 operators, got {level.operators!r} "
                         f"and n_ops {n_ops!r}")
    steps_of = level.steps_of
    if steps_of is not None:
        if not isinstance(steps_of, str) or not steps_of or steps_of == level.name:
            raise ValueError(f"level {level.name!r}: steps_of must name another level, "
                             f"got {steps_of!r}")
        if n_ops != (1, 1):
            raise ValueError(f"level {level.name!r}: a level of steps has n_ops (1, 1), "
                             f"got {n_ops!r}")


# Easy to hard: the warm start trains on atoms (single steps of mix3 solutions) and mix2, RL on
# mix3 (answers only), and ood4 (longer expressions) is never trained on. Atoms have no test set of
# their own: a one-digit fact space is too small to hold some of it out; atom_check_steps is the
# set the atoms are measured on. No two * in a row and no step below zero: every step of a careful
# solution is a fact the warm start can master (STEP_KINDS). In every mix3 problem a * follows
# a + or a -, so that precedence decides the order: the one thing the careful habit gets right
# and the others do not.
LEVELS = {
    "atoms": Level("atoms", n_ops=(1, 1), n_digits=1, operators="+-*", steps_of="mix3"),
    "mix2": Level("mix2", n_ops=(2, 3), n_digits=1, operators="+-*", mul_chains=False,
                  nonnegative=True),
    "mix3": Level("mix3", n_ops=(3, 3), n_digits=1, operators="+-*", mul_chains=False,
                  needs_precedence=True, nonnegative=True),
    "ood4": Level("ood4", n_ops=(4, 5), n_digits=1, operators="+-*", mul_chains=False,
                  nonnegative=True),
}
RL_LEVEL = "mix3"
OOD_LEVEL = "ood4"
ATOM_LEVEL = "atoms"  # single steps of RL-level solutions: the skills the warm start must master


def get_level(level):
    """The Level for a level name (or the Level itself)."""
    if isinstance(level, Level):
        return level
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {list(LEVELS)}")
    return LEVELS[level]


# ----------------------------------------------------------------------------
# Expressions: parse, reduce, evaluate

# [0-9] rather than \d: \d also matches other scripts' digits, which int() would happily accept.
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
    """Whether precedence allows computing ops[i] before the others: * always; + or - only when
    the operator on its left is absent or + (a-(b+c) != a-b+c) and the one on its right is
    absent or not * (a+b*c)."""
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


def leftmost_position(ops):
    """The precedence misconception's next reduction: always the leftmost operator, * or not."""
    return 0


def solution_steps(expr, position=canonical_position):
    """The reductions of expr as (x, op, y, z) tuples, in the order position(ops) picks them,
    and the number left."""
    numbers, ops = parse_expression(expr)
    steps = []
    while ops:
        i = position(ops)
        x, op, y = numbers[i], ops[i], numbers[i + 1]
        numbers, ops = reduce_at(numbers, ops, i)
        steps.append((x, op, y, numbers[i]))
    return steps, numbers[0]


def evaluate(expr):
    """The value of expr under standard precedence."""
    return solution_steps(expr)[1]


def evaluate_left_to_right(expr):
    """The value of expr computed strictly left to right, ignoring precedence: "2+3*4" -> 20."""
    return solution_steps(expr, leftmost_position)[1]


def precedence_matters(expr):
    """Whether computing left to right gives another value than precedence does ("2+3*4" yes;
    "2*3+4" and "2+3*1" no): exactly where the left-to-right misconception gets a problem wrong."""
    return evaluate_left_to_right(expr) != evaluate(expr)


# ----------------------------------------------------------------------------
# Solution styles: ways of writing out the same answer. "careful" is the worked solution the skill
# stage teaches; the others are the habits of a messy corpus, and they differ in how often they
# reach the right answer:
#
#   careful        3*4=12 / 12+12=24 / 24-5=19 / A:19    one operation per line, * first:
#                                                        right if the facts are
#   left-to-right  12+3=15 / 15*4=60 / 60-5=55 / A:55    one operation per line, ignoring
#                                                        precedence: wrong exactly where
#                                                        precedence matters
#   shortcut       12+3*4=24 / 24-5=19 / A:19            two operations in one line where they
#                                                        chain: more mental arithmetic per line,
#                                                        more slips
#   bare           A:19                                  the answer with no work: a guess on
#                                                        long expressions
# (Q:12+3*4-5 above; "/" stands for a new line.)


def _written(steps, answer):
    return "\n".join([f"{x}{op}{y}={z}" for x, op, y, z in steps] + [f"A:{answer}"])


def worked_solution(expr):
    """The careful style: one line "x<op>y=z" per reduction in the canonical order,
    then "A:<answer>"."""
    return _written(*solution_steps(expr))


def left_to_right_solution(expr):
    """The precedence misconception: one line per reduction, always the leftmost operator,
    then its answer."""
    return _written(*solution_steps(expr, leftmost_position))


def shortcut_solution(expr):
    """Two operations in one line wherever the canonical order lets two reductions chain (the result
    of one is an operand of the next): "4+9*6-3" -> "4+9*6=58 / 58-3=55 / A:55". Every line is a
    true, correctly ordered sub-expression; what changes is how much is computed in one go."""
    numbers, ops = parse_expression(expr)
    lines = []
    while ops:
        i = canonical_position(ops)
        line = f"{numbers[i]}{ops[i]}{numbers[i + 1]}"
        numbers, ops = reduce_at(numbers, ops, i)  # the result is numbers[i]
        j = canonical_position(ops) if ops else None
        if j == i:  # the result is the left operand of the next reduction: "x op y op2 w"
            line += f"{ops[j]}{numbers[j + 1]}"
            numbers, ops = reduce_at(numbers, ops, j)
        elif j == i - 1:  # it is the right operand: "w op2 x op y" (no * is left: the order holds)
            line = f"{numbers[j]}{ops[j]}" + line
            numbers, ops = reduce_at(numbers, ops, j)
            i = j
        lines.append(f"{line}={numbers[i]}")
    return "\n".join(lines + [f"A:{numbers[0]}"])


def bare_answer(expr):
    """The answer alone, "A:19": how much of real text states results without the work."""
    return f"A:{evaluate(expr)}"


STYLES = {"careful": worked_solution, "left-to-right": left_to_right_solution,
          "shortcut": shortcut_solution, "bare": bare_answer}


# ----------------------------------------------------------------------------
# Step kinds: the atoms of worked solutions

# The kinds of step in careful solutions, and how often the atoms level draws each, whatever their
# frequency in solutions: by how hard each is to master (measured: the one-digit facts come first,
# the carries and borrows between two products, "24+21" and "72-25", last), so that every kind is
# mastered in as few steps as possible (README, "Design notes").
STEP_KINDS = {"1-digit +": 0.5, "1-digit -": 0.5, "1-digit *": 0.5, "multi-digit +": 1,
              "multi-digit -": 1, "two multi-digit +": 3, "two multi-digit -": 3}


def step_kind(x, op, y):
    """The kind of the step x<op>y: its operator, and whether one, both or neither operand has
    several digits ("24-21", two products, carries and borrows the most). The careful solutions of
    the levels (one-digit numbers, no chained products, never below zero) use exactly the
    STEP_KINDS: * comes first and never meets a product."""
    digits = sum(abs(n) >= 10 for n in (x, y))
    return f"{('1-digit', 'multi-digit', 'two multi-digit')[digits]} {op}"


def atom_check_steps(level, per_kind=200, seed=20_261_122, patience=5_000):
    """The atoms the warm start must master, as a check set: up to per_kind distinct steps
    "x<op>y" -> z of each of the STEP_KINDS, from the careful solutions of random expressions of
    level (seeded, so always the same set). A kind with fewer distinct steps (there are 55 one-digit
    subtractions that stay >= 0) gets all that turn up before patience draws in a row bring nothing
    new. Steps are facts, not held-out problems: there are only 100 one-digit products, and
    training has seen them all."""
    level = get_level(level)
    rng = np.random.default_rng(seed)
    found, stale = {kind: {} for kind in STEP_KINDS}, 0
    while stale < patience and any(len(steps) < per_kind for steps in found.values()):
        stale += 1
        for x, op, y, z in solution_steps(draw_expression(level, rng))[0]:
            steps = found[step_kind(x, op, y)]
            if len(steps) < per_kind and f"{x}{op}{y}" not in steps:
                steps[f"{x}{op}{y}"], stale = z, 0
    return found


def expression_kind(expr):
    """step_kind of a one-operation expression ("81*9" -> "multi-digit *")."""
    numbers, ops = parse_expression(expr)
    if len(ops) != 1:
        raise ValueError(f"expected an expression of one operation, got {expr!r}")
    return step_kind(numbers[0], ops[0], numbers[1])


# ----------------------------------------------------------------------------
# Problems and their text


@dataclasses.dataclass(frozen=True)
class Problem:
    expr: str
    answer: int
    level: str


def prompt_text(problem):
    return f"Q:{problem.expr}\n"


# ----------------------------------------------------------------------------
# Sampling

# This many rejected draws in a row mean the level has (almost) no admissible problems left.
MAX_REJECTIONS_IN_A_ROW = 10_000


def draw_step(level, rng):
    """One step "x<op>y" of the careful solution of a random expression of level. Its kind is drawn
    first, with the weights of STEP_KINDS, then a step of that kind as often as drawing expressions
    until one has a step of the kind, and one of its steps of that kind, would give it (step_table):
    the draw follows the emphasis chosen, not how often a kind happens to occur."""
    weights = np.array(list(STEP_KINDS.values()), dtype=float)
    kind = list(STEP_KINDS)[int(rng.choice(len(STEP_KINDS), p=weights / weights.sum()))]
    steps, probabilities = step_table(level).get(kind, ([], []))
    if not steps:
        raise ValueError(f"level {level.name!r}: no step of kind {kind!r} in its solutions")
    return steps[int(rng.choice(len(steps), p=probabilities))]


MAX_ENUMERATED = 2_000_000  # expressions step_table reads one by one: a few seconds


@functools.cache
def step_table(level):
    """{kind: (steps, probabilities)} for every kind of step_kind: each step "x<op>y" of that kind
    in the careful solutions of level's expressions, and the chance that rejection sampling returns
    it (draw expressions until one has a step of the kind, then take one of those steps at random):
        P(step | kind) = sum over expressions e with the kind of P(e) n_e(step) / n_e(kind) / Z_kind
    with P(e) as draw_expression draws e, n_e the steps of e (of the kind, or equal to step), and
    Z_kind the chance that an expression has the kind. Computed exactly, once, by reading every
    expression of level: a draw is then one choice, instead of a loop of rejected expressions."""
    weights = {}  # kind -> {step: weight}
    for expr, p in expressions_of(level):
        steps = [(f"{x}{op}{y}", step_kind(x, op, y)) for x, op, y, _ in solution_steps(expr)[0]]
        for kind in {k for _, k in steps}:
            of_kind = [step for step, k in steps if k == kind]
            of_this_kind = weights.setdefault(kind, {})
            for step in of_kind:
                of_this_kind[step] = of_this_kind.get(step, 0.0) + p / len(of_kind)
    table = {}
    for kind, w in weights.items():
        total = sum(w.values())
        table[kind] = (list(w), [x / total for x in w.values()])
    return table


def expressions_of(level):
    """Every expression draw_expression can return for level, with its chance under the draw before
    the rules reject some (the rules only renormalise it): the number of operators, each operator
    and each operand are drawn uniformly. A ValueError if there are more than MAX_ENUMERATED."""
    n_choices = level.n_ops[1] - level.n_ops[0] + 1
    count = sum(len(level.operators) ** n * (10 ** level.n_digits) ** (n + 1)
                for n in range(level.n_ops[0], level.n_ops[1] + 1))
    if count > MAX_ENUMERATED:
        raise ValueError(f"level {level.name!r} has about {count:,} expressions, more than "
                         f"MAX_ENUMERATED ({MAX_ENUMERATED:,}) for the steps of its solutions")
    for n_ops in range(level.n_ops[0], level.n_ops[1] + 1):
        for ops in itertools.product(level.operators, repeat=n_ops):
            if not rules_allow(level, ops):
                continue
            ranges = [range(level.min_operand, 10 ** operand_digits(level, ops, i))
                      for i in range(n_ops + 1)]
            p = 1 / n_choices / len(level.operators) ** n_ops
            for r in ranges:
                p /= len(r)
            for operands in itertools.product(*ranges):
                expr = "".join(f"{x}{op}" for x, op in zip(operands, ops)) + str(operands[-1])
                if not (level.nonnegative and any(z < 0 for *_, z in solution_steps(expr)[0])):
                    yield expr, p


def operand_digits(level, ops, i):
    """How many digits operand i may have: mul_digits next to a *, else n_digits."""
    multiplied = (i > 0 and ops[i - 1] == "*") or (i < len(ops) and ops[i] == "*")
    return level.mul_digits if multiplied else level.n_digits


def rules_allow(level, ops):
    """The level's rules on its operators: no chained products where mul_chains is False, and
    a * right after a + or - where needs_precedence is True."""
    pattern = "".join(ops)
    chains_ok = level.mul_chains or "**" not in pattern
    precedence_ok = not level.needs_precedence or "+*" in pattern or "-*" in pattern
    return chains_ok and precedence_ok


def draw_expression(level, rng):
    """A random expression of level, drawn with rng (a np.random.Generator), drawn again until the
    level's rules hold (no chained products, enough *, no step below zero)."""
    if level.steps_of is not None:
        return draw_step(get_level(level.steps_of), rng)
    while True:
        n_ops = int(rng.integers(level.n_ops[0], level.n_ops[1] + 1))
        ops = [level.operators[int(rng.integers(len(level.operators)))] for _ in range(n_ops)]
        parts = []
        for i in range(n_ops + 1):
            digits = operand_digits(level, ops, i)
            parts.append(str(int(rng.integers(level.min_operand, 10**digits))))
            if i < n_ops:
                parts.append(ops[i])
        expr = "".join(parts)
        if not rules_allow(level, ops):
            continue
        if not (level.nonnegative and any(z < 0 for *_, z in solution_steps(expr)[0])):
            return expr


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
                    f"level {level.name!r}: {rejected} draws in a row were excluded or repeated "
                    f"after {len(problems)} of {n} problems; "
                    "the level's problem space is too small for this request"
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


# the levels with a test set
TESTED_LEVELS = tuple(name for name, level in LEVELS.items() if level.steps_of is None)


def test_set_path(level):
    if get_level(level).name not in TESTED_LEVELS:
        raise ValueError(f"level {get_level(level).name!r} has no test set; "
                         f"the levels with one: {list(TESTED_LEVELS)}")
    return TEST_SET_DIR / f"{get_level(level).name}.jsonl"


def test_set_rng(level):
    # Seeded by the level's name (crc32, stable across runs, unlike the salted hash()), so adding,
    # removing or reordering levels leaves the other levels' test sets unchanged.
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
                raise ValueError(f"{test_set_path(name)}: wrong answer {problem.answer} "
                                 f"for {problem.expr!r}")
            problems.append(problem)
    return tuple(problems)


def load_test_set(level):
    return list(_read_test_set(get_level(level).name))


def test_exprs(levels=None):
    """The union of the test expressions of levels (default: all levels), to keep out of
    every training draw."""
    return _test_exprs(tuple(TESTED_LEVELS if levels is None else levels))


@functools.cache
def _test_exprs(names):
    return frozenset(p.expr for name in names for p in load_test_set(name))


def write_test_sets():
    """Regenerate every level's test set file; returns {level name: number of problems}. Each file
    is written whole or not at all: to a temporary file, then renamed over the old one."""
    counts = {}
    for name in TESTED_LEVELS:
        problems = generate_test_set(name)
        rows = [json.dumps({"expr": p.expr, "answer": p.answer}) + "\n" for p in problems]
        path = test_set_path(name)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text("".join(rows))
        os.replace(temporary, path)
        counts[name] = len(problems)
    _read_test_set.cache_clear()
    _test_exprs.cache_clear()
    return counts


# ----------------------------------------------------------------------------
# Training draws


# The random streams of a step (step_rngs): each kind of draw has its own, so that adding a draw of
# one kind never shifts the others. experiments/study.py adds its own streams above these.
STREAMS = dict(skills=1, prompts=2, minibatches=3, habits=4)


def step_rngs(seed, step, stream):
    """A numpy and a torch generator for one step of a warm-start stage or of RL, keyed by
    (seed, step, stream): no state to carry, so resume is exact."""
    np_rng = np.random.default_rng([seed, step, stream])
    return np_rng, torch.Generator().manual_seed(int(np_rng.integers(2**62)))


def train_problems(level, n, rng):
    """n problems of level for training: never an expression from any level's test set."""
    return sample_problems(level, n, rng, exclude=test_exprs())


def apportion(n, weights):
    """n split into whole counts in proportion to weights (a dict name -> weight > 0), by largest
    remainder, ties to the earlier name: {"a": 1, "b": 1, "c": 1} and n = 64 -> 22, 21, 21.
    Exact in every batch, no sampling noise."""
    if not weights or any(not (isinstance(w, (int, float)) and w > 0) for w in weights.values()):
        raise ValueError(f"weights must be a non-empty dict of numbers > 0, got {weights!r}")
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    total = sum(weights.values())
    exact = {name: n * w / total for name, w in weights.items()}
    counts = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(exact, key=lambda name: counts[name] - exact[name])
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


# A corpus is what one warm-start stage trains on: level -> (weight, styles), the styles a dict
# style -> weight. Levels and, within a level, styles come in exact proportions (apportion)
# in every batch.
CAREFUL = {"careful": 1}
MESSY = {"careful": 1, "left-to-right": 3, "shortcut": 2, "bare": 2}

# The warm start has two stages (warmstart.py), as an LLM has pre-training and mid-training:
#   SKILLS  the atoms of RL-level solutions and careful worked solutions: the skill RL will need,
#           mastered first
#   HABITS  the same skills again (or they are forgotten), and a messy corpus of multi-step
#           problems written in four styles: habits that are right at very different rates, for
#           RL (answers only) to select from
SKILLS = {"atoms": (1.5, CAREFUL), "mix2": (1, CAREFUL)}
HABITS = {"atoms": (1, CAREFUL), "mix2": (2, MESSY)}


def check_corpus(corpus):
    """ValueError naming the first unknown level or style of corpus."""
    for level, (_weight, styles) in corpus.items():
        get_level(level)
        for style in styles:
            if style not in STYLES:
                raise ValueError(f"level {level!r}: unknown style {style!r}; "
                                 f"expected some of {list(STYLES)}")


def corpus_examples(corpus, n, rng):
    """n training (problem, style) pairs of corpus, shuffled; the text of a pair is
    STYLES[style](problem.expr)."""
    check_corpus(corpus)
    pairs = []
    for level, count in apportion(n, {level: w for level, (w, _) in corpus.items()}).items():
        problems = train_problems(level, count, rng)
        styles = [s for s, k in apportion(count, corpus[level][1]).items() for _ in range(k)]
        pairs += [(problems[i], styles[j]) for i, j in zip(range(count), rng.permutation(count))]
    return [pairs[i] for i in rng.permutation(n)]


if __name__ == "__main__":
    for name, count in write_test_sets().items():
        print(f"{test_set_path(name)}: {count} problems")
