"""The peers' own functions, for tests that compare nanoRGRA's corrections with them: fetched from
the package registry at test time (pip download, no dependencies), read out of the wheel, and run
on the test's tensors. Nothing of their code is kept in this repository.

    verl 0.9.1      verl/trainer/ppo/rollout_corr_helper.py: compute_rollout_correction_weights,
                    compute_rollout_rejection_mask; verl/utils/torch_functional.py: masked_sum
    ms-swift 4.6.0  swift/rlhf_trainers/grpo_trainer.py: GRPOTrainer's methods
                    _apply_rollout_importance_sampling and _compute_sequence_level_ratios (they
                    read only two settings of self)

The releases carry no commit, so each file read is pinned by its git blob id (what `git hash-object`
prints for it; BLOBS below), checked when it is read: the tests compare against exactly these files.

Their imports that a CPU test does not need (tensordict, transformers, verl's data protocol and
configs) are replaced by empty stand-ins while a module loads. A machine without the registry
skips these tests, saying why.
"""

import ast
import contextlib
import functools
import hashlib
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

VERL = ("verl", "0.9.1")
MS_SWIFT = ("ms-swift", "4.6.0")
BLOBS = {"verl/trainer/ppo/rollout_corr_helper.py": "eed6de70d9696fb78753b73e9edfebebba8b6f98",
         "verl/utils/torch_functional.py": "490ffc1baf246a452faad82ac3f00f448303ba81",
         "swift/rlhf_trainers/grpo_trainer.py": "f78bd6d259737c392719da1753d1138f3df06518"}


def wheel(package, folder):
    """The path of the package's wheel in folder, downloaded from the registry if not there."""
    name, version = package
    found = sorted(Path(folder).glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps",
               "--quiet", "--dest", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{name}=={version} could not be downloaded in 300 s")
    found = sorted(Path(folder).glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if done.returncode != 0 or not found:
        pytest.skip(f"{name}=={version} could not be downloaded: {done.stderr.strip()[-300:]}")
    return found[0]


def source(wheel_path, path):
    """The text of one file of the wheel, checked against its pinned git blob id."""
    with zipfile.ZipFile(wheel_path) as z:
        data = z.read(path)
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's id of the file
    assert blob == BLOBS[path], f"{path} in {wheel_path.name} is not the file the tests pin"
    return data.decode()


@contextlib.contextmanager
def stand_ins(modules):
    """modules: name -> {attribute: value}. Modules of those names holding only those attributes
    while the block runs; the real ones, if any, put back after."""
    saved = {name: sys.modules.get(name) for name in modules}
    for name, attributes in modules.items():
        sys.modules[name] = types.ModuleType(name)
        for attribute, value in attributes.items():
            setattr(sys.modules[name], attribute, value)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def module_from(text, name):
    module = types.ModuleType(name)
    exec(compile(text, name, "exec"), module.__dict__)
    return module


class Empty:
    pass


def verl(folder):
    """verl's rollout_corr_helper module, with its torch_functional as verl_F."""
    path = wheel(VERL, folder)
    modules = {"tensordict": dict(TensorDict=Empty),
               "transformers": dict(PreTrainedTokenizer=Empty),
               "verl": {}, "verl.utils": {}, "verl.trainer": {}, "verl.trainer.config": {},
               "verl.workers": {}, "verl.workers.config": {},
               "verl.utils.device": dict(get_device_name=lambda: "cpu",
                                         get_torch_device=lambda: torch),
               "verl.utils.torch_functional": {},
               "verl.protocol": dict(DataProto=Empty),
               "verl.trainer.config.algorithm": dict(RolloutCorrectionConfig=Empty),
               "verl.workers.config.actor": dict(PolicyLossConfig=Empty)}
    with stand_ins(modules):
        functional = module_from(source(path, "verl/utils/torch_functional.py"),
                                 "verl.utils.torch_functional")
        sys.modules["verl.utils.torch_functional"] = functional
        sys.modules["verl.utils"].torch_functional = functional
        helper = module_from(source(path, "verl/trainer/ppo/rollout_corr_helper.py"),
                             "verl.trainer.ppo.rollout_corr_helper")
    return helper, functional


def ms_swift(folder):
    """ms-swift's two methods, as functions of (settings, ...): settings has the mode and the
    threshold they read from self."""
    path = wheel(MS_SWIFT, folder)
    tree = ast.parse(source(path, "swift/rlhf_trainers/grpo_trainer.py"))
    wanted = {"_apply_rollout_importance_sampling", "_compute_sequence_level_ratios"}
    methods = [node for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {m.name for m in methods} == wanted, "ms-swift moved its functions"
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=methods, type_ignores=[]), "ms-swift grpo_trainer", "exec"),
         namespace)

    def apply(mode, threshold, log_ratio, mask):
        settings = types.SimpleNamespace(rollout_importance_sampling_mode=mode,
                                         rollout_importance_sampling_threshold=threshold)
        settings._compute_sequence_level_ratios = functools.partial(
            namespace["_compute_sequence_level_ratios"], settings)
        return namespace["_apply_rollout_importance_sampling"](settings, log_ratio, mask)

    return apply
