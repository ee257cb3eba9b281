"""Song-grouped cross-validation over EMOPIA's train + val (mer.evaluation.crossval), with a tiny model on a small
subset: every clip is scored once by a model that never trained or selected on it, and a re-run trains nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import ray

from mer.errors import ConfigError
from mer.evaluation.crossval import (crossval_report, fold_splits, merge_crossval, pooled, run_crossval,
                                    write_crossval)
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


def crossval_run(splits, method: str, seed: int) -> EvalResult:
    """A seed of a row as run_crossval pools it: each fold's held-out clips, about 60% of them right."""
    rng = np.random.default_rng([seed, *method.encode()])
    return pooled([result(method, names, rng.random(len(names)) < 0.6, seed=seed)
                   for names in ([c.name for c in split["test"]] for split in splits)], method=method)


def written(results: dict[str, list[EvalResult]], splits, out, *, epochs: int = 6) -> str:
    """A cross-validation report of ``results`` written as run_crossval writes it; its JSON's path."""
    setup = {"protocol": "test", "emopia": "emopia", "folds": len(splits), "epochs": {key: epochs for key in results},
             "split_seed": 0, "seeds": sorted({r.seed for runs in results.values() for r in runs}), "subset": None,
             "clips": sum(len(s["test"]) for s in splits), "songs": 0, "skipped": [],
             "fold_clips": [len(s["test"]) for s in splits], "seconds": 1.0}
    write_crossval(crossval_report(results, setup=setup), results, out)
    return str(out / "crossval.json")


def test_crossvals_run_apart_merge_into_the_report_one_run_would_give(clips, tmp_path):
    splits = fold_splits(clips, 5)
    runs = {(key, seed): crossval_run(splits, key, seed) for key, seed in
            (("full", 0), ("symbolic", 0), ("symbolic", 1), ("harmony", 0))}
    paths = [written({"full": [runs["full", 0]], "symbolic": [runs["symbolic", 0]]}, splits, tmp_path / "a"),
             written({"symbolic": [runs["symbolic", 1]]}, splits, tmp_path / "b"),
             written({"harmony": [runs["harmony", 0]]}, splits, tmp_path / "c")]
    merged = merge_crossval(paths, tmp_path / "merged", methods=["harmony", "full", "symbolic"])
    at_once = crossval_report({"harmony": [runs["harmony", 0]], "full": [runs["full", 0]],
                               "symbolic": [runs["symbolic", 0], runs["symbolic", 1]]}, setup={})
    assert [row["key"] for row in merged["methods"]] == ["harmony", "full", "symbolic"]
    for row, expected in zip(merged["methods"], at_once["methods"]):
        assert row["seeds"] == expected["seeds"]
        for field in ("ours", "interval_4q", "4q_minus_harmony"):
            assert row.get(field) == expected.get(field), (row["key"], field)
    setup = json.loads((tmp_path / "merged" / "crossval.json").read_text())["setup"]
    assert setup["seeds"] == [0, 1]
    assert setup["merged_from"] == [{"report": path, "seconds": 1.0} for path in paths]  # each run's own time kept
    assert "4Q minus harmony" in (tmp_path / "merged" / "crossval.md").read_text()


def test_crossvals_of_other_folds_or_the_same_seed_twice_are_not_merged(clips, tmp_path):
    splits = fold_splits(clips, 5)
    ours = written({"full": [crossval_run(splits, "full", 0)]}, splits, tmp_path / "ours")
    # Another cut of the same clips into folds of the same sizes: one clip of fold 1 swapped with one of fold 2.
    moved = [dict(split) for split in splits]
    moved[0]["test"], moved[1]["test"] = ([moved[1]["test"][0], *splits[0]["test"][1:]],
                                          [splits[0]["test"][0], *splits[1]["test"][1:]])
    theirs = written({"symbolic": [crossval_run(moved, "symbolic", 0)]}, moved, tmp_path / "theirs")
    with pytest.raises(ConfigError, match="other clips in its folds"):
        merge_crossval([ours, theirs], tmp_path / "merged")
    again = written({"full": [crossval_run(splits, "full", 0)]}, splits, tmp_path / "again")
    with pytest.raises(ConfigError, match="seed 0 is in more than one report"):
        merge_crossval([ours, again], tmp_path / "merged")
    longer = written({"full": [crossval_run(splits, "full", 1)]}, splits, tmp_path / "longer", epochs=12)
    with pytest.raises(ConfigError, match="row full trained 12 epoch"):
        merge_crossval([ours, longer], tmp_path / "merged")
    fewer = written({"full": [crossval_run(splits[:3], "full", 1)]}, splits[:3], tmp_path / "fewer")
    with pytest.raises(ConfigError, match="folds"):
        merge_crossval([ours, fewer], tmp_path / "merged")
    (tmp_path / "tables.json").write_text(json.dumps({"setup": {"training": {}}, "methods": []}))
    with pytest.raises(ConfigError, match="not a cross-validation report"):
        merge_crossval([ours, tmp_path / "tables.json"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


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
