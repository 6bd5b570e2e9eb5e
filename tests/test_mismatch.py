"""The sampler-trainer mismatch lab (REFERENCE.md, section 10): the sampler's precision apart from
the trainer's, where pi_old comes from, the corrections TIS and MIS at each level with both
denominators, checked against their formulas in float64 and against the peers' own functions
(tests/peers.py fetches them: verl 0.9.1, ms-swift 4.6.0), and the mismatch each step logs."""

import copy
import json
import math
from dataclasses import replace

import pytest
import torch

import nanorgra
from flags import SwitchError
from metrics import loss_stats, mismatch_metrics
from model import Rollout, completion_logprobs, generate, sampling_precision
import peers  # tests/peers.py

C = 2.0
# the spread of log w at which each level's MIS keeps some of the example's tokens and drops others
SPREADS = {"token": 0.6, "sequence": 0.3, "sequence-mean": 1.2}


def cfg_of(correction, level="token", denominator="leaves", **switches):
    return nanorgra.loss_config("rgra", beta=0.0, correction=correction, correction_level=level,
                                masked_denominator=denominator, old_logprobs="trainer",
                                correction_c=C, **switches)


def mismatched(seed=0, lengths=(5, 3, 7, 1), spread=0.6):
    """float64 log-probs of the trainer's pi_old and of the sampler, apart by log w ~ N(0,
    spread^2) (w from about 0.3 to 3: some inside [1/C, C], some outside, both sides), padding
    holding numbers that must never count; the mask (N, L)."""
    g = torch.Generator().manual_seed(seed)
    n, width = len(lengths), max(lengths)
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    old = -3 * torch.rand(n, width, generator=g, dtype=torch.float64)
    sampler = old - spread * torch.randn(n, width, generator=g, dtype=torch.float64)
    old = torch.where(mask, old, torch.full_like(old, 40.0))
    sampler = torch.where(mask, sampler, torch.full_like(sampler, -40.0))
    return old, sampler, mask


def looped_weights(old, sampler, mask, correction, level):
    """The weight of each real token, one completion at a time, as REFERENCE.md section 10 writes
    it: w per token, the product over a completion, or its geometric mean; min(w, C) or w inside
    [1/C, C] and 0 outside."""
    weights = torch.zeros_like(old)
    for i in range(old.size(0)):
        tokens = [t for t in range(old.size(1)) if mask[i, t]]
        logs = {t: float(old[i, t] - sampler[i, t]) for t in tokens}
        for t in tokens:
            if level == "token":
                w = math.exp(logs[t])
            elif level == "sequence":
                w = math.prod(math.exp(x) for x in logs.values())
            else:
                w = math.exp(sum(logs.values()) / len(tokens))
            if correction == "tis":
                weights[i, t] = min(w, C)
            else:
                weights[i, t] = w if 1 / C <= w <= C else 0.0
    return weights


# -----------------------------------------------------------------------------
# The switches that make the mismatch


def test_a_bf16_or_fp16_sampler_writes_other_logprobs_than_the_fp32_trainer_and_fp32_the_same(
        tiny, tok):
    prompts = [tok.encode("Q:1+2\n"), tok.encode("Q:13+2*4\n")]
    before = copy.deepcopy(tiny.state_dict())
    gaps = {}
    for precision in ("fp32", "bf16", "fp16"):
        with sampling_precision(tiny, precision):
            rollout = generate(tiny, prompts, 12, tok.eos_id, tok.pad_id, num_samples=4,
                               temperature=1.0, seeds=[1, 2])
        assert tiny.precision == "fp32"  # the trainer's own, back
        with torch.no_grad():
            trainer = completion_logprobs(tiny, rollout, 1.0)
        gaps[precision] = float((trainer - rollout.logprobs)[rollout.mask].abs().max())
    assert gaps["fp32"] < 1e-5
    assert gaps["bf16"] > 1e-4 and gaps["fp16"] > 1e-6, gaps
    assert gaps["fp16"] < gaps["bf16"]  # fp16 keeps 11 bits of mantissa, bf16 8
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_an_unknown_sampler_precision_is_refused_naming_it(tiny):
    with pytest.raises(ValueError, match="'int8'"):
        with sampling_precision(tiny, "int8"):
            pass
    assert tiny.precision == "fp32"


def test_the_command_line_refuses_an_fp16_trainer_and_a_correction_without_trainer_old_logprobs(
        capsys):
    with pytest.raises(SystemExit) as stop:
        nanorgra.parse_args(["--precision", "fp16"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        nanorgra.parse_args(["--correction", "tis"])
    assert stop.value.code == 2
    assert "--old-logprobs trainer" in capsys.readouterr().err
    with pytest.raises(SwitchError, match="old_logprobs trainer"):
        nanorgra.loss_config("rgra", correction="mis")


def learn_first_update(tiny, tok, cfg, sampler_precision):
    """learn() on a batch that a sampler of that precision wrote; the Learned and the batch."""
    prompts = [tok.encode("Q:1+2\n"), tok.encode("Q:13+2*4\n")]
    with sampling_precision(tiny, sampler_precision):
        rollout = generate(tiny, prompts, 12, tok.eos_id, tok.pad_id, num_samples=4,
                           temperature=1.0, seeds=[1, 2])
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    adv, keep = nanorgra.advantages_for(rewards, cfg)
    experience = nanorgra.Experience(rollout, adv, None, 1.0, keep)
    policy = copy.deepcopy(tiny).requires_grad_(True)
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    return nanorgra.learn(policy, opt, experience, cfg, torch.Generator().manual_seed(0)), rollout


def test_trainer_old_logprobs_make_rho_1_at_the_first_update_and_keep_the_samplers_for_the_logs(
        tiny, tok):
    grpo = nanorgra.loss_config("grpo", beta=0.0)
    from_sampler, rollout = learn_first_update(tiny, tok, grpo, "bf16")
    from_trainer, _ = learn_first_update(tiny, tok, replace(grpo, old_logprobs="trainer"), "bf16")
    first = from_sampler.per_update[0]
    assert first.ratio_max - first.ratio_min > 1e-4  # the sampler's pi_old: rho carries the gap
    first_trainer = from_trainer.per_update[0]
    assert first_trainer.ratio_min == first_trainer.ratio_max == 1.0
    # the mismatch is the same either way: the trainer's pi_old against the sampler's log-probs,
    # which with the sampler's pi_old is log rho at the first update
    assert first_trainer.x_max == pytest.approx(first.x_max, rel=1e-5)
    largest_log_rho = max(abs(math.log(first.ratio_max)), abs(math.log(first.ratio_min)))
    assert first.x_max == pytest.approx(largest_log_rho, rel=1e-4)


# -----------------------------------------------------------------------------
# The corrections: each equals its formula


@pytest.mark.parametrize("correction", ["tis", "mis"])
@pytest.mark.parametrize("level", ["token", "sequence", "sequence-mean"])
def test_each_correction_weight_equals_its_formula_in_float64(correction, level):
    old, sampler, mask = mismatched(spread=SPREADS[level])
    weight, kept = nanorgra.correction_weights(old, sampler, mask, cfg_of(correction, level))
    expected = looped_weights(old, sampler, mask, correction, level)
    torch.testing.assert_close(weight[mask], expected[mask], rtol=1e-12, atol=0)
    if correction == "mis":
        assert torch.equal(kept, mask & (expected > 0))
        assert 0 < int(kept.sum()) < int(mask.sum())  # the example drops some tokens, not all
    else:
        assert torch.equal(kept, mask)


def test_the_weight_carries_no_gradient_and_multiplies_the_policy_term_not_the_kl():
    old, sampler, mask = mismatched()
    n, width = old.shape
    logp = (old + 0.1 * torch.randn(n, width, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(1))).requires_grad_()
    ref = old - 0.2
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0], dtype=torch.float64)
    zeros = torch.zeros(n, width, dtype=torch.long)
    rollout = Rollout(zeros[:, :1], torch.ones(n, 1, dtype=torch.bool), zeros, mask, old, sampler)
    cfg = replace(cfg_of("tis"), beta=0.05, agg="token-mean")
    denominators = (n, int(mask.sum()))
    loss, _ = nanorgra.rl_loss(logp, rollout, adv, ref, cfg, denominators)
    (grad,) = torch.autograd.grad(loss, logp)
    weight, _ = nanorgra.correction_weights(old, sampler, mask, cfg)
    kl = nanorgra.kl_estimate(logp, torch.where(mask, ref, logp.detach()), "k3")
    by_hand = (-adv[:, None] * weight * logp + cfg.beta * kl)[mask].sum() / mask.sum()
    (grad_by_hand,) = torch.autograd.grad(by_hand, logp)
    torch.testing.assert_close(loss, by_hand, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, grad_by_hand, rtol=1e-12, atol=1e-15)


def test_no_correction_and_a_correction_where_sampler_and_trainer_agree_give_the_same_loss():
    old, _, mask = mismatched()
    logp = (old + 0.1).requires_grad_()
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0], dtype=torch.float64)
    n, width = old.shape
    zeros = torch.zeros(n, width, dtype=torch.long)
    agree = Rollout(zeros[:, :1], torch.ones(n, 1, dtype=torch.bool), zeros, mask, old, old)
    denominators = (n, int(mask.sum()))
    plain, _ = nanorgra.rl_loss(logp, agree, adv, None, nanorgra.loss_config("rgra", beta=0.0),
                                denominators)
    for correction in ("tis", "mis"):
        corrected, _ = nanorgra.rl_loss(logp, agree, adv, None, cfg_of(correction),
                                        denominators)
        assert torch.equal(plain, corrected)


# -----------------------------------------------------------------------------
# The corrections against the peers' own functions


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    return tmp_path_factory.mktemp("peer-wheels")


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_tis_and_mis_weights_equal_verls_own_function(wheels, level):
    """verl 0.9.1, verl/trainer/ppo/rollout_corr_helper.py, compute_rollout_correction_weights:
    a float threshold truncates (TIS), "lower_upper" zeroes outside the bounds (IcePop, our
    MIS); its sequence level is the product of the token weights."""
    helper, _ = peers.verl(wheels)
    old, sampler, mask = mismatched(spread=SPREADS[level])
    log_ratio = torch.where(mask, old - sampler, torch.zeros_like(old))
    for correction, threshold in (("tis", C), ("mis", f"{1 / C}_{C}")):
        theirs, _ = helper.compute_rollout_correction_weights(log_ratio, mask.double(), level,
                                                              threshold)
        ours, _ = nanorgra.correction_weights(old, sampler, mask, cfg_of(correction, level))
        torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-12, atol=0)


@pytest.mark.parametrize("correction, level, mode", [("tis", "token", "token_truncate"),
                                                     ("mis", "token", "token_mask"),
                                                     ("tis", "sequence-mean", "sequence_truncate")])
def test_tis_and_mis_weights_equal_ms_swifts_own_function(wheels, correction, level, mode):
    """ms-swift 4.6.0, swift/rlhf_trainers/grpo_trainer.py,
    GRPOTrainer._apply_rollout_importance_sampling: its sequence level is the geometric mean (our
    sequence-mean); its mask has an upper bound only, so the tensors here have no w < 1/C. (Its
    sequence_mask keeps each token's own w on the completions it keeps: not one of ours.)"""
    apply = peers.ms_swift(wheels)
    old, sampler, mask = mismatched(spread=SPREADS[level])
    sampler = torch.where(mask, torch.minimum(sampler, old + math.log(C) - 1e-3), sampler)
    log_ratio = torch.where(mask, old - sampler, torch.zeros_like(old))
    theirs = apply(mode, C, log_ratio, mask)
    ours, _ = nanorgra.correction_weights(old, sampler, mask, cfg_of(correction, level))
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-12, atol=0)
    assert bool((ours[mask] == C).any() if correction == "tis" else (ours[mask] == 0).any())


def mis_loss(denominator, level="token"):
    """Our MIS loss under token-mean, with one or the other denominator, as learn() builds it:
    under leaves the dropped tokens leave the mask (and a completion left with none, the passes)
    before the denominators are counted."""
    old, sampler, mask = mismatched()
    n, width = old.shape
    logp = old + 0.05
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0], dtype=torch.float64)
    zeros = torch.zeros(n, width, dtype=torch.long)
    rollout = Rollout(zeros[:, :1], torch.ones(n, 1, dtype=torch.bool), zeros, mask, old, sampler)
    cfg = replace(cfg_of("mis", level, denominator), agg="token-mean")
    experience = nanorgra.Experience(rollout, adv, None, 1.0, torch.ones(n, dtype=torch.bool))
    passes = [torch.arange(n)]
    if denominator == "leaves":
        experience, passes = nanorgra.without_dropped_tokens(experience, passes, cfg)
    rows = passes[0]
    part = experience.rollout.rows(rows)
    denominators = (len(rows), int(part.mask.sum()))
    loss, _ = nanorgra.rl_loss(logp[rows], part, adv[rows], None, cfg, denominators)
    return loss, (old, sampler, mask, logp, adv)


def test_mis_with_the_leaves_denominator_equals_verls_rejection_and_its_masked_sum(wheels):
    """verl 0.9.1: compute_rollout_rejection_mask (token_k1 at threshold C keeps 1/C <= w <= C)
    removes the dropped tokens from response_mask; the IS weights multiply the policy loss; the
    token-mean is verl_F.masked_sum over the new mask by its count (core_algos.agg_loss)."""
    helper, functional = peers.verl(wheels)
    ours, (old, sampler, mask, logp, adv) = mis_loss("leaves")
    log_ratio = torch.where(mask, old - sampler, torch.zeros_like(old))
    kept_mask, _ = helper.compute_rollout_rejection_mask(log_ratio, mask.double(), "token_k1", C)
    weights, _ = helper.compute_rollout_correction_weights(log_ratio, kept_mask, "token", C)
    policy_loss = -adv[:, None] * logp * weights
    theirs = functional.masked_sum(policy_loss, kept_mask) / kept_mask.sum()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)


def test_mis_with_the_stays_denominator_equals_ms_swifts_weights_over_every_token(wheels):
    """ms-swift 4.6.0 (and TRL 1.16.0, grpo_trainer.py): a masked token's weight is 0 and it
    stays in the mask, so the token-mean divides by every token."""
    apply = peers.ms_swift(wheels)
    ours, (old, sampler, mask, logp, adv) = mis_loss("stays")
    log_ratio = torch.where(mask, old - sampler, torch.zeros_like(old))
    weights = apply("token_mask", C, log_ratio, mask)
    low = torch.exp(log_ratio) < 1 / C  # ms-swift has no lower bound: drop those as we do
    weights = torch.where(low, torch.zeros_like(weights), weights)
    theirs = (-adv[:, None] * logp * weights)[mask].sum() / mask.sum()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)


def test_the_two_denominators_differ_by_the_share_of_tokens_dropped_and_only_then():
    leaves, (old, sampler, mask, _, _) = mis_loss("leaves")
    stays, _ = mis_loss("stays")
    _, kept = nanorgra.correction_weights(old, sampler, mask, cfg_of("mis"))
    assert int(kept.sum()) < int(mask.sum())
    torch.testing.assert_close(leaves / stays, mask.sum() / kept.sum().double(),
                               rtol=1e-12, atol=0)
    tis = cfg_of("tis", denominator="leaves")  # only mis drops tokens: tis's denominators stay
    assert tis.masked_denominator == "leaves"


def test_under_leaves_a_completion_mis_drops_entirely_leaves_the_passes():
    old, sampler, mask = mismatched(spread=SPREADS["sequence"])
    n = old.size(0)
    cfg = cfg_of("mis", "sequence")
    _, kept = nanorgra.correction_weights(old, sampler, mask, cfg)
    dropped = ~kept.any(1)
    assert bool(dropped.any()) and not bool(dropped.all())
    rollout = Rollout(torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.bool),
                      torch.zeros_like(mask, dtype=torch.long), mask, old, sampler)
    experience = nanorgra.Experience(rollout, torch.ones(n), None, 1.0,
                                     torch.ones(n, dtype=torch.bool))
    _, passes = nanorgra.without_dropped_tokens(experience, [torch.arange(n)], cfg)
    assert passes[0].tolist() == [i for i in range(n) if not dropped[i]]


# -----------------------------------------------------------------------------
# The mismatch logged every step


def test_the_mismatch_metrics_equal_their_formulas():
    old, sampler, mask = mismatched()
    x = torch.where(mask, old - sampler, torch.zeros_like(old))  # trainer minus sampler
    rho = torch.ones_like(x)
    stats = loss_stats(rho, torch.zeros_like(mask), mask, torch.zeros(()), x, C)
    numbers = {name: float(getattr(stats, name)) for name in stats.__dataclass_fields__}
    m = mismatch_metrics(type(stats)(**numbers))
    xs = x[mask]
    w = torch.exp(xs)
    per_seq = [x[i][mask[i]].mean() for i in range(len(x))]
    assert m["mismatch_kl_k1"] == pytest.approx(float(-xs.mean()), rel=1e-12)
    assert m["mismatch_kl_k3"] == pytest.approx(float((w - xs - 1).mean()), rel=1e-12)
    assert m["mismatch_log_ppl_diff"] == pytest.approx(-float(sum(per_seq)) / len(per_seq))
    assert m["mismatch_max"] == pytest.approx(float(xs.abs().max()), rel=1e-12)
    assert m["mismatch_ess"] == pytest.approx(float(w.sum() ** 2 / (len(w) * (w * w).sum())))
    assert m["mismatch_over_c"] == pytest.approx(float((w > C).double().mean()))
    assert m["mismatch_outside_c"] == pytest.approx(float(((w > C) | (w < 1 / C)).double().mean()))
    assert 0 < m["mismatch_ess"] < 1 and m["mismatch_kl_k3"] > 0


def test_every_step_logs_the_mismatch_small_in_fp32_and_larger_with_a_bf16_sampler(tmp_path):
    from test_variants import TINY
    base_dir = tmp_path / "bases"
    gaps = {}
    for sampler in ("fp32", "bf16"):
        out = tmp_path / sampler
        nanorgra.main([*TINY, "--out-dir", str(out), "--base-dir", str(base_dir),
                       "--sampler-precision", sampler])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(r["mismatch_ess"] <= 1 + 1e-12 for r in rows)
        gaps[sampler] = max(r["mismatch_max"] for r in rows)
        config = json.loads((out / "config.json").read_text())
        assert config["sampler_precision"] == sampler
    assert gaps["fp32"] < 1e-4 < gaps["bf16"]


def test_a_record_made_before_the_mismatch_switches_existed_still_matches_todays_defaults():
    import rundir
    from experiments import runner
    args = nanorgra.parse_args([])
    today = rundir.run_settings(args)
    for name, default in rundir.ADDED_LATER.items():  # the defaults named there are today's
        if isinstance(default, dict):
            assert {k: today[name][k] for k in default} == default
        else:
            assert today[name] == default
    before = {k: v for k, v in today.items() if k != "sampler_precision"}
    before["loss"] = {k: v for k, v in today["loss"].items()
                      if k not in rundir.ADDED_LATER["loss"]}
    runner.check_same_settings(today, before, "an old record")  # passes
    changed = dict(before, loss=dict(before["loss"], correction="tis"))
    with pytest.raises(SystemExit, match="loss"):
        runner.check_same_settings(today, changed, "an old record")
