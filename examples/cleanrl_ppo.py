"""CleanRL's single-file PPO, checked exactly with the generic training-step helper.

CleanRL (https://github.com/vwxyzjn/cleanrl) writes each algorithm as one script. Its
``cleanrl/ppo.py`` defines ``layer_init``, an ``Agent`` (separate actor and critic MLPs, 64 tanh
units, orthogonal initialization) and, in the script's main loop, a rollout under
``torch.no_grad()``, GAE, and an update loop over epochs and shuffled minibatches that calls
``loss.backward()`` and ``optimizer.step()`` itself. Nothing there can be imported: the loop is
the script's body. (The ``cleanrl`` package on PyPI, 0.4.8, ships a 2021 version of the scripts
that parses arguments and builds its environments at import time and depends on gym, wandb and
tensorboard.) So this file reproduces the agent and one iteration of the loop, with the same
arithmetic as the script, its argument names and defaults (``Args``), as functions:
:func:`rollout` collects ``num_steps`` steps and :func:`update` computes GAE and runs the update
loop. Reproduced from ``cleanrl/ppo.py`` (MIT license), gymnasium version.

The check needs no edit to either: the agent's sampler is marked from outside
(``enumerate_actions``) and :func:`reinforce_check.step_loss` runs :func:`update` up to its first
``loss.backward()`` and returns that loss, stepping nothing. One episode of the check is one
rollout of ``num_steps = 4`` steps, one whole episode of :class:`ChainWalk` (16 action sequences).
The loss averages over the ``num_steps * num_envs`` samples, so the objective it claims
(:func:`claimed_objective`) is the episode's return, discounted by ``gamma``, plus ``ent_coef``
times the entropy at the visited states, divided by 4. Only the actor's parameters are checked:
the critic's receive the value loss.

Run it with ``python examples/cleanrl_ppo.py`` (``pip install -e ".[integrations]"`` installs
gymnasium); it takes a few seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from chain_walk import ChainWalk  # examples/chain_walk.py, beside this script
from torch.distributions.categorical import Categorical

from reinforce_check import check_reinforce, enumerate_actions, step_loss
from reinforce_check.integrations import relative_bias

HORIZON = 4
TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}


@dataclass
class Args:
    """The algorithm's arguments of ``cleanrl/ppo.py``, with its defaults."""

    num_envs: int = 4
    num_steps: int = 128
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    learning_rate: float = 2.5e-4

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches


def layer_init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias_const: float = 0.0) -> nn.Linear:
    """CleanRL's initialization: orthogonal weights of gain ``std``, constant biases."""
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """CleanRL's PPO agent: an actor and a critic, each two hidden layers of 64 tanh units."""

    def __init__(self, envs: gym.vector.VectorEnv) -> None:
        super().__init__()
        inputs = int(np.array(envs.single_observation_space.shape).prod())
        self.critic = nn.Sequential(
            layer_init(nn.Linear(inputs, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(inputs, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, envs.single_action_space.n), std=0.01),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.actor(x)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


@dataclass
class Storage:
    """What one rollout leaves for the update (the script's storage tensors and next observation)."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    values: torch.Tensor
    next_obs: torch.Tensor
    next_done: torch.Tensor


def rollout(agent: Agent, envs: gym.vector.VectorEnv, args: Args, next_obs: torch.Tensor) -> Storage:
    """The script's rollout: ``num_steps`` steps of every environment, sampled under ``torch.no_grad()``."""
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_space.shape)
    logprobs = torch.zeros((args.num_steps, args.num_envs))
    rewards = torch.zeros((args.num_steps, args.num_envs))
    dones = torch.zeros((args.num_steps, args.num_envs))
    values = torch.zeros((args.num_steps, args.num_envs))
    next_done = torch.zeros(args.num_envs)
    for step in range(args.num_steps):
        obs[step] = next_obs
        dones[step] = next_done
        with torch.no_grad():
            action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step] = value.flatten()
        actions[step] = action
        logprobs[step] = logprob
        observation, reward, terminations, truncations, _ = envs.step(action.cpu().numpy())
        next_done_array = np.logical_or(terminations, truncations)
        rewards[step] = torch.tensor(reward).view(-1)
        next_obs, next_done = torch.Tensor(observation), torch.Tensor(next_done_array)
    return Storage(obs, actions, logprobs, rewards, dones, values, next_obs, next_done)


def update(agent: Agent, optimizer: torch.optim.Optimizer, envs: gym.vector.VectorEnv, args: Args, s: Storage) -> None:
    """The script's update: GAE, then ``update_epochs`` epochs of shuffled minibatches, each stepped."""
    with torch.no_grad():
        next_value = agent.get_value(s.next_obs).reshape(1, -1)
        advantages = torch.zeros_like(s.rewards)
        lastgaelam = 0
        for t in reversed(range(args.num_steps)):
            if t == args.num_steps - 1:
                nextnonterminal = 1.0 - s.next_done
                nextvalues = next_value
            else:
                nextnonterminal = 1.0 - s.dones[t + 1]
                nextvalues = s.values[t + 1]
            delta = s.rewards[t] + args.gamma * nextvalues * nextnonterminal - s.values[t]
            advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
        returns = advantages + s.values

    b_obs = s.obs.reshape((-1,) + envs.single_observation_space.shape)
    b_logprobs = s.logprobs.reshape(-1)
    b_actions = s.actions.reshape((-1,) + envs.single_action_space.shape)
    b_advantages = advantages.reshape(-1)
    b_returns = returns.reshape(-1)
    b_values = s.values.reshape(-1)

    b_inds = np.arange(args.batch_size)
    for _epoch in range(args.update_epochs):
        np.random.shuffle(b_inds)
        for start in range(0, args.batch_size, args.minibatch_size):
            mb_inds = b_inds[start : start + args.minibatch_size]
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions.long()[mb_inds])
            ratio = (newlogprob - b_logprobs[mb_inds]).exp()

            mb_advantages = b_advantages[mb_inds]
            if args.norm_adv:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

            pg_loss1 = -mb_advantages * ratio
            pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
            pg_loss = torch.max(pg_loss1, pg_loss2).mean()

            newvalue = newvalue.view(-1)
            if args.clip_vloss:
                v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                v_clipped = b_values[mb_inds] + torch.clamp(
                    newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef
                )
                v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
            else:
                v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

            entropy_loss = entropy.mean()
            loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()


def claimed_objective(agent: Agent, storage: Storage, args: Args) -> torch.Tensor:
    """What the loss claims to ascend, per sample: the return discounted by ``gamma`` from each
    episode's start, plus ``ent_coef`` times the entropy at the visited states, over the batch size."""
    discount = torch.ones(args.num_envs)
    total = torch.zeros(())
    for t in range(args.num_steps):
        discount = torch.where(storage.dones[t] > 0, torch.ones_like(discount), discount)
        total = total + (discount * storage.rewards[t]).sum()
        discount = discount * args.gamma
    if args.ent_coef:
        states = storage.obs.reshape((-1,) + storage.obs.shape[2:])
        total = total + args.ent_coef * Categorical(logits=agent.actor(states)).entropy().sum()
    return total / args.batch_size


def check(args: Args, *, seed: int = 0, **options: Any) -> Any:
    """Check one PPO iteration of ``args`` on ChainWalk: the rollout and the first minibatch's loss."""
    torch.manual_seed(seed)
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.RecordEpisodeStatistics(ChainWalk()) for _ in range(args.num_envs)]
    )
    agent = Agent(envs)  # float32, as the script builds it: the check promotes it to float64
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    agent.get_action_and_value = enumerate_actions(agent.get_action_and_value)  # type: ignore[method-assign]

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        observation, _ = envs.reset(seed=seed)
        storage = rollout(agent, envs, args, torch.Tensor(observation))
        loss = step_loss(update, agent, optimizer, envs, args, storage)
        return claimed_objective(agent, storage, args), loss

    actor = {f"actor.{name}": p for name, p in agent.actor.named_parameters()}
    return check_reinforce(episode, actor, **options)


def main() -> dict[str, dict[str, Any]]:
    # One environment, one rollout of one whole episode, one minibatch: the smallest faithful instance.
    tiny = Args(num_envs=1, num_steps=HORIZON, num_minibatches=1)
    settings = {
        "unbiased: gamma=1, gae_lambda=1, norm_adv off, ent_coef=0": dataclasses.replace(
            tiny, gamma=1.0, gae_lambda=1.0, norm_adv=False, ent_coef=0.0
        ),
        "defaults (gamma=0.99, gae_lambda=0.95, norm_adv, ent_coef=0.01)": tiny,
        "unbiased but norm_adv": dataclasses.replace(tiny, gamma=1.0, gae_lambda=1.0, norm_adv=True, ent_coef=0.0),
    }
    results: dict[str, dict[str, Any]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest
    try:
        for label, args in settings.items():
            results[label] = _check_and_print(label, args)
    finally:
        torch.set_num_threads(threads)
    print(f"{'setting':<64} {'passes':<6} {'‖bias‖/‖grad J‖':>16} {'seconds':>8}")
    for label, result in results.items():
        bias = result["relative_bias"]
        shown = "n/a" if bias is None else f"{bias:.3g}"
        print(f"{label:<64} {'yes' if result['ok'] else 'no':<6} {shown:>16} {result['seconds']:>8.2f}")
    return results


def _check_and_print(label: str, args: Args) -> dict[str, Any]:
    """Check one setting and print its report."""
    start = time.perf_counter()
    report = check(args, raise_exception=False, top_sequences=0, **TOLERANCE)
    seconds = time.perf_counter() - start
    print(f"{label}:")
    print(report)
    print(f"-> ok={report.ok} in {seconds:.2f} s\n")
    # The whole bias is known where autograd decided; central differences give it along directions only.
    exact = report.ground_truth == "autograd"
    return {
        "ok": report.ok,
        "relative_bias": relative_bias(report) if exact else None,
        "num_sequences": report.num_sequences,
        "ground_truth": report.ground_truth,
        "max_rel_error": report.max_rel_error,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
