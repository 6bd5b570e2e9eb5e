"""
batches.py: text in, text out. Problems and their completion texts as the token batches the model
reads (model.pack for the loss's rows, model.pack_rows for the warm start's packed rows), and a
rollout's completions back as text for the verifier.
"""

from data.tasks import prompt_text
from model import pack, pack_rows


def pack_examples(tok, problems, completions, device):
    """Prompts and given completion texts (EOS appended) as a Rollout, the batch layout the
    losses read: the sft objective's gold solutions."""
    prompts = [tok.encode(prompt_text(p)) for p in problems]
    targets = [tok.encode(c) + [tok.eos_id] for c in completions]
    return pack(prompts, targets, tok.pad_id, device)


def packed_examples(tok, problems, completions, device):
    """Prompts and given completion texts (EOS appended), several to a row (model.pack_rows): the
    layout of supervised training, which spends its compute on real tokens, not padding."""
    examples = [(tok.encode(prompt_text(p)), tok.encode(c) + [tok.eos_id])
                for p, c in zip(problems, completions)]
    return pack_rows(examples, tok.pad_id, device)


def decode_completions(tok, rollout):
    """The completion text of every row (EOS and padding left out)."""
    tokens, mask = rollout.tokens.cpu(), rollout.mask.cpu()
    return [tok.decode(t[m].tolist()) for t, m in zip(tokens, mask)]
