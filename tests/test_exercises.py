"""course/exercises.py: each check fails a wrong answer, passes the right one (course/solutions.py),
and checks the reference answer in place of an unanswered stub."""

import pytest
import torch

from course import exercises, solutions


def stub(*args):
    raise NotImplementedError("your code here")


def mean_baseline(rewards):
    return rewards - rewards.mean(1, keepdim=True)  # the other G-1 rewards AND r_i itself


def population_std_positive(rewards):
    centred = rewards - rewards.mean(1, keepdim=True)
    return (centred / (rewards.std(1, keepdim=True, unbiased=False) + 1e-6)).clamp(min=0)


def unclamped_positive(rewards):
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)


def k3_for_k2(logp, ref_logp):
    x = ref_logp - logp
    return torch.exp(x) - x - 1


def detached_k2(logp, ref_logp):
    return solutions.k2_estimate(logp, ref_logp).detach()


def mean_over_everything(loss, mask):
    return loss.mean()  # padding included


def seq_mean_token_mean(loss, mask):
    real = torch.where(mask, loss, torch.zeros_like(loss))
    return (real.sum(1) / mask.sum(1)).mean()


def unclipped_term(logp, old_logp, adv, eps):
    return -torch.exp(logp - old_logp) * adv[:, None]


def max_instead_of_min(logp, old_logp, adv, eps):
    rho = torch.exp(logp - old_logp)
    return -torch.maximum(rho * adv[:, None], rho.clamp(1 - eps, 1 + eps) * adv[:, None])


def clipped_on_a_detached_ratio(logp, old_logp, adv, eps):
    return solutions.clipped_policy_term(logp.detach(), old_logp, adv, eps)


def kl_mean_not_sum(rewards, logp, ref_logp, mask, beta):
    x = ref_logp - logp
    k3 = torch.where(mask, torch.exp(x) - x - 1, torch.zeros_like(x))
    return rewards - beta * (k3.sum(1) / mask.sum(1)).view(rewards.shape)


def kl_padding_counted(rewards, logp, ref_logp, mask, beta):
    x = ref_logp - logp
    return rewards - beta * (torch.exp(x) - x - 1).sum(1).view(rewards.shape)


def tis_inverted(logp, old_logp, sampler_logp, adv, c):
    weight = torch.exp(sampler_logp - old_logp).clamp(max=c)  # pi_sampler / pi_old
    return -weight * adv[:, None] * logp


def tis_not_truncated(logp, old_logp, sampler_logp, adv, c):
    return -torch.exp(old_logp - sampler_logp) * adv[:, None] * logp


def tis_weight_with_a_gradient(logp, old_logp, sampler_logp, adv, c):
    weight = torch.exp(logp - sampler_logp).clamp(max=c)  # the policy's own log-probs: not held
    return -weight * adv[:, None] * logp


def flat_shape(rewards):
    return solutions.leave_one_out_advantages(rewards).flatten()


def raises_type_error(rewards):
    return rewards + "1"


CHECKS = {
    "leave_one_out": (exercises.check_leave_one_out, solutions.leave_one_out_advantages,
                      [mean_baseline, flat_shape, raises_type_error]),
    "positive_only": (exercises.check_positive_only, solutions.positive_only_advantages,
                      [population_std_positive, unclamped_positive]),
    "k2": (exercises.check_k2, solutions.k2_estimate, [k3_for_k2, detached_k2]),
    "token_mean": (exercises.check_token_mean, solutions.token_mean,
                   [mean_over_everything, seq_mean_token_mean]),
    "clipped": (exercises.check_clipped, solutions.clipped_policy_term,
                [unclipped_term, max_instead_of_min, clipped_on_a_detached_ratio]),
    "kl_in_reward": (exercises.check_kl_in_reward, solutions.kl_in_reward,
                     [kl_mean_not_sum, kl_padding_counted]),
    "tis": (exercises.check_tis, solutions.tis_policy_term,
            [tis_inverted, tis_not_truncated, tis_weight_with_a_gradient]),
}
WRONG = [(name, wrong) for name, (_, _, wrongs) in CHECKS.items() for wrong in wrongs]


def test_every_exercise_has_a_check_and_there_are_at_least_five():
    assert set(CHECKS) == set(exercises.EXERCISES)
    assert len(CHECKS) >= 5
    for name in CHECKS:
        assert callable(getattr(exercises, f"check_{name}"))


@pytest.mark.parametrize("name", CHECKS)
def test_the_right_answer_passes(name, capsys):
    check, right, _ = CHECKS[name]
    assert check(right) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS") and "your function" in out


@pytest.mark.parametrize("name, wrong", WRONG, ids=[w.__name__ for _, w in WRONG])
def test_a_wrong_answer_fails(name, wrong, capsys):
    check, _, _ = CHECKS[name]
    assert check(wrong) is False
    out = capsys.readouterr().out
    assert "FAIL" in out and "PASS" not in out


@pytest.mark.parametrize("name", CHECKS)
def test_an_unanswered_stub_falls_back_to_the_solution_and_passes(name, capsys):
    check, _, _ = CHECKS[name]
    assert check(stub) is True
    out = capsys.readouterr().out
    assert "unanswered" in out and "course/solutions.py" in out
    assert "PASS" in out


def test_a_fail_names_the_largest_difference(capsys):
    exercises.check_k2(k3_for_k2)
    out = capsys.readouterr().out
    assert "largest difference" in out and "hint:" in out


def test_the_cases_are_seeded():
    for exercise in exercises.EXERCISES.values():
        first, second = exercise.cases(), exercise.cases()
        for a, b in zip(first, second):
            for x, y in zip(a, b):
                assert torch.equal(x, y) if torch.is_tensor(x) else x == y


def test_the_cases_reach_the_branches_that_matter():
    """The clipped cases hold ratios outside the clip range on both sides; the token-mean and
    KL cases hold padding; the advantage cases hold zero-variance groups."""
    for logp, old_logp, _, eps in exercises.clipped_cases():
        rho = torch.exp(logp - old_logp)
        assert (rho > 1 + eps).any() and (rho < 1 - eps).any()
    for _, mask in exercises.token_mean_cases():
        assert not mask.all()
    for _, _, _, mask, _ in exercises.kl_in_reward_cases():
        assert not mask.all()
    for (rewards,) in exercises.leave_one_out_cases() + exercises.positive_only_cases():
        assert (rewards == rewards[:, :1]).all(1).sum() >= 2
