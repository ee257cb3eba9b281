"""Fitting a model's summary head (mer.model.summary_head) after its network is trained.

The regression is fitted on the training windows only; its strength ``C`` and the blend weight ``w`` are chosen
on val (clip-level 4Q accuracy, as every other choice of ours; ties go to the lower val NLL, then to the
stronger regularisation and the smaller weight). Test is never read here.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mer.model import clip_probabilities, nll
from mer.train.calibrate import window_log_probs
from mer.train.scores import quadrant_metrics

C_GRID: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
BLEND_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
"""Blend weights tried: 0 (the network alone) to 1 (the regression alone)."""


def _clip_scores(window_probs: np.ndarray, names: np.ndarray, labels_by_clip: Mapping[str, int]) -> tuple[float, float]:
    """(clip 4Q accuracy, clip NLL) of window probabilities (N, 4), a clip's probabilities the mean of its windows'."""
    clips, probs = clip_probabilities(np.log(np.clip(window_probs, 1e-12, 1.0)), names)
    labels = np.array([labels_by_clip[c] for c in clips])
    return float(np.mean(probs.argmax(axis=1) == labels)), nll(probs, labels)


def has_notes(table: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N,) bool: windows whose summary comes from MIDI notes (MIDI present and tokens in the window)."""
    return np.asarray(table["present"])[:, 0].astype(bool) & (np.asarray(table["token_lengths"]) > 0)


def _regression_inputs(scaler: StandardScaler, kernel: Nystroem | None, x: np.ndarray) -> np.ndarray:
    """What the regression reads of descriptors ``x`` (N, d): standardised, then kernel features when it has them."""
    x = scaler.transform(x)
    return x if kernel is None else kernel.transform(x)


def choose_regression(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, *, val_notes: np.ndarray,
                      network: np.ndarray, names: np.ndarray, labels_by_clip: Mapping[str, int],
                      c: float | None = None, blend: float | None = None, centres: int = 0) -> dict[str, Any]:
    """The regression and its blend with the network, chosen on val: a standardiser and a multinomial logistic
    regression fitted on ``x_train`` (N, d) / ``y_train`` (N,) for each C of :data:`C_GRID` (or the given ``c``),
    with ``centres`` > 0 over RBF kernel features (gamma 1 / d) at up to that many standardised training windows,
    the C whose regression alone scores best on val, then the blend weight whose mixture with the network's val
    window probabilities ``network`` (N_val, 4) scores best (or the given ``blend``). ``x_val`` (N_val, d) every
    val window; ``val_notes`` (N_val,) the windows the regression applies to (the others keep the network).

    Returns ``{"c", "blend", "scaler", "kernel" (the fitted Nystroem map, or None), "fit", "by_c" (val 4Q of each
    C's regression), "by_blend" ((val 4Q, NLL) of each blend), "probs" (the chosen mixture's val window
    probabilities)}``.
    """
    scaler = StandardScaler().fit(x_train)
    kernel = None
    if centres > 0:
        kernel = Nystroem(kernel="rbf", gamma=1.0 / x_train.shape[1], n_components=min(centres, len(x_train)),
                          random_state=0).fit(scaler.transform(x_train))
    x_train, x_val = _regression_inputs(scaler, kernel, x_train), _regression_inputs(scaler, kernel, x_val)
    c_grid = C_GRID if c is None else (c,)
    blend_grid = BLEND_GRID if blend is None else (blend,)
    fits, by_c = {}, {}
    for candidate in c_grid:
        fits[candidate] = LogisticRegression(C=candidate, max_iter=5000).fit(x_train, y_train)
        probs = np.zeros((len(x_val), 4))
        probs[:, fits[candidate].classes_] = fits[candidate].predict_proba(x_val)
        probs[~val_notes] = 0.25  # windows without notes do not vote for the regression's C
        by_c[candidate] = (_clip_scores(probs, names, labels_by_clip), probs)
    chosen_c = max(c_grid, key=lambda k: (by_c[k][0][0], -by_c[k][0][1], -k))
    regression = np.where(val_notes[:, None], by_c[chosen_c][1], network)  # windows without notes: the network
    by_blend = {w: _clip_scores((1 - w) * network + w * regression, names, labels_by_clip) for w in blend_grid}
    chosen_blend = max(blend_grid, key=lambda w: (by_blend[w][0], -by_blend[w][1], -w))
    return {"c": chosen_c, "blend": chosen_blend, "scaler": scaler, "kernel": kernel, "fit": fits[chosen_c],
            "by_c": {k: v[0][0] for k, v in by_c.items()}, "by_blend": by_blend,
            "probs": (1 - chosen_blend) * network + chosen_blend * regression}


def blended(choice: Mapping[str, Any], x: np.ndarray, *, notes: np.ndarray, network: np.ndarray) -> np.ndarray:
    """A chosen regression (:func:`choose_regression`) applied to windows ``x`` (N, d) and blended with the network's
    window probabilities ``network`` (N, 4) as on val: the regression where ``notes`` (N,), else the network."""
    fit, x = choice["fit"], _regression_inputs(choice["scaler"], choice.get("kernel"), x)
    regression = np.zeros((len(x), 4))
    regression[:, fit.classes_] = fit.predict_proba(x)
    regression = np.where(notes[:, None], regression, network)
    return (1 - choice["blend"]) * network + choice["blend"] * regression


def fit_summary_head(model: torch.nn.Module, train_table: Mapping[str, np.ndarray],
                     val_table: Mapping[str, np.ndarray], *, device: str | torch.device = "cpu",
                     c: float | None = None, blend: float | None = None, fitted_on: str = "train") -> dict[str, Any]:
    """Fit ``model.summary_head`` (a MerModel built with ``summary_head``) and install it; returns what was chosen:
    ``{"method", "c", "blend", "fitted_on", "val_4q_by_c", "val_4q_by_blend", "val_nll_by_blend", "val_metrics"}``
    (val clip-level 4Q accuracy and NLL for every candidate). A given ``c`` or ``blend`` is used as is instead of
    being chosen on val (a refit on train + val: TrainConfig.summary_c / summary_blend); ``fitted_on`` names the
    split(s) ``train_table`` holds, for the record."""
    head = getattr(model, "summary_head", None)
    if head is None:
        raise ValueError("the model was built without a summary head (ModelConfig.summary_head)")
    head.reset()  # the network alone, for its val probabilities
    network = np.exp(window_log_probs(model, val_table, device=device))  # (N_val, 4)

    names = np.asarray(val_table["name"])
    labels_by_clip = dict(zip(names.tolist(), np.asarray(val_table["quadrant"]).tolist()))
    train_notes, val_notes = has_notes(train_table), has_notes(val_table)  # where the head applies
    if not train_notes.any():
        raise ValueError("no training window has notes: the summary head has nothing to be fitted on")
    width = head.mean.shape[0]  # the summary's first descriptors the model reads (ModelConfig.summary_width)
    chosen_on = {"regression": fitted_on, "c": "val" if c is None else "given",
                 "blend": "val" if blend is None else "given"}
    choice = choose_regression(
        np.asarray(train_table["summary"], dtype=np.float64)[train_notes, :width],
        np.asarray(train_table["quadrant"], dtype=np.int64)[train_notes],
        np.asarray(val_table["summary"], dtype=np.float64)[:, :width], val_notes=val_notes, network=network,
        names=names, labels_by_clip=labels_by_clip, c=c, blend=blend,
        centres=head.centres.shape[0] if head.kernel else 0)
    c, blend, scaler, kernel, fit, by_c, by_blend = (
        choice[k] for k in ("c", "blend", "scaler", "kernel", "fit", "by_c", "by_blend"))
    coef = fit.coef_ if kernel is None else fit.coef_ @ kernel.normalization_  # over the kernel values themselves
    weight = np.zeros(head.weight.shape)  # a kernel head's unused centres keep weight 0
    bias = np.full(head.bias.shape, -1e4)  # a quadrant absent from training gets no probability
    if len(fit.classes_) == 2:  # scikit-learn's binary form: one logit row for the second class, 0 for the first
        weight[fit.classes_[1], :coef.shape[1]], bias[fit.classes_] = coef[0], [0.0, fit.intercept_[0]]
    else:
        weight[fit.classes_, :coef.shape[1]], bias[fit.classes_] = coef, fit.intercept_
    centres = None
    if kernel is not None:
        centres = np.zeros(head.centres.shape)
        centres[:len(kernel.components_)] = kernel.components_
    head.set(mean=scaler.mean_, scale=scaler.scale_, weight=weight, bias=bias, blend=blend, centres=centres)
    clips, probs = clip_probabilities(np.log(np.clip(choice["probs"], 1e-12, 1.0)), names)
    labels = np.array([labels_by_clip[n] for n in clips])
    return {
        "method": "multinomial logistic regression over the window's summary descriptors"
                  + ("" if kernel is None else f" (RBF kernel features at {len(kernel.components_)} training windows)")
                  + ", blended with the network's quadrant probabilities",
        "c": c,
        "blend": blend,
        "fitted_on": chosen_on,
        "val_4q_by_c": {str(k): round(v, 4) for k, v in by_c.items()},
        "val_4q_by_blend": {str(k): round(v[0], 4) for k, v in by_blend.items()},
        "val_nll_by_blend": {str(k): round(v[1], 4) for k, v in by_blend.items()},
        "val_metrics": {**quadrant_metrics(labels, probs.argmax(axis=1)), "loss": nll(probs, labels)},
    }
