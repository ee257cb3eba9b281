"""Fitting a summary head after training: chosen on val, never worse on val than the network alone, and a trained
model gains one without retraining."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mer.model import MerModel, predict_windows
from mer.train import blended, choose_regression, fit_summary_head, with_summary_head
from mer.train.calibrate import calibration_on_val
from tiny import random_windows, tiny_config

CONFIG = tiny_config(summary_film=True, summary_head=True)


def table(rng, clips, *, informative=True):
    """Window rows of ``clips`` clips (two windows each) whose summary carries the quadrant when ``informative``."""
    quadrant = np.repeat(rng.integers(0, 4, clips), 2)
    rows = random_windows(CONFIG, rng, len(quadrant))
    if informative:
        rows["summary"][np.arange(len(quadrant)), quadrant] += 2.0
    return {"name": np.repeat(np.array([f"clip{i}" for i in range(clips)]), 2), "quadrant": quadrant, **rows}


def clip_accuracy(model, t):
    probs = predict_windows(model.eval(), t, device="cpu")["quadrant_probs"]
    clip_probs = probs.reshape(-1, 2, 4).mean(axis=1)
    return float(np.mean(clip_probs.argmax(1) == t["quadrant"][::2]))


def test_an_informative_summary_is_blended_in_and_lifts_val_accuracy_over_the_untrained_network(rng):
    torch.manual_seed(0)
    model = MerModel(CONFIG).eval()
    train, val = table(rng, 120), table(rng, 60)
    before = clip_accuracy(model, val)
    chosen = fit_summary_head(model, train, val)
    assert chosen["blend"] > 0 and chosen["fitted_on"]["regression"] == "train"
    after = clip_accuracy(model, val)
    assert after > before + 0.2
    assert abs(chosen["val_metrics"]["4q"] - after) < 1e-9  # the report says what the installed head does


def test_the_choice_is_never_worse_on_val_than_the_network_alone(rng):
    torch.manual_seed(1)
    model = MerModel(CONFIG).eval()
    train, val = table(rng, 80, informative=False), table(rng, 40, informative=False)
    chosen = fit_summary_head(model, train, val)
    assert chosen["val_metrics"]["4q"] >= chosen["val_4q_by_blend"]["0.0"]
    assert chosen["val_metrics"]["4q"] == max(chosen["val_4q_by_blend"].values())


def test_a_model_trained_without_a_head_gains_one_without_changing_its_network(rng):
    torch.manual_seed(2)
    plain_config = tiny_config(summary_film=True)
    plain = MerModel(plain_config).eval()
    upgraded = with_summary_head(plain).eval()
    assert upgraded.config.model.summary_head and not plain.config.model.summary_head
    t = table(rng, 10)
    np.testing.assert_allclose(predict_windows(upgraded, t, device="cpu")["quadrant_probs"],
                               predict_windows(plain, t, device="cpu")["quadrant_probs"], atol=1e-6)


def test_a_given_c_and_blend_are_installed_as_given_not_chosen_on_val(rng):
    torch.manual_seed(3)
    model = MerModel(CONFIG).eval()
    train, val = table(rng, 60), table(rng, 30)
    network_alone = predict_windows(model, val, device="cpu")["quadrant_probs"]
    chosen = fit_summary_head(model, train, val, c=0.03, blend=0.0)  # val would choose a blend > 0 here
    assert (chosen["c"], chosen["blend"]) == (0.03, 0.0)
    assert chosen["fitted_on"] == {"regression": "train", "c": "given", "blend": "given"}
    np.testing.assert_allclose(predict_windows(model, val, device="cpu")["quadrant_probs"], network_alone,
                               atol=1e-6)
    torch.manual_seed(5)
    other = MerModel(CONFIG).eval()  # another network: with blend 1 only the regression speaks
    for network in (model, other):
        assert fit_summary_head(network, train, val, c=0.03, blend=1.0)["blend"] == 1.0
    np.testing.assert_allclose(predict_windows(model, val, device="cpu")["quadrant_probs"],
                               predict_windows(other, val, device="cpu")["quadrant_probs"], atol=1e-5)


def test_a_given_temperature_is_kept_and_says_so(rng):
    torch.manual_seed(4)
    model = MerModel(CONFIG).eval()
    val = table(rng, 30)
    fitted = calibration_on_val(model, val)
    given = calibration_on_val(model, val, temperature=2.5)
    assert fitted["fitted_on"] == "val" and given["fitted_on"] == "given" and given["temperature"] == 2.5
    assert given["val_nll_after"] >= fitted["val_nll_after"] - 1e-9  # the fitted one minimises val NLL


@pytest.mark.parametrize("centres", [0, 100], ids=["linear", "kernel"])
def test_columns_beside_the_summary_are_used_when_they_carry_the_quadrant(rng, centres):
    """choose_regression over any inputs (the summary and an embedding, in the benchmark): extra columns that give
    the quadrant away lift the chosen regression above the summary's alone, on val."""
    def inputs(quadrant, informative):
        x = rng.normal(size=(len(quadrant), 6))
        if informative:
            x[np.arange(len(quadrant)), 2 + quadrant] += 3.0
        return x

    y_train, y_val = rng.integers(0, 4, 200), np.repeat(rng.integers(0, 4, 40), 2)
    names = np.repeat(np.array([f"clip{i}" for i in range(40)]), 2)
    labels = dict(zip(names.tolist(), y_val.tolist()))
    network = np.full((len(y_val), 4), 0.25)  # a network that knows nothing
    common = dict(val_notes=np.ones(len(y_val), bool), network=network, names=names, labels_by_clip=labels,
                  centres=centres)
    x_val = inputs(y_val, True)
    plain = choose_regression(inputs(y_train, False)[:, :2], y_train, inputs(y_val, False)[:, :2], **common)
    extra = choose_regression(inputs(y_train, True), y_train, x_val, **common)
    assert max(extra["by_c"].values()) > 0.9 > 0.5 > max(plain["by_c"].values())
    assert extra["blend"] > 0 and extra["probs"].shape == (len(y_val), 4)
    # the chosen head applied again to the val windows gives what val was scored with
    np.testing.assert_allclose(blended(extra, x_val, notes=common["val_notes"], network=network), extra["probs"])


KERNEL_CONFIG = tiny_config(summary_film=True, summary_head=True, summary_kernel_centres=400)


def interaction_table(rng, clips):
    """Window rows whose quadrant is an interaction of two descriptors (which side of zero both are: an XOR of
    their signs, and a third descriptor's sign), which no linear function of the descriptors can tell."""
    rows = random_windows(KERNEL_CONFIG, rng, 2 * clips)
    x = rng.normal(size=(clips, 3))
    quadrant = 2 * ((x[:, 0] > 0) ^ (x[:, 1] > 0)) + (x[:, 2] > 0)
    rows["summary"][:] = 0.0  # the other descriptors say nothing
    rows["summary"][:, :3] = np.repeat(x, 2, axis=0) + rng.normal(scale=0.05, size=(2 * clips, 3))
    return {"name": np.repeat(np.array([f"clip{i}" for i in range(clips)]), 2), "quadrant": np.repeat(quadrant, 2),
            **rows}


def test_a_kernel_head_fits_an_interaction_a_linear_head_cannot_and_reports_what_it_installed(rng):
    train, val = interaction_table(rng, 150), interaction_table(rng, 150)  # 300 windows: fewer than 400 centres
    torch.manual_seed(6)
    linear = MerModel(CONFIG).eval()
    kernel = MerModel(KERNEL_CONFIG).eval()
    kernel.load_state_dict({k: v for k, v in linear.state_dict().items() if not k.startswith("summary_head.")},
                           strict=False)  # the same network: only the heads differ
    by_head = {name: fit_summary_head(model, train, val, blend=1.0)
               for name, model in (("linear", linear), ("kernel", kernel))}
    # the linear head can only learn the third descriptor's sign (half the quadrant): about 0.5
    assert clip_accuracy(kernel, val) > clip_accuracy(linear, val) + 0.15
    assert "RBF kernel features at 300 training windows" in by_head["kernel"]["method"]
    for name, model in (("linear", linear), ("kernel", kernel)):  # the report says what the installed head does
        assert abs(by_head[name]["val_metrics"]["4q"] - clip_accuracy(model, val)) < 1e-9
        probs = predict_windows(model, val, device="cpu")["quadrant_probs"].reshape(-1, 2, 4).mean(axis=1)
        loss = -np.mean(np.log(probs[np.arange(len(probs)), val["quadrant"][::2]]))
        assert abs(by_head[name]["val_metrics"]["loss"] - loss) < 1e-4
