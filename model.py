"""
model.py: a small GPT written from scratch, and the hand-written sampler that RL training calls.

What is here, top to bottom:
  1. GPTConfig and GPT: pre-norm transformer blocks, causal self-attention, tied input/output
     embeddings, learned positions. The forward takes a `valid` mask so that left-padded rows work
     (padding is never attended to, and every row's positions start at 0 on its first real token),
     or `segments` for rows that pack several examples.
  2. token_logprobs, token_entropy and completion_logprobs: log pi(target | prefix) at a
     temperature, the quantity the RL loss is built from. The forward runs in float32, or with
     precision "bf16" its linear layers under bf16 autocast (the attention, the head and the
     log-probs stay float32, in the sampler and the trainer alike).
  3. Packed rows (pack_rows): several examples one after another in a row, with a block-diagonal
     causal mask, as supervised training reads them: compute is spent on tokens, not padding.
  4. generate: a batched sampler with a KV cache. Prompts of different lengths are left-padded;
     each prompt is prefilled once (the forward above, writing its keys and values) and its cache
     copied to its G samples; then GPT.decode_step adds one token to every row per step. A row
     stops at its own EOS, and finished rows leave the batch once a quarter of it has finished.
     Every random draw comes from per-prompt seeded torch.Generators, so a prompt gets the same
     samples alone or in a batch. pack lays out given completions as generate returns them.
  5. generate_naive: the nanoGPT-style loop (recompute the whole sequence every step), kept as the
     reference the tests compare against and the baseline of the benchmark.

Simplifications: no dropout (RL wants the sampled and the trained distribution to be the same
function), no rotary embeddings, no flash-decoding; the cache is preallocated to
prompt length + max_new_tokens.

experiments/bench_sampler.py checks the sampler against the full recompute and measures it.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# The model


@dataclass
class GPTConfig:
    vocab_size: int = 32  # the tokenizer has ~22 tokens; a round number keeps the matmuls tidy
    block_size: int = 128  # longest sequence (prompt + completion) the position table covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, attn_mask, cache=None, layer=0, start=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            # write this call's keys/values at slots [start, S) of the slot-major cache
            # (S_max, B, C), and attend over everything cached so far
            S, hs = start + T, C // self.n_head
            cache.k[layer][start:S] = k.permute(2, 0, 1, 3).reshape(T, B, C)
            cache.v[layer][start:S] = v.permute(2, 0, 1, 3).reshape(T, B, C)
            k = cache.k[layer][:S].view(S, B, self.n_head, hs).permute(1, 2, 0, 3)  # (B, nh, S, hs)
            v = cache.v[layer][:S].view(S, B, self.n_head, hs).permute(1, 2, 0, 3)  # (B, nh, S, hs)
        y = attention(q, k, v, attn_mask)  # (B, nh, T, hs), float32
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)

    def decode(self, x, cache, layer, slot, bias):
        """
        The sampler's step: x (N, C) holds each row's newest token; its key and value go to cache
        slot `slot`, and its query attends over slots [0, slot]. bias: (S, N, 1), 0 on real tokens
        and -inf on the prompts' left padding, or None where no prompt is padded.
        With one query per row, attention is a dot product per (slot, row, head), written here as
        elementwise products and sums that stream once through the slot-major cache. SDPA's CPU
        kernel and a batched matmul run a tiny matrix product per (row, head) instead, and took
        1.5 to 3 times as long at the benchmark's shape.
        """
        N, C = x.size()
        nh, S = self.n_head, slot + 1
        hs = C // nh
        q, k, v = self.c_attn(x).split(C, dim=1)  # (N, C) each
        cache.k[layer][slot] = k  # one contiguous (N, C) block
        cache.v[layer][slot] = v
        keys = cache.k[layer][:S].view(S, N, nh, hs)  # (S, N, nh, hs): the filled slots only
        values = cache.v[layer][:S].view(S, N, nh, hs)  # (S, N, nh, hs)
        # the products go to one buffer that every layer and step reuses: a fresh temporary, a
        # little larger every step, would be new memory for the OS to page in every time
        prod = cache.scratch[:S * N * C].view(S, N, nh, hs)
        # under bf16 q is widened, so that the products and sums are float32, as in the trainer's
        # attention (attention() below).
        # The 1/sqrt(hs) goes on q: N*C numbers rather than S*N*nh scores.
        if q.dtype != torch.float32:
            q = q.float()
        q = q.view(N, nh, hs) * hs ** -0.5
        scores = torch.mul(q, keys, out=prod).sum(-1)  # (S, N, nh)
        if bias is not None:
            scores = scores + bias
        att = scores.softmax(0)  # over the slots
        y = torch.mul(att[..., None], values, out=prod).sum(0)  # (N, nh, hs)
        return self.c_proj(y.view(N, C))  # heads side by side, as forward lays them out


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask, cache=None, layer=0, start=0):
        # pre-norm: normalise, then add back
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer, start)
        x = x + self.mlp(self.ln_2(x))
        return x


# The forward's precision: "fp32" (the default, on every device) or "bf16" (mixed: the linear layers
# under bf16 autocast; the attention, the head and the log-probs in float32, in the sampler and the
# trainer alike); "fp16" is the same with float16, for a sampler that computes apart from the
# trainer (sampling_precision). It is not part of GPTConfig: the weights are the same either way.
PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class GPT(nn.Module):
    def __init__(self, config, seed=0, precision="fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.config = config
        self.precision = precision
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: one matrix reads tokens in and writes them out
        self.lm_head.weight = self.wte.weight
        self._init_weights(torch.Generator().manual_seed(seed))

    def _init_weights(self, gen):
        # GPT-2 init, drawn from our own generator so that the same seed gives the same model
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections scaled down by depth
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.config.n_layer), generator=gen)
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02, generator=gen)
            elif name.endswith("weight"):  # LayerNorm gains
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    @property
    def device(self):
        return self.wte.weight.device

    def mixed_precision(self):
        """Autocast of the network's body to bf16 or fp16 (self.precision); in fp32 nothing."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def forward(self, idx, valid=None, cache=None, start=0, pos=None, segments=None):
        """
        idx: (B, T) token ids. valid: (B, T) bool, False on left padding (None = all real tokens).
        With a cache, idx holds the tokens at cache slots [start, start+T), `pos` their positions,
        and `valid` covers slots [0, start+T).
        segments: (B, T), for rows that hold several examples one after another (pack_rows): the
        number of the example each position belongs to, -1 on padding; each example's positions
        count from its first token and no example attends to another.
        Returns logits (B, T, vocab_size).
        """
        B, T = idx.shape
        if segments is not None:
            pos = segment_positions(segments)
            attn_mask = segment_causal_mask(segments)
        elif cache is None and valid is None:
            pos = torch.arange(T, device=idx.device).expand(B, T)
            attn_mask = None
        elif cache is None:
            # each row counts from its first real token
            pos = (valid.long().cumsum(1) - 1).clamp(min=0)
            attn_mask = padded_causal_mask(valid, start=0)
        else:
            attn_mask = padded_causal_mask(valid, start=start)
        # positions only grow along a row: a row of start + T slots or fewer stays inside the table,
        # so only a longer one is looked at (a look at the values waits for the device)
        if start + T > self.config.block_size and pos.max() >= self.config.block_size:
            raise ValueError(f"position {int(pos.max())} is beyond "
                             f"block_size={self.config.block_size}")
        with self.mixed_precision():
            x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
            for i, block in enumerate(self.blocks):
                x = block(x, attn_mask, cache, i, start)
            x = self.ln_f(x)
        return self.lm_head(x.float())  # (B, T, vocab_size): the head in float32, always

    def decode_step(self, idx, pos, cache, slot):
        """
        The sampler's step, the same function as forward for one new token per row: idx (N,) each
        row's newest token, at positions pos (N,), its keys and values written to cache slot `slot`.
        Returns the next-token logits (N, vocab_size).
        """
        # (S, N, 1) additive mask, the same for all layers: -inf on the prompts' left padding, 0
        # elsewhere; None when no prompt is padded. Every row has a real prompt token, so no row is
        # all -inf (that would give NaN). After a row's EOS its slots hold padding that only the row
        # itself sees: its outputs from then on are garbage that nobody reads, so nothing masks them
        # and the mask never changes during sampling.
        bias = None if cache.bias is None else cache.bias[:slot + 1, :, None]
        with self.mixed_precision():
            x = self.wte(idx) + self.wpe(pos)  # (N, C): no T axis, one token per row
            for i, block in enumerate(self.blocks):
                x = x + block.attn.decode(block.ln_1(x), cache, i, slot, bias)
                x = x + block.mlp(block.ln_2(x))
            x = self.ln_f(x)
        return self.lm_head(x.float())  # (N, vocab_size)


def attention(q, k, v, attn_mask):
    """
    Scaled dot-product attention, in float32 whatever the precision: under bf16 autocast q, k, v
    come in bf16 and are widened, so that the trainer's attention is computed as the sampler's
    (CausalSelfAttention.decode). q: (B, nh, T, hs), k, v: (B, nh, S, hs); attn_mask: (B, 1, T, S)
    bool, True = may attend, or None for the plain causal mask (no padding, no cache).
    """
    if q.dtype != torch.float32:
        with torch.autocast(q.device.type, enabled=False):
            return attention(q.float(), k.float(), v.float(), attn_mask)
    if attn_mask is None:  # the fused causal path
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def padded_causal_mask(valid, start):
    """
    (B, 1, T, S) bool mask for queries at slots [start, S) over keys [0, S): a query sees
    earlier-or-same slots that hold real tokens. A query always sees itself, so a padding query
    never has an empty row (SDPA would give NaN); its output is garbage that nobody reads.
    """
    B, S = valid.shape
    q_slot = torch.arange(start, S, device=valid.device)[:, None]  # (T, 1)
    k_slot = torch.arange(S, device=valid.device)[None, :]  # (1, S)
    mask = (k_slot <= q_slot) & valid[:, None, :]  # (B, T, S)
    mask = mask | (k_slot == q_slot)
    return mask[:, None]  # (B, 1, T, S)


def segment_positions(segments):
    """(B, T) -> (B, T): the position of each slot inside its example, 0 at the example's first
    slot; 0 on padding (-1), however long it is."""
    slot = torch.arange(segments.size(1), device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    # an example starts where the number changes
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, slot, torch.zeros_like(slot)).cummax(1).values  # its first slot
    return torch.where(segments >= 0, slot - first, torch.zeros_like(slot))


def segment_causal_mask(segments):
    """(B, 1, T, T) bool: a query sees the earlier-or-same slots of its own example. Padding (-1)
    sees earlier padding and itself, so that no row of the mask is empty (SDPA would give NaN)."""
    T = segments.size(1)
    same_example = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return (same_example & causal)[:, None]


def token_logprobs(logits, targets, temperature=1.0):
    """
    log pi(target_t | prefix) under softmax(logits / temperature).
    logits: (B, T, V), targets: (B, T) -> (B, T). The sampler divides by the same temperature, so at
    mu = 1 the ratio pi_theta / pi_old is exactly 1.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # float32 (the head's is, always)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits, temperature=1.0):
    """
    The entropy of the whole next-token distribution softmax(logits / temperature) at each position,
    H_t = -sum_v pi(v | prefix) log pi(v | prefix).  logits: (B, T, V) -> (B, T). It reads every
    probability, not only the sampled token's; differentiable, for the entropy bonus.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V), float32 under bf16 too
    return -(logp.exp() * logp).sum(-1)


def completion_logits(model, batch):
    """The logits (N, L, V) that predict the completion tokens of batch (a Rollout) given their
    prompts: one forward, from which both the log-probs and the entropy are read."""
    seq, valid = batch.sequences()  # (N, P + L)
    return model(seq, valid=valid)[:, batch.prompt.size(1) - 1:-1]  # the completion's predictions


def completion_logprobs(model, batch, temperature):
    """Log-probs (N, L) of the completion tokens of batch (a Rollout) given their prompts, at the
    sampling temperature: train the distribution that was sampled, or the ratio pi_theta / pi_old is
    not 1 at the start."""
    return token_logprobs(completion_logits(model, batch), batch.tokens, temperature)  # (N, L)


# -----------------------------------------------------------------------------
# Packed rows: several examples one after another in each row, for supervised training. Padding a
# batch of examples of 10 to 45 tokens to its longest spends a third of the compute on padding;
# packing them into rows of PACK_LEN tokens spends almost none.

PACK_LEN = 128  # tokens per packed row: the longest example fits, and the attention stays small


@dataclass
class Packed:
    tokens: torch.Tensor  # (R, T) token ids: examples one after another, padding after the last
    segments: torch.Tensor  # (R, T) the example of each slot (0, 1, ... in a row); -1 on pad
    targets: torch.Tensor  # (R, T) the next token of the same example (pad where there is none)
    loss_mask: torch.Tensor  # (R, T) bool: the target is a completion token (its EOS included)


def pack_rows(examples, pad_id, device, row_len=PACK_LEN):
    """examples: (prompt ids, completion ids) pairs -> Packed. Each example goes into the first row
    with room for it (first fit, in the order given), or starts a new row. Slot j of an example
    predicts its slot j+1; only the predictions of completion tokens are trained (loss_mask)."""
    # rows[i]: the (tokens, prompt length) of its examples; used[i]: their length
    rows, used = [], []
    for prompt, completion in examples:
        seq = list(prompt) + list(completion)
        if len(seq) > row_len:
            raise ValueError(f"an example of {len(seq)} tokens does not fit a row of {row_len}")
        i = next((i for i, n in enumerate(used) if n + len(seq) <= row_len), len(rows))
        if i == len(rows):
            rows.append([])
            used.append(0)
        rows[i].append((seq, len(prompt)))
        used[i] += len(seq)
    shape = (len(rows), row_len)
    tokens, targets = torch.full(shape, pad_id), torch.full(shape, pad_id)
    segments = torch.full(shape, -1)
    loss_mask = torch.zeros(shape, dtype=torch.bool)
    for i, row in enumerate(rows):
        start = 0
        for example, (seq, n_prompt) in enumerate(row):
            end = start + len(seq)
            tokens[i, start:end] = torch.tensor(seq)
            segments[i, start:end] = example
            targets[i, start:end - 1] = torch.tensor(seq[1:])  # slot j predicts slot j + 1
            loss_mask[i, start + n_prompt - 1:end - 1] = True  # the predictions of the completion
            start = end
    return Packed(tokens.to(device), segments.to(device), targets.to(device), loss_mask.to(device))


def packed_logprobs(model, batch, temperature=1.0):
    """(R, T) log-probs of each slot's target under model; read them where
    batch.loss_mask is True."""
    logits = model(batch.tokens, segments=batch.segments)
    return token_logprobs(logits, batch.targets, temperature)


# -----------------------------------------------------------------------------
# The sampler


@dataclass
class Rollout:
    # (N, P) left-padded prompt tokens, N = n_prompts * num_samples, prompt-major rows
    prompt: torch.Tensor
    prompt_valid: torch.Tensor  # (N, P) bool, False on the left padding
    tokens: torch.Tensor  # (N, L) completion tokens, pad_id after each row's EOS
    # (N, L) bool, True on every generated token, the EOS included; False on padding
    mask: torch.Tensor
    # (N, L) log-prob of each sampled token under the distribution it was drawn from; 0 on pad
    logprobs: torch.Tensor
    # (N, L) the sampler's log-probs, kept here when the trainer's replace them in logprobs as
    # pi_old (nanorgra.trainer_old_logprobs); None while logprobs are the sampler's own
    sampler_logprobs: torch.Tensor | None = None

    def sequences(self):
        """The full (prompt | completion) rows and their valid mask, as the training forward
        takes them."""
        seq = torch.cat([self.prompt, self.tokens], 1)
        return seq, torch.cat([self.prompt_valid, self.mask], 1)

    def rows(self, index):
        """The Rollout of the rows given by index (a tensor of row numbers or a slice)."""
        sampler = None if self.sampler_logprobs is None else self.sampler_logprobs[index]
        return Rollout(self.prompt[index], self.prompt_valid[index], self.tokens[index],
                       self.mask[index], self.logprobs[index], sampler)


class KVCache:
    """
    Preallocated keys and values of every layer, slot-major: (S_max, N, C), heads side by side in C.
    Slot s of all N rows is one contiguous block, so a step's keys are written with one copy and
    slots [0, S) are read as one stream. bias: (S_max, N), -inf on the prompts' left padding and 0
    elsewhere, the decode step's additive mask (None where no prompt is padded). scratch: room for
    the decode step's (S, N, C) products, reused by every layer and step.
    """

    def __init__(self, config, n_rows, max_len, device, dtype):
        shape = (max_len, n_rows, config.n_embd)
        # empty, not zeros: a slot is always written before any query reads it
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.bias = None
        self.scratch = torch.empty(max_len * n_rows * config.n_embd, device=device)  # float32

    def keep_rows(self, keep, filled):
        """
        Keep only rows `keep` (n,), ascending, of the first `filled` slots: the sampler drops rows
        that have finished. In place, in the first n rows of each buffer: no new memory.
        """
        n = len(keep)
        for kv in (self.k, self.v):
            for layer, buf in enumerate(kv):
                buf[:filled, :n] = buf[:filled, keep]  # the right side is a copy: overlap is safe
                kv[layer] = buf[:, :n]  # (S_max, n, C)
        if self.bias is not None:
            self.bias = self.bias[:, keep]


def left_pad(prompts, pad_id, device):
    """list of token lists -> (B, P) left-padded ids and (B, P) bool valid mask, laid out on the
    CPU and sent to the device in one copy (not one small copy per prompt)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and every prompt needs at least "
                         "one token")
    P = max(len(p) for p in prompts)
    both = torch.zeros(2, len(prompts), P, dtype=torch.long)  # the ids, then the valid mask
    both[0].fill_(pad_id)
    for i, p in enumerate(prompts):
        both[0, i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        both[1, i, P - len(p):] = 1
    both = both.to(device)
    return both[0], both[1].bool()


def pack(prompts, completions, pad_id, device):
    """Given completions (token lists, EOS included) of prompts (token lists) as a Rollout, the
    layout the sampler returns: left-padded prompts, right-padded completions, a mask over the
    real completion tokens, log-probs 0."""
    prompt, prompt_valid = left_pad(prompts, pad_id, device)
    lengths = torch.tensor([len(c) for c in completions])
    tokens = torch.full((len(completions), int(lengths.max())), pad_id, dtype=torch.long)
    for i, c in enumerate(completions):
        tokens[i, :len(c)] = torch.tensor(c, dtype=torch.long)
    mask = torch.arange(tokens.size(1))[None] < lengths[:, None]  # (N, L)
    tokens, mask = tokens.to(device), mask.to(device)  # laid out on the CPU, then sent
    return Rollout(prompt, prompt_valid, tokens, mask, torch.zeros(tokens.shape, device=device))


def gumbel_noise(seeds, num_samples, max_new_tokens, vocab_size, device):
    """
    (B * num_samples, max_new_tokens, V) Gumbel noise, one seeded torch.Generator per prompt.
    Drawing it per prompt (not per batch) is what makes a prompt's samples independent of what
    else is in the batch.
    argmax(logits / T + g) with g ~ Gumbel(0, 1) is an exact draw from softmax(logits / T).
    """
    shape = (num_samples, max_new_tokens, vocab_size)
    u = torch.cat([torch.rand(shape, generator=torch.Generator().manual_seed(int(s)))
                   for s in seeds])
    # the logs once over the whole batch, not once per prompt: a log may start the thread pool even
    # on a small tensor, and on a busy machine every start can wait for a descheduled thread
    return (-torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))).to(device)


def pick_tokens(logits, noise, temperature, top_k):
    """
    logits: (N, V) next-token logits, noise: (N, V). Returns the chosen tokens (N,) and their
    log-probs (N,) under the distribution they were drawn from: softmax(logits / T) restricted to
    the top k. Greedy (T = 0) returns the T = 1 log-probs of the argmax, which is what
    evaluation statistics want.
    """
    # logits are float32 (the head's always are)
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, F.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
    if temperature != 1:  # dividing by 1 changes no number: one op less a step
        logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    tok = (logits + noise).argmax(-1)
    return tok, F.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)


def check_sampling_args(temperature, top_k, num_samples, max_new_tokens):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError(f"num_samples and max_new_tokens must be >= 1, got {num_samples} and "
                         f"{max_new_tokens}")


def prompt_seeds(n_prompts, generator, seeds):
    """One seed per prompt: given explicitly, or drawn from the caller's seeded generator."""
    if seeds is not None:
        if len(seeds) != n_prompts:
            raise ValueError(f"seeds must have one entry per prompt ({n_prompts}), "
                             f"got {len(seeds)}")
        return list(seeds)
    if generator is None:
        raise ValueError("pass a seeded torch.Generator (generator=) or one seed per prompt "
                         "(seeds=)")
    return torch.randint(0, 2**62, (n_prompts,), generator=generator).tolist()


# Finished rows are dropped from the sampler's batch once at most this share of it is still running:
# each drop copies the cache, so not at every finish. 3/4 was the fastest of never, 1/2, 3/4, 9/10
# and 1 (at every finish) on an RL-like batch (32 prompts x 8 samples, lengths 1-64).
SHRINK = 0.75
# How often the loop counts the rows still running (to stop, or to drop finished rows): every step
# on the CPU, where the count is a number in memory; every CHECK_EVERY steps on a GPU, where reading
# a number back waits for every kernel queued before it (a host sync), and a few steps of finished
# rows cost less than the wait.
CHECK_EVERY = 8


@contextlib.contextmanager
def sampling_precision(model, precision=None):
    """The model computing in another precision for a while (None: its own): a sampler whose
    arithmetic differs from the trainer's, as a vLLM sampler's does (--sampler-precision). The
    weights are not touched; only the autocast of forward and decode_step, and the cache's dtype."""
    own = model.precision
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model.precision = precision or own
    try:
        yield model
    finally:
        model.precision = own


@torch.inference_mode()  # no autograd bookkeeping at all: cheaper than no_grad, ~100 ops a step
def generate(model, prompts, max_new_tokens, eos_id, pad_id, num_samples=1, temperature=1.0,
             top_k=None, generator=None, seeds=None, check_every=None):
    """
    Sample num_samples completions for each prompt (a list of token-id lists of any lengths) with a
    KV cache. Rows come out prompt-major: rows [i*G, (i+1)*G) are the G samples of prompt i.
    check_every: steps between counts of the running rows (None: 1 on the CPU, CHECK_EVERY
    elsewhere); it changes when the loop looks, not what it samples.
    """
    check_sampling_args(temperature, top_k, num_samples, max_new_tokens)
    device, cfg = model.wte.weight.device, model.config
    check_every = check_every or (1 if device.type == "cpu" else CHECK_EVERY)
    seeds = prompt_seeds(len(prompts), generator, seeds)
    idx, valid = left_pad(prompts, pad_id, device)  # (B, P)
    B, P = idx.shape
    N = B * num_samples
    noise = None
    if temperature > 0:
        noise = gumbel_noise(seeds, num_samples, max_new_tokens, cfg.vocab_size, device)

    # prefill: every prompt once, then its keys/values copied to its G rows (copying is cheap)
    # the cache holds keys and values as the linear layers make them: bf16 or fp16 when mixed
    dtype = AUTOCAST_DTYPES.get(model.precision, model.wte.weight.dtype)
    prefill = KVCache(cfg, B, P, device, dtype)
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, P)
    logits = model(idx, valid=valid, cache=prefill, start=0, pos=pos)[:, -1]  # (B, V)
    cache = KVCache(cfg, N, P + max_new_tokens, device, dtype)
    for layer in range(cfg.n_layer):  # (P, B, C) -> (P, N, C)
        cache.k[layer][:P] = prefill.k[layer].repeat_interleave(num_samples, 1)
        cache.v[layer][:P] = prefill.v[layer].repeat_interleave(num_samples, 1)
    if len({len(p) for p in prompts}) > 1:  # some prompt is left-padded: the decode step masks it
        real = torch.ones(P + max_new_tokens, N, dtype=torch.bool, device=device)
        real[:P] = valid.repeat_interleave(num_samples, 0).t()  # (P, N)
        cache.bias = torch.zeros(real.shape, device=device).masked_fill_(~real, float("-inf"))
    logits = logits.repeat_interleave(num_samples, 0)  # (N, V)
    next_pos = pos[:, -1].repeat_interleave(num_samples, 0) + 1  # (N,)
    last_pos = int(pos[:, -1].max())

    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(N, max_new_tokens, device=device)
    mask = torch.zeros(N, max_new_tokens, dtype=torch.bool, device=device)
    # the working batch: its row j samples output row output_row[j]; finished rows leave it now
    # and then
    output_row = torch.arange(N, device=device)  # (n,)
    alive = torch.ones(N, dtype=torch.bool, device=device)  # (n,)
    for t in range(max_new_tokens):
        step_noise = None if noise is None else noise[output_row, t]  # (n, V)
        tok, lp = pick_tokens(logits, step_noise, temperature, top_k)  # (n,)
        tok = torch.where(alive, tok, pad_id)
        tokens[output_row, t] = tok
        logprobs[output_row, t] = torch.where(alive, lp, 0.0)
        mask[output_row, t] = alive  # the EOS step is still alive here: the EOS is in the mask
        alive = alive & (tok != eos_id)
        if t == max_new_tokens - 1:
            break
        if (t + 1) % check_every == 0:  # the loop's only look at the values (a host sync)
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if n_alive <= SHRINK * alive.numel():
                keep = alive.nonzero().squeeze(1)  # (n_alive,)
                output_row, alive = output_row[keep], alive[keep]
                tok, next_pos = tok[keep], next_pos[keep]
                cache.keep_rows(keep, P + t)
        if last_pos + t + 1 >= cfg.block_size:
            if alive.any():  # rows finished since the last look need no more positions
                raise ValueError(f"position {last_pos + t + 1} is beyond "
                                 f"block_size={cfg.block_size}")
            break
        logits = model.decode_step(tok, next_pos, cache, P + t)  # (n, V)
        next_pos = next_pos + 1
    # the steps some row was still running at: a prefix, since rows only ever finish
    steps = int(mask.any(0).sum())
    # clones made outside inference mode are ordinary tensors, which the loss may save for backward
    out = (idx.repeat_interleave(num_samples, 0), valid.repeat_interleave(num_samples, 0),
           tokens[:, :steps], mask[:, :steps], logprobs[:, :steps])
    with torch.inference_mode(False):
        return Rollout(*(t.clone() for t in out))


@torch.no_grad()
def generate_naive(model, prompts, max_new_tokens, eos_id, pad_id, num_samples=1,
                   temperature=1.0, top_k=None, generator=None, seeds=None):
    """The same draws as generate(), nanoGPT style: no cache, the whole sequence is recomputed
    every step."""
    check_sampling_args(temperature, top_k, num_samples, max_new_tokens)
    device, cfg = model.wte.weight.device, model.config
    seeds = prompt_seeds(len(prompts), generator, seeds)
    idx, valid = left_pad(prompts, pad_id, device)
    idx = idx.repeat_interleave(num_samples, 0)  # (N, P)
    valid = valid.repeat_interleave(num_samples, 0)  # (N, P)
    N, P = idx.shape
    noise = None
    if temperature > 0:
        noise = gumbel_noise(seeds, num_samples, max_new_tokens, cfg.vocab_size, device)
    seq, seq_valid = idx, valid
    logprobs = []
    alive = torch.ones(N, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        logits = model(seq, valid=seq_valid)[:, -1]  # (N, V): the full forward, every step
        tok, lp = pick_tokens(logits, None if noise is None else noise[:, t], temperature, top_k)
        seq = torch.cat([seq, torch.where(alive, tok, pad_id)[:, None]], 1)
        seq_valid = torch.cat([seq_valid, alive[:, None]], 1)
        logprobs.append(torch.where(alive, lp, 0.0))
        alive = alive & (tok != eos_id)
        if not alive.any():
            break
    tokens = seq[:, P:]
    return Rollout(idx, valid, tokens, seq_valid[:, P:], torch.stack(logprobs, 1))
