"""The presets carry the paper's and the authors' values; files and overrides change any field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlntm_demo.config import TrainConfig
from rlntm_demo.presets import config_from_dict, make_config
from rlntm_demo.tasks import TASKS


def test_paper_preset_has_the_papers_values() -> None:
    config = make_config("reverse", "direct", "paper")
    assert (config.optimizer.name, config.optimizer.learning_rate, config.optimizer.momentum) == ("sgd", 0.05, 0.9)
    assert config.batch_size == 200 and config.rollouts_per_input == 1
    assert (config.optimizer.clip_controller, config.optimizer.clip_baseline) == (5.0, 2.0)
    model = config.model
    assert (model.init_std, model.inverse_temperature, model.memory_width, model.initial_state) == (0.1, 0.01, 35, 0.0)
    assert model.baseline == "both"
    assert config.curriculum.probabilities == (0.10, 0.25, 0.65)
    assert (config.curriculum.threshold, config.curriculum.min_updates_between) == (0.2, 100)


def test_authors_preset_has_their_scripts_values() -> None:
    forward_reverse = make_config("forward-reverse", "direct", "authors")
    assert forward_reverse.batch_size == 300
    assert (forward_reverse.optimizer.clip_controller, forward_reverse.optimizer.clip_baseline) == (2.0, 5.0)
    assert forward_reverse.model.initial_state == 0.1
    assert forward_reverse.curriculum.threshold == 0.25 and forward_reverse.model.inverse_temperature == 0.01
    repeat_copy = make_config("repeat-copy", "direct", "authors")
    assert repeat_copy.curriculum.threshold == 0.2 and repeat_copy.model.inverse_temperature == 0.03
    assert repeat_copy.curriculum.probabilities == (0.10, 0.225, 0.675) and repeat_copy.curriculum.smoothing == 0.8


def test_the_authors_preset_has_their_direct_access_and_runs_it_on_the_fast_step() -> None:
    from rlntm_demo.controllers import WindowedDirectAccessController
    from rlntm_demo.model import RLNTM

    config = make_config("copy", "direct", "authors")
    assert (config.model.direct_access, config.model.step_impl, config.model.read_window) == ("authors", "fast", 2)
    assert isinstance(RLNTM(config.model).controller, WindowedDirectAccessController)
    paper_gates = make_config("copy", "direct", "authors", overrides=["model.direct_access=paper"])
    assert not isinstance(RLNTM(paper_gates.model).controller, WindowedDirectAccessController)


def test_fast_preset_uses_several_rollouts_and_adam() -> None:
    config = make_config("copy", "lstm", "fast")
    assert config.optimizer.name == "adam" and config.rollouts_per_input == 8
    assert config.batch_size % config.rollouts_per_input == 0 and config.model.baseline == "none"


@pytest.mark.parametrize("task", list(TASKS))
def test_the_curriculum_tops_out_at_the_tasks_training_length(task: str) -> None:
    config = make_config(task, "direct", "paper")
    assert config.curriculum.max_level == TASKS[task].training_complexity
    assert config.model.interfaces == TASKS[task].interfaces and config.model.controller == "direct"


def test_file_then_overrides_then_round_trip(tmp_path: Path) -> None:
    json_file = tmp_path / "settings.json"
    json_file.write_text(json.dumps({"optimizer": {"learning_rate": 0.2}, "model": {"hidden_size": 40}}))
    config = make_config("copy", "direct", "paper", file=json_file, overrides=["optimizer.learning_rate=0.3", "model.baseline=none"])
    assert config.optimizer.learning_rate == 0.3  # the override wins over the file
    assert config.model.hidden_size == 40 and config.model.baseline == "none"
    assert config.optimizer.momentum == 0.9  # untouched fields keep the preset's value
    again = config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config

    toml_file = tmp_path / "settings.toml"
    toml_file.write_text('seed = 7\n[evaluation]\nmultipliers = [1, 3]\n')
    config = make_config("copy", "direct", "fast", file=toml_file)
    assert config.seed == 7 and config.evaluation.multipliers == (1, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "multiply"}, "unknown task 'multiply'; choose one of: copy,"),
        ({"controller": "gru"}, "unknown controller 'gru'; choose one of: lstm, direct, feedforward"),
        ({"preset": "slow"}, "unknown preset 'slow'; choose one of: paper, authors, fast"),
        ({"overrides": ["model.colour=1"]}, "unknown setting 'model.colour'; model has: controller,"),
        ({"overrides": ["batch_size=12"]}, r"batch_size \(12\) must be a multiple of rollouts_per_input \(8\)"),
        ({"overrides": ["optimizer.learning_rate=-1"]}, "learning_rate must be a positive number"),
        ({"overrides": ["seed"]}, "an override must look like section.field=value"),
        ({"file": "missing.json"}, "config file 'missing.json' does not exist"),
    ],
)
def test_bad_settings_are_refused_with_what_to_change(kwargs: dict, message: str) -> None:
    arguments = {"task": "copy", "controller": "direct", "preset": "fast", **kwargs}
    with pytest.raises(ValueError, match=message):
        make_config(arguments.pop("task"), arguments.pop("controller"), arguments.pop("preset"), **arguments)


def test_a_file_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 1\n")
    with pytest.raises(ValueError, match="does not parse"):
        make_config("copy", "direct", "paper", file=bad)


def test_train_config_takes_controller_and_interfaces_from_its_own_fields() -> None:
    config = TrainConfig(task="forward-reverse", controller="lstm")
    assert config.model.controller == "lstm" and config.model.interfaces.forward_only_input


def test_issue_19_options_in_the_presets() -> None:
    """The paper's preset keeps the paper's model and curriculum signal; the authors' counts only the
    C + e examples (smoothed 0.8); the fast preset gets the scaled direct-access shortcut, the
    marked input start, no adjacent-memory gates and 1,000 updates after solving."""
    paper = make_config("repeat-copy", "direct", "paper")
    assert paper.model.shortcut_scale is None and paper.model.adjacent_memory == "open"
    assert not paper.model.input_start_marker
    assert (paper.curriculum.error, paper.curriculum.smoothing) == ("batch", 0.0)
    assert paper.objective.entropy_bonus == 0.0
    authors = make_config("forward-reverse", "direct", "authors")
    assert (authors.curriculum.error, authors.curriculum.smoothing, authors.curriculum.threshold) == ("authors", 0.8, 0.25)
    assert authors.model.shortcut_scale is None and authors.model.adjacent_memory == "off"
    fast = make_config("reverse", "direct", "fast")
    assert fast.model.shortcut_scale == 5.0 and fast.model.input_start_marker and fast.model.adjacent_memory == "off"
    assert (fast.updates_after_solved, paper.updates_after_solved, authors.updates_after_solved) == (3000, 0, 0)
    assert (fast.objective.entropy_mode, fast.curriculum.error) == ("returns", "batch")


def test_the_authors_preset_always_has_memory_and_the_papers_follows_table_2() -> None:
    authors = make_config("repeat-copy", "direct", "authors")
    assert authors.memory is True and authors.model.interfaces.memory
    assert not authors.model.interfaces.forward_only_input
    paper = make_config("repeat-copy", "direct", "paper")
    assert paper.memory is None and not paper.model.interfaces.memory
    assert make_config("forward-reverse", "direct", "paper").model.interfaces.memory
    # The round trip through a checkpoint's plain values keeps the added tape.
    assert config_from_dict(authors.to_dict()).model.interfaces.memory


def test_the_authors_repeat_copy_runs_m_2_first_over_16_levels() -> None:
    import torch

    config = make_config("repeat-copy", "direct", "authors")
    assert config.repeat_schedule == "two-then-three" and config.curriculum.max_level == 16
    task = config.task_instance()
    generator = torch.Generator().manual_seed(0)
    first_cells = {c: {int(task.sample(c, 20, generator).input[i, 0]) for i in range(20)} for c in (1, 8, 9, 16)}
    from rlntm_demo.config import REPEAT_2, REPEAT_3

    assert first_cells == {1: {REPEAT_2}, 8: {REPEAT_2}, 9: {REPEAT_3}, 16: {REPEAT_3}}
    assert make_config("forward-reverse", "direct", "authors").repeat_schedule is None
    assert make_config("repeat-copy", "direct", "paper").repeat_schedule is None
    with pytest.raises(ValueError, match="repeat_schedule applies to the RepeatCopy tasks only"):
        make_config("reverse", "direct", "paper", overrides=['repeat_schedule="two-then-three"'])
    with pytest.raises(ValueError, match="unknown schedule 'sometimes'"):
        make_config("repeat-copy", "direct", "paper", overrides=['repeat_schedule="sometimes"'])
