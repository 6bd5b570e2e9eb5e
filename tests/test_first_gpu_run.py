"""experiments/first_gpu_run.py runs end to end (here on the CPU, with --tiny) and writes one JSON
with every step's status, seconds and numbers."""

import json

from experiments import first_gpu_run


def test_the_first_gpu_run_script_runs_every_step_and_writes_its_numbers(tmp_path):
    results = first_gpu_run.main(["--tiny", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    for step in ("test_gpu", "default_job", "torchrun"):
        assert written[step]["status"] == 0, written[step]
        assert written[step]["seconds"] > 0
    job = written["default_job"]
    assert set(job["accuracy"]) == {"mix3", "ood4"} and set(job["rl_seconds"]) == {
        "t_sample", "t_score", "t_reference", "t_learn"}
    bench = written["bench_sampler"]
    assert bench["tokens_per_second"]["kv-cache"] > 0
    counts = bench["per_token_step"]
    assert counts["default"]["ops"] > 0 and counts["8"]["syncs"] < counts["default"]["syncs"]
    assert written["device"] in ("cpu", "cuda") and written["torchrun"]["backend"] in ("gloo",
                                                                                       "nccl")
