"""mer.train.steps.lr_schedule: torch's LinearLR + CosineAnnealingLR in SequentialLR, stepped per optimisation step,
checkpointed with the run; a resumed schedule continues exactly, an extended one ends at the new last epoch."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mer.config import MerConfig
from mer.errors import ConfigError
from mer.train.steps import lr_schedule

STEPS = 10  # per epoch


def optimizer_and_schedule(epochs: int, steps_per_epoch: int = STEPS):
    training = dataclasses.replace(MerConfig().training, epochs=epochs)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=training.learning_rate)
    return training, optimizer, lr_schedule(optimizer, training, steps_per_epoch=steps_per_epoch)


def run(optimizer: torch.optim.Optimizer, schedule, steps: int) -> list[float]:
    """The rate each of ``steps`` optimisation steps uses."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.scheduler.step()
    return rates


def test_the_rate_warms_up_over_the_first_epoch_then_falls_along_a_cosine_to_five_percent() -> None:
    training, optimizer, schedule = optimizer_and_schedule(epochs=6)
    peak = training.learning_rate
    rates = run(optimizer, schedule, 6 * STEPS)

    assert rates[0] == pytest.approx(0.1 * peak)  # the first step: 10 % of the peak
    assert all(a < b for a, b in zip(rates[:STEPS], rates[1:STEPS + 1]))  # warm-up rises ...
    assert rates[STEPS] == pytest.approx(peak) and max(rates) == pytest.approx(peak)  # ... to the peak at epoch 1
    assert all(a > b for a, b in zip(rates[STEPS:], rates[STEPS + 1:]))  # then only falls
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * peak)  # 5 % once the last epoch is done
    middle = STEPS + (5 * STEPS) // 2  # halfway along the cosine: halfway between the peak and its end
    assert rates[middle] == pytest.approx(0.05 * peak + 0.5 * 0.95 * peak)


def test_a_restored_schedule_continues_exactly_where_the_checkpoint_left_it() -> None:
    _, optimizer, schedule = optimizer_and_schedule(epochs=4)
    straight = run(optimizer, schedule, 4 * STEPS)

    _, first, schedule = optimizer_and_schedule(epochs=4)
    before = run(first, schedule, 2 * STEPS)
    saved = {"optimizer": first.state_dict(), "schedule": schedule.state_dict()}
    _, second, resumed = optimizer_and_schedule(epochs=4)  # a fresh process builds both anew, then loads them
    second.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["schedule"])
    assert before + run(second, resumed, 2 * STEPS) == pytest.approx(straight, rel=1e-12)


def test_raising_epochs_stretches_the_rest_of_the_cosine_to_the_new_end() -> None:
    training, first, schedule = optimizer_and_schedule(epochs=2)
    run(first, schedule, 2 * STEPS)
    peak = training.learning_rate
    assert first.param_groups[0]["lr"] == pytest.approx(0.05 * peak)  # the 2-epoch run is finished

    _, second, extended = optimizer_and_schedule(epochs=4)
    second.load_state_dict(first.state_dict())
    extended.load_state_dict(schedule.state_dict())
    rates = run(second, extended, 2 * STEPS)
    _, reference, straight = optimizer_and_schedule(epochs=4)  # where a 4-epoch run stands after 2 epochs
    assert rates == pytest.approx(run(reference, straight, 4 * STEPS)[2 * STEPS:], rel=1e-9)
    assert second.param_groups[0]["lr"] == pytest.approx(0.05 * peak)


def test_a_schedule_of_another_epoch_length_is_refused() -> None:
    _, optimizer, schedule = optimizer_and_schedule(epochs=2, steps_per_epoch=STEPS)
    run(optimizer, schedule, STEPS)
    _, _, other = optimizer_and_schedule(epochs=2, steps_per_epoch=STEPS + 1)
    with pytest.raises(ConfigError, match="steps per epoch"):
        other.load_state_dict(schedule.state_dict())


def test_a_schedule_advanced_without_training_sets_the_rates_training_would_have_used() -> None:
    _, optimizer, schedule = optimizer_and_schedule(epochs=3)
    straight = run(optimizer, schedule, 3 * STEPS)
    _, fresh, advanced = optimizer_and_schedule(epochs=3)
    advanced.advance(STEPS + 3)
    assert run(fresh, advanced, 2 * STEPS - 3) == pytest.approx(straight[STEPS + 3:], rel=1e-12)
