"""Shared test set-up: the repository root on sys.path (so the tests import data.tasks and verifier
however pytest is started), and one torch thread: tiny models run fastest on one, and a shared CPU
makes several much slower. OMP_NUM_THREADS is set before torch is imported, so that one thread is
torch's default here, in the warm starts (nanorgra.WARM_START_THREADS) and in every process a test
starts (they inherit the environment)."""
import os
import sys
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after OMP_NUM_THREADS)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)  # in case torch was imported before this file
