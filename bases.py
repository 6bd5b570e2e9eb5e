"""
bases.py: the warm start's bases on disk, found by what they are made of.

A base is looked for under --base-dir (runs/bases: the ones this machine trained), then in bases/
(the ones shipped with the repository: seeds 0 and 1 of the default settings, and the other five
models of the compute-matched study), under a key computed from content, not from names
(warmstart.base_keys): the texts and token ids the corpus functions write for a fixed probe of every
level and style, the code the warm start runs (read as syntax, so a comment or a docstring changes
nothing), the model's configuration, the stages' settings and the test sets. An edit to any of them
is another key, and the warm start trains again, saying why; nothing stale is ever loaded. Each base
file has a JSON beside it with its key, the parts of the key, the file's sha256 and where it was
trained; a file whose bytes do not match is refused.

The key leaves out the machine: a CPU of another kind, or another thread count, trains a base whose
last digits differ from the same code (pitfall 11), so the shipped base is the one every machine
starts from, and the sidecar says where it was trained.
"""

import ast
import dataclasses
import hashlib
import inspect
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from data.tasks import LEVELS, STYLES, load_test_set, prompt_text, train_problems
from distributed import agree, barrier, rank
from rundir import save_atomic, write_atomic

REPO = Path(__file__).resolve().parent
SHIPPED_DIR = REPO / "bases"  # the bases committed with the code
PROBE_SEED = 20_261_206  # the draws of the corpus probe
PROBE_PER_LEVEL = 4  # problems of each level, each written in every style


def digest(value):
    """A short hash of a value's repr (sets sorted first, so that the hash seed cannot reorder
    them)."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def weights_fingerprint(path):
    """A hash of a model file's weights (names, dtypes, shapes, bytes), not of its name or its key:
    two bases trained from the same key on two kinds of CPU differ here."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)  # a run's checkpoint holds the weights under "model"
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].contiguous()
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -----------------------------------------------------------------------------
# Code as content: the syntax of the functions a computation runs, and of everything of the
# project's own that they name, transitively; constants by value.


def code_fingerprint(*roots):
    """A hash of the code of roots (functions and classes of this project) and of every function,
    class and constant of the project that they name, followed transitively. Read as syntax
    without docstrings: an edit to a comment or a docstring keeps the hash, any edit to code or to
    a constant's value changes it. An nn.Module counts by __init__, forward and the methods these
    call on self (the sampler's decode_step is not the warm start's)."""
    seen, todo = {}, list(roots)
    while todo:
        obj = inspect.unwrap(todo.pop())
        name = f"{Path(inspect.getfile(obj)).name}:{obj.__qualname__}"
        if name in seen:
            continue
        trees = syntax_of(obj)
        seen[name] = [ast.dump(tree) for tree in trees]
        module_globals = vars(sys.modules[obj.__module__])
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and node.id in module_globals:
                    value = module_globals[node.id]
                    seen[f"{name} -> {node.id}"] = constant_or_code(value, todo)
    return digest(sorted(seen.items()))


def file_fingerprint(path):
    """A hash of the code of a whole file, read as syntax without docstrings."""
    return digest(ast.dump(without_docstrings(ast.parse(Path(path).read_text()))))


def syntax_of(obj):
    """The syntax trees of obj, docstrings removed: a function's, a class's (an nn.Module: the
    methods it runs)."""
    if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
        methods = module_methods(obj)
        return [without_docstrings(parse(getattr(obj, m))) for m in sorted(methods)]
    return [without_docstrings(parse(obj))]


def parse(obj):
    return ast.parse(textwrap.dedent(inspect.getsource(obj)))


def module_methods(cls):
    """__init__, forward, and the methods of cls they call on self, transitively."""
    found, todo = set(), ["__init__", "forward"]
    while todo:
        method = todo.pop()
        if method in found or not callable_member(cls, method):
            continue
        found.add(method)
        for node in ast.walk(parse(getattr(cls, method))):
            is_self = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            if is_self and node.value.id == "self":
                todo.append(node.attr)
    return found


def callable_member(cls, name):
    """Whether cls itself defines name as a method or property (nn.Module's own are torch's)."""
    member = vars(cls).get(name)
    if isinstance(member, property):
        return False  # a property reads attributes only; its code is not arithmetic
    return inspect.isfunction(member)


def without_docstrings(tree):
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return tree


def constant_or_code(value, todo):
    """How a name a computation reads enters its hash: a function or class of the project is
    queued (its code counts), a constant counts by value, a module or a library's code by name."""
    if inspect.isfunction(inspect.unwrap(value)) or inspect.isclass(value):
        if is_project_code(value):
            todo.append(value)
            return "code"
        return f"library {getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
    if isinstance(value, dict):
        return repr({k: constant_or_code(v, todo) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return repr([constant_or_code(v, todo) for v in value])
    if isinstance(value, (set, frozenset)):
        return repr(sorted(repr(v) for v in value))
    if isinstance(value, (str, int, float, bool, type(None))):
        return repr(value)
    if dataclasses.is_dataclass(value):  # e.g. a data.tasks.Level: its fields
        return repr({f.name: constant_or_code(getattr(value, f.name), todo)
                     for f in dataclasses.fields(value)})
    if inspect.ismodule(value):
        return f"module {value.__name__}"
    return f"{type(value).__name__}"  # an object made at import time: its class counts, not it


def is_project_code(value):
    try:
        path = Path(inspect.getfile(inspect.unwrap(value))).resolve()
    except TypeError:  # a built-in
        return False
    return REPO in path.parents and ".venv" not in path.parts


# -----------------------------------------------------------------------------
# Data as content


def corpus_probe(tok):
    """A hash of what the corpus functions write: PROBE_PER_LEVEL problems of every level, drawn
    with a fixed seed, each prompt and each style's text of it, as text and as token ids."""
    rng = np.random.default_rng(PROBE_SEED)
    written = []
    for level in LEVELS:
        for problem in train_problems(level, PROBE_PER_LEVEL, rng):
            prompt = prompt_text(problem)
            for style, write in STYLES.items():
                text = write(problem.expr)
                written.append((level, style, prompt, text, tok.encode(prompt + text)))
    return digest(written)


def test_sets_fingerprint(levels):
    """A hash of the test problems of levels (the warm start never trains on them)."""
    return digest([(level, [p.expr for p in load_test_set(level)]) for level in sorted(levels)])


# -----------------------------------------------------------------------------
# Finding, loading and saving a base


def find_base(name, base_dir):
    """The file of the base called name (base-<stage>-<key>.pt): under base_dir (this machine's),
    else shipped in bases/; None if neither has it."""
    for folder in (Path(base_dir), shown(SHIPPED_DIR)):
        if agree((folder / name).exists()):
            return folder / name
    return None


def shown(path):
    """path relative to the working directory where it is below it (bases/...), for the logs."""
    try:
        return Path(path).resolve().relative_to(Path.cwd())
    except ValueError:
        return Path(path)


def sidecar(path):
    """The JSON beside a base file: its key and the key's parts, its sha256, where it was
    trained."""
    return Path(path).with_suffix(".json")


def load_base(model, path):
    """model's weights from path, after checking the file against the sha256 in its sidecar:
    a damaged or swapped file is refused with SystemExit, naming it and what to do."""
    shipped = SHIPPED_DIR in Path(path).resolve().parents
    what_to_do = ("restore it with git checkout, or pass --retrain-base" if shipped
                  else "delete it and its .json to train it again")
    if not sidecar(path).exists():
        raise SystemExit(f"base {path} has no {sidecar(path).name} beside it: {what_to_do}")
    expected = json.loads(sidecar(path).read_text())["sha256"]
    if file_sha256(path) != expected:
        raise SystemExit(f"base {path} is damaged or not the one its {sidecar(path).name} "
                         f"records (sha256 differs): {what_to_do}")
    model.load_state_dict(torch.load(path, map_location=model.device, weights_only=True))


def save_base(model, path, record):
    """model's float32 weights at path, and the record with the file's sha256 beside it (each
    written whole or not at all)."""
    state = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    save_atomic(state, path)
    write_atomic(sidecar(path), json.dumps(dict(record, sha256=file_sha256(path)), indent=1))


# the parts of a key that every stage of one base shares: what the warm start reads and runs
SHARED_PARTS = ("corpus", "code", "model", "test_sets")


def why_trained(stage, parts):
    """In words, why no base was found: which parts of the key differ from a shipped base of the
    same model and seed (the shipped bases are last stages, so an earlier stage is compared on
    SHARED_PARTS), or that none exists."""
    for shipped in sorted(SHIPPED_DIR.glob(f"base-*-{'?' * 12}.json")):  # not .eval-
        record = json.loads(shipped.read_text())
        theirs = record["parts"]
        if theirs.get("model") != parts["model"]:
            continue
        names = parts if record["stage"] == stage else SHARED_PARTS
        differ = [name for name in names if theirs.get(name) != parts[name]]
        if differ:
            return (f"the shipped {shipped.with_suffix('.pt').name} was made from another "
                    f"{', '.join(differ)}")
    return "no base of these settings is shipped or cached"


def train_and_save(model, path, train, record, log):
    """Call train() and save model's weights at path with record. Under torchrun rank 0 trains and
    saves while the other ranks wait, then they load what it saved. Returns path."""
    if rank() == 0:
        t0 = time.time()
        train()
        seconds = time.time() - t0
        save_base(model, path, dict(record, seconds=round(seconds, 1)))
        log(f"warm start: trained {record['stage']} in {seconds:.0f}s, saved {path}")
    barrier()
    if rank() != 0:
        load_base(model, path)
    return path
