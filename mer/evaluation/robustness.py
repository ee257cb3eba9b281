"""What the headline table does not show: calibration, a seed ensemble, and another piano's timbre.

:func:`robustness_report` takes the trained models of one configuration (one per seed) and, on EMOPIA's test split
(scored once per model, nothing is selected here):

- **Calibration** — each model's test NLL and ECE with its temperature (fitted on val when it was trained) and
  without it (T = 1); a reliability diagram of the calibrated seed models pooled.
- **Seed ensemble** — the members' probabilities averaged, as one artifact calibrated on val
  (:func:`mer.train.build_artifact`), scored like a seed; and what each member costs in windows per second.
- **Other timbres** — every model again on the test split rendered with a second SoundFont (FluidR3_GM by
  default): the accuracy drop from the SoundFont the models were trained with; and the val split on both
  renderings (``row["val"]``), the basis for choosing between configurations on this count.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mer.errors import ConfigError
from mer.evaluation.evaluate import evaluate_features
from mer.evaluation.paper import method_key
from mer.evaluation.plots import plot_reliability
from mer.features import FeatureCache, soundfont_path
from mer.model import Artifact, expected_calibration_error, load_artifact, nll, predict_windows
from mer.train import build_artifact, emopia_root, ensure_ray, extract_clips, load_split, take, window_table

SECOND_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"  # Debian's fluid-soundfont-gm (infra/dev-setup.sh)


def _scores(artifact: Artifact, items, temperature: float | None = None) -> dict[str, Any]:
    saved = getattr(artifact.model, "quadrant_temperature", 1.0)
    if temperature is not None:
        artifact.model.quadrant_temperature = temperature
    try:
        result = evaluate_features(artifact, items, device="cpu")
    finally:
        artifact.model.quadrant_temperature = saved
    return {"metrics": result.metrics, "nll": nll(result.probs, result.true),
            "ece": expected_calibration_error(result.probs, result.true), "probs": result.probs, "true": result.true}


def windows_per_second(artifact: Artifact, table: dict[str, np.ndarray], *, batch: int = 16) -> float:
    """Inference throughput of a model on CPU over a window table (all windows once, ``batch`` at a time)."""
    started = time.perf_counter()
    for start in range(0, len(table["quadrant"]), batch):
        predict_windows(artifact.model, take(table, np.arange(start, min(start + batch, len(table["quadrant"])))),
                        device="cpu")
    return len(table["quadrant"]) / (time.perf_counter() - started)


def robustness_report(models: Sequence[str], *, storage: str, cache_dir: str | os.PathLike, out: str | os.PathLike,
                      emopia: str | os.PathLike | None = None, soundfont: str = SECOND_SOUNDFONT,
                      endpoint_url: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Score ``models`` (one configuration, one per seed) and their ensemble as the module docstring says;
    writes ``robustness.json`` and ``reliability.png`` to ``out`` and returns the JSON's content."""
    ensure_ray()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(os.path.abspath(cache_dir))
    artifacts = [load_artifact(m, storage=storage, device="cpu", endpoint_url=endpoint_url) for m in models]
    features = artifacts[0].config.features
    seen = {os.path.realpath(sf) for a in artifacts
            for sf in (soundfont_path(a.config.features), *a.config.training.extra_soundfonts)}
    if os.path.realpath(soundfont) in seen:
        raise ConfigError(f"{soundfont} is a SoundFont these models were trained with: the timbre test needs one "
                          "they have not heard")
    root = emopia_root(emopia)
    timbres = {"trained SoundFont": features, Path(soundfont).stem: dataclasses.replace(features, soundfont=soundfont)}
    rendered, rendered_val = ({timbre: extract_clips(load_split(root, split), config=config, cache=cache,
                                                     progress=progress).clips for timbre, config in timbres.items()}
                              for split in ("test", "val"))
    scored = [(f"seed {a.meta.get('seed')}", a) for a in artifacts]
    ensemble = None
    if len(artifacts) > 1:  # one model is no ensemble
        ensemble_url = build_artifact(list(models), storage=storage, cache_dir=cache_dir, emopia=emopia,
                                      endpoint_url=endpoint_url, set_latest=False, progress=progress)
        ensemble = load_artifact(ensemble_url, device="cpu", endpoint_url=endpoint_url)
        scored.append(("ensemble", ensemble))
    rows, pooled_probs, pooled_true = [], [], []
    for name, artifact in scored:
        row: dict[str, Any] = {"model": name, "version": artifact.version,
                               "temperature": float(artifact.model.quadrant_temperature)}
        # Val on both renderings: what a choice between configurations for other timbres may rest on.
        row["val"] = {timbre: evaluate_features(artifact, items, device="cpu").metrics
                      for timbre, items in rendered_val.items()}
        for timbre, items in rendered.items():
            calibrated = _scores(artifact, items)
            row[timbre] = calibrated["metrics"]
            if timbre == "trained SoundFont":
                raw = _scores(artifact, items, temperature=1.0)
                row["test_nll"] = {"uncalibrated": raw["nll"], "calibrated": calibrated["nll"]}
                row["test_ece"] = {"uncalibrated": raw["ece"], "calibrated": calibrated["ece"]}
                if name != "ensemble":
                    pooled_probs.append(calibrated["probs"])
                    pooled_true.append(calibrated["true"])
        rows.append(row)
        if progress:
            print(f"[robustness] {json.dumps(row)}", flush=True)
    table = window_table(rendered["trained SoundFont"])
    speed = {"single_model_windows_per_second": windows_per_second(artifacts[0], table), "members": len(artifacts)}
    if ensemble is not None:
        speed["ensemble_windows_per_second"] = windows_per_second(ensemble, table)
    plot_reliability(np.concatenate(pooled_probs), np.concatenate(pooled_true), out / "reliability.png",
                     title=f"calibrated seed models pooled, test split ({len(pooled_probs)} models)")
    report = {"method": method_key(artifacts[0].config), "rows": rows, "throughput_cpu": speed,
              "second_soundfont": soundfont,
              "note": "audio rendered from the MIDI with FluidSynth; test scored once per model"}
    (out / "robustness.json").write_text(json.dumps(report, indent=2))
    return report
