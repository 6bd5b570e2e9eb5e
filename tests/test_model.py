"""The GPT and its sampler, pinned down on a tiny random model (CPU, seconds)."""

import pytest
import torch

from model import GPT, GPTConfig, generate, generate_naive, gumbel_noise, token_logprobs

VOCAB, EOS, PAD = 16, 1, 0
# different lengths on purpose
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 2], [3], [4, 4, 4, 4, 4]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=2, n_embd=32)
    return GPT(config, seed=0).eval()


def rows(rollout, i):
    """The real completion tokens and log-probs of row i (padding stripped)."""
    m = rollout.mask[i]
    return rollout.tokens[i][m].tolist(), rollout.logprobs[i][m]


def test_forward_ignores_left_padding(model):
    alone = model(torch.tensor([[5, 6, 7]]))
    valid = torch.tensor([[False, False, True, True, True]])
    padded = model(torch.tensor([[0, 0, 5, 6, 7]]), valid=valid)
    assert torch.allclose(alone, padded[:, 2:], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_prompts_of_different_lengths_sample_as_if_alone(model, temperature):
    kw = dict(max_new_tokens=12, eos_id=EOS, pad_id=PAD, num_samples=3, temperature=temperature)
    batch = generate(model, PROMPTS, seeds=[10, 11, 12, 13], **kw)
    for i, p in enumerate(PROMPTS):
        alone = generate(model, [p], seeds=[10 + i], **kw)
        for g in range(3):
            tb, lb = rows(batch, 3 * i + g)
            ta, la = rows(alone, g)
            assert tb == ta
            assert torch.allclose(lb, la, atol=1e-5)


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, None), (0.7, 5)])
def test_kv_cache_sampler_equals_full_recompute(model, temperature, top_k):
    kw = dict(max_new_tokens=12, eos_id=EOS, pad_id=PAD, num_samples=2, temperature=temperature,
              top_k=top_k)
    fast = generate(model, PROMPTS, seeds=[1, 2, 3, 4], **kw)
    slow = generate_naive(model, PROMPTS, seeds=[1, 2, 3, 4], **kw)
    assert torch.equal(fast.tokens, slow.tokens)
    assert torch.equal(fast.mask, slow.mask)
    assert torch.allclose(fast.logprobs, slow.logprobs, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampler_logprobs_equal_training_forward_logprobs(model, temperature):
    r = generate(model, PROMPTS, 12, EOS, PAD, num_samples=4, temperature=temperature,
                 seeds=[7, 8, 9, 10])
    seq, valid = r.sequences()
    P = r.prompt.size(1)
    logits = model(seq, valid=valid)[:, P - 1:-1]  # the logits that predicted each completion token
    lp = token_logprobs(logits, r.tokens, temperature)
    assert (lp - r.logprobs)[r.mask].abs().max().item() < 1e-4


def test_eos_is_in_the_mask_and_padding_is_not(model):
    r = generate(model, PROMPTS, 30, EOS, PAD, num_samples=8, seeds=[0, 1, 2, 3])
    ended = 0
    for i in range(r.tokens.size(0)):
        toks, mask = r.tokens[i].tolist(), r.mask[i].tolist()
        if EOS in toks:
            e = toks.index(EOS)
            ended += 1
            assert mask[e] is True  # the EOS is trained on: the model must learn when to stop
            assert all(m is False for m in mask[e + 1:])  # finished rows stop growing
            assert all(t == PAD for t in toks[e + 1:])
            assert r.logprobs[i, e + 1:].abs().sum() == 0
        else:
            assert all(mask)
    assert 0 < ended < r.tokens.size(0)  # the check above saw both kinds of rows


def test_same_seed_same_samples_and_other_seed_other_samples(model):
    def g(seed):
        return generate(model, PROMPTS, 12, EOS, PAD, num_samples=2,
                        generator=torch.Generator().manual_seed(seed))

    a, b, c = g(123), g(123), g(124)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)


def test_each_prompt_is_prefilled_once_not_once_per_sample(model):
    seen = []
    hook = model.wte.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        generate(model, PROMPTS, 4, EOS, PAD, num_samples=5, seeds=[0, 1, 2, 3])
    finally:
        hook.remove()
    P = max(len(p) for p in PROMPTS)
    assert seen[0] == (len(PROMPTS), P)  # prefill: one row per prompt
    assert seen[1] == (len(PROMPTS) * 5,)  # then one token per row per step (fewer as rows finish)
    assert all(len(s) == 1 and s[0] <= len(PROMPTS) * 5 for s in seen[2:])


def test_top_k_one_is_greedy(model):
    greedy = generate(model, PROMPTS, 10, EOS, PAD, temperature=0.0, seeds=[0, 1, 2, 3])
    top1 = generate(model, PROMPTS, 10, EOS, PAD, temperature=1.0, top_k=1, seeds=[5, 6, 7, 8])
    assert torch.equal(greedy.tokens, top1.tokens)
    # a one-token distribution
    assert torch.allclose(top1.logprobs, torch.zeros_like(top1.logprobs))


@pytest.mark.parametrize("kwargs,word", [(dict(temperature=-1.0), "temperature"),
                                         (dict(top_k=0), "top_k"),
                                         (dict(num_samples=0), "num_samples")])
def test_bad_sampling_arguments_raise_naming_the_argument(model, kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate(model, PROMPTS, 4, EOS, PAD, seeds=[0, 1, 2, 3], **kwargs)


def test_sampling_without_a_seed_is_refused(model):
    with pytest.raises(ValueError, match="seed"):
        generate(model, PROMPTS, 4, EOS, PAD)


def test_same_seed_same_weights():
    cfg = GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16)
    a, b, c = GPT(cfg, seed=3), GPT(cfg, seed=3), GPT(cfg, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.wte.weight, c.wte.weight)


def batch_sizes_while(model, sample):
    """Run sample(); also the number of rows of each forward it made (prefill, then each step)."""
    sizes = []
    hook = model.wte.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].size(0)))
    try:
        out = sample()
    finally:
        hook.remove()
    return out, sizes


# 16 prompts of 1-7 tokens, and an EOS that the random model's greedy rows reach at steps 1, 2, 3, 8
MANY = [[6, 4, 6, 11, 8], [11, 13, 4, 6], [13], [3, 5, 3], [6, 3], [2, 13, 14],
        [5, 13, 12, 11, 3, 6, 6], [9, 2, 7, 15], [13, 7, 13, 6, 7], [8, 13, 5, 7, 5, 14], [3, 6, 4],
        [11], [5, 4], [15, 4, 3, 2, 2, 2], [12, 6, 9], [7, 10, 12, 6, 7]]
MANY_EOS = 14


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, None), (0.7, 5)])
def test_kv_cache_sampler_equals_full_recompute_as_rows_finish_and_leave_the_batch(
        model, temperature, top_k):
    kw = {"max_new_tokens": 40, "eos_id": MANY_EOS, "pad_id": PAD, "num_samples": 4,
          "temperature": temperature, "top_k": top_k}
    seeds = range(100, 116)
    fast, sizes = batch_sizes_while(model, lambda: generate(model, MANY, seeds=seeds, **kw))
    slow = generate_naive(model, MANY, seeds=seeds, **kw)
    assert torch.equal(fast.tokens, slow.tokens)
    assert torch.equal(fast.mask, slow.mask)
    assert torch.allclose(fast.logprobs, slow.logprobs, atol=1e-5)
    lengths = fast.mask.sum(1)
    assert len(set(lengths.tolist())) >= 5  # rows ended at several different steps...
    assert sizes[1] == 64 and sizes[-1] < 64  # ...and the sampler dropped finished rows


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_prompt_samples_the_same_alone_or_in_a_batch_where_rows_finish(model, temperature):
    kw = {"max_new_tokens": 40, "eos_id": MANY_EOS, "pad_id": PAD, "num_samples": 4,
          "temperature": temperature}
    batch = generate(model, MANY, seeds=range(100, 116), **kw)
    for i in (0, 6, 11):  # a 5-token, a 7-token and a 1-token prompt
        alone = generate(model, [MANY[i]], seeds=[100 + i], **kw)
        for g in range(4):
            tb, lb = rows(batch, 4 * i + g)
            ta, la = rows(alone, g)
            assert tb == ta
            assert torch.allclose(lb, la, atol=1e-5)


def test_gumbel_noise_of_a_batch_is_each_prompts_own_noise_side_by_side():
    batch = gumbel_noise([3, 1, 4], 2, 5, VOCAB, "cpu")
    alone = torch.cat([gumbel_noise([s], 2, 5, VOCAB, "cpu") for s in (3, 1, 4)])
    assert batch.shape == (6, 5, VOCAB)
    assert torch.equal(batch, alone)


def test_a_rollout_is_made_of_ordinary_tensors_that_a_loss_can_save_for_backward(model):
    r = generate(model, PROMPTS, 6, EOS, PAD, num_samples=2, seeds=[0, 1, 2, 3])
    parts = (r.prompt, r.prompt_valid, r.tokens, r.mask, r.logprobs)
    assert not any(t.is_inference() for t in parts)
    w = torch.ones(r.logprobs.shape, requires_grad=True)
    torch.where(r.mask, r.logprobs * w, 0.0).sum().backward()  # saves the mask and the log-probs
    assert torch.equal(w.grad, torch.where(r.mask, r.logprobs, 0.0))
