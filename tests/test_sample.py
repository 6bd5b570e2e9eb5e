"""sample.py: a trained run (or its base) answers typed expressions, each completion marked by the
verifier; expressions it cannot read are refused with the reason. The summary of a run shows the
same function's output before and after RL."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed
import nanorgra
import sample

TINY = ("--n-layer 1 --n-head 2 --n-embd 32 --skill-steps 10 --habit-steps 4 --warm-batch 16 "
        "--steps 2 --prompts 2 --group 2 --eval-n 8 --pass-n 4 --pass-k 2 --max-new-tokens 40 "
        "--eval-every 2 --device cpu").split()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    args = nanorgra.parse_args([*TINY, "--out-dir", str(out / "run"),
                                "--base-dir", str(out / "bases")])
    nanorgra.train(args, log=lambda *a: None)
    return out / "run"


def test_a_run_answers_each_typed_expression_and_the_verifier_marks_each_completion(run_dir,
                                                                                    capsys):
    written = sample.main(["4+9*6-3", "2*3", "--run", str(run_dir), "--k", "3",
                           "--temperature", "1", "--max-new-tokens", "20"])
    assert [len(w) for w in written] == [3, 3]
    out = capsys.readouterr().out
    assert "Q:4+9*6-3  (answer 55)" in out and "Q:2*3  (answer 6)" in out
    assert "(after step 1)" in out
    for w in written[0]:
        assert set(w) == {"text", "reward", "right", "style", "reasoning"}
        assert w["right"] == (w["reward"] >= 1)


def test_the_base_answers_too(run_dir, capsys):
    sample.main(["1+1", "--run", str(run_dir), "--base"])
    out = capsys.readouterr().out
    assert "(the base)" in out and "Q:1+1  (answer 2)" in out


@pytest.mark.parametrize("expr,words", [("4/2", "'/' is not in the vocabulary"),
                                        ("", "empty expression"),
                                        ("4++2", "malformed expression"),
                                        ("1+" * 60 + "1", "positions")])
def test_an_expression_it_cannot_read_is_refused_with_the_reason(run_dir, capsys, expr, words):
    with pytest.raises(SystemExit) as e:
        sample.main([expr, "--run", str(run_dir)])
    assert e.value.code == 2
    assert words in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_directory_without_a_run_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="no config.json"):
        sample.main(["1+1", "--run", str(tmp_path)])


ABSENT = {"cuda": not torch.cuda.is_available(), "mps": not torch.backends.mps.is_available()}


@pytest.mark.parametrize("device", [d for d, absent in ABSENT.items() if absent])
def test_a_device_that_is_not_here_is_refused_before_the_run_is_looked_for(tmp_path, capsys,
                                                                           device):
    """The one check of nanorgra.py and sample.py (distributed.absent_device): exit 2, the same
    sentence, and no run directory read (tmp_path holds none)."""
    with pytest.raises(SystemExit) as e:
        sample.main(["2+3", "--device", device, "--run", str(tmp_path / "none")])
    assert e.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.endswith(distributed.absent_device(device)) and f"--device {device}:" in said
    with pytest.raises(SystemExit) as e:
        nanorgra.parse_args(["--device", device])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(said.split("error: ")[1])


def test_an_unknown_device_is_refused_with_the_ones_allowed(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["2+3", "--device", "tpu", "--run", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
    assert "pass one of auto, cpu, cuda, mps" in distributed.absent_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_the_command_line_without_cuda_says_so_without_a_traceback():
    done = subprocess.run([sys.executable, "sample.py", "2+3", "--device", "cuda"],
                          cwd=Path(sample.__file__).parent, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "finds no CUDA device" in done.stderr and "pass --device cpu" in done.stderr


def test_the_summary_shows_the_first_test_problems_written_before_and_after(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    shown = summary["solutions"]
    assert [s["expr"] for s in shown] == ["4+9*6-3", "8+7*0-8", "8+1*2+0"]
    for s in shown:
        assert {"base", "trained"} <= set(s) and "style" in s["trained"]
