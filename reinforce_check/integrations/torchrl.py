"""torchrl: check ``ReinforceLoss``, ``A2CLoss`` and the PPO losses on a rollout of a torchrl environment.

:func:`check_torchrl` takes one of torchrl's on-policy loss modules and a torchrl environment with
discrete actions, and checks, exactly, the gradient of the loss module's own output at the actor's
parameters. One episode of the check is one rollout of the environment (``env.rollout``, without
gradient and with ``ExplorationType.RANDOM``, as torchrl's collectors gather data) followed by the
loss module's ``forward`` on it, which computes the advantages with its value estimator (GAE,
TD(lambda), TD(0), ...) and returns its loss terms; the episode's loss is the sum of those terms,
what a torchrl training loop calls ``backward`` on. The policy's sampling is marked with
:func:`~reinforce_check.enumerate_actions`, so every action it can take is enumerated and its graph
is recorded although the rollout runs under ``torch.no_grad()``. The objective is the return
collected in the rollout, undiscounted or discounted by the value estimator's ``gamma``, divided by
the number of samples the loss averages over, plus the entropy term the loss claims.

torchrl is imported when :func:`check_torchrl` is called, not before.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch

from ..check import Params, check_reinforce
from ..handlers import enumerate_actions
from ..report import CheckReport
from . import IntegrationError, ParameterChoice, import_library, rollout_return

__all__ = ["check_torchrl"]

Objective = Literal["return", "discounted"]


def _import(module: str) -> Any:
    return import_library(module, adapter="check_torchrl", library="torchrl")


def check_torchrl(
    loss_module: Any,
    env: Any,
    *,
    max_steps: int,
    objective: Objective = "return",
    entropy: bool = True,
    bootstrap: bool = False,
    params: ParameterChoice = "actor",
    policy: Any = None,
    advantage: Any = None,
    break_when_any_done: bool = True,
    seed: int | None = 0,
    **options: Any,
) -> CheckReport:
    r"""Check a torchrl loss module's gradient on one rollout against the objective it claims.

    One episode of the check seeds the environment with ``seed``, collects one rollout of at most
    ``max_steps`` steps with ``env.rollout`` (under ``torch.no_grad()`` and
    ``set_exploration_type(ExplorationType.RANDOM)``, as torchrl's collectors do), and calls the
    loss module on it. The loss computes its advantages with its own value estimator (or
    ``advantage`` does, beforehand) and returns its terms (``loss_objective``, ``loss_critic``,
    ``loss_entropy`` for ``A2CLoss`` and the PPO losses; ``loss_actor`` and ``loss_value`` for
    ``ReinforceLoss``); their sum is the episode's loss. Every action the policy can take in the
    rollout is enumerated; the environment's own randomness is replayed identically for every
    sequence. With :math:`N` the number of samples the loss averages over (the rollout's steps
    times the environment's batch size, for the default ``reduction="mean"``; 1 for ``"sum"``), the
    objective is

    .. math:: J = \frac{1}{N}\,\mathbb{E}\Bigl[\sum_t c_t\, r_t
              + \mathtt{entropy\_coeff} \sum_t H\bigl(\pi(\cdot \mid s_t)\bigr)\Bigr]

    over the rollout's steps :math:`t`, with :math:`c_t = 1` (``objective="return"``) or
    :math:`c_t = \gamma^k`, :math:`k` the steps since the episode began (``"discounted"``, with the
    value estimator's ``gamma``); the entropy term is there when ``entropy`` is true and the loss
    has an entropy bonus. With ``bootstrap=True``, :math:`r_t` is replaced by
    :math:`r_t + g\,V(s_{t+1})` at every step where the rollout stops inside an episode (its last
    step, unless that step ended the episode, and every step truncated rather than terminated),
    with :math:`g = \gamma` for ``"discounted"`` and 1 for ``"return"``, and :math:`V` the critic
    as it is when the check starts, held fixed: what the value estimator bootstraps from.

    torchrl's estimator is unbiased for this objective when all of these hold:

    * nothing is bootstrapped from the critic: every episode in the rollout ends, terminated,
      within ``max_steps`` (or ``bootstrap=True`` puts the critic's values in the objective), and
      they last the same number of steps whatever the actions, so that :math:`N` is a constant
      (or the loss sums its terms, ``reduction="sum"``);
    * the value estimator has ``gamma=1`` (with ``objective="return"``) and ``lmbda=1``
      (``GAE``, ``TDLambda``), or is ``TD1`` with ``gamma=1``;
    * the advantages are not normalized: PPO's ``normalize_advantage=False``, no
      ``advantage_norm``, no ``average_gae``;
    * there is no entropy bonus (``entropy_bonus=False``): its gradient is that of the entropy at
      the states visited, without the score terms of their dependence on the policy.

    The critic is a baseline of the state only, so it leaves the estimator unbiased; its own loss
    trains its own parameters, which the default ``params="actor"`` leaves out. PPO's clipping
    leaves it unbiased too: the rollout's log-probabilities are those of the current parameters, so
    the ratio is 1. Anything else is reported with the exact size of its bias
    (:func:`~reinforce_check.integrations.relative_bias`): the check is not a verdict on the
    algorithm, it measures how far its expected gradient departs from the gradient of the objective.

    .. note::
        The loss module is as it was afterwards: its attributes (a value estimator it made on
        first use, its cached detached parameters) and its buffers (a ``ValueNorm``'s running
        statistics, which are also put back before every enumerated run, so that each run starts
        from the same ones); the exploration type is restored. The environment was seeded, reset
        and stepped: it is left as the last enumerated rollout left it, and the next rollout resets
        it.

    Arguments:
        loss_module: a ``torchrl.objectives.ReinforceLoss``, ``A2CLoss`` or PPO loss
            (``ClipPPOLoss``, ``KLPENPPOLoss``, ``PPOLoss``), with a discrete-action actor.
        env: a torchrl environment (``EnvBase``: ``GymWrapper(gymnasium_env)``, ``GymEnv``,
            ``TransformedEnv``, ``SerialEnv``, a started ``ParallelEnv``) with discrete actions.
        max_steps: the rollout's length at most (``env.rollout(max_steps, ...)``).
        objective: ``"return"``, the undiscounted return, or ``"discounted"``, discounted by the
            value estimator's ``gamma`` from the start of each episode.
        entropy: add ``entropy_coeff`` times the entropy of the policy at the rollout's states to the
            objective when the loss has an entropy bonus; ``False`` checks against the return alone.
        bootstrap: add the critic's value of the states where the rollout stops inside an episode
            (see above): the objective a rollout that stops before its episode ends claims, the
            rest of the episode left to the critic (and the steps after it to the next rollout).
        params: ``"actor"`` (default): the actor's parameters; ``"all"``: every parameter of the
            loss module (the critic's too, whose loss then shows as bias); or the parameters
            themselves, as for :func:`~reinforce_check.check_reinforce`.
        policy: what collects the rollout (default: the loss module's actor,
            ``loss_module.actor_network``).
        advantage: a torchrl value estimator (``torchrl.objectives.value.GAE(...)``, ...) run on the
            rollout before the loss, as torchrl's PPO tutorial does; default: the loss computes the
            advantages with its own value estimator.
        break_when_any_done: passed to ``env.rollout``: stop at the first episode's end (default),
            or go on through the environment's resets up to ``max_steps``.
        seed: the seed of the environment, set before every rollout (``env.set_seed``); ``None``
            leaves it unseeded, for an environment without randomness of its own.
        options: passed to :func:`~reinforce_check.check_reinforce` (``max_sequences``, ``rtol``,
            ``raise_exception``, ...). torchrl keeps its rollouts in torch tensors, which the check
            runs in float64 with the model, so the check's own tolerances apply.

    Returns:
        The :class:`~reinforce_check.CheckReport`.

    Raises:
        IntegrationError: the loss module or the environment cannot be checked this way (the
            message says why and what to change).
        ReinforceCheckError: the expected gradient is not :math:`-\nabla J` (unless
            ``raise_exception=False``).

    >>> check_torchrl(object(), object(), max_steps=0)
    Traceback (most recent call last):
    ...
    reinforce_check.integrations.IntegrationError: max_steps must be a positive integer (the rollout's length at most), not 0.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise IntegrationError(
            f"max_steps must be a positive integer (the rollout's length at most), not {max_steps!r}."
        )
    if objective not in ("return", "discounted"):
        raise IntegrationError(f"objective must be 'return' or 'discounted', not {objective!r}.")
    _validate(loss_module, env, advantage)
    named = _parameters(loss_module, params)
    critic = _frozen_critic(loss_module) if bootstrap else None
    with _loss_kept(loss_module, advantage) as (estimator, reset):
        gamma = float(estimator.gamma) if objective == "discounted" else None
        episode = _episode(
            loss_module,
            env,
            reset=reset,
            policy=loss_module.actor_network if policy is None else policy,
            advantage=advantage,
            max_steps=max_steps,
            break_when_any_done=break_when_any_done,
            seed=seed,
            gamma=gamma,
            critic=critic,
            entropy_coeff=_entropy_coefficient(loss_module) if entropy else 0.0,
        )
        return check_reinforce(episode, named, **options)


def _validate(loss: Any, env: Any, advantage: Any) -> None:
    objectives = _import("torchrl.objectives")
    values = _import("torchrl.objectives.value")
    envs = _import("torchrl.envs")
    losses = (objectives.ReinforceLoss, objectives.A2CLoss, objectives.PPOLoss)
    if not isinstance(loss, losses):
        raise IntegrationError(
            "check_torchrl takes a torchrl ReinforceLoss, A2CLoss or PPO loss (ClipPPOLoss, KLPENPPOLoss, PPOLoss); "
            f"got {type(loss).__name__}."
        )
    if loss.reduction not in ("mean", "sum"):
        raise IntegrationError(
            f"the loss module's reduction is {loss.reduction!r}: its terms are not scalars, so there is no single "
            "loss to check. Build it with reduction='mean' (torchrl's default) or 'sum'."
        )
    if getattr(loss, "_entropy_coeff_map", None) is not None:
        raise IntegrationError(
            "the loss has one entropy coefficient per action head (a composite action); check_torchrl checks a "
            "single discrete action. Pass a single entropy_coeff, or entropy=False to check against the return alone."
        )
    if advantage is not None and not isinstance(advantage, values.ValueEstimatorBase):
        raise IntegrationError(
            "advantage must be a torchrl value estimator (GAE, TDLambdaEstimator, ...), "
            f"not {type(advantage).__name__}."
        )
    if not isinstance(env, envs.EnvBase):
        raise IntegrationError(
            "check_torchrl takes a torchrl environment (an EnvBase: GymEnv, TransformedEnv, SerialEnv, ...); "
            f"got {type(env).__name__}. Wrap a gymnasium environment in torchrl.envs.GymWrapper."
        )
    base = env
    while isinstance(base, envs.TransformedEnv):
        base = base.base_env
    if isinstance(base, envs.ParallelEnv) and base.is_closed:
        raise IntegrationError(
            "the ParallelEnv's workers are not running. Start them before the check (env.start(), or any reset): "
            "the check replays Python's random numbers identically in every enumerated run, and multiprocessing "
            "draws the names of the workers' semaphores from them. Or use SerialEnv, which runs the same "
            "environments in this process."
        )
    continuous = [key for key, spec in env.full_action_spec.items(True, True) if spec.domain != "discrete"]
    if continuous:
        raise IntegrationError(
            f"check_torchrl enumerates discrete actions; this environment's action {continuous[0]!r} is continuous "
            f"({type(env.full_action_spec[continuous[0]]).__name__}). Check a discrete-action environment."
        )
    # VecNorm and VecNormV2 say whether they update their statistics in `frozen`.
    running = [
        type(m).__name__ for m in env.modules() if isinstance(m, envs.Transform) and getattr(m, "frozen", None) is False
    ]
    if running:
        raise IntegrationError(
            f"the environment's {running[0]} updates its running statistics at every step, so they would change from "
            "one enumerated run to the next. Freeze it for the check (transform.freeze(), or check a frozen_copy())."
        )


def _frozen_critic(loss: Any) -> Callable[[Any], torch.Tensor]:
    """The critic's values of a tensordict's states, at the parameters it has now, without gradient."""
    tensordict = _import("tensordict")
    network = getattr(loss, "critic_network", None)
    if network is None:
        raise IntegrationError("bootstrap=True needs the loss's critic, and this loss has none.")
    # A copy taken now: the check's finite differences move the parameters, and shared ones move
    # with the actor's; the objective holds the critic fixed, as the value estimator does.
    frozen = tensordict.TensorDict.from_module(network).detach().clone()
    value_key = loss.tensor_keys.value

    def values(states: Any) -> torch.Tensor:
        with torch.no_grad(), frozen.to_module(network):
            return network(states.select(*network.in_keys, strict=False).copy()).get(value_key)

    return values


def _entropy_coefficient(loss: Any) -> float:
    """The coefficient of the entropy bonus in the loss (0 when it has none)."""
    if not getattr(loss, "entropy_bonus", False):
        return 0.0
    return float(loss.entropy_coeff)


def _parameters(loss: Any, params: ParameterChoice) -> Params:
    if not isinstance(params, str):
        return params
    named = dict(loss.named_parameters())  # named as torchrl's loss module lists them
    if params == "all":
        return named
    if params != "actor":
        raise IntegrationError(f"params must be 'actor', 'all' or the parameters themselves, not {params!r}.")
    actor = {id(p) for p in loss.actor_network.parameters()}
    if getattr(loss, "critic_network", None) is None:
        critic: set[int] = set()
    elif loss.functional:
        critic = {id(t) for t in loss.critic_network_params.values(True, True)}
    else:
        critic = {id(p) for p in loss.critic_network.parameters()}
    shared = [name for name, p in named.items() if id(p) in actor and id(p) in critic]
    critic_coeff = getattr(loss, "critic_coeff", 1.0)  # ReinforceLoss has none: its value loss always counts
    if shared and critic_coeff is not None and float(critic_coeff) != 0.0:
        raise IntegrationError(
            f"parameters {', '.join(shared)} feed both the actor and the critic, so the loss gives them the critic "
            "loss's gradient too, which is not part of grad J. Build the loss with separate_losses=True (torchrl "
            "then keeps the critic loss off the shared parameters), or pass params='all' (or the parameters) to "
            "see the critic loss as bias."
        )
    return {name: p for name, p in named.items() if id(p) in actor}


@contextlib.contextmanager
def _loss_kept(loss: Any, advantage: Any) -> Iterator[tuple[Any, Callable[[], None]]]:
    """Put the loss module (and ``advantage``) back as they were when the block ends.

    Yields the value estimator whose ``gamma`` the objective uses (made now, as the loss's
    ``forward`` would, when the loss has none yet) and a function that puts the modules' buffers
    back, which every enumerated run calls first.
    """
    modules = [m for m in (loss, advantage) if m is not None]
    # Shallow copies: forward caches detached parameters in loss._cache and may make the value
    # estimator; what is put back is the same objects as before the check.
    attributes = [(m, {k: copy.copy(v) if isinstance(v, dict) else v for k, v in vars(m).items()}) for m in modules]
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def reset() -> None:
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)

    try:
        estimator = advantage if advantage is not None else loss.value_estimator
        buffers.extend((b, b.detach().clone()) for m in modules for b in m.buffers())
        yield estimator, reset
    finally:
        reset()
        for module, saved in attributes:
            vars(module).clear()
            vars(module).update(saved)


def _episode(
    loss: Any,
    env: Any,
    *,
    reset: Callable[[], None],
    policy: Any,
    advantage: Any,
    max_steps: int,
    break_when_any_done: bool,
    seed: int | None,
    gamma: float | None,
    critic: Callable[[Any], torch.Tensor] | None,
    entropy_coeff: float,
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    envs_utils = _import("torchrl.envs.utils")
    reward_key = _next(loss.tensor_keys.reward)
    done_key = _next(loss.tensor_keys.done)
    terminated_key = _next(loss.tensor_keys.terminated)

    # Only the policy's draws are decisions: marked, its sampling under no_grad records its graph
    # during the check, so autograd gives the exact grad J; the environment's draws are replayed.
    @enumerate_actions
    def act(tensordict: Any) -> Any:
        return policy(tensordict)

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        reset()
        with torch.no_grad(), envs_utils.set_exploration_type(envs_utils.ExplorationType.RANDOM):
            if seed is not None:
                env.set_seed(seed)
            rollout = env.rollout(max_steps, act, break_when_any_done=break_when_any_done, trust_policy=True)
        if advantage is not None:
            advantage(rollout)
        terms = loss(rollout)
        total = sum(terms.get(key) for key in terms.keys() if isinstance(key, str) and key.startswith("loss_"))
        samples = rollout.numel() if loss.reduction == "mean" else 1
        time = rollout.ndim - 1  # env.rollout stacks the steps along the last batch dimension
        rewards = rollout.get(reward_key).detach()
        dones = rollout.get(done_key)
        if critic is not None:
            last = torch.zeros_like(dones)
            last.select(time, -1).fill_(True)
            # Where the value estimator bootstraps: a truncated step, and the rollout's end inside an episode.
            stops = (dones & ~rollout.get(terminated_key)) | (last & ~dones)
            values = critic(rollout.get("next")).reshape(rewards.shape)
            rewards = rewards + (1.0 if gamma is None else gamma) * values * stops
        rewards, dones = rewards.movedim(time, 0), dones.movedim(time, 0)
        value = torch.tensor(
            rollout_return(list(rewards.cpu().numpy()), list(dones.cpu().numpy()), gamma) / samples,
            dtype=torch.get_default_dtype(),
        )
        if entropy_coeff != 0.0:
            in_keys = loss.actor_network.in_keys
            dist = loss.actor_network.get_dist(rollout.select(*in_keys, strict=False).copy())
            value = value + entropy_coeff * dist.entropy().sum() / samples
        return value, total

    return episode


def _next(key: str | Sequence[str]) -> tuple[str, ...]:
    return ("next", key) if isinstance(key, str) else ("next", *key)
