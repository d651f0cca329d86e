"""Stable-Baselines3: check A2C's and PPO's first gradient step, on the model itself.

:func:`check_sb3` takes an ``A2C`` or ``PPO`` model with a discrete action space and checks, exactly,
the gradient of SB3's own loss at the model's parameters: one episode of the check is one call of
``collect_rollouts`` (the environment seeded first, so that every enumerated run starts from the
same state) and SB3's own ``train()`` up to its first ``loss.backward()``, taken with
:func:`~reinforce_check.capture_loss`. The check enumerates every action the policy can take
during the rollout, and compares the expected gradient of SB3's loss with minus the gradient of
the objective SB3's loss claims: the return collected in the rollout, undiscounted or discounted
by the model's ``gamma``, divided by the number of samples the loss averages over
(``n_steps * n_envs``), plus ``ent_coef`` times the policy's mean entropy over the rollout.

Stable-Baselines3 and gymnasium are imported when :func:`check_sb3` is called, not before.
"""

from __future__ import annotations

import contextlib
import copy
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch

from ..check import Params, check_reinforce
from ..handlers import enumerate_actions
from ..report import CheckReport
from ..training_step import capture_loss
from . import IntegrationError, ParameterChoice, import_library, rollout_return

__all__ = ["check_sb3"]

Objective = Literal["return", "discounted"]
Minibatches = Literal["first", "epoch"]

_MISSING = object()
# What collect_rollouts and train() change on the model, put back after the check.
_MODEL_STATE = (
    "num_timesteps",
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "ep_info_buffer",
    "ep_success_buffer",
    "_n_updates",
    "_current_progress_remaining",
)


def _import(module: str) -> Any:
    return import_library(module, adapter="check_sb3", library="Stable-Baselines3")


def check_sb3(
    model: Any,
    *,
    objective: Objective = "return",
    entropy: bool = True,
    params: ParameterChoice = "actor",
    minibatches: Minibatches = "first",
    seed: int = 0,
    **options: Any,
) -> CheckReport:
    r"""Check a Stable-Baselines3 A2C or PPO model's first gradient step against the objective it claims.

    One episode of the check seeds the model's environment with ``seed``, resets it, collects one
    rollout of ``n_steps`` steps per environment with SB3's own ``collect_rollouts``, and runs SB3's
    own ``train()`` up to its first backward call, whose loss is the episode's loss
    (:func:`~reinforce_check.capture_loss`: nothing is stepped). Every action the policy can take in
    the rollout is enumerated; everything else (PPO's minibatch shuffle, the environment's own
    randomness) is replayed identically for every sequence. With :math:`N` = ``n_steps * n_envs``
    the samples SB3's loss averages over, the objective is

    .. math:: J = \frac{1}{N}\,\mathbb{E}\Bigl[\sum_t c_t\, r_t
              + \mathtt{ent\_coef} \sum_t H\bigl(\pi(\cdot \mid s_t)\bigr)\Bigr]

    over the rollout's steps :math:`t` and environments, with :math:`c_t = 1` (``objective="return"``)
    or :math:`c_t = \gamma^k`, :math:`k` the steps since the episode began (``"discounted"``, with
    the model's ``gamma``); the entropy term is there when ``entropy`` is true and ``ent_coef`` is
    not 0.

    SB3's estimator is unbiased for this objective when the rollout covers whole episodes (each
    environment's last step ends an episode, so nothing is bootstrapped from the value function),
    ``gamma=1`` with ``objective="return"``, ``gae_lambda=1``, ``normalize_advantage=False``,
    ``ent_coef=0``, and, for PPO, one minibatch (``batch_size = n_steps * n_envs``) or
    ``minibatches="epoch"``. The value function is a baseline of the state only, so it leaves the
    estimator unbiased; its own loss (``vf_coef``) trains other parameters, which the default
    ``params="actor"`` leaves out. Anything else is reported with the exact size of its bias
    (:func:`~reinforce_check.integrations.relative_bias`): the check is not a verdict on the
    algorithm, it measures how far its expected step departs from the gradient of the objective.

    .. note::
        The model's own state is put back afterwards: its optimizer (SB3's ``train()`` sets the
        learning rate before its backward), rollout buffer, counters, episode-info buffers, logger
        values and training mode. The environment was reset and stepped, so ``model._last_obs`` is
        left ``None``: the next ``learn()`` resets it.

    Arguments:
        model: a ``stable_baselines3.A2C`` or ``PPO`` (or another on-policy algorithm whose
            ``train()`` calls ``loss.backward()``) with a ``Discrete`` action space, a non-dict
            observation space and an environment.
        objective: ``"return"``, the undiscounted return, or ``"discounted"``, discounted by the
            model's ``gamma`` from the start of each episode.
        entropy: add ``ent_coef`` times the entropy of the policy at the rollout's states to the
            objective (SB3 adds ``-ent_coef * mean entropy`` to its loss); ``False`` checks against the
            return alone.
        params: ``"actor"`` (default): the parameters the action distribution depends on and the
            value function does not (all of those the action distribution depends on when
            ``vf_coef`` is 0); ``"all"``: every parameter of the policy; or the parameters
            themselves, as for :func:`~reinforce_check.check_reinforce`.
        minibatches: ``"first"``: the loss of SB3's first backward call (PPO's first minibatch of
            its first epoch); ``"epoch"``: every minibatch of PPO's first epoch, at the starting
            parameters, weighted by its share of the samples (the full-batch loss, whatever the
            shuffle). A2C makes one backward call either way.
        seed: the seed of the environment's reset at the start of every episode.
        options: passed to :func:`~reinforce_check.check_reinforce` (``max_sequences``,
            ``raise_exception``, ...). The tolerances default to ``rtol=1e-5, atol=1e-8``, not the
            check's ``1e-6, 1e-9``: SB3's rollout buffer stores rewards, values, log-probabilities,
            advantages and returns as float32 numpy arrays whatever the policy's dtype, so its
            estimator is rounded to float32 before the loss sees it (a relative error of a few
            ``1e-8`` in the unbiased settings).

    Returns:
        The :class:`~reinforce_check.CheckReport`.

    Raises:
        IntegrationError: the model cannot be checked this way (the message says why).
        ReinforceCheckError: the expected gradient is not :math:`-\nabla J` (unless
            ``raise_exception=False``).

    >>> check_sb3(object())
    Traceback (most recent call last):
    ...
    reinforce_check.integrations.IntegrationError: check_sb3 takes a Stable-Baselines3 on-policy model (A2C, PPO); got object.
    """
    _import("stable_baselines3")
    _validate(model, objective=objective, minibatches=minibatches)
    named = _parameters(model, params)
    options.setdefault("rtol", 1e-5)
    options.setdefault("atol", 1e-8)
    with _model_state_kept(model) as recorder:
        episode = _episode(model, recorder, objective=objective, entropy=entropy, minibatches=minibatches, seed=seed)
        return check_reinforce(episode, named, **options)


def _validate(model: Any, *, objective: str, minibatches: str) -> None:
    on_policy = _import("stable_baselines3.common.on_policy_algorithm")
    spaces = _import("gymnasium.spaces")
    vec_env = _import("stable_baselines3.common.vec_env")
    if not isinstance(model, on_policy.OnPolicyAlgorithm):
        raise IntegrationError(
            f"check_sb3 takes a Stable-Baselines3 on-policy model (A2C, PPO); got {type(model).__name__}."
        )
    if objective not in ("return", "discounted"):
        raise IntegrationError(f"objective must be 'return' or 'discounted', not {objective!r}.")
    if minibatches not in ("first", "epoch"):
        raise IntegrationError(f"minibatches must be 'first' or 'epoch', not {minibatches!r}.")
    if not isinstance(model.action_space, spaces.Discrete):
        raise IntegrationError(
            f"check_sb3 checks discrete-action policies; this model's action space is {model.action_space}."
        )
    if isinstance(model.observation_space, spaces.Dict):
        raise IntegrationError("check_sb3 does not support dict observation spaces (MultiInputPolicy) yet.")
    if model.env is None:
        raise IntegrationError("the model has no environment: pass env= when constructing it, or model.set_env(env).")
    normalizer = vec_env.unwrap_vec_normalize(model.env)
    if normalizer is not None and normalizer.training:
        raise IntegrationError(
            "the environment is wrapped in VecNormalize with training=True: its running statistics would change "
            "from one enumerated run to the next. Set env.training = False (and norm_reward as you train) for the check."
        )


def _parameters(model: Any, params: ParameterChoice) -> Params:
    policy = model.policy
    if not isinstance(params, str):
        return params
    named = list(policy.named_parameters())
    if params == "all":
        return dict(named)
    if params != "actor":
        raise IntegrationError(f"params must be 'actor', 'all' or the parameters themselves, not {params!r}.")
    space = model.observation_space
    observation = torch.as_tensor(np.zeros((1, *space.shape), dtype=space.dtype))  # any observation will do
    tensors = [p for _, p in named]
    with torch.enable_grad():
        logits = policy.get_distribution(observation).distribution.logits
        values = policy.predict_values(observation)
        actor = torch.autograd.grad(logits.sum(), tensors, allow_unused=True)
        critic = torch.autograd.grad(values.sum(), tensors, allow_unused=True)
    shared = [n for (n, _), a, c in zip(named, actor, critic) if a is not None and c is not None]
    if shared and model.vf_coef != 0:
        raise IntegrationError(
            f"parameters {', '.join(shared)} feed both the action distribution and the value function, so SB3's "
            "loss gives them the value loss's gradient too, which is not part of grad J. Build the model with "
            "vf_coef=0 for the check, or pass params='all' (or the parameters) to see the value loss as bias."
        )
    return {n: p for (n, p), a, c in zip(named, actor, critic) if a is not None and (c is None or model.vf_coef == 0)}


@contextlib.contextmanager
def _model_state_kept(model: Any) -> Iterator[Any]:
    """Prepare the model for collect_rollouts outside learn(), and put its state back afterwards.

    Yields the callback that records the rewards and dones of each step.
    """
    callbacks = _import("stable_baselines3.common.callbacks")
    logger_module = _import("stable_baselines3.common.logger")
    policy = model.policy
    saved = {name: getattr(model, name, _MISSING) for name in _MODEL_STATE}
    had_logger = "_logger" in vars(model)
    logged = (
        (dict(model._logger.name_to_value), dict(model._logger.name_to_count), dict(model._logger.name_to_excluded))
        if had_logger
        else None
    )
    buffer = model.rollout_buffer
    buffer_state = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in vars(buffer).items()}
    optimizer_state = copy.deepcopy(policy.optimizer.state_dict())
    training = policy.training
    own_forward = vars(policy).get("forward", _MISSING)

    class Recorder(callbacks.BaseCallback):  # type: ignore[misc, name-defined]
        """Records the rewards and dones the environment returned at each step of the rollout."""

        def __init__(self) -> None:
            super().__init__()
            self.rewards: list[np.ndarray] = []
            self.dones: list[np.ndarray] = []

        def _on_step(self) -> bool:
            self.rewards.append(np.array(self.locals["rewards"], dtype=np.float64))
            self.dones.append(np.array(self.locals["dones"], dtype=bool))
            return True

    try:
        if not had_logger:
            model._logger = logger_module.Logger(folder=None, output_formats=[])
        model.ep_info_buffer = deque(maxlen=model._stats_window_size)
        model.ep_success_buffer = deque(maxlen=model._stats_window_size)
        # Marked, SB3's sampling under no_grad records its graph during the check: autograd decides.
        policy.forward = enumerate_actions(policy.forward)
        recorder = Recorder()
        recorder.init_callback(model)
        yield recorder
    finally:
        if own_forward is _MISSING:
            vars(policy).pop("forward", None)
        else:
            policy.forward = own_forward
        policy.set_training_mode(training)
        policy.optimizer.load_state_dict(optimizer_state)
        model.rollout_buffer = buffer
        vars(buffer).clear()
        vars(buffer).update(buffer_state)
        for name, value in saved.items():
            if value is _MISSING:
                vars(model).pop(name, None)
            else:
                setattr(model, name, value)
        # The environment was reset and stepped: the next learn() must reset it again.
        model._last_obs = None
        if had_logger:
            assert logged is not None
            for store, values in zip(
                (model._logger.name_to_value, model._logger.name_to_count, model._logger.name_to_excluded), logged
            ):
                store.clear()
                store.update(values)
        else:
            vars(model).pop("_logger", None)


def _minibatch_weights(model: Any, samples: int, minibatches: str) -> list[float]:
    """How the first backward calls of train() combine into the episode's loss."""
    batch_size = getattr(model, "batch_size", None)
    if minibatches == "first" or batch_size is None:
        return [1.0]
    sizes = [min(batch_size, samples - start) for start in range(0, samples, batch_size)]
    return [size / samples for size in sizes]


def _episode(
    model: Any, recorder: Any, *, objective: str, entropy: bool, minibatches: str, seed: int
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    env = model.env
    samples = model.n_steps * env.num_envs
    weights = _minibatch_weights(model, samples, minibatches)
    gamma = model.gamma if objective == "discounted" else None
    ent_coef = float(model.ent_coef) if entropy else 0.0

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        recorder.rewards.clear()
        recorder.dones.clear()
        env.seed(seed)
        model._last_obs = env.reset()
        model._last_episode_starts = np.ones((env.num_envs,), dtype=bool)
        model.collect_rollouts(env, recorder, model.rollout_buffer, n_rollout_steps=model.n_steps)
        value: torch.Tensor = torch.tensor(
            rollout_return(recorder.rewards, recorder.dones, gamma) / samples, dtype=torch.get_default_dtype()
        )
        if ent_coef != 0.0:
            observations = model.rollout_buffer.observations
            states = torch.as_tensor(observations.reshape(samples, *observations.shape[2:]))
            entropies = model.policy.get_distribution(states).entropy()
            value = value + ent_coef * entropies.sum() / samples
        with capture_loss(stop_after=len(weights)) as step:
            model.train()
        losses = step.losses
        if len(losses) < len(weights):
            raise IntegrationError(
                f"SB3's train() made {len(losses)} backward call(s) where {len(weights)} minibatches were expected "
                "(an early stop on target_kl?)."
            )
        loss = losses[0] if len(weights) == 1 else sum(w * l for w, l in zip(weights, losses))
        return value, loss

    return episode
