"""Shared test set-up: the repository root on sys.path (so the tests import data.tasks and verifier
however pytest is started), and one torch thread (tiny models run fastest on one, and a shared CPU
makes several much slower)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
