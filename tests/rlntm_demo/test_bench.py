"""The benchmark runs and reports what it promises (no timing assertions: machines differ)."""

from __future__ import annotations

import json

import torch

from rlntm_demo.fast import native
from rlntm_demo.bench import run_benchmark


def test_benchmark_reports_keys_and_positive_figures() -> None:
    threads = torch.get_num_threads()
    result = run_benchmark(task="copy", controller="lstm", batch_size=3, complexity=2, repeats=1, warmup=0, threads=1)
    assert torch.get_num_threads() == threads  # restored
    json.dumps(result)
    for key in ("seconds_per_update", "bare_lstm_seconds", "ratio", "rollout_seconds", "loss_seconds", "backward_seconds", "sampling_seconds"):
        assert isinstance(result[key], float) and result[key] > 0, key
    for key in ("batch_size", "steps", "complexity", "threads"):
        assert isinstance(result[key], int) and result[key] > 0, key
    assert result["batch_size"] == 3 and result["complexity"] == 2 and result["threads"] == 1
    assert result["task"] == "copy" and result["controller"] == "lstm"
    assert isinstance(result["torch_version"], str)
    assert result["step_loop"] == ("python" if native.extension() is None else "native")
    # One repeat: the phases are parts of the one timed update.
    phases = result["rollout_seconds"] + result["loss_seconds"] + result["backward_seconds"]
    assert phases <= result["seconds_per_update"]


def test_benchmark_defaults_to_the_top_complexity() -> None:
    result = run_benchmark(batch_size=2, repeats=1, warmup=0)
    assert result["task"] == "forward-reverse" and result["complexity"] == 15 and result["controller"] == "direct"
