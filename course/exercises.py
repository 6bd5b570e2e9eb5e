"""
The checks of the notebook's exercises. Each check_<name>(student_fn) calls the student's function
and the project's own function (nanorgra.py) on the same seeded random tensors, compares the values
(and, where the loss needs one, the gradients), prints PASS or FAIL with the largest difference, and
returns True or False.

A function that raises NotImplementedError (the stub the notebook ships: raise
NotImplementedError("your code here")) is unanswered: the check says so and checks the answer in
course/solutions.py in its place, so that the shipped notebook runs clean and its checks pass.

    from course import exercises
    exercises.check_k2(my_k2)   # PASS: k2 estimate (your function): the same as nanorgra...
"""

from typing import Callable, NamedTuple

import torch

import nanorgra
from course import solutions

TOLERANCE = 1e-5  # |yours - nanorgra's| <= TOLERANCE * (1 + |nanorgra's|), value by value


class Exercise(NamedTuple):
    """One exercise: what the check compares."""
    name: str  # "leave-one-out advantages"
    project: str  # the project's function, as the messages name it
    project_fn: Callable  # takes the same arguments as the student's function
    solution_fn: Callable  # course/solutions.py's answer
    arg_names: tuple  # the arguments' names, for the messages
    cases: Callable  # () -> a list of argument tuples, seeded
    grad_args: tuple = ()  # the arguments whose gradients must match too
    hint: str = ""  # printed with a FAIL


def generator(seed):
    return torch.Generator().manual_seed(seed)


# -----------------------------------------------------------------------------
# Seeded random inputs


def reward_cases(values, seed):
    """(B, G) rewards drawn from values, for G = 2, 4, 8; the first group all equal, the second
    all equal to another value: the zero-variance groups."""
    cases = []
    for k, G in enumerate((2, 4, 8)):
        gen = generator(seed + k)
        choice = torch.randint(len(values), (6, G), generator=gen)
        rewards = torch.tensor(values)[choice]
        rewards[0] = values[-1]
        rewards[1] = values[0]
        cases.append((rewards,))
    return cases


def logprob_pair(shape, spread, gen):
    """Log-probs of sampled tokens (<= 0) and a second set that differs from them by ~spread."""
    logp = -3 * torch.rand(shape, generator=gen)
    other = (logp + spread * torch.randn(shape, generator=gen)).clamp(max=0)
    return logp, other


def completion_mask(n, length, gen):
    """(n, length) bool: each row real on its first 1..length tokens, padding after."""
    lengths = torch.randint(1, length + 1, (n,), generator=gen)
    lengths[0] = length  # one full row
    return torch.arange(length)[None, :] < lengths[:, None]


def leave_one_out_cases():
    return reward_cases([0.0, 0.1, 1.0, 1.1], seed=10)


def positive_only_cases():
    return reward_cases([0.0, 1.0], seed=20)


def k2_cases():
    cases = []
    for k, (shape, spread) in enumerate((((4, 7), 0.7), ((3, 12), 2.0), ((1, 5), 0.1))):
        logp, ref_logp = logprob_pair(shape, spread, generator(30 + k))
        cases.append((logp, ref_logp))
    return cases


def token_mean_cases():
    cases = []
    for k, (n, length) in enumerate(((5, 9), (3, 20), (8, 4))):
        gen = generator(40 + k)
        mask = completion_mask(n, length, gen)
        loss = torch.randn((n, length), generator=gen)
        padding = 100 + torch.randn((n, length), generator=gen)  # must never reach the result
        cases.append((torch.where(mask, loss, padding), mask))
    return cases


def clipped_cases():
    cases = []
    for k, eps in enumerate((0.2, 0.1, 0.28)):
        gen = generator(50 + k)
        old_logp = -2 * torch.rand((6, 8), generator=gen)
        logp = old_logp + 0.4 * torch.randn((6, 8), generator=gen)  # rho from about 0.4 to 2.5
        adv = torch.randn(6, generator=gen)
        adv[0] = 0.0  # a completion with no advantage
        cases.append((logp, old_logp, adv, eps))
    return cases


def kl_in_reward_cases():
    cases = []
    for k, (B, G, length, beta) in enumerate(((3, 4, 10, 0.05), (2, 8, 6, 0.5), (1, 2, 15, 1.0))):
        gen = generator(60 + k)
        rewards = torch.tensor([0.0, 0.1, 1.0, 1.1])[torch.randint(4, (B, G), generator=gen)]
        mask = completion_mask(B * G, length, gen)
        logp, ref_logp = logprob_pair((B * G, length), 0.8, gen)
        logp = torch.where(mask, logp, torch.zeros_like(logp))  # padding: k3 = e^3 - 4 there
        ref_logp = torch.where(mask, ref_logp, torch.full_like(ref_logp, 3.0))
        cases.append((rewards, logp, ref_logp, mask, beta))
    return cases


def tis_cases():
    """At the first update: logp equals old_logp (the trainer's pi_old is the policy being
    trained), which the sampler's log-probs miss by ~spread, so that some w leave [1/c, c]."""
    cases = []
    for k, (spread, c) in enumerate(((0.8, 2.0), (0.5, 1.5), (1.2, 3.0))):
        gen = generator(70 + k)
        old_logp, sampler_logp = logprob_pair((6, 8), spread, gen)
        adv = torch.randn(6, generator=gen)
        cases.append((old_logp.clone(), old_logp, sampler_logp, adv, c))
    return cases


# -----------------------------------------------------------------------------
# The exercises, each against the project's own function


def project_token_mean(loss, mask):
    n_seqs, n_tokens = len(mask), mask.sum().item()
    return nanorgra.aggregate(loss, mask.float(), "token-mean", n_seqs, n_tokens, 72.0)


def project_tis(logp, old_logp, sampler_logp, adv, c):
    cfg = nanorgra.loss_config("rgra", old_logprobs="trainer", correction="tis", correction_c=c)
    mask = torch.ones_like(logp, dtype=torch.bool)
    weight, _ = nanorgra.correction_weights(old_logp, sampler_logp, mask, cfg)
    return weight * nanorgra.policy_term_reinforce(logp, adv)


def project_clipped(logp, old_logp, adv, eps):
    loss, _, _ = nanorgra.policy_term_ratio(logp, old_logp, adv, True, eps, eps)
    return loss


EXERCISES = dict(
    leave_one_out=Exercise(
        "leave-one-out advantages", 'nanorgra.group_advantages(rewards, "loo", std_norm=False)',
        lambda rewards: nanorgra.group_advantages(rewards, "loo", std_norm=False),
        solutions.leave_one_out_advantages, ("rewards",), leave_one_out_cases,
        hint="the baseline of completion i is the mean of the OTHER G-1 rewards of its group"),
    positive_only=Exercise(
        "positive-only advantages", 'nanorgra.group_advantages(rewards, sign="pos")',
        lambda rewards: nanorgra.group_advantages(rewards, sign="pos"),
        solutions.positive_only_advantages, ("rewards",), positive_only_cases,
        hint="centre on the group mean, divide by the group's unbiased std + 1e-6 (torch's "
             "default std), then set the negative advantages to 0"),
    k2=Exercise(
        "k2 estimate", 'nanorgra.kl_estimate(logp, ref_logp, "k2")',
        lambda logp, ref_logp: nanorgra.kl_estimate(logp, ref_logp, "k2"),
        solutions.k2_estimate, ("logp", "ref_logp"), k2_cases, grad_args=(0, 1),
        hint="x = ref_logp - logp, and k2 = x^2 / 2"),
    token_mean=Exercise(
        "token-mean aggregation", 'nanorgra.aggregate(loss, mask, "token-mean", ...)',
        project_token_mean, solutions.token_mean, ("loss", "mask"), token_mean_cases,
        grad_args=(0,),
        hint="sum the real tokens' losses (padding holds large numbers) and divide by the number "
             "of real tokens"),
    clipped=Exercise(
        "clipped policy term", "nanorgra.policy_term_ratio(..., clip=True, eps, eps)",
        project_clipped, solutions.clipped_policy_term, ("logp", "old_logp", "adv", "eps"),
        clipped_cases, grad_args=(0,),
        hint="rho = exp(logp - old_logp); the loss is MINUS the min of rho A and clip(rho) A, "
             "A broadcast over the tokens"),
    kl_in_reward=Exercise(
        "KL in the reward", 'nanorgra.kl_penalised_rewards(..., "k3")',
        lambda rewards, logp, ref_logp, mask, beta: nanorgra.kl_penalised_rewards(
            rewards, logp, ref_logp, mask, beta, "k3"),
        solutions.kl_in_reward, ("rewards", "logp", "ref_logp", "mask", "beta"),
        kl_in_reward_cases,
        hint="k3 per token, summed over each completion's real tokens, times beta, subtracted "
             "from its reward; rows are prompt-major"),
    tis=Exercise(
        "token-level TIS", 'nanorgra.correction_weights(..., correction="tis") times '
        "nanorgra.policy_term_reinforce", project_tis, solutions.tis_policy_term,
        ("logp", "old_logp", "sampler_logp", "adv", "c"), tis_cases, grad_args=(0,),
        hint="w = pi_old / pi_sampler = exp(old_logp - sampler_logp), truncated at c from above, "
             "held constant (no gradient: not computed from logp, detached), times -A logp"),
)


# -----------------------------------------------------------------------------
# Comparing two functions


def prepared(case, grad_args):
    """Fresh copies of a case's arguments, those in grad_args requiring a gradient."""
    return [a.clone().requires_grad_(i in grad_args) if torch.is_tensor(a) else a
            for i, a in enumerate(case)]


def largest_difference(mine, theirs):
    """The largest |mine - theirs| (inf where only one is NaN), and whether every value is within
    the tolerance."""
    diff = (mine.detach().double() - theirs.detach().double()).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    both_nan = torch.isnan(mine.detach()) & torch.isnan(theirs.detach())
    diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    within = diff <= TOLERANCE * (1 + theirs.detach().double().abs())
    largest = diff.max().item() if diff.numel() else 0.0
    return largest, bool(within.all())


def compare(candidate, exercise, case, seed):
    """Runs both functions on one case. Returns (largest difference, a problem in words or
    None)."""
    theirs_args = prepared(case, exercise.grad_args)
    mine_args = prepared(case, exercise.grad_args)
    theirs = exercise.project_fn(*theirs_args)
    mine = candidate(*mine_args)
    if not torch.is_tensor(mine):
        return float("inf"), f"it returned a {type(mine).__name__}, not a tensor"
    if mine.shape != theirs.shape:
        return float("inf"), (f"it returned shape {tuple(mine.shape)}; "
                              f"{exercise.project} returns {tuple(theirs.shape)}")
    largest, ok = largest_difference(mine, theirs)
    if not ok:
        return largest, "the values differ"
    if not exercise.grad_args:
        return largest, None
    if not mine.requires_grad:
        return float("inf"), "no gradient flows through it (was something detached?)"
    weights = torch.randn(theirs.shape, generator=generator(seed))  # a random loss of the output
    (theirs * weights).sum().backward()
    (mine * weights).sum().backward()
    for i in exercise.grad_args:
        name = exercise.arg_names[i]
        if mine_args[i].grad is None:
            return float("inf"), f"no gradient reaches {name}"
        grad_largest, ok = largest_difference(mine_args[i].grad, theirs_args[i].grad)
        largest = max(largest, grad_largest)
        if not ok:
            return largest, f"the values agree but the gradients w.r.t. {name} differ"
    return largest, None


def check(exercise, student_fn):
    """Checks student_fn (or, if it is unanswered, the answer in course/solutions.py) against the
    project's function on every case. Prints PASS or FAIL; returns True or False."""
    cases = exercise.cases()
    candidate, source = student_fn, "your function"
    try:
        student_fn(*prepared(cases[0], ()))
    except NotImplementedError:
        candidate, source = exercise.solution_fn, "the answer in course/solutions.py"
        print(f"{exercise.name}: unanswered (the stub still raises NotImplementedError), so "
              f"the answer in course/solutions.py is checked instead.")
    except Exception as e:  # a wrong answer may fail in any way: say how, and fail
        print(f"FAIL: {exercise.name}: your function raised {type(e).__name__}: {e}")
        return False
    worst = 0.0
    for k, case in enumerate(cases):
        try:
            largest, problem = compare(candidate, exercise, case, seed=k)
        except Exception as e:
            largest, problem = float("inf"), f"it raised {type(e).__name__}: {e}"
        worst = max(worst, largest)
        if problem is not None:
            shapes = ", ".join(f"{name} {tuple(a.shape) if torch.is_tensor(a) else a}"
                               for name, a in zip(exercise.arg_names, case))
            print(f"FAIL: {exercise.name} ({source}): {problem}; largest difference "
                  f"{largest:.2e} from {exercise.project}, on case {k + 1} of {len(cases)} "
                  f"({shapes}).")
            if exercise.hint:
                print(f"hint: {exercise.hint}")
            return False
    print(f"PASS: {exercise.name} ({source}): the same as {exercise.project} on {len(cases)} "
          f"seeded random cases; largest difference {worst:.1e}.")
    return True


# -----------------------------------------------------------------------------
# One check per exercise, as the notebook calls them


def check_leave_one_out(student_fn):
    """student_fn(rewards (B, G)) -> (B, G): A_i = r_i - the mean of the other G-1 rewards."""
    return check(EXERCISES["leave_one_out"], student_fn)


def check_positive_only(student_fn):
    """student_fn(rewards (B, G)) -> (B, G): max((r_i - mean r) / (std r + 1e-6), 0)."""
    return check(EXERCISES["positive_only"], student_fn)


def check_k2(student_fn):
    """student_fn(logp, ref_logp (N, L)) -> (N, L): k2 = (ref_logp - logp)^2 / 2; gradients
    too."""
    return check(EXERCISES["k2"], student_fn)


def check_token_mean(student_fn):
    """student_fn(loss (N, L), mask (N, L) bool) -> scalar: the mean over the real tokens;
    gradients too."""
    return check(EXERCISES["token_mean"], student_fn)


def check_clipped(student_fn):
    """student_fn(logp, old_logp (N, L), adv (N,), eps) -> (N, L): PPO's clipped term as a loss;
    gradients w.r.t. logp too."""
    return check(EXERCISES["clipped"], student_fn)


def check_kl_in_reward(student_fn):
    """student_fn(rewards (B, G), logp, ref_logp, mask (B*G, L), beta) -> (B, G): the rewards less
    beta times each completion's summed k3."""
    return check(EXERCISES["kl_in_reward"], student_fn)


def check_tis(student_fn):
    """student_fn(logp, old_logp, sampler_logp (N, L), adv (N,), c) -> (N, L): -min(w, c) A logp
    with w = exp(old_logp - sampler_logp) held constant; gradients w.r.t. logp too."""
    return check(EXERCISES["tis"], student_fn)
