"""Packed rows (model.pack_rows): several examples one after another in a row, as the warm start and
the study's fine-tunes train on them. A packed example is computed exactly as if it were alone."""

import numpy as np
import pytest
import torch

from data.tasks import prompt_text, sample_problems, worked_solution
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig, completion_logprobs, pack, pack_rows, packed_logprobs


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32)
    return GPT(config, seed=1).eval()


@pytest.fixture(scope="module")
def examples(tok):
    """Nine (prompt, worked solution + EOS) pairs of the RL level, of different lengths."""
    problems = sample_problems("mix3", 9, np.random.default_rng(0))
    pairs = [(tok.encode(prompt_text(p)), tok.encode(worked_solution(p.expr)) + [tok.eos_id])
             for p in problems]
    assert len({len(a) + len(b) for a, b in pairs}) > 1
    return pairs


def packed_pieces(batch, logp):
    """Per example, in packing order: its completion log-probs (where loss_mask is True)."""
    pieces = []
    for row in range(batch.tokens.size(0)):
        for example in range(int(batch.segments[row].max()) + 1):
            mine = (batch.segments[row] == example) & batch.loss_mask[row]
            pieces.append(logp[row][mine])
    return pieces


def packing_order(examples, row_len):
    """The order pack_rows places examples in: first fit, row by row."""
    rows, used = [], []
    for k, (prompt, completion) in enumerate(examples):
        n = len(prompt) + len(completion)
        i = next((i for i, u in enumerate(used) if u + n <= row_len), len(rows))
        if i == len(rows):
            rows.append([])
            used.append(0)
        rows[i].append(k)
        used[i] += n
    return [k for row in rows for k in row]


@pytest.mark.parametrize("row_len", [80, 100, 128])
def test_a_packed_examples_logprobs_equal_those_of_the_same_example_unpacked(tok, model, examples,
                                                                             row_len):
    batch = pack_rows(examples, tok.pad_id, "cpu", row_len=row_len)
    assert batch.tokens.size(0) < len(examples)  # several examples share a row
    unpacked = pack([p for p, _ in examples], [c for _, c in examples], tok.pad_id, "cpu")
    with torch.no_grad():
        alone = completion_logprobs(model, unpacked, 1.0)  # (N, L), one example a row
        packed = packed_pieces(batch, packed_logprobs(model, batch))
    for piece, k in zip(packed, packing_order(examples, row_len)):
        expected = alone[k][unpacked.mask[k]]
        torch.testing.assert_close(piece, expected, rtol=1e-5, atol=1e-5)


def test_no_example_attends_across_the_boundary_of_another(tok, model, examples):
    batch = pack_rows(examples, tok.pad_id, "cpu")
    row = 0
    assert batch.segments[row].max() >= 2  # at least three examples in the first row
    changed = batch.tokens.clone()
    first = batch.segments[row] == 1
    changed[row, first] = (changed[row, first] + 1) % tok.eos_id  # rewrite every token of example 1
    with torch.no_grad():
        before = model(batch.tokens, segments=batch.segments)
        after = model(changed, segments=batch.segments)
    others = batch.segments[row] != 1
    torch.testing.assert_close(after[row, others], before[row, others])  # 0 and 2 do not see 1
    assert not torch.allclose(after[row, first], before[row, first])


def test_only_completion_tokens_are_trained_each_once(tok, examples):
    batch = pack_rows(examples, tok.pad_id, "cpu")
    completion_tokens = sum(len(c) for _, c in examples)
    assert int(batch.loss_mask.sum()) == completion_tokens
    trained = batch.targets[batch.loss_mask].tolist()
    order = packing_order(examples, 128)
    assert trained == [t for k in order for t in examples[k][1]]  # the completions, in order
    assert (batch.segments[~batch.loss_mask & (batch.segments >= 0)] >= 0).all()


def test_an_example_longer_than_a_row_is_refused_naming_its_length(tok):
    with pytest.raises(ValueError, match="example of 12 tokens"):
        pack_rows([([1] * 5, [2] * 7)], tok.pad_id, "cpu", row_len=10)


def test_rows_longer_than_the_position_table_work_when_every_example_fits(tok, model, examples):
    """Positions count inside each example, and padding sits at position 0: a row may be longer
    than block_size as long as no example is."""
    batch = pack_rows(examples[:2], tok.pad_id, "cpu", row_len=model.config.block_size + 40)
    with torch.no_grad():
        logp = packed_logprobs(model, batch)
    assert torch.isfinite(logp).all()


# -----------------------------------------------------------------------------
# The warm start's batches, made ahead of their step (batches.prefetched)


def test_the_warm_starts_prefetched_batches_equal_a_plain_loops_in_order(tok):
    import flags
    import warmstart
    from batches import prefetched
    args = flags.parse_warm_start_args(["--warm-batch", "8"])
    stage = warmstart.warm_stages(args)[0]
    steps = range(5)
    plain = [warmstart.stage_batch(tok, stage, step, args, "cpu") for step in steps]
    ahead = list(prefetched(lambda step: warmstart.stage_batch(tok, stage, step, args, "cpu"),
                            steps, ahead=2))
    assert len(ahead) == len(plain)
    for a, b in zip(ahead, plain):
        for field in ("tokens", "segments", "targets", "loss_mask"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_a_prefetched_error_is_raised_at_the_step_it_belongs_to():
    from batches import prefetched

    def make(step):
        if step == 3:
            raise ValueError(f"step {step} cannot be made")
        return step

    seen = []
    with pytest.raises(ValueError, match="step 3 cannot be made"):
        for batch in prefetched(make, range(6)):
            seen.append(batch)
    assert seen == [0, 1, 2]


def test_a_loop_that_stops_early_stops_the_worker_too():
    import threading
    from batches import prefetched
    made = []

    def make(step):
        made.append(step)
        return step

    batches = prefetched(make, range(1000), ahead=2)
    assert [next(batches) for _ in range(3)] == [0, 1, 2]
    batches.close()  # what a break or an exception in the loop does
    assert not any(t.name == "prefetched" for t in threading.enumerate())
    assert len(made) <= 3 + 2 + 1  # the steps used, the queue's room and the one in hand


def test_training_on_prefetched_batches_ends_in_the_same_weights_as_a_plain_loop(tok):
    import nanorgra
    import warmstart
    from experiments import bench_host
    args = nanorgra.parse_args("--n-layer 1 --n-head 2 --n-embd 32 --warm-batch 8".split())
    for stage in warmstart.warm_stages(args):
        timings = bench_host.warm_stage(tok, stage, args, steps=4)
        assert timings["same_weights"], stage.name
