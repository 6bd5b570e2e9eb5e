"""
tests/ddp_run.py: `python nanorgra.py` with the tests' stand-in reward, for the runs that
tests/test_distributed.py starts as processes (one, or several under torchrun):

    python tests/ddp_run.py <nanorgra.py flags>
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_run.py <flags>

The stand-in reward, a checksum of the completion text in {0, 0.25, ..., 1}, varies inside almost
every group, so every step updates the weights even with a tiny model that is never right (with the
real verifier every advantage would be 0 and nothing would be compared). With
NANORGRA_CRASH_AT_STEP=k in the environment, step k raises KeyboardInterrupt on every rank, as a
machine going away would.
"""

import os
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

import nanorgra  # noqa: E402  (after the path above)


def stand_in_reward(text, problem, *args, **kwargs):
    return zlib.crc32(text.encode()) % 5 / 4


def crash_at(step_to_crash, rl_step):
    def step_or_crash(policy, ref, opt, tok, args, step):
        if step == step_to_crash:
            raise KeyboardInterrupt
        return rl_step(policy, ref, opt, tok, args, step)

    return step_or_crash


if __name__ == "__main__":
    nanorgra.outcome_reward = stand_in_reward
    if "NANORGRA_CRASH_AT_STEP" in os.environ:
        nanorgra.rl_step = crash_at(int(os.environ["NANORGRA_CRASH_AT_STEP"]), nanorgra.rl_step)
    nanorgra.main(sys.argv[1:])
