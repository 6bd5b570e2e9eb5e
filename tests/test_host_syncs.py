"""Where the code reads a value back from the device, counted on the CPU. On a GPU each such read
(a host sync) waits for every kernel queued before it, so the sampler's decode step must have none
and learn() as few as it needs. Every way a tensor's value reaches Python is counted: .item(),
.tolist(), .cpu(), .numpy(), bool(), int(), float() and index() of a tensor, and the ops whose
output size only the values decide (nonzero, masked_select, indexing with a boolean mask).
"""

import copy
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nanorgra
from model import generate

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
SIZED_BY_VALUES = ("aten.nonzero.", "aten.masked_select.")


class HostSyncs(TorchDispatchMode):
    """Counts host syncs inside the block: reads of a tensor's value into Python (READS), and ops
    whose output size depends on the values. .syncs: Counter of what was counted."""

    def __enter__(self):
        self.syncs = Counter()
        self.saved = {name: getattr(torch.Tensor, name) for name in READS}
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, self.counting(name, method))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)
        return super().__exit__(*exc)

    def counting(self, name, method):
        def read(tensor, *args, **kwargs):
            self.syncs[name] += 1
            with torch._C.DisableTorchFunction():
                return method(tensor, *args, **kwargs)
        return read

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        masked = name.startswith("aten.index.Tensor") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        if name.startswith(SIZED_BY_VALUES) or masked:
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))


def syncs_of_generate(model, tok, max_new_tokens, check_every):
    """The host syncs of one generate call whose rows never finish (no EOS can be sampled)."""
    prompts = [tok.encode("Q:1+2\n"), tok.encode("Q:13+2*4\n")]  # of two lengths: padded
    with HostSyncs() as counted:
        generate(model, prompts, max_new_tokens, eos_id=-1, pad_id=tok.pad_id, num_samples=4,
                 temperature=1.0, seeds=[1, 2], check_every=check_every)
    return counted.syncs


def test_the_decode_step_reads_nothing_back_only_the_loop_looks_every_check_every_steps(tiny, tok):
    never = syncs_of_generate(tiny, tok, 32, check_every=1000)
    short = syncs_of_generate(tiny, tok, 16, check_every=1000)
    assert never == short  # 16 more decode steps, not one more sync
    assert sum(never.values()) == 2  # the set-up's last prompt position, the steps used at the end
    looking = syncs_of_generate(tiny, tok, 32, check_every=8)
    # one look (the count of running rows) at steps 8, 16 and 24
    assert looking - never == Counter(__int__=3)


def test_a_finished_row_costs_one_more_read_when_the_batch_shrinks(tiny, tok):
    """Dropping finished rows reads which rows are alive (nonzero), only at a look."""
    prompts = [tok.encode("Q:1+2\n")]
    eos = tok.encode("A")[0]  # a token the untrained model samples often: rows finish early
    with HostSyncs() as counted:
        generate(tiny, prompts, 40, eos_id=eos, pad_id=tok.pad_id, num_samples=8,
                 temperature=1.0, seeds=[3], check_every=8)
    looks = counted.syncs["__int__"] - 2
    assert 1 <= looks <= 5 and counted.syncs["aten.nonzero.default"] <= looks


def learn_syncs(model, tok, cfg):
    """The host syncs of one learn() call on a batch of 2 prompts x 4 samples."""
    prompts = [tok.encode("Q:1+2\n"), tok.encode("Q:13+2*4\n")]
    rollout = generate(model, prompts, 12, eos_id=tok.eos_id, pad_id=tok.pad_id, num_samples=4,
                       temperature=1.0, seeds=[1, 2])
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    adv, keep = nanorgra.advantages_for(rewards, cfg)
    experience = nanorgra.Experience(rollout, adv, rollout.logprobs.clone(), 1.0, keep)
    policy = copy.deepcopy(model).requires_grad_(True)
    # AdamW's step counters are CPU tensors on every device (its default, capturable=False), so
    # reading them is no host sync on a GPU; plain SGD leaves them out of the count
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    with HostSyncs() as counted:
        nanorgra.learn(policy, opt, experience, cfg, torch.Generator().manual_seed(0))
    return counted.syncs


# per optimizer step: the minibatch's token count (the loss's denominator), the tokens' ratios
# (rho[mask], in metrics.loss_stats), the gradient norm read once (logged, and checked finite),
# and the update's statistics (combine: one .tolist() of the sums, the smallest ratio, one
# .tolist() of the largest ratio and the largest mismatch |x|)
PER_UPDATE = Counter(item=3, tolist=2, **{"aten.index.Tensor": 1})
# once per learn(): the rows to learn from (nonzero), and the statistics of all updates together
PER_CALL = Counter(item=1, tolist=2, **{"aten.nonzero.default": 1})


@pytest.mark.parametrize("updates, switches", [(1, {}), (2, {"minibatches": 2}), (2, {"mu": 2})])
def test_learn_reads_back_a_fixed_few_values_per_optimizer_step(tiny, tok, updates, switches):
    cfg = nanorgra.loss_config("rgra", **switches)
    expected = PER_CALL + Counter({k: v * updates for k, v in PER_UPDATE.items()})
    assert learn_syncs(tiny, tok, cfg) == expected


def test_the_counter_sees_every_way_a_value_reaches_python(tok):
    t = torch.tensor([1.5, 0.0])
    with HostSyncs() as counted:
        t[0].item(), t.tolist(), t.cpu(), t.numpy(), bool(t[0]), int(t[0]), float(t[0])
        t[t > 1], t.nonzero()
    assert counted.syncs["item"] == 1 and counted.syncs["tolist"] == 1
    assert counted.syncs["__bool__"] == 1 and counted.syncs["__int__"] == 1
    assert counted.syncs["aten.nonzero.default"] == 1
    assert counted.syncs["aten.index.Tensor"] == 1
