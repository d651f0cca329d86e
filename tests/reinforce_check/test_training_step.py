"""capture_loss / step_loss: a library's training step, run up to its backward and not stepped.

The end-to-end tests check a small trainer, written the way libraries write theirs (the loss built
inside ``train()``, then ``zero_grad``, ``backward``, clipping, ``step`` and a scheduler), with
``check_reinforce``: a correct estimator passes and a biased one fails, both at the check's
default tolerances (``rtol=1e-6, atol=1e-9``). The other tests pin what the capture leaves alone.
"""

from __future__ import annotations

import pytest
import torch

from reinforce_check import (
    CheckUsageError,
    TrainingStepError,
    capture_loss,
    check_reinforce,
    step_loss,
)
from reinforce_check.training_step import BackwardCall

PAYOFF = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.5, -1.0]], dtype=torch.float64)


class Trainer:
    """A two-step bandit trainer in the libraries' style: it samples, builds its loss and steps."""

    def __init__(self, *, baseline_uses_action: bool = False) -> None:
        generator = torch.Generator().manual_seed(0)
        self.logits = torch.randn(2, 3, generator=generator, dtype=torch.float64).requires_grad_()
        self.optimizer = torch.optim.Adam([self.logits], lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)
        self.updates = 0
        self.baseline_uses_action = baseline_uses_action
        self.log_probs: list[torch.Tensor] = []
        self.rewards: list[torch.Tensor] = []

    def rollout(self) -> torch.Tensor:
        self.log_probs, self.rewards = [], []
        for step in range(2):
            dist = torch.distributions.Categorical(logits=self.logits[step])
            action = dist.sample()
            self.log_probs.append(dist.log_prob(action))
            self.rewards.append(PAYOFF[step, action])
        return torch.stack(self.rewards).sum()

    def train(self) -> None:
        to_go = torch.stack(self.rewards).flip(0).cumsum(0).flip(0)
        baseline = 0.5 * to_go if self.baseline_uses_action else torch.zeros_like(to_go)
        loss = -(torch.stack(self.log_probs) * (to_go - baseline)).sum()
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([self.logits], 0.5)
        self.optimizer.step()
        self.scheduler.step()
        self.updates += 1


def test_a_trainers_own_step_is_checked_and_its_state_is_left_alone() -> None:
    trainer = Trainer()
    before = trainer.logits.detach().clone()

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        total = trainer.rollout()
        return total, step_loss(trainer.train)

    report = check_reinforce(episode, {"logits": trainer.logits}, rtol=1e-6, atol=1e-9)
    assert report.ok and report.num_sequences == 9
    assert trainer.updates == 0
    assert trainer.optimizer.state == {} and trainer.optimizer.param_groups[0]["lr"] == 0.1
    assert trainer.scheduler.last_epoch == 0
    assert trainer.logits.grad is None and torch.equal(trainer.logits.detach(), before)


def test_a_biased_step_fails() -> None:
    trainer = Trainer(baseline_uses_action=True)

    def episode() -> tuple[torch.Tensor, torch.Tensor]:
        total = trainer.rollout()
        return total, step_loss(trainer.train)

    report = check_reinforce(episode, {"logits": trainer.logits}, rtol=1e-6, atol=1e-9, raise_exception=False)
    assert not report.ok
    assert report.max_rel_error == pytest.approx(0.5, rel=1e-9)  # a baseline of half the return halves the gradient


def test_the_step_stops_after_its_first_backward() -> None:
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    reached = []
    with capture_loss() as step:
        loss = (w**2).sum()
        loss.backward()
        reached.append("after backward")
    assert reached == [] and step.stopped
    assert step.loss is loss and w.grad is None


def test_the_step_cannot_swallow_the_stop_with_except_exception() -> None:
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def train() -> None:
        try:
            (w * w).backward()
        except Exception:  # a library's broad handler
            pytest.fail("the stop was caught as an Exception")

    assert step_loss(train).item() == 4.0


def test_every_loss_is_recorded_at_the_starting_parameters_when_the_step_runs_on() -> None:
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    w.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    optimizer = torch.optim.SGD([w], lr=0.5, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.1)
    with capture_loss(stop_after=None) as step:
        for target in (0.0, 1.0, 2.0):
            optimizer.zero_grad()
            ((w - target) ** 2).sum().backward()
            norm = torch.nn.utils.clip_grad_norm_([w], 1.0)
            torch.nn.utils.clip_grad_value_([w], 0.1)
            optimizer.step()
            scheduler.step()
    assert not step.stopped
    assert [loss.item() for loss in step.losses] == [5.0, 1.0, 1.0]
    assert float(norm) == 0.0
    assert w.tolist() == [1.0, 2.0] and w.grad.tolist() == [3.0, 4.0]  # zero_grad and clipping did nothing
    assert optimizer.state == {} and scheduler.last_epoch == 0 and optimizer.param_groups[0]["lr"] == 0.5


def test_stop_after_k_records_k_and_stops() -> None:
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    calls = []
    with capture_loss(stop_after=2) as step:
        for k in range(5):
            calls.append(k)
            (w * k).backward()
    assert calls == [0, 1] and step.stopped and len(step.calls) == 2
    assert step_loss(lambda: [(w * k).backward() for k in range(5)], which=3).item() == 3.0


def test_one_graph_differentiated_twice_without_retain_graph_is_recorded_twice() -> None:
    w = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    with capture_loss(stop_after=None) as step:
        loss = w.exp()
        loss.backward()
        loss.backward()  # torch would refuse: the graph was freed. Here backward never ran.
    assert len(step.losses) == 2
    (gradient,) = torch.autograd.grad(step.losses[1], w)
    assert gradient.item() == pytest.approx(torch.tensor(3.0).exp().item())


def test_autograd_backward_and_gradient_arguments_give_an_equivalent_scalar() -> None:
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([10.0, 100.0], dtype=torch.float64)
    with capture_loss(stop_after=None) as step:
        torch.autograd.backward([w * 2, w.sum()], grad_tensors=[weights, torch.tensor(1.0, dtype=torch.float64)])
        (w * 3).backward(gradient=weights, retain_graph=True, inputs=[w])
    first, second = step.calls
    assert first.loss.item() == 2 * (10 + 200) + 3
    assert second.loss.item() == 3 * (10 + 200) and second.retain_graph is True and second.inputs == [w]


def test_a_non_scalar_without_gradient_is_refused_when_its_loss_is_asked_for() -> None:
    call = BackwardCall(tensors=(torch.ones(3, dtype=torch.float64),))
    with pytest.raises(TrainingStepError, match="shape"):
        call.loss


def test_a_grad_scaler_sees_its_loss_unscaled_and_keeps_its_scale() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    w = torch.tensor(2.0, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1)
    with capture_loss(stop_after=None) as step:
        scaler.scale(w * w).backward()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    assert step.loss.item() == 4.0
    assert scaler.get_scale() == 1024.0 and w.item() == 2.0


def test_restore_puts_back_what_the_step_changed_before_its_backward() -> None:
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=0.1)

    def train() -> None:
        for group in optimizer.param_groups:
            group["lr"] = 0.01  # SB3's train() sets the learning rate before its backward
        (w * w).backward()

    step_loss(train, restore=[optimizer])
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_no_backward_call_is_a_usage_error() -> None:
    with capture_loss() as step:
        pass
    assert not step.stopped and step.calls == []
    with pytest.raises(TrainingStepError, match="no backward call"):
        step.loss
    with pytest.raises(CheckUsageError, match="no backward call"):
        step_loss(lambda: None)
    w = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(TrainingStepError, match="1 backward call"):
        step_loss(lambda: (w * 2).backward(), which=1)


@pytest.mark.parametrize("options", [{"stop_after": 0}, {"stop_after": 1.5}])
def test_invalid_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(TrainingStepError, match="stop_after"):
        capture_loss(**options)  # type: ignore[arg-type]
    with pytest.raises(TrainingStepError, match="which"):
        step_loss(lambda: None, which=-1)


def test_captures_do_not_nest() -> None:
    with capture_loss():
        with pytest.raises(TrainingStepError, match="already active"):
            with capture_loss():
                pass


def patched_attributes() -> dict[str, object]:
    """What the capture replaces, as it stands now."""
    return {
        "Tensor.backward": torch.Tensor.backward,
        "autograd.backward": torch.autograd.backward,
        "Adam.step": vars(torch.optim.Adam)["step"],
        "Optimizer.zero_grad": vars(torch.optim.Optimizer)["zero_grad"],
        "Module.zero_grad": torch.nn.Module.zero_grad,
        "clip_grad_norm_": torch.nn.utils.clip_grad_norm_,
        "GradScaler.scale": torch.amp.GradScaler.scale,
    }


def test_everything_is_restored_after_an_exception_and_backward_works_again() -> None:
    originals = patched_attributes()
    with pytest.raises(ValueError, match="the step failed"):
        with capture_loss():
            raise ValueError("the step failed")
    assert patched_attributes() == originals
    w = torch.tensor(3.0, requires_grad=True)
    (w * w).backward()
    assert w.grad is not None and w.grad.item() == 6.0
    with capture_loss():  # a new capture can start: the first one let go
        pass
