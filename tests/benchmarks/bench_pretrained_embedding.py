"""Benchmark: does a pretrained audio embedding (musicnn) help the summary head? A/B on the same networks. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_pretrained_embedding.py --models V1 V2 ... --storage DIR \\
        --cache-dir DIR [--embeddings FILE.npz] [--workers 2] [--second-soundfont SF2] [--emopia PATH] [--out FILE]

The default model's summary head is a logistic regression over a window's key, mode and note descriptors,
blended with the network's quadrant probabilities (mer.train.summary_head). This fits that head twice on each
given trained model — over the descriptors the model reads, and over them plus the window's musicnn embedding
(mer.features.musicnn: 200 numbers from a network trained to tag the Million Song Dataset, run on the window's
FluidSynth rendering) — each time with C and the blend chosen on val (mer.train.summary_head.choose_regression;
the same choice the default's training makes), and scores test once per model and head. The networks are the
same, so the difference is the embedding's alone. Probabilities are uncalibrated (a temperature moves a clip's
mean of window probabilities only where a clip has several windows). With ``--second-soundfont``, test is also
scored rendered with another piano (features and embeddings of that rendering; the heads as fitted). Embeddings
are cached in ``--embeddings`` (computed once, before the models are read: seconds per window on one core).
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from mer.config import FeatureConfig
from mer.evaluation.intervals import song_bootstrap
from mer.evaluation.robustness import SECOND_SOUNDFONT
from mer.features import FeatureCache, piano_notes, read_midi, render_audio, window_patches, window_starts
from mer.model import clip_probabilities, load_artifact, window_embeddings
from mer.train import (blended, choose_regression, emopia_root, ensure_ray, extract_clips, has_notes, load_split,
                       song_of, split_metrics, summarise, window_log_probs, window_table)
from mer.train.summary_head import C_GRID
from emit import emit

SPLITS = ("train", "val", "test")
HEADS = ("descriptors", "descriptors_and_embedding")


def clip_embeddings(name: str, midi_path: Path, config: FeatureConfig) -> tuple[str, np.ndarray]:
    """One clip's windows' embeddings (W, 200) from its rendering; the windows are those of
    :func:`mer.features.extract_features` (the same duration: the MIDI's end, its notes' end, the audio's length)."""
    midi = read_midi(midi_path.read_bytes(), name=name)
    audio = render_audio(midi, config=config, name=name)
    notes = piano_notes(midi, config=config)
    duration = max(float(midi.get_end_time()), float(notes[:, 1].max()), len(audio) / config.sample_rate)
    starts = window_starts(duration, config=config)
    torch.set_num_threads(1)  # one clip per process
    patches = window_patches(audio, starts, sample_rate=config.sample_rate, window_seconds=config.window_seconds)
    return name, window_embeddings(patches)


def embeddings_for(midi_paths: dict[str, Path], config: FeatureConfig, path: Path | None,
                   workers: int) -> dict[str, np.ndarray]:
    """Every clip's window embeddings, read from ``path`` where cached there, the rest computed (and saved)."""
    stored = dict(np.load(path)) if path and path.exists() else {}
    missing = [n for n in midi_paths if n not in stored]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:  # not fork: Ray runs
        jobs = pool.map(clip_embeddings, missing, [midi_paths[n] for n in missing], [config] * len(missing),
                        chunksize=4)
        for done, (name, rows) in enumerate(tqdm(jobs, total=len(missing), desc="[musicnn]", unit="clip"), 1):
            stored[name] = rows
            if path and (done % 50 == 0 or done == len(missing)):
                np.savez(path, **stored)  # an interrupted run keeps what it computed
    return stored


def head_inputs(table: dict, embeddings: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Each head's input per window: the first ``width`` descriptors, and those plus the window's embedding."""
    descriptors = np.asarray(table["summary"], dtype=np.float64)[:, :width]
    names, index = table["name"].tolist(), table["window_index"].tolist()
    counts = {n: names.count(n) for n in set(names)}
    wrong = [n for n in counts if len(embeddings[n]) != counts[n]]
    if wrong:
        raise ValueError(f"clips {wrong[:5]} have a different number of windows than their embeddings")
    embedded = np.stack([embeddings[n][i] for n, i in zip(names, index)])
    return {"descriptors": descriptors, "descriptors_and_embedding": np.concatenate([descriptors, embedded], 1)}


def regression_cv(tables: dict, embeddings: dict, width: int, folds: int = 5) -> dict:
    """Each head's regression alone, cross-validated over train + val (test untouched): folds of whole songs, C
    chosen inside each fold by an inner song-grouped CV, a clip's window probabilities averaged. 965 clips instead
    of val's 198, so a difference of a point or two shows."""
    table = {k: np.concatenate([tables["train"][k], tables["val"][k]]) for k in ("name", "window_index", "summary",
                                                                               "present", "token_lengths", "quadrant")}
    notes = has_notes(table)
    names, y = np.asarray(table["name"])[notes], np.asarray(table["quadrant"])[notes]
    songs = np.array([song_of(n) for n in names])
    out = {}
    for head, x in head_inputs(table, embeddings, width).items():
        search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                              {"logisticregression__C": list(C_GRID)}, cv=GroupKFold(4))
        probs = np.zeros((len(y), 4))
        for fit_rows, held in GroupKFold(folds).split(x[notes], y, songs):
            search.fit(x[notes][fit_rows], y[fit_rows], groups=songs[fit_rows])
            probs[held] = search.predict_proba(x[notes][held])
        out[head] = split_metrics(names=names, quadrant_probs=probs, quadrants=y)
    return {"folds": folds, "clips": int(len(set(names))), "songs": int(len(set(songs))), **out}


def score_model(version: str, storage: str, tables: dict, embeddings: dict, timbre: tuple | None = None) -> dict:
    """Both heads on one trained model: what val chose, val and test clip metrics; with ``timbre`` (the test table
    and embeddings of a second SoundFont's rendering), test on that rendering too."""
    artifact = load_artifact(version, storage=storage, device="cpu")
    model = artifact.model
    head = model.summary_head
    head.reset()  # the network alone, for its val probabilities
    network = {s: np.exp(window_log_probs(model, tables[s])) for s in ("val", "test")}
    width = model.config.model.summary_width
    inputs = {s: head_inputs(tables[s], embeddings, width) for s in SPLITS}
    notes = {s: has_notes(tables[s]) for s in SPLITS}
    names = {s: np.asarray(tables[s]["name"]) for s in SPLITS}
    labels_by_clip = dict(zip(names["val"].tolist(), np.asarray(tables["val"]["quadrant"]).tolist()))
    result = {"version": version, "seed": artifact.meta.get("seed"), "heads": {}}
    for name in HEADS:
        choice = choose_regression(inputs["train"][name][notes["train"]],
                                   np.asarray(tables["train"]["quadrant"])[notes["train"]], inputs["val"][name],
                                   val_notes=notes["val"], network=network["val"], names=names["val"],
                                   labels_by_clip=labels_by_clip)
        test = blended(choice, inputs["test"][name], notes=notes["test"], network=network["test"])
        result["heads"][name] = {
            "c": choice["c"], "blend": choice["blend"],
            "val_4q_regression_alone": round(max(choice["by_c"].values()), 4),
            "val": split_metrics(names=names["val"], quadrant_probs=choice["probs"],
                                 quadrants=tables["val"]["quadrant"]),
            "test": split_metrics(names=names["test"], quadrant_probs=test, quadrants=tables["test"]["quadrant"]),
        }
        clips, probs = clip_probabilities(np.log(np.clip(test, 1e-12, 1.0)), names["test"])
        by_clip = dict(zip(names["test"].tolist(), np.asarray(tables["test"]["quadrant"]).tolist()))
        result["heads"][name]["test_clips"] = SimpleNamespace(names=list(clips), probs=probs,
                                                              true=np.array([by_clip[c] for c in clips]))
        if timbre is not None:  # the same head, test rendered with another piano
            table, other = timbre
            mixture = blended(choice, head_inputs(table, other, width)[name], notes=has_notes(table),
                              network=np.exp(window_log_probs(model, table)))
            result["heads"][name]["test_second_soundfont"] = split_metrics(
                names=np.asarray(table["name"]), quadrant_probs=mixture, quadrants=table["quadrant"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="trained models with a summary head (versions)")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--cache-dir", required=True, help="the feature cache the models were trained with")
    parser.add_argument("--embeddings", type=Path, default=None, help="cache of the windows' embeddings (.npz)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--second-soundfont", default=None,
                        help=f"also score test rendered with this SoundFont (e.g. {SECOND_SOUNDFONT})")
    parser.add_argument("--emopia", default=None)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    root = emopia_root(args.emopia)
    first = load_artifact(args.models[0], storage=args.storage, device="cpu").model.config
    config, width = first.features, first.model.summary_width
    ensure_ray()
    clips = {s: load_split(root, s) for s in SPLITS}
    cache = FeatureCache(Path(args.cache_dir).resolve())
    tables = {s: window_table(extract_clips(clips[s], config=config, cache=cache).clips) for s in SPLITS}
    midi_paths = {c.name: c.midi_path for split in clips.values() for c in split}
    embeddings = embeddings_for(midi_paths, config, args.embeddings, args.workers)
    timbre = None
    if args.second_soundfont:
        other = dataclasses.replace(config, soundfont=args.second_soundfont)
        table = window_table(extract_clips(clips["test"], config=other, cache=cache).clips)
        stored = args.embeddings.with_name(f"{args.embeddings.stem}-{Path(args.second_soundfont).stem}.npz") \
            if args.embeddings else None
        timbre = (table, embeddings_for({c.name: c.midi_path for c in clips["test"]}, other, stored, args.workers))
    cv = regression_cv(tables, embeddings, width)
    models = [score_model(v, args.storage, tables, embeddings, timbre) for v in args.models]
    scored = ("val", "test", "test_second_soundfont") if timbre else ("val", "test")
    pooled = {name: {split: {metric: summarise([m["heads"][name][split][metric] for m in models])
                             for metric in ("4q", "arousal", "valence")} for split in scored}
              for name in HEADS}
    difference = [m["heads"][HEADS[1]]["test"]["4q"] - m["heads"][HEADS[0]]["test"]["4q"] for m in models]
    runs = {name: [m["heads"][name].pop("test_clips") for m in models] for name in HEADS}  # for the songs' interval
    interval = song_bootstrap(runs[HEADS[1]], minus=runs[HEADS[0]])
    emit({"benchmark": "pretrained_embedding",
          "embedding": "musicnn MSD_musicnn penultimate layer (200), the mean of up to 4 patches of 3 s per window",
          "audio": "rendered from the MIDI with FluidSynth (the model's SoundFont; test_second_soundfont: "
                   f"{args.second_soundfont})", "models": models,
          "regression_alone_cv_train_val": cv, "pooled": pooled, "test_4q_difference": summarise(difference),
          "test_4q_difference_song_interval": interval,
          "windows": {s: int(len(tables[s]["name"])) for s in SPLITS}},
         Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
