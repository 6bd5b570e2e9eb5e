"""Puts the repository root on sys.path, so the tests import data.tasks and verifier however pytest is started."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
