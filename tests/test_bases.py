"""bases.py and warmstart.py: a base is found by what it is made of. An edit to what the warm start
trains on or how (a style, a level, the model) gives a new key and a new base; an edit that changes
none of it (a comment, a docstring) keeps the base; a damaged or swapped base file is refused; the
shipped bases are the ones the code makes today.

The edits are made in a temporary copy of the code, and the key is computed there by a fresh Python
process (the modules import the edited files)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bases
import flags
import nanorgra
import warmstart
from evaluation import base_evaluation_path
from data.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parent.parent
TINY = ("--n-layer 1 --n-head 2 --n-embd 32 --skill-steps 6 --habit-steps 4 --warm-batch 8 "
        "--device cpu").split()
KEY_OF_COPY = ("import flags, warmstart; from data.tokenizer import get_tokenizer; "
               "args = flags.parse_warm_start_args([]); "
               "print(warmstart.stage_keys(args, get_tokenizer())[-1][1])")


@pytest.fixture(scope="module")
def code_copy(tmp_path_factory):
    """A copy of the project's code and test sets, without runs, bases or git."""
    copy = tmp_path_factory.mktemp("code") / "nanorgra"
    ignore = shutil.ignore_patterns(".git", ".venv", "runs", "bases", "__pycache__", "*.ipynb",
                                    "results", "docs", "tests", ".hypothesis")
    shutil.copytree(REPO, copy, ignore=ignore)
    return copy


def key_after(code_copy, file, old, new):
    """The default base's key in the copy with old replaced by new in file (then restored)."""
    path = code_copy / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {file}"
    path.write_text(text.replace(old, new))
    try:
        done = subprocess.run([sys.executable, "-c", KEY_OF_COPY], cwd=code_copy,
                              capture_output=True, text=True, check=True)
    finally:
        path.write_text(text)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def unedited_key(code_copy):
    return key_after(code_copy, "data/tasks.py", "MAX_DIGITS = 18", "MAX_DIGITS = 18")


def test_the_copy_computes_the_same_key_as_the_repository(unedited_key):
    args = flags.parse_warm_start_args([])
    assert unedited_key == warmstart.stage_keys(args, get_tokenizer())[-1][1]


@pytest.mark.parametrize("what, file, old, new", [
    ("a style template", "data/tasks.py", 'def shortcut_solution(expr):\n',
     'def shortcut_solution(expr):\n    return worked_solution(expr)\n'),
    ("a generator", "data/tasks.py", "def draw_expression(level, rng):\n",
     "def draw_expression(level, rng):\n    rng.integers(2)\n"),
    ("a level", "data/tasks.py", 'Level("mix2", n_ops=(2, 3)', 'Level("mix2", n_ops=(2, 2)'),
    ("the architecture", "model.py", "nn.init.normal_(p, 0.0, 0.02, generator=gen)",
     "nn.init.normal_(p, 0.0, 0.021, generator=gen)"),
    ("the warm start's schedule", "warmstart.py", "decay = 0.55 + 0.45", "decay = 0.5 + 0.5"),
])
def test_an_edit_to_what_the_warm_start_trains_on_or_how_gives_a_new_key(
        code_copy, unedited_key, what, file, old, new):
    assert key_after(code_copy, file, old, new) != unedited_key, what


@pytest.mark.parametrize("what, file, old, new", [
    ("a comment", "data/tasks.py", "MESSY = {", "# a student's note\nMESSY = {"),
    ("a docstring", "data/tasks.py", '"""n training (problem, style) pairs of corpus',
     '"""(edited) n training (problem, style) pairs of corpus'),
    ("the sampler, which the warm start never runs", "model.py", "SHRINK = 0.75",
     "SHRINK = 0.8"),
])
def test_an_edit_that_changes_none_of_what_the_warm_start_runs_keeps_the_key(
        code_copy, unedited_key, what, file, old, new):
    assert key_after(code_copy, file, old, new) == unedited_key, what


def warm(tmp_path, *extra):
    lines = []
    args = flags.parse_warm_start_args([*TINY, "--base-dir", str(tmp_path), *extra])
    model, path = warmstart.warm_start(args, get_tokenizer(), torch.device("cpu"), lines.append)
    return model, path, lines


def test_a_rerun_loads_the_base_it_trained_and_retrain_base_trains_it_again(tmp_path):
    first, path, lines = warm(tmp_path)
    assert [line.split(":")[1].split()[0] for line in lines if "training" in line] == \
        ["training", "training"]
    assert "no base of these settings is shipped or cached" in lines[0]
    second, again, lines = warm(tmp_path)
    assert again == path and lines == [f"warm start: loaded {path}"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 second.state_dict().values()))
    _, _, lines = warm(tmp_path, "--retrain-base")
    assert sum("--retrain-base" in line for line in lines) == 2


def test_the_record_beside_a_base_holds_its_key_parts_sha256_and_machine(tmp_path):
    _, path, _ = warm(tmp_path)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["key"] in path.name and record["sha256"] == bases.file_sha256(path)
    assert set(record["parts"]) == {"corpus", "code", "model", "test_sets", "stage", "before"}
    assert "threads" in record["trained_on"]


def test_a_damaged_base_file_is_refused_with_a_sentence_naming_it(tmp_path):
    _, path, _ = warm(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # one bit flipped: torch.load might well read it
    path.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as refused:
        warm(tmp_path)
    message = str(refused.value.code)
    assert str(path) in message and "damaged" in message and "\n" not in message


def test_a_swapped_base_file_is_refused(tmp_path):
    _, path, _ = warm(tmp_path)
    _, other, _ = warm(tmp_path / "other", "--base-seed", "1")
    shutil.copy(other, path)  # another base's weights under this one's name
    with pytest.raises(SystemExit, match="sha256 differs"):
        warm(tmp_path)


def test_why_a_base_is_trained_names_the_parts_that_differ_from_the_shipped_one():
    args = flags.parse_warm_start_args([])
    keys = warmstart.stage_keys(args, get_tokenizer())
    for stage, _, parts, _ in keys:  # the skills stage is compared on the parts stages share
        edited = dict(parts, corpus="0" * 16)
        assert bases.why_trained(stage.name, edited).endswith("was made from another corpus")


@pytest.mark.parametrize("base_seed", [0, 1])
def test_the_shipped_bases_are_the_ones_the_code_makes_today(base_seed):
    """A code change that changes a base's key must ship the base it makes (warmstart.py
    --retrain-base, then copy it and its .json into bases/): else every fresh clone trains."""
    args = flags.parse_warm_start_args(["--base-seed", str(base_seed)])
    *_, name = warmstart.stage_keys(args, get_tokenizer())[-1]
    shipped = bases.SHIPPED_DIR / name
    assert shipped.exists(), f"bases/ has no {name}: the code changed what the base is"
    record = json.loads(shipped.with_suffix(".json").read_text())
    assert record["sha256"] == bases.file_sha256(shipped)
    assert shipped.stat().st_size < 4_000_000  # float32 weights only
    state = torch.load(shipped, weights_only=True)
    assert all(t.dtype == torch.float32 for t in state.values())


@pytest.mark.parametrize("base_seed", [0, 1])
def test_the_shipped_bases_ship_the_evaluation_the_default_run_reads(base_seed):
    """The default job's base evaluation is read, not computed, from a fresh clone."""
    args = nanorgra.parse_args(["--base-seed", str(base_seed), "--device", "cpu"])
    *_, name = warmstart.stage_keys(args, get_tokenizer())[-1]
    path = base_evaluation_path(args, bases.SHIPPED_DIR / name, "cpu", "fp32")
    assert path.parent == bases.SHIPPED_DIR and path.exists(), path.name
    assert set(json.loads(path.read_text())) == {"mix3", "ood4"}
