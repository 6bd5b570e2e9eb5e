"""Shared test set-up: the repository root on sys.path (so the tests import data.tasks and verifier
however pytest is started), the tokenizer and a tiny GPT as fixtures, and one torch thread: tiny
models run fastest on one, and a shared CPU makes several much slower. OMP_NUM_THREADS is set
before torch is imported, so that one thread is torch's default here, in the warm starts
(warmstart.WARM_START_THREADS) and in every process a test starts (they inherit the
environment)."""
import os
import sys
import tempfile
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
# the experiments' runs write their records here, not into the repository's data/records
os.environ["NANORGRA_RECORDS"] = tempfile.mkdtemp(prefix="nanorgra-records-")

import torch  # noqa: E402  (after OMP_NUM_THREADS)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)  # in case torch was imported before this file

import pytest  # noqa: E402

from data.tokenizer import get_tokenizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    """A one-layer GPT of width 32 (seed 0): the loss tests' model. Copy it before training it."""
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)
    return GPT(config, seed=0)


@pytest.fixture(autouse=True)
def records_of_its_own(tmp_path_factory, monkeypatch):
    """Every test's experiments write their run records into a folder of the test's own: records
    are keyed by the experiment folder's name ("sweep", "map"), which many tests share."""
    monkeypatch.setenv("NANORGRA_RECORDS", str(tmp_path_factory.mktemp("records")))
