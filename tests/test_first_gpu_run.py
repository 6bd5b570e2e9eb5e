"""experiments/first_gpu_run.py runs end to end (here on the CPU, with --tiny) and writes one JSON
with every step's status, seconds and numbers; a step that fails and one that runs past its limit
are recorded, and the steps after them still run."""

import json
import sys

from experiments import first_gpu_run
from experiments.first_gpu_run import Step

FAILS = Step("fails_on_purpose", 60, lambda run: [
    sys.executable, "-c", "print('failing on purpose'); raise SystemExit(3)"])
HANGS = Step("hangs_on_purpose", 2, lambda run: [
    sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"])


def test_the_first_gpu_run_records_every_step_and_goes_on_after_a_failure_and_a_timeout(
        tmp_path, monkeypatch):
    monkeypatch.setattr(first_gpu_run, "STEPS", [FAILS, HANGS, *first_gpu_run.STEPS])
    results = first_gpu_run.main(["--tiny", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    steps = written["steps"]
    assert list(steps) == ["fails_on_purpose", "hangs_on_purpose", "test_gpu", "default_job_fp32",
                           "default_job_bf16", "probe_fp32", "probe_bf16", "bench_sampler",
                           "mfu_rl", "torchrun_1", "torchrun_2"]
    failed, hung = steps["fails_on_purpose"], steps["hangs_on_purpose"]
    assert failed["status"] == "failed" and failed["exit"] == 3
    assert failed["tail"] == ["failing on purpose"]
    assert hung["status"] == "timeout" and 2 <= hung["seconds"] < 10 and hung["tail"] == ["started"]

    for name, step in steps.items():  # every real step ran to its end, or was skipped
        if name not in ("fails_on_purpose", "hangs_on_purpose", "torchrun_2"):
            assert step["status"] == "ok" and step["seconds"] > 0, (name, step)
            assert (tmp_path / "logs" / f"{name}.log").exists()
    assert steps["torchrun_2"]["status"] == "skipped"
    assert "2 GPUs" in steps["torchrun_2"]["reason"]

    for precision in ("fp32", "bf16"):
        job = steps[f"default_job_{precision}"]
        assert set(job["accuracy"]) == {"mix3", "ood4"}
        assert set(job["rl_seconds"]) == {"t_sample", "t_score", "t_reference", "t_learn"}
        probe = steps[f"probe_{precision}"]
        assert probe["grpo_equals_rgra"] and set(probe) >= {"base", "trained"}
        assert probe["base"]["tokens"] > 0 and probe["base"]["clipped"] == 0
        mfu = steps["mfu_rl"][precision]
        assert mfu["rl_step"]["tflops"] > 0 and mfu["rl_step"]["mfu"] is None  # a CPU's peak
    # under bf16 the trainer's pi_old: rho is 1 at the update, though the sampler differs
    assert steps["probe_bf16"]["base"]["ratio_max"] == steps["probe_bf16"]["base"]["ratio_min"] == 1
    assert steps["default_job_bf16"]["max_abs_log_rho_at_updates"] == 0
    assert steps["probe_fp32"]["base"]["sampler_vs_trainer"] < 1e-4

    bench = steps["bench_sampler"]
    assert bench["rates"]["kv-cache"]["tokens_per_second"] > 0
    assert bench["rates"]["kv-cache"]["tflops"] > 0
    counts = bench["per_token_step"]
    assert counts["default"]["ops"] > 0 and counts["8"]["syncs"] < counts["default"]["syncs"]
    assert written["device"] == "cpu" and written["peak_tflops"] == "unknown"
    assert steps["torchrun_1"]["backend"] == "gloo"
