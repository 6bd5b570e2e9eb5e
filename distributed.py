"""
distributed.py: the device a run computes on, and one run over several processes with torchrun (the
same calls are no-ops in one process).

    torchrun --standalone --nproc_per_node=2 nanorgra.py   # 2 processes on one machine (CPU: gloo)
    torchrun --standalone --nproc_per_node=8 nanorgra.py   # 8 GPUs, one process each (NCCL)

torchrun starts the script once per process and tells each its rank (RANK, WORLD_SIZE, LOCAL_RANK in
the environment). setup_device() joins them into one process group; the functions below are the only
places that talk across processes. Without torchrun there is one process, rank 0 of 1, and every
function returns its input.

What nanorgra.py splits across ranks, and why the update is the single-process one:
  - each rank samples and scores a contiguous share of each step's prompts (my_share, in
    nanorgra.rl_step); the per-prompt seeds are drawn for the whole step first, so a prompt's
    samples do not depend on the rank that draws them;
  - gather_step gives every rank the whole step's rows (the completions, rewards, styles and the
    reference's log-probs), so that every rank computes the advantages, the minibatches and the
    metrics of the whole batch, as one process would;
  - in nanorgra.learn every rank computes the loss of its own share of each minibatch's rows
    (my_micro_batches) with the whole minibatch's denominators, and the gradients are summed
    (sum_gradients_over_ranks): the sum of the ranks' gradients is the gradient of the whole
    minibatch, so every rank takes the same optimizer step; the update's statistics are summed
    too (reduce_over_ranks, in metrics.py). Only the order of the floating-point additions
    differs from one process (tests/test_distributed.py);
  - evaluations: every rank samples its share of the test prompts and the texts are gathered
    (gather_objects, in evaluate.sample_texts);
  - the warm start runs on rank 0, which caches it; the other ranks wait and load it
    (bases.cached_base).
"""

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

# A rank waits at most this long for the others (rank 0 alone trains the warm start, which takes
# minutes).
TIMEOUT = datetime.timedelta(hours=2)


def setup_device(args):
    """The device this process computes on, after --threads and --deterministic; under torchrun,
    its rank's device (CUDA: the GPU numbered LOCAL_RANK), and the process group joined: NCCL on
    CUDA, gloo on CPU."""
    if args.threads:
        torch.set_num_threads(args.threads)
    problem = prepare_deterministic(args)  # flags.parse_args ran it already, before any CUDA
    if problem:
        raise SystemExit(problem)
    torch.use_deterministic_algorithms(args.deterministic)
    device = pick_device(args.device)
    if "RANK" not in os.environ:  # started without torchrun: one process
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not is_distributed():  # joined once, although train() may run twice in one process
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


DEVICES = ("auto", "cpu", "cuda", "mps")  # what --device allows; auto: cuda, else mps, else cpu
# the two cuBLAS workspaces under which its sums run in one order (PyTorch's reproducibility notes)
CUBLAS_WORKSPACES = (":4096:8", ":16:8")


def absent_device(name):
    """Why --device name cannot run here (a sentence naming it and what to do), or None: the one
    check of nanorgra.py, warmstart.py and sample.py, made before any work."""
    if name not in DEVICES:
        return f"--device {name}: not a device this code knows; pass one of {', '.join(DEVICES)}"
    if name == "cuda" and not torch.cuda.is_available():
        return (f"--device cuda: torch {torch.__version__} finds no CUDA device (a CPU build of "
                f"torch, or no GPU here); pass --device cpu, or install a CUDA build of torch")
    if name == "mps" and not torch.backends.mps.is_available():
        return "--device mps: torch finds no Apple GPU (MPS) here; pass --device cpu"
    return None


def prepare_deterministic(args):
    """--deterministic made to hold on CUDA: CUBLAS_WORKSPACE_CONFIG set to :4096:8 (unless a
    deterministic workspace is set already) before CUDA starts, for cuBLAS reads it once, when it
    starts. Returns None, or the problem when it cannot hold: CUDA already started in this process
    without the variable, or another workspace set. Called right after the command line is read
    (flags.parse_args), before any device work, and again by setup_device; without
    --deterministic it does nothing."""
    if not args.deterministic:
        return None
    value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if on_cuda and value is not None and value not in CUBLAS_WORKSPACES:
        return (f"--deterministic: CUBLAS_WORKSPACE_CONFIG is {value!r}, under which cuBLAS may "
                f"sum in another order each run; unset it, or set it to :4096:8 or :16:8")
    if on_cuda and value is None and torch.cuda.is_initialized():
        return ("--deterministic: CUDA started in this process before CUBLAS_WORKSPACE_CONFIG "
                "was set, and cuBLAS reads it only when it starts; run in a fresh process, or set "
                "CUBLAS_WORKSPACE_CONFIG=:4096:8 before anything uses CUDA")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # harmless on the CPU
    return None


def pick_device(name="auto"):
    """A torch.device; "auto" is cuda, else mps, else cpu."""
    if name == "auto":
        mps = torch.backends.mps.is_available()
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    return torch.device(name)


def teardown():
    """Leave the process group (at the end of a torchrun job)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def processes_started():
    """How many processes torchrun started (WORLD_SIZE; 1 without it), known before they join."""
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank():
    return int(os.environ.get("LOCAL_RANK", 0))


def my_share(items):
    """This rank's contiguous share of items (all of them in one process). Ranks get equal shares
    when len(items) is a multiple of the world size, which flags.py checks for the prompts of a
    step."""
    n, r, w = len(items), rank(), world_size()
    return items[r * n // w:(r + 1) * n // w]


def _comm_device():
    """Where collective tensors must live: the GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(tensor):
    """Every rank's tensor, concatenated along dim 0 in rank order (all ranks' shapes must be
    equal)."""
    if not is_distributed():
        return tensor
    local = tensor.to(_comm_device())
    if tensor.dtype == torch.bool:  # sent as bytes: not every backend sends bool
        local = local.to(torch.uint8)
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device, tensor.dtype)


def gather_objects(items):
    """Every rank's list, concatenated in rank order (any picklable items, any lengths)."""
    if not is_distributed():
        return list(items)
    parts = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def gather_step(rollout, rewards, styles, ref_logp, pad_id):
    """Every rank's rows of one RL step, on every rank, in rank order: the Rollout (prompts
    left-padded and completions right-padded to the longest of any rank, with pad_id), the (B, G)
    rewards, the styles, and the (N, L) reference log-probs (or None). In one process: the
    arguments as they are."""
    if not is_distributed():
        return rollout, rewards, styles, ref_logp
    prompt_len = int(max(gather_objects([rollout.prompt.size(1)])))
    completion_len = int(max(gather_objects([rollout.tokens.size(1)])))
    rollout = padded_rollout(rollout, prompt_len, completion_len, pad_id)
    gathered = {f.name: gather_rows(getattr(rollout, f.name)) for f in dataclasses.fields(rollout)
                if getattr(rollout, f.name) is not None}  # sampler_logprobs: set later, by learn()
    if ref_logp is not None:
        ref_logp = gather_rows(right_pad(ref_logp, completion_len, 0.0))
    return (dataclasses.replace(rollout, **gathered), gather_rows(rewards),
            gather_objects(styles), ref_logp)


def padded_rollout(rollout, prompt_len, completion_len, pad_id):
    """A Rollout (model.py) padded to prompts of prompt_len (on the left, not valid) and completions
    of completion_len (on the right, masked out, log-prob 0): the same rows, a wider layout."""
    extra = prompt_len - rollout.prompt.size(1)
    return dataclasses.replace(
        rollout,
        prompt=left_pad(rollout.prompt, extra, pad_id),
        prompt_valid=left_pad(rollout.prompt_valid, extra, False),
        tokens=right_pad(rollout.tokens, completion_len, pad_id),
        mask=right_pad(rollout.mask, completion_len, False),
        logprobs=right_pad(rollout.logprobs, completion_len, 0.0))


def left_pad(tensor, extra, value):
    """(N, T) -> (N, extra + T), value in the new columns on the left."""
    pad = torch.full((tensor.size(0), extra), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor], 1)


def right_pad(tensor, length, value):
    """(N, T) -> (N, length), value in the new columns on the right."""
    extra = length - tensor.size(1)
    pad = torch.full((tensor.size(0), extra), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, pad], 1)


def sum_over_ranks(values, op="sum"):
    """A dict of numbers (floats, ints or 0-d tensors) added (op="sum") or maxed (op="max") over the
    ranks, as floats."""
    names = list(values)
    flat = torch.tensor([float(values[name]) for name in names], dtype=torch.float64)
    return dict(zip(names, reduce_over_ranks(flat, op).tolist()))


REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def reduce_over_ranks(tensor, op="sum"):
    """tensor reduced element by element over the ranks: op "sum", "min" or "max"."""
    if not is_distributed():
        return tensor
    total = tensor.to(_comm_device())
    dist.all_reduce(total, op=REDUCE_OPS[op])
    return total.to(tensor.device)


def my_micro_batches(order, minibatches, micro_batch):
    """The walk of one pass over a step's rows (order: (K,) row numbers): for each of its
    minibatches (one optimizer step each), the minibatch and the micro-batches of it that this
    process computes (its my_share, all of them in one process), of micro_batch rows each (0: one
    micro-batch)."""
    for minibatch in order.chunk(minibatches):
        my_rows = my_share(minibatch)
        yield minibatch, my_rows.split(micro_batch or max(len(my_rows), 1))


def sum_rows_over_ranks(tensor):
    """A tensor added up over the ranks: each rank fills its own rows, zeros elsewhere, and every
    rank gets all of them."""
    if not is_distributed():
        return tensor
    total = tensor.to(_comm_device())
    dist.all_reduce(total)
    return total.to(tensor.device)


def sum_gradients_over_ranks(model):
    """Each parameter's gradient replaced by its sum over the ranks (a rank with no rows adds
    zeros)."""
    if not is_distributed():
        return
    params = list(model.parameters())
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.flatten() for g in grads]).to(_comm_device())  # one message, not one each
    dist.all_reduce(flat)
    for p, part in zip(params, flat.split([p.numel() for p in params])):
        p.grad = part.view_as(p).to(p.device)


def agree(value):
    """Rank 0's value, on every rank: for a decision that must be the same everywhere (is a file
    cached?)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    """Wait until every rank gets here."""
    if is_distributed():
        dist.barrier()
