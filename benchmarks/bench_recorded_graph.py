"""What recording the graph of marked code costs, and what it saves.

Per call: a marked function called under ``torch.no_grad()`` the way a check runs it (recording
its graph: the virtual grad mode, the torch-function mode and its recorded forms, copies of saved
tensors; the draws are not intercepted here) against the same call under ``torch.no_grad()`` as a
rollout makes it, and with gradient recording on. Cases:
CleanRL's PPO agent (``get_action_and_value``), and ``transformers``' ``generate()`` on a tiny GPT-2
(two new tokens). Per check: CleanRL's PPO iteration on a two-step environment with the agent
marked (autograd decides) against the same episode unmarked (central differences of every
coordinate of the actor decide).

Every ratio divides medians of alternated repeats measured in the same run, on one thread.

Usage::

    python benchmarks/bench_recorded_graph.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from reinforce_check import check_reinforce, enumerate_actions, scope

ROOT = Path(__file__).resolve().parent.parent


def median_times(functions: dict[str, Callable[[], object]], repeats: int, inner: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(inner):
                function()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


def per_call(label: str, function: Callable[[], object], repeats: int, inner: int) -> str:
    def no_grad() -> object:
        with torch.no_grad():
            return function()

    marked = enumerate_actions(function)

    def recorded() -> object:
        scope.activate(scoped=True)  # as a check's episode run starts, with gradient recording on
        try:
            with torch.no_grad():
                return marked()
        finally:
            scope.deactivate()

    def with_grad() -> object:
        with torch.enable_grad():
            return function()

    times = median_times({"no_grad": no_grad, "recorded": recorded, "with_grad": with_grad}, repeats, inner)
    return (
        f"{label}: under no_grad {times['no_grad'] * 1e3:.3f} ms, recorded {times['recorded'] * 1e3:.3f} ms "
        f"({times['recorded'] / times['no_grad']:.2f}x no_grad, {times['recorded'] / times['with_grad']:.2f}x with gradient)"
    )


def main() -> None:
    # The cases are the tests' own (tests/reinforce_check/test_recorded_graph.py).
    sys.path.insert(0, str(ROOT / "tests" / "reinforce_check"))
    from test_recorded_graph import make_agent, ppo_episode, tiny_gpt2

    torch.set_num_threads(1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        print(f"torch {torch.__version__}, 1 thread; medians of alternated repeats")
        agent = make_agent()
        obs = torch.tensor([[1.0, -0.5]])
        print(per_call("CleanRL agent.get_action_and_value", lambda: agent.get_action_and_value(obs), 7, 200))
        model = tiny_gpt2()
        prompt = torch.tensor([[0, 1]])
        options = {"attention_mask": torch.ones_like(prompt), "do_sample": True, "max_new_tokens": 2, "top_k": 0, "pad_token_id": 3, "eos_token_id": 3}
        print(per_call("transformers generate, tiny GPT-2", lambda: model.generate(prompt, **options), 7, 20))

        params = dict(agent.actor.named_parameters())
        marked = make_agent()
        marked.get_action_and_value = enumerate_actions(marked.get_action_and_value)
        checks = median_times(
            {
                "marked": lambda: check_reinforce(ppo_episode(marked), dict(marked.actor.named_parameters())),
                "unmarked": lambda: check_reinforce(ppo_episode(agent), params),
            },
            5,
            1,
        )
        print(
            f"CleanRL PPO check, 9 sequences, 27 actor coordinates: marked (autograd decides) "
            f"{checks['marked'] * 1e3:.0f} ms, unmarked (central differences decide) {checks['unmarked'] * 1e3:.0f} ms "
            f"({checks['unmarked'] / checks['marked']:.1f}x)"
        )
    finally:
        torch.set_default_dtype(previous)


if __name__ == "__main__":
    main()
