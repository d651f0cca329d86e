"""Marked code records its graph during a check, through torch.no_grad() and its kin, so that
autograd's exact -grad J decides for PPO-style rollouts, ``@torch.no_grad()`` generation loops and
``transformers``' ``generate()``; everything the surrounding code sees stays as outside a check."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd import grad_mode
from torch.distributions import Categorical
from transformers import GPT2Config, GPT2LMHeadModel

from reinforce_check import ReinforceCheckError, check_reinforce, enumerate_actions

# float64 throughout: autograd's -grad J and E[grad loss] agree to rounding, so the elementwise
# comparison against autograd can be tight. The finite-difference cross-check keeps its defaults
# (fd_rtol 1e-5, fd_atol 1e-7) unless a test says otherwise.
RTOL, ATOL = 1e-9, 1e-12
RECORDED = "drew inside code marked with enumerate_actions where gradient recording was off"


def recorded_note(report) -> bool:
    return any(RECORDED in note for note in report.notes)


def without_gradient_note(report) -> bool:
    return any("carry no gradient" in note for note in report.notes)


# CleanRL's PPO (cleanrl/ppo.py), at toy sizes: the agent as CleanRL writes it, its rollout loop
# and its clipped surrogate loss, on a deterministic two-step environment.


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 4)),
            nn.Tanh(),
            layer_init(nn.Linear(4, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 4)),
            nn.Tanh(),
            layer_init(nn.Linear(4, n_actions), std=1.0),
        )

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        logits = self.actor(x)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


@enumerate_actions
class DecoratedAgent(Agent):
    """The same agent, its public methods marked by the class decorator."""

    def get_value(self, x):
        return super().get_value(x)

    def get_action_and_value(self, x, action=None):
        return super().get_action_and_value(x, action)


class ChainEnv:
    """A one-environment vector env (gymnasium's API, numpy in and out): the observation moves with
    each action, the reward depends on the step and the action, and the episode ends after two steps."""

    single_observation_space_shape = (2,)
    n_actions = 3
    horizon = 2
    rewards = np.array([[1.0, -0.5, 2.0], [0.3, 1.2, -0.8]])

    def reset(self):
        self.t = 0
        self.obs = np.array([[1.0, -0.5]])
        return self.obs.copy(), {}

    def step(self, action):
        reward = self.rewards[self.t, action]
        self.obs = self.obs + np.array([[0.5, -0.25]]) * action[:, None]
        self.t += 1
        terminations = np.array([self.t == self.horizon])
        return self.obs.copy(), reward, terminations, np.array([False]), {}


def make_agent(cls=Agent):
    torch.manual_seed(0)
    return cls(ChainEnv.single_observation_space_shape[0], ChainEnv.n_actions).double()


def ppo_episode(agent, *, norm_adv=False, observe=None):
    """One PPO iteration as cleanrl/ppo.py runs it, at theta = theta_old: the rollout under
    torch.no_grad() into preallocated buffers, GAE (gamma = lambda = 1, so advantages are returns
    to go minus the critic's value, an unbiased baseline), then the clipped surrogate over the
    batch. Its expected gradient is -grad of the mean reward per step.

    ``norm_adv`` normalizes the advantages over the batch, as CleanRL's ``--norm-adv`` does: the
    baseline then depends on the batch's own actions (biased). ``observe`` is called with what
    the rollout sees of the agent at every step, then with the buffers.
    """
    num_steps, num_envs, device = ChainEnv.horizon, 1, "cpu"
    gamma, gae_lambda, clip_coef, ent_coef, vf_coef = 1.0, 1.0, 0.2, 0.0, 0.5
    envs = ChainEnv()

    def episode():
        obs = torch.zeros((num_steps, num_envs) + envs.single_observation_space_shape).to(device)
        actions = torch.zeros((num_steps, num_envs)).to(device)
        logprobs = torch.zeros((num_steps, num_envs)).to(device)
        rewards = torch.zeros((num_steps, num_envs)).to(device)
        dones = torch.zeros((num_steps, num_envs)).to(device)
        values = torch.zeros((num_steps, num_envs)).to(device)
        next_obs, _ = envs.reset()
        next_obs = torch.Tensor(next_obs).to(device)
        next_done = torch.zeros(num_envs).to(device)
        for step in range(0, num_steps):
            obs[step] = next_obs
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob
            if observe is not None:
                observe(next_obs, action, logprob, value)
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            next_done = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs, next_done = torch.Tensor(next_obs).to(device), torch.Tensor(next_done).to(device)
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards).to(device)
            lastgaelam = 0
            for t in reversed(range(num_steps)):
                if t == num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values
        if observe is not None:
            observe(obs, actions, logprobs, values, advantages)
        b_obs = obs.reshape((-1,) + envs.single_observation_space_shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        # One epoch, one minibatch: the whole batch, at theta = theta_old.
        _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs, b_actions.long())
        logratio = newlogprob - b_logprobs
        ratio = logratio.exp()
        mb_advantages = b_advantages
        if norm_adv:
            mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
        pg_loss1 = -mb_advantages * ratio
        pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
        pg_loss = torch.max(pg_loss1, pg_loss2).mean()
        v_loss = 0.5 * ((newvalue.view(-1) - b_returns) ** 2).mean()
        entropy_loss = entropy.mean()
        loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef
        return rewards.sum() / num_steps, loss

    return episode


def marked_agent(how: str) -> Agent:
    if how == "class decorator":
        return make_agent(DecoratedAgent)
    agent = make_agent()
    agent.get_action_and_value = enumerate_actions(agent.get_action_and_value)
    return agent


@pytest.mark.parametrize("how", ["instance attribute", "class decorator"])
def test_cleanrl_ppo_rollout_under_no_grad_with_the_agent_marked_is_decided_by_autograd(float64_default, how):
    # The actor's parameters (the critic only shapes the baseline, and J does not depend on it),
    # elementwise against autograd's -grad J within rtol 1e-9, atol 1e-12.
    agent = marked_agent(how)
    report = check_reinforce(ppo_episode(agent), dict(agent.actor.named_parameters()), rtol=RTOL, atol=ATOL)
    assert report.ok
    assert report.num_sequences == 9
    assert report.ground_truth == "autograd"
    assert all(p.reference == "autograd" for p in report.parameters)
    assert all(float(p.target.abs().max()) > 1e-3 for p in report.parameters)
    assert recorded_note(report) and not without_gradient_note(report)
    assert "18 sampler call(s) in 9 episode run(s)" in " ".join(report.notes)


def test_cleanrl_ppo_with_advantages_normalized_over_the_batch_is_caught_by_autograd(float64_default):
    # rtol 1e-9, atol 1e-12 against autograd's -grad J, element by element.
    agent = marked_agent("instance attribute")
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(ppo_episode(agent, norm_adv=True), dict(agent.actor.named_parameters()), rtol=RTOL, atol=ATOL)
    report = caught.value.report
    assert report.ground_truth == "autograd"
    assert "Ground truth: autograd's -grad J" in str(caught.value)
    assert all(p.reference == "autograd" for p in report.parameters)
    assert sum(p.mismatches for p in report.parameters) > 10
    assert recorded_note(report)


def test_unmarked_cleanrl_rollout_is_decided_by_central_differences_and_the_note_names_enumerate_actions(
    float64_default,
):
    # Today's behaviour without the mark: every coordinate by central differences of the exact J
    # (fd_rtol 1e-5, fd_atol 1e-7), which also catch the biased variant.
    agent = make_agent()
    params = dict(agent.actor[2].named_parameters())  # the output layer: 15 coordinates
    report = check_reinforce(ppo_episode(agent), params, rtol=RTOL, atol=ATOL)
    assert report.ok and report.ground_truth == "finite differences"
    assert all(p.reference == "central differences" for p in report.parameters)
    note = next(n for n in report.notes if "carry no gradient" in n)
    assert "mark the function that samples with enumerate_actions" in note
    assert not recorded_note(report)
    biased = check_reinforce(ppo_episode(agent, norm_adv=True), params, raise_exception=False)
    assert not biased.ok and biased.ground_truth == "finite differences"


# What the surrounding code sees.


def test_outputs_of_the_marked_agent_under_no_grad_are_detached_and_equal_to_an_unchecked_call(float64_default):
    agent = make_agent()
    unchecked = agent.get_action_and_value
    agent.get_action_and_value = enumerate_actions(agent.get_action_and_value)
    steps = []

    def observe(*seen):
        if len(seen) == 4:
            obs, action, logprob, value = seen
            with torch.no_grad():  # the same action, unmarked, at the same parameters
                _, expected_logprob, _, expected_value = unchecked(obs, action)
            steps.append(((action, logprob, value), (expected_logprob, expected_value)))

    check_reinforce(ppo_episode(agent, observe=observe), dict(agent.actor.named_parameters()), rtol=RTOL, atol=ATOL)
    assert len(steps) > 18  # the enumeration's runs and the check's own replays
    for (action, logprob, value), (expected_logprob, expected_value) in steps:
        for tensor in (action, logprob, value):
            assert not tensor.requires_grad and tensor.grad_fn is None
        assert torch.equal(logprob, expected_logprob)
        assert torch.equal(value, expected_value)


def test_caller_buffers_filled_under_no_grad_acquire_no_graph(float64_default):
    agent = marked_agent("instance attribute")
    buffers = []

    def observe(*seen):
        if len(seen) == 5:
            buffers.append(seen)

    check_reinforce(ppo_episode(agent, observe=observe), dict(agent.actor.named_parameters()), rtol=RTOL, atol=ATOL)
    assert buffers
    for tensors in buffers:
        for tensor in tensors:
            assert tensor.grad_fn is None and not tensor.requires_grad


def test_buffers_written_in_place_inside_marked_code_acquire_no_graph_and_autograd_still_decides():
    # The marked function writes, under torch.no_grad(), into the caller's buffers (by index, through
    # a view, and a copy of the parameter itself) and scales the parameter in place by 1, as a
    # rollout may keep statistics: a real run records none of it. rtol 1e-9, atol 1e-12 against autograd.
    theta = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]], dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.2, -0.8]], dtype=torch.float64)
    buffers = []

    @enumerate_actions
    def act(step, buffer, snapshot):
        dist = Categorical(logits=theta[step])
        action = dist.sample()
        buffer[step, 0] = dist.log_prob(action)
        row = buffer[step, 1:]
        row.copy_(dist.probs[:2])
        with torch.enable_grad():  # changed with gradient on, from tensors a real run has without
            row.mul_(dist.probs[:2] / dist.probs[:2])
        snapshot.copy_(theta)
        theta.mul_(1.0)
        return action

    def episode():
        buffer, snapshot = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
        with torch.no_grad():
            chosen = [act(step, buffer, snapshot) for step in range(2)]
        buffers.extend([buffer, snapshot])
        total = reward[0, chosen[0]] + reward[1, chosen[1]]
        log_prob = sum(Categorical(logits=theta[s]).log_prob(a) for s, a in enumerate(chosen))
        return total, -log_prob * total

    report = check_reinforce(episode, {"theta": theta}, rtol=RTOL, atol=ATOL)
    assert report.ok and report.ground_truth == "autograd" and recorded_note(report)
    assert all(b.grad_fn is None and not b.requires_grad for b in buffers)
    assert all(float(b.abs().min()) > 0 for b in buffers)  # the values were written


@pytest.mark.parametrize("before", [True, False])
def test_grad_mode_after_the_check_is_the_grad_mode_before(float64_default, before):
    # rtol 1e-9, atol 1e-12 against autograd, whatever the caller's grad mode.
    agent = marked_agent("instance attribute")
    with torch.set_grad_enabled(before):
        report = check_reinforce(ppo_episode(agent), dict(agent.actor.named_parameters()), rtol=RTOL, atol=ATOL)
        assert torch.is_grad_enabled() is before
    assert report.ok and report.ground_truth == "autograd"


def grad_mode_methods() -> dict[tuple[type, str], object]:
    return {
        (cls, name): vars(cls)[name]
        for cls in (grad_mode.no_grad, grad_mode.enable_grad, grad_mode.set_grad_enabled)
        for name in ("__init__", "__call__", "__enter__", "__exit__")
        if name in vars(cls)
    }


def test_an_episode_raising_inside_marked_code_restores_grad_mode_and_every_patched_attribute():
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    methods = grad_mode_methods()

    @enumerate_actions
    @torch.no_grad()
    def act():
        action = Categorical(logits=theta).sample()
        if int(action) == 1:
            with torch.set_grad_enabled(False):
                raise ValueError("the environment refused action 1")
        return action

    def episode():
        action = act()
        return action.double(), -Categorical(logits=theta).log_prob(action) * action.double()

    for before in (True, False):
        with torch.set_grad_enabled(before), pytest.raises(ValueError, match="refused action 1"):
            check_reinforce(episode, {"theta": theta})
        assert torch.is_grad_enabled()  # the test's own mode, restored by the with block
    assert grad_mode_methods() == methods
    assert not torch._C._is_torch_function_mode_enabled()
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_outside_a_check_marked_code_under_no_grad_returns_exactly_what_unmarked_code_returns(float64_default):
    agent = make_agent()
    marked = enumerate_actions(agent.get_action_and_value)
    obs = torch.tensor([[1.0, -0.5]])
    methods = grad_mode_methods()
    results = []
    for function in (agent.get_action_and_value, marked):
        torch.manual_seed(5)
        with torch.no_grad():
            results.append([function(obs) for _ in range(8)])
    assert grad_mode_methods() == methods
    for plain, scoped in zip(*results):
        for a, b in zip(plain, scoped):
            assert torch.equal(a, b)
            assert a.requires_grad == b.requires_grad is False and b.grad_fn is None


def test_grad_mode_inside_marked_code_is_virtual_and_is_grad_enabled_answers_the_real_mode():
    # The code sees no_grad's bookkeeping and its tensors as outside a check (the mode it leaves,
    # what nested context managers restore, requires_grad and grad_fn), and torch.is_grad_enabled()
    # answers what autograd does: True. rtol 1e-9, atol 1e-12 against autograd.
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    answers = []

    @enumerate_actions
    def act():
        with torch.no_grad():
            with torch.enable_grad():
                inner = (theta * 2).requires_grad
            with torch.no_grad():
                pass
            doubled = theta * 2  # made without gradient, as outside a check
            answers.append((torch.is_grad_enabled(), inner, doubled.requires_grad, doubled.grad_fn))
            action = Categorical(logits=theta).sample()
        torch.set_grad_enabled(False)  # left off for the caller, as outside a check
        return action

    def episode():
        action = act()
        left_off = not torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        assert left_off
        return action.double(), -Categorical(logits=theta).log_prob(action) * action.double()

    report = check_reinforce(episode, {"theta": theta}, rtol=RTOL, atol=ATOL)
    assert report.ok and report.ground_truth == "autograd" and recorded_note(report)
    recording_runs = [a for a in answers if a[0]]
    assert recording_runs
    assert all(inner and not made and grad_fn is None for _, inner, made, grad_fn in recording_runs)


# Patterns inside marked code.


def test_log_prob_from_logits_made_under_no_grad_has_no_gradient_as_outside_a_check_so_the_bias_is_caught():
    # The policy computes its logits under torch.no_grad() and returns a log-probability computed
    # from them with gradient on: outside a check it carries no gradient, so the loss built on it
    # is biased. The check keeps it so (no false pass), and autograd, which sees the probabilities'
    # recorded graph, decides (rtol 1e-9, atol 1e-12).
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    @enumerate_actions
    def act():
        with torch.no_grad():
            logits = theta * 1.5
        dist = Categorical(logits=logits)
        action = dist.sample()
        return action, dist.log_prob(action)

    def episode():
        action, log_prob = act()
        return reward[action], -log_prob * reward[action]

    report = check_reinforce(episode, {"theta": theta}, rtol=RTOL, atol=ATOL, raise_exception=False)
    assert not report.ok and report.ground_truth == "autograd"
    assert float(report.parameters[0].estimate.abs().max()) == 0.0
    assert recorded_note(report)


def test_in_place_operations_under_no_grad_in_marked_code_keep_autograd_exact():
    # nn.ReLU(inplace=True) on a view, sigmoid then mul_ (its saved output changed), and a buffer
    # the code makes and fills step by step: recorded, with copies of the tensors the backward
    # pass needs. rtol 1e-9, atol 1e-12 against autograd.
    torch.manual_seed(1)
    body, head = nn.Linear(2, 4).double(), nn.Linear(4, 3).double()
    net = nn.Sequential(body, nn.ReLU(inplace=True))
    features = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=torch.float64)
    reward = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.2, -0.8]], dtype=torch.float64)

    @enumerate_actions
    @torch.no_grad()
    def rollout():
        memory = torch.zeros(2, 4, dtype=torch.float64)
        chosen = []
        for step in range(2):
            gate = torch.sigmoid(net(features[step]))
            gate.mul_(2.0)
            memory[step] = gate
            chosen.append(Categorical(logits=head(memory.sum(0))).sample())
        return chosen

    def episode():
        chosen = rollout()
        # The loss, with gradient, written without the in-place changes autograd refuses.
        gates = [torch.sigmoid(torch.relu(body(features[step]))) * 2.0 for step in range(2)]
        logits = [head(gates[0]), head(gates[0] + gates[1])]
        log_prob = sum(Categorical(logits=logits[s]).log_prob(a) for s, a in enumerate(chosen))
        total = reward[0, chosen[0]] + reward[1, chosen[1]]
        return total, -log_prob * total

    params = {"body.weight": body.weight, "body.bias": body.bias, "head.weight": head.weight}
    report = check_reinforce(episode, params, rtol=RTOL, atol=ATOL)
    assert report.ok and report.ground_truth == "autograd" and recorded_note(report)


@pytest.mark.parametrize("detach_state", [False, True], ids=["unbiased", "truncated-backprop-biased"])
def test_recurrent_state_handed_back_and_passed_in_again_keeps_autograd_exact(detach_state):
    # The marked step returns its new recurrent state, detached as outside a check; passed back
    # unchanged, it enters the next step as the recorded state, so the second draw's probabilities
    # keep their dependence through the first step. The loss that detaches the state between steps
    # (truncated backpropagation) is biased. rtol 1e-9, atol 1e-12 against autograd.
    torch.manual_seed(2)
    cell = nn.GRUCell(2, 3).double()
    features = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=torch.float64)
    reward = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.2, -0.8]], dtype=torch.float64)

    @enumerate_actions
    def step(x, state):
        state = cell(x[None], state)
        return Categorical(logits=state[0]).sample(), state

    def episode():
        state, chosen = torch.zeros(1, 3, dtype=torch.float64), []
        with torch.no_grad():
            for t in range(2):
                action, state = step(features[t], state)
                assert state.grad_fn is None
                chosen.append(action)
        state, log_prob = torch.zeros(1, 3, dtype=torch.float64), 0.0
        for t, action in enumerate(chosen):
            state = cell(features[t][None], state)
            log_prob = log_prob + Categorical(logits=state[0]).log_prob(action)
            if detach_state:
                state = state.detach()
        total = reward[0, chosen[0]] + reward[1, chosen[1]]
        return total, -log_prob * total

    report = check_reinforce(episode, cell, rtol=RTOL, atol=ATOL, raise_exception=False)
    assert report.ok is not detach_state
    assert report.ground_truth == "autograd" and recorded_note(report)


def test_trunk_under_no_grad_feeding_a_head_with_gradient_is_recorded_and_returned_as_outside_a_check():
    # The policy computes its features under torch.no_grad() and its logits with gradient on, and
    # returns the log-probability: outside a check it carries the head's gradient only. The check
    # records the trunk's path to the sampler too, so autograd's -grad J is exact for both, and the
    # loss built on the returned log-probability is right for the head and biased for the trunk
    # (rtol 1e-9, atol 1e-12 against autograd).
    torch.manual_seed(3)
    trunk, head = nn.Linear(2, 4).double(), nn.Linear(4, 3).double()
    features = torch.tensor([1.0, -0.5], dtype=torch.float64)
    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    @enumerate_actions
    def act():
        with torch.no_grad():
            hidden = torch.tanh(trunk(features))
        dist = Categorical(logits=head(hidden))
        action = dist.sample()
        return action, dist.log_prob(action)

    def episode():
        action, log_prob = act()
        return reward[action], -log_prob * reward[action]

    params = {"head.weight": head.weight, "head.bias": head.bias, "trunk.weight": trunk.weight}
    report = check_reinforce(episode, params, rtol=RTOL, atol=ATOL, raise_exception=False)
    assert report.ground_truth == "autograd" and recorded_note(report)
    by_name = {p.name: p for p in report.parameters}
    assert by_name["head.weight"].ok and by_name["head.bias"].ok
    assert not by_name["trunk.weight"].ok
    assert float(by_name["trunk.weight"].estimate.abs().max()) == 0.0
    assert float(by_name["trunk.weight"].target.abs().max()) > 1e-3


def test_a_log_prob_kept_on_the_policy_under_no_grad_has_no_gradient_as_outside_a_check():
    # Whatever route a tensor made under torch.no_grad() takes out of marked code (here an
    # attribute, as PyTorch's REINFORCE example keeps saved_log_probs), it carries no gradient:
    # a loss built on it is biased, as outside a check, and autograd says so (rtol 1e-9, atol 1e-12).
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    class Policy:
        def __init__(self) -> None:
            self.saved_log_probs: list[torch.Tensor] = []

        @torch.no_grad()
        def act(self):
            dist = Categorical(logits=theta)
            action = dist.sample()
            self.saved_log_probs.append(dist.log_prob(action))
            return action

    policy = Policy()
    policy.act = enumerate_actions(policy.act)

    def episode():
        policy.saved_log_probs = []
        action = policy.act()
        assert not policy.saved_log_probs[0].requires_grad
        return reward[action], -policy.saved_log_probs[0] * reward[action] + 0.0 * theta.sum()

    report = check_reinforce(episode, {"theta": theta}, rtol=RTOL, atol=ATOL, raise_exception=False)
    assert not report.ok and report.ground_truth == "autograd"
    assert float(report.parameters[0].estimate.abs().max()) == 0.0


def test_a_tensor_changed_in_place_outside_marked_code_keeps_its_values_and_loses_its_recorded_form():
    # The marked code returns logits computed with gradient on from features made under
    # torch.no_grad(); the caller shifts them in place before sampling from them in marked code.
    # The sampler must see the shifted values (J below, to 1e-12); the recorded trunk path is lost
    # with the change, so autograd disagrees with central differences, which decide (fd_rtol 1e-5,
    # fd_atol 1e-7) and pass the unbiased loss.
    torch.manual_seed(6)
    trunk, head = nn.Linear(2, 3).double(), nn.Linear(3, 3).double()
    features = torch.tensor([1.0, -0.5], dtype=torch.float64)
    shift = torch.tensor([0.7, -0.4, 0.1], dtype=torch.float64)
    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    @enumerate_actions
    def logits_of():
        with torch.no_grad():
            hidden = torch.tanh(trunk(features))
        return head(hidden)

    @enumerate_actions
    @torch.no_grad()
    def act(logits):
        return Categorical(logits=logits).sample()

    def episode():
        logits = logits_of()
        with torch.no_grad():
            logits.add_(shift)
        action = act(logits)
        log_prob = Categorical(logits=head(torch.tanh(trunk(features))) + shift).log_prob(action)
        return reward[action], -log_prob * reward[action]

    report = check_reinforce(episode, {"trunk.weight": trunk.weight, "head.weight": head.weight})
    assert report.ok and report.ground_truth == "finite differences"
    with torch.no_grad():
        probs = torch.softmax(head(torch.tanh(trunk(features))) + shift, dim=-1)
    assert abs(report.objective - float((probs * reward).sum())) < 1e-12


def test_numpy_and_deepcopy_of_tensors_made_under_no_grad_work_in_marked_code():
    # Both refuse a tensor that requires grad; outside a check these have none, and so they get
    # them. rtol 1e-9, atol 1e-12 against autograd.
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    logged = []

    @enumerate_actions
    @torch.no_grad()
    def act():
        logits = theta * 1.5
        logged.append((logits.numpy().copy(), copy.deepcopy(logits)))
        return Categorical(logits=logits).sample()

    def episode():
        action = act()
        return reward[action], -Categorical(logits=theta * 1.5).log_prob(action) * reward[action]

    report = check_reinforce(episode, {"theta": theta}, rtol=RTOL, atol=ATOL)
    assert report.ok and report.ground_truth == "autograd"
    assert all(not copied.requires_grad for _, copied in logged)


def test_batched_episode_with_marked_sampling_under_no_grad_is_decided_by_autograd():
    # rtol 1e-9, atol 1e-12 against autograd.
    theta = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]], dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.2, -0.8]], dtype=torch.float64)

    @enumerate_actions
    @torch.no_grad()
    def act(step, rows):
        return Categorical(logits=theta[step].expand(rows, 3)).sample()

    def episode(rows):
        chosen = [act(step, rows) for step in range(2)]
        total = reward[0, chosen[0]] + reward[1, chosen[1]]
        log_prob = sum(Categorical(logits=theta[s].expand(rows, 3)).log_prob(a) for s, a in enumerate(chosen))
        return total, -log_prob * total

    report = check_reinforce(episode, {"theta": theta}, batched=True, rtol=RTOL, atol=ATOL)
    assert report.ok and report.ground_truth == "autograd" and recorded_note(report)


def test_inference_mode_inside_marked_code_leaves_the_verdict_to_central_differences():
    # torch.inference_mode() cannot be recorded: central differences decide, every coordinate
    # (fd_rtol 1e-5, fd_atol 1e-7), and the note says why marking did not help.
    theta = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]], dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.2, -0.8]], dtype=torch.float64)

    @enumerate_actions
    def act(step):
        with torch.inference_mode():
            action = Categorical(logits=theta[step]).sample()
        return action.clone()

    def episode(sign):
        def run():
            chosen = [act(step) for step in range(2)]
            total = reward[0, chosen[0]] + reward[1, chosen[1]]
            log_prob = sum(Categorical(logits=theta[s]).log_prob(a) for s, a in enumerate(chosen))
            return total, -sign * log_prob * total

        return run

    report = check_reinforce(episode(1.0), {"theta": theta})
    assert report.ok and report.ground_truth == "finite differences"
    assert report.parameters[0].reference == "central differences"
    note = next(n for n in report.notes if "carry no gradient" in n)
    assert "ran under torch.inference_mode(), which a check cannot record" in note
    assert not recorded_note(report)
    with pytest.raises(ReinforceCheckError, match="Ground truth: central differences"):
        check_reinforce(episode(-1.0), {"theta": theta})


# A generation loop decorated with @torch.no_grad(), as transformers' generate() is.


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 3, width: int = 4) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.embed = nn.Embedding(vocab, width, dtype=torch.float64)
        self.out = nn.Linear(width, vocab, dtype=torch.float64)

    def forward(self, tokens):
        hidden = torch.tanh(self.embed(tokens).cumsum(0))
        return self.out(hidden)


@torch.no_grad()
def generate(model, prompt, max_new_tokens):
    tokens = prompt
    for _ in range(max_new_tokens):
        probs = torch.softmax(model(tokens)[-1], dim=-1)
        next_token = torch.multinomial(probs, num_samples=1)
        tokens = torch.cat([tokens, next_token])
    return tokens


# The same loop under the other decorator that turns gradient off.
generate_with_grad_disabled = torch.set_grad_enabled(False)(generate.__wrapped__)


def generation_episode(model, sample, *, biased: bool):
    prompt = torch.tensor([0])
    score = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)

    def episode():
        tokens = sample(model, prompt, 3)
        assert tokens.grad_fn is None
        new = tokens[1:]
        log_prob = torch.log_softmax(model(tokens)[:-1], dim=-1).gather(1, new[:, None]).sum()
        reward = score[new].sum()
        # An action-dependent baseline (how often token 2 was drawn) biases the estimator.
        baseline = (new == 2).double().sum() if biased else 0.0
        return reward, -log_prob * (reward - baseline)

    return episode


@pytest.mark.parametrize("loop", [generate, generate_with_grad_disabled], ids=["no_grad", "set_grad_enabled"])
def test_no_grad_decorated_generation_loop_marked_is_decided_by_autograd(loop):
    # 27 token sequences; rtol 1e-9, atol 1e-12 against autograd.
    model = TinyLM()
    report = check_reinforce(generation_episode(model, enumerate_actions(loop), biased=False), model, rtol=RTOL, atol=ATOL)
    assert report.ok and report.num_sequences == 27
    assert report.ground_truth == "autograd" and recorded_note(report)
    assert not without_gradient_note(report)


def test_no_grad_decorated_generation_loop_with_an_action_dependent_baseline_is_caught_by_autograd():
    # rtol 1e-9, atol 1e-12 against autograd.
    model = TinyLM()
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(generation_episode(model, enumerate_actions(generate), biased=True), model, rtol=RTOL, atol=ATOL)
    assert caught.value.report.ground_truth == "autograd"


# transformers' own generate() on a tiny random GPT-2.


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=4, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=3, pad_token_id=3)
    return GPT2LMHeadModel(config).double().eval()


# generate() casts the next-token logits to float32 before sampling, so the probabilities, and J,
# are exact to float32 rounding only: the comparison with autograd allows rtol 1e-4, atol 1e-6, and
# central differences take a step of 1e-3 (J's rounding over that step is about 1e-5) with
# fd_rtol 1e-3, fd_atol 1e-4.
GPT2_TOLERANCES = {"rtol": 1e-4, "atol": 1e-6, "fd_step": 1e-3, "fd_rtol": 1e-3, "fd_atol": 1e-4, "finite_differences": "none"}
# The embedding (tied to the output layer), the positions, attention and the MLP's output.
GPT2_CHECKED = ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_proj.bias")


def gpt2_episode(model, *, biased: bool, cache_implementation=None, seen=None):
    generate = enumerate_actions(model.generate)
    prompt = torch.tensor([[0, 1]])
    score = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)

    def episode():
        out = generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=True,
            max_new_tokens=2,
            top_k=0,
            pad_token_id=3,
            eos_token_id=3,
            cache_implementation=cache_implementation,
            return_dict_in_generate=seen is not None,
            output_scores=seen is not None,
        )
        if seen is not None:
            seen.append(out)
            out = out.sequences
        new = out[0, prompt.shape[1] :]
        logits = model(out, attention_mask=torch.ones_like(out)).logits[0, prompt.shape[1] - 1 : -1]
        log_prob = torch.log_softmax(logits, dim=-1).gather(1, new[:, None]).sum()
        reward = score[new].sum()
        baseline = (new == 2).double().sum() if biased else 0.0
        return reward, -log_prob * (reward - baseline)

    return episode


@pytest.mark.parametrize("cache_implementation", [None, "static"], ids=["dynamic-cache", "static-cache"])
def test_transformers_generate_marked_is_decided_by_autograd(cache_implementation):
    # The static cache writes keys and values in place (index_copy_) into tensors an earlier
    # step's attention read: the recorded graph keeps copies of what it needs. Tolerances: see
    # GPT2_TOLERANCES.
    model = tiny_gpt2()
    params = {name: dict(model.named_parameters())[name] for name in GPT2_CHECKED}
    report = check_reinforce(gpt2_episode(model, biased=False, cache_implementation=cache_implementation), params, **GPT2_TOLERANCES)
    assert report.ok
    assert report.num_sequences == 13  # end of sequence first, or two tokens
    assert report.ground_truth == "autograd" and recorded_note(report)
    assert not without_gradient_note(report)
    assert all(p.reference == "autograd" for p in report.parameters)


def test_transformers_generate_with_an_action_dependent_baseline_is_caught_by_autograd():
    # Tolerances: see GPT2_TOLERANCES. Two tensors, so that naming the culprits takes few directions.
    model = tiny_gpt2()
    params = {name: dict(model.named_parameters())[name] for name in GPT2_CHECKED[::3]}
    with pytest.raises(ReinforceCheckError) as caught:
        check_reinforce(gpt2_episode(model, biased=True), params, **GPT2_TOLERANCES)
    report = caught.value.report
    assert report.ground_truth == "autograd"
    assert any(p.mismatches for p in report.parameters)


def test_transformers_generate_output_returns_detached_scores_in_its_model_output():
    # Tolerances: see GPT2_TOLERANCES.
    model = tiny_gpt2()
    params = {name: dict(model.named_parameters())[name] for name in GPT2_CHECKED[:1]}
    seen: list = []
    report = check_reinforce(gpt2_episode(model, biased=False, seen=seen), params, **GPT2_TOLERANCES)
    assert report.ok and report.ground_truth == "autograd"
    assert seen and all(type(out).__name__ == "GenerateDecoderOnlyOutput" for out in seen)
    for out in seen:
        assert out.sequences.grad_fn is None
        assert out.scores and all(s.grad_fn is None and not s.requires_grad for s in out.scores)
        assert out["scores"] is out.scores  # the mapping and the attributes agree
