"""--deterministic on CUDA (distributed.prepare_deterministic): CUBLAS_WORKSPACE_CONFIG is set when
the command line is read, before anything can start CUDA (cuBLAS reads it once, when it starts), and
a run is refused when it is too late: CUDA already started in this process without it, or another
workspace set. The CUDA state is faked here (torch.cuda.is_available / is_initialized), so the rule
is tested on a CPU; tests/test_gpu.py runs a deterministic run twice where CUDA is."""

import argparse
import os

import pytest
import torch

import distributed
import nanorgra

NAME = "CUBLAS_WORKSPACE_CONFIG"


@pytest.fixture
def no_workspace(monkeypatch):
    """The variable unset, and whatever a test sets removed afterwards."""
    monkeypatch.setenv(NAME, "")  # recorded as absent or as it was, so that teardown restores it
    monkeypatch.delenv(NAME)


def fake_cuda(monkeypatch, initialised):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialised)


def args(device="cuda", deterministic=True):
    return argparse.Namespace(device=device, deterministic=deterministic, threads=0)


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_the_workspace_is_set_before_cuda_starts(no_workspace, monkeypatch, device):
    fake_cuda(monkeypatch, initialised=False)
    assert distributed.prepare_deterministic(args(device)) is None
    assert os.environ[NAME] == ":4096:8"


@pytest.mark.parametrize("value", [":4096:8", ":16:8"])
def test_a_deterministic_workspace_set_already_is_kept_even_after_cuda_started(monkeypatch, value):
    monkeypatch.setenv(NAME, value)
    fake_cuda(monkeypatch, initialised=True)
    assert distributed.prepare_deterministic(args()) is None
    assert os.environ[NAME] == value


def test_cuda_started_without_the_workspace_is_refused_with_what_to_do(no_workspace, monkeypatch,
                                                                      capsys):
    fake_cuda(monkeypatch, initialised=True)
    problem = distributed.prepare_deterministic(args())
    assert "CUDA started in this process before CUBLAS_WORKSPACE_CONFIG" in problem
    assert "fresh process" in problem
    with pytest.raises(SystemExit) as e:  # the command line: exit 2, before any other check
        nanorgra.parse_args(["--deterministic", "--device", "cuda"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(problem)
    with pytest.raises(SystemExit, match="CUDA started"):  # arguments made another way
        distributed.setup_device(args())
    assert NAME not in os.environ


def test_another_workspace_is_refused_on_cuda(monkeypatch):
    monkeypatch.setenv(NAME, ":0:0")
    fake_cuda(monkeypatch, initialised=False)
    assert "':0:0'" in distributed.prepare_deterministic(args())


def test_on_the_cpu_or_without_the_flag_nothing_is_refused(no_workspace, monkeypatch):
    assert distributed.prepare_deterministic(args(deterministic=False)) is None
    assert NAME not in os.environ  # without --deterministic: untouched
    fake_cuda(monkeypatch, initialised=True)
    assert distributed.prepare_deterministic(args("cpu")) is None  # CUDA's state is not the CPU's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert nanorgra.parse_args(["--deterministic"]).deterministic  # auto is the CPU here
    assert os.environ[NAME] == ":4096:8"
