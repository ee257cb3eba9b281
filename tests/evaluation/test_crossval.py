"""Song-grouped cross-validation over EMOPIA's train + val (mer.evaluation.crossval), with a tiny model on a small
subset: every clip is scored once by a model that never trained or selected on it, and a re-run trains nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import ray

from mer.evaluation.crossval import crossval_report, fold_splits, run_crossval
from mer.evaluation.evaluate import evaluate_features
from mer.evaluation.paper import METHODS, method_config
from mer.evaluation.results import EvalResult
from mer.model.artifact import load_artifact
from mer.storage import open_store
from mer.features.cache import FeatureCache
from mer.train.dataset import data_fingerprint, extract_clips, window_table
from mer.train.emopia import load_split
from mer.train.loop import select_clips, train_model
from tiny import tiny_config, train_in_process

SUBSET, FOLDS = 30, 3
FULL = next(m for m in METHODS if m.key == "full")


@pytest.fixture(scope="module")
def clips(emopia):
    return [*load_split(emopia, "train"), *load_split(emopia, "val")]


@pytest.mark.parametrize("folds", [3, 5])
def test_each_clip_is_held_out_once_and_its_song_is_nowhere_else(clips, folds):
    splits = fold_splits(clips, folds)
    held_out = [c.name for s in splits for c in s["test"]]
    assert sorted(held_out) == sorted(c.name for c in clips)
    for s in splits:
        assert len(s["train"]) + len(s["val"]) + len(s["test"]) == len(clips)
        songs = {part: {c.song for c in s[part]} for part in ("train", "val", "test")}
        assert not songs["train"] & songs["val"] and not songs["train"] & songs["test"] \
            and not songs["val"] & songs["test"]


def test_fewer_than_three_folds_is_refused(clips):
    with pytest.raises(ValueError, match="at least 3 folds"):
        fold_splits(clips, 2)


def test_a_split_that_shares_a_song_is_refused_before_training(clips, tmp_path):
    song = clips[0].song
    same_song = [c for c in clips if c.song == song]
    with pytest.raises(ValueError, match=song):
        train_model(tiny_config(), emopia=None, storage=str(tmp_path), cache_dir=tmp_path / "cache",
                    split=(same_song[:1], [*same_song[1:], *clips[-3:]]), progress=False)


def result(method: str, names: list[str], right: np.ndarray, seed: int = 0) -> EvalResult:
    true = np.arange(len(names)) % 4
    pred = np.where(right, true, (true + 1) % 4)
    return EvalResult(method=method, names=names, true=true, probs=np.eye(4)[pred], seed=seed,
                      extra={"val_metrics": {"4q": 0.5, "arousal": 0.5, "valence": 0.5}})


def test_the_paired_difference_reads_clip_by_clip(clips):
    names = [c.name for c in clips[:120]]
    right = np.random.default_rng(0).random(len(names)) < 0.6
    report = crossval_report({"full": [result("full", names, right)],
                              "symbolic": [result("symbolic", names, right)],
                              "harmony": [result("harmony", names, np.ones(len(names), bool))]}, setup={})
    rows = {row["key"]: row for row in report["methods"]}
    same = rows["symbolic"]["4q_minus_full"]
    assert same["estimate"] == same["low"] == same["high"] == 0.0  # the same answers: no difference, no spread
    better = rows["harmony"]["4q_minus_full"]
    assert better["estimate"] == pytest.approx(1 - right.mean())
    assert 0 < better["low"] <= better["estimate"] <= better["high"]
    assert "4q_minus_full" not in rows["full"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_crossval_scores_every_clip_with_a_model_that_never_saw_it(ray_cluster, emopia, tmp_path):
    base = tiny_config(training=dict(epochs=3, batch_size=8, num_workers=1))
    config = method_config(base, FULL, seed=0, epochs=1)  # the row as run_crossval builds it, for 1 epoch
    storage, cache, out = str(tmp_path / "runs"), tmp_path / "cache", tmp_path / "report"
    chosen = select_clips([*load_split(emopia, "train"), *load_split(emopia, "val")], SUBSET)
    items = {i.clip.name: i for i in extract_clips(chosen, config=config.features,
                                                   cache=FeatureCache(str(cache)), progress=False).clips}
    splits = fold_splits(chosen, FOLDS)
    fingerprints = [data_fingerprint({part: [items[c.name] for c in split[part]] for part in ("train", "val")})
                    for split in splits]
    # Ray Train starts its workers in ~30 s a run: folds 2 and 3 are trained here, in-process, on their own
    # train/val parts, and must be found and reused; fold 1 run_crossval trains itself, on Ray Train.
    made = {i: train_in_process(config, window_table([items[c.name] for c in splits[i]["train"]]),
                                window_table([items[c.name] for c in splits[i]["val"]]),
                                fingerprint=fingerprints[i], storage=storage).rstrip("/").rsplit("/", 1)[-1]
            for i in (1, 2)}

    served = load_artifact(None, storage=storage).version  # LATEST, what the tagger loads by default
    report = run_crossval(emopia=emopia, storage=storage, cache_dir=cache, out=out, methods=["full"], folds=FOLDS,
                          seeds=[0], subset=SUBSET, base_config=base, epochs=1, progress=False)
    assert load_artifact(None, storage=storage).version == served  # a fold's model is never served
    (row,) = report["methods"]
    (run,) = row["runs"]
    assert sorted(p["name"] for p in run["predictions"]) == sorted(c.name for c in chosen)  # each clip once
    assert [fold["model"] for fold in run["folds"]][1:] == [made[1], made[2]]
    assert run["folds"][0]["model"] not in made.values()
    # The model it trained was trained and selected on exactly fold 1's train and val parts, for the epochs asked.
    trained = load_artifact(f"{storage}/models/{run['folds'][0]['model']}")
    assert trained.meta["data_fingerprint"] == fingerprints[0]
    assert trained.config.training.epochs == 1
    for fold, split in zip(run["folds"], splits):
        assert fold["clips"] == len(split["test"])
    held_out = {p["name"]: p["probs"] for p in run["predictions"]}
    again = evaluate_features(trained, [items[c.name] for c in splits[0]["test"]])
    for name, probs in zip(again.names, again.probs):
        np.testing.assert_allclose(held_out[name], probs, atol=1e-5)  # fold 1's clips scored by fold 1's model

    written = json.loads((out / "crossval.json").read_text())
    assert written["methods"][0]["runs"][0]["predictions"] == run["predictions"]
    assert (out / "crossval.md").read_text().count("| `full` |") == FOLDS
    assert (out / "crossval_confusion_full.png").stat().st_size > 0

    # A re-run finds every fold's model and trains nothing: the same models, the same predictions.
    models_before = sorted(open_store(f"{storage}/models").list_folders())
    again = run_crossval(emopia=emopia, storage=storage, cache_dir=cache, out=tmp_path / "again", methods=["full"],
                         folds=FOLDS, seeds=[0], subset=SUBSET, base_config=base, epochs=1, progress=False)
    assert sorted(open_store(f"{storage}/models").list_folders()) == models_before
    assert again["methods"][0]["runs"][0]["predictions"] == run["predictions"]


def test_linear_baselines_and_unknown_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="linear"):
        run_crossval(emopia=None, storage=str(tmp_path), cache_dir=tmp_path, out=tmp_path, methods=["symbolic_lr"])
    with pytest.raises(ValueError, match="unknown"):
        run_crossval(emopia=None, storage=str(tmp_path), cache_dir=tmp_path, out=tmp_path, methods=["nope"])
