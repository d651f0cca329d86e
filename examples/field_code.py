"""Policy-gradient code as the field writes it, checked without edits.

Three programs that are not written for a checker:

* **A CleanRL-style PPO agent.** Its rollout runs under ``torch.no_grad()`` and writes into
  preallocated buffers; the loss recomputes the log-probabilities of the actions taken and applies
  PPO's clipped surrogate (at theta = theta_old, the first minibatch of an update). CleanRL
  normalizes the advantages by default (``norm_adv=True``).
* **transformers' ``generate``** on a tiny random GPT-2: the completions are sampled inside
  ``generate`` (itself under ``@torch.no_grad()``), and the loss recomputes the tokens'
  log-probabilities with a forward pass, summed over each completion or averaged over its tokens.
* **The tutorial pattern**: a float32 policy fed ``torch.from_numpy(state).float()``, its action
  drawn with ``np.random.choice(n, p=probs.detach().numpy())``.

Marking the function that samples with ``enumerate_actions`` lets the check record its graph
inside it, so autograd's exact -grad J decides; unmarked, central differences of the exact J do.
Run it with ``python examples/field_code.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.distributions import Categorical

from reinforce_check import CheckReport, check_reinforce, enumerate_actions
from reinforce_check.integrations import relative_bias

# --- A CleanRL-style PPO agent -------------------------------------------------------------------

STATES, ACTIONS, STEPS = 3, 2, 3


class Agent(torch.nn.Module):
    """Actor and critic MLPs over a one-hot observation, as CleanRL's PPO writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.critic = torch.nn.Sequential(torch.nn.Linear(STATES, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        self.actor = torch.nn.Sequential(torch.nn.Linear(STATES, 4), torch.nn.Tanh(), torch.nn.Linear(4, ACTIONS))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = Categorical(logits=self.actor(x))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


class Chain:
    """A deterministic chain: action 1 moves right (reward 1 on reaching the last state), 0 stays."""

    def reset(self) -> np.ndarray:
        self.state = 0
        return self.observation()

    def observation(self) -> np.ndarray:
        return np.eye(STATES, dtype=np.float32)[self.state]

    def step(self, action: int) -> tuple[np.ndarray, float]:
        self.state = min(self.state + action, STATES - 1)
        return self.observation(), float(self.state == STATES - 1) - 0.1 * action


def ppo_episode(agent: Agent, *, norm_adv: bool):
    """One rollout of STEPS steps and the first PPO minibatch loss (the whole rollout), CleanRL-style."""

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        env = Chain()
        obs = torch.zeros(STEPS, STATES)
        actions = torch.zeros(STEPS, dtype=torch.long)
        logprobs, rewards, values = torch.zeros(STEPS), torch.zeros(STEPS), torch.zeros(STEPS)
        next_obs = torch.from_numpy(env.reset()).float()
        for step in range(STEPS):
            obs[step] = next_obs
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step], logprobs[step] = action, logprob
            state, reward = env.step(int(action))
            rewards[step], next_obs = reward, torch.from_numpy(state).float()
        # Undiscounted returns-to-go; the critic's value of the state is a baseline (gamma = lambda = 1).
        returns = rewards.flip(0).cumsum(0).flip(0)
        advantages = returns - values
        if norm_adv:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        _, newlogprob, _, _ = agent.get_action_and_value(obs, actions)
        ratio = (newlogprob - logprobs).exp()
        pg_loss = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 0.8, 1.2)).mean()
        # The mean over the rollout's timesteps divides the return by STEPS.
        return rewards.sum() / STEPS, pg_loss

    return episode


# --- transformers' generate ----------------------------------------------------------------------

VOCAB, END, NEW_TOKENS = 4, 3, 2


def tiny_gpt2():
    """A random GPT-2 of 4 tokens (3 ends a completion), built from a config: nothing downloaded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=END, eos_token_id=END)
    return GPT2LMHeadModel(config).eval()


def generate_episode(model, *, length_norm: bool, marked: bool):
    """REINFORCE on one completion of a fixed prompt: reward 1 per token 0, the log-probabilities of
    the generated tokens recomputed with a forward pass, summed or averaged over the completion."""
    prompt = torch.tensor([[END, 1]])
    generate = enumerate_actions(model.generate) if marked else model.generate

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        tokens = generate(
            prompt, do_sample=True, max_new_tokens=NEW_TOKENS, top_k=0, pad_token_id=END, eos_token_id=END
        )
        new = tokens[:, prompt.shape[1] :]
        # A completion ends with its first END; later positions are padding.
        live = torch.cat([torch.ones_like(new[:, :1]), (new[:, :-1] != END).long()], dim=1).cumprod(1).bool()
        logits = model(tokens).logits[:, prompt.shape[1] - 1 : -1]
        log_probs = torch.log_softmax(logits.double(), -1).gather(2, new[..., None])[..., 0] * live
        reward = ((new == 0) & live).sum().double()
        per_sequence = log_probs.sum() / live.sum() if length_norm else log_probs.sum()
        return reward, -per_sequence * reward

    return episode


# --- The tutorial pattern: numpy sampling, a float32 policy ---------------------------------------


def numpy_episode(policy: torch.nn.Module):
    """Two steps of a bandit whose state is a numpy array; actions drawn with numpy's choice."""
    payoff = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0]], dtype=np.float32)

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        state = np.array([1.0, 0.0], dtype=np.float32)
        log_prob, total = 0.0, 0.0
        for _ in range(2):
            probs = torch.softmax(policy(torch.from_numpy(state).float()), -1)
            action = np.random.choice(3, p=probs.detach().numpy())
            log_prob = log_prob + torch.log(probs[action])
            total += float(payoff[int(state[1]), action])
            state = np.array([0.0, 1.0], dtype=np.float32)
        return torch.tensor(total), -log_prob * total

    return episode


def summarize(name: str, report: CheckReport) -> dict[str, float | bool | str]:
    row = {
        "ok": report.ok,
        "ground_truth": report.ground_truth,
        "relative_bias": relative_bias(report),
        "sequences": report.num_sequences,
        "seconds": report.seconds,
    }
    print(
        f"{name:<50} {'passes' if report.ok else 'BIASED':<7} {report.ground_truth:<19} "
        f"{row['relative_bias']:9.2e} {report.num_sequences:6,} {report.seconds:6.2f} s"
    )
    return row


def main() -> dict[str, dict[str, float | bool | str]]:
    torch.manual_seed(0)
    rows: dict[str, dict[str, float | bool | str]] = {}
    print(f"{'case':<50} {'verdict':<7} {'ground truth':<19} {'|bias|/|dJ|':>9} {'seqs':>6} {'time':>8}")

    agent = Agent()  # float32, as built
    actor = dict(agent.actor.named_parameters())
    rows["ppo"] = summarize("PPO rollout under no_grad", check_reinforce(ppo_episode(agent, norm_adv=False), actor))
    agent.get_action_and_value = enumerate_actions(agent.get_action_and_value)
    marked = check_reinforce(ppo_episode(agent, norm_adv=False), actor)
    rows["ppo marked"] = summarize("  the same, get_action_and_value marked", marked)
    rows["ppo norm_adv"] = summarize(
        "  advantages normalized (CleanRL's norm_adv)",
        check_reinforce(ppo_episode(agent, norm_adv=True), actor, raise_exception=False),
    )

    model = tiny_gpt2()
    params = dict(model.named_parameters())
    rows["generate"] = summarize(
        "generate(), log-probs summed, generate marked",
        check_reinforce(generate_episode(model, length_norm=False, marked=True), params),
    )
    rows["generate token mean"] = summarize(
        "  log-probs averaged over the completion",
        check_reinforce(generate_episode(model, length_norm=True, marked=True), params, raise_exception=False),
    )

    policy = torch.nn.Linear(2, 3)  # float32
    rows["numpy"] = summarize(
        "np.random.choice, float32 policy, .float() inputs", check_reinforce(numpy_episode(policy), policy)
    )
    print()
    print("The report of the marked PPO check:")
    print(marked)
    return rows


if __name__ == "__main__":
    main()
