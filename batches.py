"""
batches.py: text in, text out. Problems and their completion texts as the token batches the model
reads (model.pack for the loss's rows, model.pack_rows for the warm start's packed rows), and a
rollout's completions back as text for the verifier; and a worker that makes batches ahead of the
step that uses them.
"""

import queue
import threading

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


def prefetched(make, steps, ahead=2):
    """make(step) for each step of steps (a range), in order, made by a worker thread up to
    `ahead` steps before the step that uses it: the host's work (drawing problems, writing them
    out, tokenising, packing) runs while the device computes the step before. make must depend
    on the step alone (each step draws from its own generator, data.tasks.step_rngs), so the
    batches and their order are a plain loop's, bit for bit. An error in make is raised here, at
    the step it belongs to."""
    made = queue.Queue(maxsize=ahead)  # (batch, error) in step order
    stop = threading.Event()  # set when the loop using the batches ends early

    def work():
        for step in steps:
            try:
                item = (make(step), None)
            except Exception as error:  # handed to the loop, which raises it
                item = (None, error)
            while not stop.is_set():
                try:
                    made.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set() or item[1] is not None:
                return

    worker = threading.Thread(target=work, name="prefetched", daemon=True)
    worker.start()
    try:
        for _ in steps:
            batch, error = made.get()
            if error is not None:
                raise error
            yield batch
    finally:
        stop.set()
        worker.join()
