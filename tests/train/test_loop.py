"""Training on Ray Train: a 2-worker run on real EMOPIA clips makes checkpoints and an artifact that predicts; a
finished run extended by raising epochs resumes; the branch flags decide which weights exist and train; bad clips are skipped and named.

One local Ray (2 CPUs) serves the whole module; the first run is shared read-only, and a test that continues or
replaces it works on a copy; the model is tiny and the windows 5 s long, so each Ray Train run
takes seconds of compute (most of a run's ~25 s is Ray Train starting its workers).
"""
from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from mer.config import QUADRANTS, MerConfig
from mer.errors import ConfigError
from mer.evaluation.robustness import SECOND_SOUNDFONT
from mer.features.cache import FeatureCache
from mer.features.transpose import transpose_midi, transpose_tokens
from mer.model import MerModel, ModelOutput
from mer.model.artifact import latest_version, load_artifact
from mer.model.inference import EmotionPredictor, predict_windows
from mer.model.pieces import aggregate_windows
from mer.train.dataset import extract_clips, labelled_rows, window_dataset, window_table
from mer.train.emopia import Clip, emopia_root, load_split
from mer.train.loop import CHECKPOINT_FILE, TrainResult, select_clips, train_model
from mer.train.steps import (batches, emotion_loss, length_bucketed_batches, rank_batches, train_step,
                             weight_average)
from tiny import tiny_config as tiny

BROKEN = "Q1_brokenclip_0"


def tiny_config(*, epochs: int = 1, workers: int = 2, **model) -> MerConfig:
    """The tiny model with the default preset's key/mode input (FiLM) and summary head."""
    model = {"summary_film": True, "summary_head": True, **model}
    return tiny(training=dict(epochs=epochs, batch_size=8, num_workers=workers, seed=7), **model)

@pytest.fixture(scope="module")
def ray_cluster(aws_env):
    """A local Ray for the module; the (fake) AWS credentials are set first so Ray's workers inherit them."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_emopia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small EMOPIA in EMOPIA's layout: 16 train clips (4 per quadrant) plus one corrupt MIDI file, 4 val
    clips. The real clips are symlinked, never copied."""
    real = emopia_root()
    root = tmp_path_factory.mktemp("emopia")
    (root / "midis").mkdir()
    (root / "split").mkdir()
    splits = {"train": select_clips(load_split(real, "train"), 16), "val": select_clips(load_split(real, "val"), 4)}
    for clips in splits.values():
        for clip in clips:
            (root / "midis" / clip.midi_path.name).symlink_to(clip.midi_path)
    (root / "midis" / f"{BROKEN}.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage that is not a MIDI file")
    for split, clips in splits.items():
        with (root / "split" / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["fname", "label"])
            writer.writerows([c.name, QUADRANTS[c.quadrant]] for c in clips)
            if split == "train":
                writer.writerow([BROKEN, "Q1"])
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def first_run(ray_cluster, small_emopia: Path, workdir: Path) -> TrainResult:
    """One epoch on 2 workers, run name "resumable". Read only: a test that continues or replaces the run works on
    its own copy (:func:`copy_of_first_run`)."""
    return train_model(tiny_config(epochs=1), emopia=small_emopia, storage=str(workdir / "storage"),
                       cache_dir=workdir / "cache", run_name="resumable", progress=False)


def copy_of_first_run(first_run: TrainResult, folder: Path) -> str:
    """A storage of the test's own holding a copy of the first run's folder (same run name): what the test does to
    the run stays there."""
    storage = folder / "storage"
    shutil.copytree(first_run.run, storage / Path(first_run.run).name)
    return str(storage)


def checkpoint_epochs(run: str) -> list[int]:
    """The epoch stored in each checkpoint folder of a run."""
    folders = sorted(f for f in Path(run).glob("checkpoint_*") if f.is_dir())
    return sorted(int(torch.load(f / CHECKPOINT_FILE, weights_only=True)["epoch"]) for f in folders)


def test_two_worker_run_makes_a_checkpoint_and_an_artifact_that_predicts(first_run: TrainResult,
                                                                        small_emopia: Path,
                                                                        workdir: Path) -> None:
    assert [row["epoch"] for row in first_run.history] == [1]
    for key in ("val_4q", "val_arousal", "val_valence"):
        assert 0.0 <= first_run.history[0][key] <= 1.0
    assert np.isfinite(first_run.history[0]["train_loss"])
    assert checkpoint_epochs(first_run.run) == [0]  # epochs are 0-based inside checkpoints

    storage = str(workdir / "storage")
    assert latest_version(storage) == first_run.version
    artifact = load_artifact(first_run.version, storage=storage)
    assert artifact.meta["data_fingerprint"] == first_run.data_fingerprint
    assert artifact.meta["val_metrics"] == first_run.val_metrics
    assert artifact.meta["seed"] == 7
    head = artifact.meta["summary_head"]  # fitted after training: the regression on train, its weight on val
    assert head["fitted_on"] == {"regression": "train", "c": "val", "blend": "val"}
    assert float(artifact.model.summary_head.blend) == pytest.approx(head["blend"])
    assert artifact.meta["val_metrics"]["4q"] == pytest.approx(head["val_metrics"]["4q"])
    assert {"encoders.symbolic", "encoders.harmony", "encoders.tone"} <= {
        ".".join(k.split(".")[:2]) for k in artifact.model.state_dict()}

    val = load_split(small_emopia, "val")
    extraction = extract_clips(val, config=artifact.config.features, cache=FeatureCache(workdir / "cache"),
                               progress=False)
    assert extraction.cached == len(val)  # training extracted them already: nothing recomputed
    out = predict_windows(artifact.model, window_table(extraction.clips), device="cpu")
    probs = out["quadrant_probs"]
    assert probs.shape == (extraction.windows, 4)
    assert np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert [p.name for p in aggregate_windows(out)] == [c.name for c in val]


def test_a_clip_that_fails_extraction_is_skipped_and_named(first_run: TrainResult, workdir: Path) -> None:
    assert [name for name, _ in first_run.failures] == [BROKEN]
    reason = first_run.failures[0][1]
    assert reason and "Traceback" not in reason
    meta = load_artifact(first_run.artifact).meta
    assert meta["skipped_clips"] == [BROKEN]
    assert meta["train_clips"] == 16


def test_extraction_reports_every_bad_file_and_keeps_the_good_ones(ray_cluster, small_emopia: Path,
                                                                   bad_midi_files: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    good = load_split(small_emopia, "val")[:2]
    bad = [Clip(name=f"Q2_{kind}_0", quadrant=1, midi_path=path) for kind, path in bad_midi_files.items()]

    extraction = extract_clips([bad[0], *good, *bad[1:]], config=tiny_config().features,
                               cache=FeatureCache(tmp_path / "cache"), progress=False)

    assert [c.clip.name for c in extraction.clips] == [c.name for c in good]
    assert [name for name, _ in extraction.failures] == [c.name for c in bad]
    assert all(reason and "Traceback" not in reason for _, reason in extraction.failures)
    rows = labelled_rows(extraction.clips)
    assert len(rows) == extraction.windows
    assert {int(r["quadrant"]) for r in rows} == {c.quadrant for c in good}


def test_raising_epochs_extends_a_finished_run_from_its_latest_checkpoint(first_run: TrainResult,
                                                                         small_emopia: Path, workdir: Path,
                                                                         tmp_path: Path) -> None:
    """A 1-epoch run extended to 2 epochs continues where it ended (a SIGKILLed run: tests/train/test_interrupt.py)."""
    storage = copy_of_first_run(first_run, tmp_path)
    resumed = train_model(tiny_config(epochs=2), emopia=small_emopia, storage=storage, cache_dir=workdir / "cache",
                          run_name="resumable", progress=False)

    assert resumed.run == f"{storage}/resumable"
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    # Epoch 1 was not trained again: its record (wall time included) is the first run's, and the run holds
    # exactly one checkpoint per epoch.
    assert resumed.history[0] == first_run.history[0]
    assert checkpoint_epochs(resumed.run) == [0, 1]

    # The same seed run straight to 2 epochs reaches the same weights: the checkpoint carries everything, and the
    # warm-up (the first epoch) does not depend on the number of epochs.
    straight = train_model(tiny_config(epochs=2), emopia=small_emopia, storage=storage, cache_dir=workdir / "cache",
                           run_name="straight", progress=False)
    assert [row["train_loss"] for row in straight.history] == pytest.approx(
        [row["train_loss"] for row in resumed.history], rel=1e-6)
    last = {run: torch.load(max(f for f in Path(run).glob("checkpoint_*") if f.is_dir()) / CHECKPOINT_FILE,
                            weights_only=True)
            for run in (resumed.run, straight.run)}
    assert last[resumed.run]["epoch"] == last[straight.run]["epoch"] == 1
    for key, value in last[straight.run]["model"].items():
        torch.testing.assert_close(last[resumed.run]["model"][key], value, msg=key)


def test_branch_flags_decide_which_weights_exist_and_train(ray_cluster, small_emopia: Path, workdir: Path,
                                                           s3_bucket: str, s3_endpoint: str) -> None:
    """A harmony-only model without attention, trained into S3 storage (moto), checkpoints and artifact there, on
    two SoundFonts' renderings (the second one's features extracted into the cache and named in the artifact)."""
    config = tiny_config(epochs=1, workers=1, branches=("harmony",), use_attention=False)
    config = dataclasses.replace(config, training=dataclasses.replace(config.training,
                                                                      extra_soundfonts=(SECOND_SOUNDFONT,)))
    storage = f"s3://{s3_bucket}/runs"
    result = train_model(config, emopia=small_emopia, storage=storage, cache_dir=workdir / "cache",
                         run_name="harmony-only", progress=False, endpoint_url=s3_endpoint)
    assert result.artifact == f"{storage}/models/{result.version}"
    assert result.run == f"{storage}/harmony-only"
    trained = load_artifact(None, storage=storage, endpoint_url=s3_endpoint).model.state_dict()  # LATEST

    assert not [k for k in trained if k.startswith(("encoders.symbolic", "encoders.tone"))]  # no GRU, no ResNet
    assert not [k for k in trained if k.startswith("fusion.attention")]
    assert any(k.startswith("encoders.harmony") for k in trained)

    torch.manual_seed(config.training.seed)  # the initial weights, as training builds them
    initial = MerModel(config).state_dict()
    assert initial.keys() == trained.keys()
    changed = [k for k in trained if k.endswith("weight") and not torch.equal(trained[k], initial[k])]
    assert any(k.startswith("encoders.harmony") for k in changed)
    assert any(k.startswith("fusion.classifier") for k in changed)

    saved = load_artifact(result.artifact, endpoint_url=s3_endpoint).config
    assert saved.training.extra_soundfonts == (SECOND_SOUNDFONT,)
    second = dataclasses.replace(config.features, soundfont=SECOND_SOUNDFONT)
    cache = FeatureCache(workdir / "cache")
    train = [c for c in load_split(small_emopia, "train") if c.name != BROKEN]
    assert all(cache.get(FeatureCache.key(c.midi_path.read_bytes(), config=second)) is not None for c in train)


def test_rendered_transposition_trains_on_renderings_of_the_moved_midi_kept_in_the_cache(
        ray_cluster, small_emopia: Path, workdir: Path) -> None:
    config = tiny_config(epochs=1, workers=1)
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, transpose_semitones=1,
                                                                      transpose_audio="rendered"))
    result = train_model(config, emopia=small_emopia, storage=str(workdir / "storage"), cache_dir=workdir / "cache",
                         run_name="transposed-renderings", progress=False)
    saved = load_artifact(result.artifact).config
    assert (saved.training.transpose_semitones, saved.training.transpose_audio) == (1, "rendered")
    cache = FeatureCache(workdir / "cache")
    for clip in (c for c in load_split(small_emopia, "train") if c.name != BROKEN):
        data = clip.midi_path.read_bytes()
        primary = cache.get(FeatureCache.key(data, config=config.features))
        for k in (-1, 1):
            moved = cache.get(FeatureCache.key(transpose_midi(data, k, name=clip.name), config=config.features))
            assert moved is not None, (clip.name, k)  # rendered once, kept like every feature
            np.testing.assert_array_equal(moved.tokens, transpose_tokens(primary.tokens, k))


def test_emotion_predictor_on_ray_data_matches_direct_prediction(first_run: TrainResult, small_emopia: Path,
                                                                 workdir: Path) -> None:
    artifact = load_artifact(first_run.artifact, device="cpu")
    extraction = extract_clips(load_split(small_emopia, "val"), config=artifact.config.features,
                               cache=FeatureCache(workdir / "cache"), progress=False)
    rows = labelled_rows(extraction.clips)

    predicted = window_dataset(rows).map_batches(
        EmotionPredictor, fn_constructor_kwargs={"model": first_run.artifact}, concurrency=1, num_gpus=0,
        batch_size=4,
    ).take_all()
    stacked = {key: np.stack([row[key] for row in predicted]) for key in predicted[0]}
    direct = predict_windows(artifact.model, window_table(extraction.clips), device="cpu")

    pieces = {p.name: p for p in aggregate_windows(stacked)}
    for expected in aggregate_windows(direct):
        np.testing.assert_allclose(pieces[expected.name].quadrant_probs, expected.quadrant_probs, atol=1e-5)
        np.testing.assert_allclose(pieces[expected.name].window_quadrant_probs, expected.window_quadrant_probs,
                                   atol=1e-5)


def one_batch(config: MerConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Four labelled windows of ``config``'s shapes, one per quadrant, without the summary input."""
    features = config.features
    frames = features.frames_per_window
    return {
        "tokens": rng.integers(0, features.vocab_size - 1, (4, features.max_tokens)),
        "token_lengths": np.array([64, 40, 20, 5]),
        "chroma": rng.random((4, 12, frames), dtype=np.float32),
        "mfcc": rng.standard_normal((4, features.n_mfcc, frames), dtype=np.float32),
        "present": np.ones((4, 3), dtype=bool),
        "quadrant": np.array([0, 1, 2, 3]),
    }


def test_train_step_overfits_one_batch() -> None:
    config = tiny_config(summary_film=False, summary_head=False)  # a batch without the summary input
    batch = one_batch(config, np.random.default_rng(0))
    torch.manual_seed(0)
    model = MerModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = [train_step(model, optimizer, batch, device=torch.device("cpu"), va_loss_weight=1.0)
              for _ in range(40)]
    assert losses[-1] < 0.3 * losses[0]


def test_averaged_weights_follow_training_but_lag_behind_it() -> None:
    config = tiny_config(summary_film=False, summary_head=False)
    batch = one_batch(config, np.random.default_rng(1))
    torch.manual_seed(0)
    model = MerModel(config)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    averaged = weight_average(model, 0.9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(20):
        train_step(model, optimizer, batch, device=torch.device("cpu"), va_loss_weight=1.0)
        averaged.update_parameters(model)

    trained, average = model.state_dict(), averaged.module.state_dict()
    assert average.keys() == trained.keys()  # a model like the trained one: it loads where that one does
    floats = [name for name, value in trained.items() if value.is_floating_point()]

    def moved(state: dict[str, torch.Tensor], names: list[str]) -> float:
        return float(torch.cat([(state[n] - start[n]).flatten() for n in names]).norm())

    statistics = [name for name in floats if "running_" in name]  # BatchNorm's: averaged too
    assert statistics and 0 < moved(average, statistics) < moved(trained, statistics)
    assert 0 < moved(average, floats) < moved(trained, floats)
    assert weight_average(model, 0.0) is None
    with pytest.raises(ConfigError, match="weight_average_decay"):
        weight_average(model, 1.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_the_smoothed_loss_is_least_at_the_smoothed_targets_not_at_certainty(smoothing: float) -> None:
    quadrant = torch.tensor([0, 1, 2, 3])
    quadrant_logits = torch.zeros(4, 4, requires_grad=True)
    va_logits = torch.zeros(4, 2, requires_grad=True)
    optimizer = torch.optim.LBFGS([quadrant_logits, va_logits], max_iter=500, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = emotion_loss(ModelOutput(quadrant_logits, va_logits, None), quadrant, va_loss_weight=1.0,
                            label_smoothing=smoothing)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    p_true = torch.softmax(quadrant_logits, dim=1).gather(1, quadrant[:, None]).detach()  # (4, 1)
    va = torch.sigmoid(va_logits).detach()  # (4, 2): P(high arousal), P(positive valence)
    va_true = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # Q1..Q4
    if smoothing:
        assert torch.allclose(p_true, torch.full_like(p_true, 1 - smoothing + smoothing / 4), atol=1e-3)
        assert torch.allclose(va, va_true * (1 - smoothing) + smoothing / 2, atol=1e-3)
    else:  # unsmoothed targets pull towards certainty
        assert bool((p_true > 0.99).all()) and bool(((va - va_true).abs() < 0.01).all())


def test_label_smoothing_outside_its_range_is_refused_with_the_config() -> None:
    for value in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label_smoothing"):
            dataclasses.replace(tiny().training, label_smoothing=value)


def test_subsets_are_balanced_over_quadrants() -> None:
    clips = load_split(emopia_root(), "train")
    chosen = select_clips(clips, 10)
    assert len(chosen) == 10
    assert sorted(np.bincount([c.quadrant for c in chosen], minlength=4)) == [2, 2, 3, 3]
    assert select_clips(clips, None) == clips


def test_a_run_is_not_resumed_with_other_settings_but_can_start_over(first_run: TrainResult, small_emopia: Path,
                                                                      workdir: Path, tmp_path: Path) -> None:
    storage = copy_of_first_run(first_run, tmp_path)
    other = tiny_config(epochs=1, fc_hidden=16)  # another model under the same run name
    with pytest.raises(ConfigError, match="different model"):
        train_model(other, emopia=small_emopia, storage=storage, cache_dir=workdir / "cache",
                    run_name="resumable", progress=False)

    fresh = train_model(other, emopia=small_emopia, storage=storage, cache_dir=workdir / "cache",
                        run_name="resumable", resume=False, progress=False)
    assert [row["epoch"] for row in fresh.history] == [1]
    assert checkpoint_epochs(fresh.run) == [0]  # the old run's checkpoints are gone
    assert load_artifact(fresh.artifact).config.model.fc_hidden == 16


def test_length_bucketed_batches_use_every_window_once_and_cut_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 1025, 500)
    shuffled = rng.permutation(500)
    chunks = length_bucketed_batches(shuffled, lengths, 16, seed=3)

    assert sorted(np.concatenate(chunks).tolist()) == list(range(500))  # 500 = 31 x 16 + 4: nothing dropped
    padded_steps = sum(len(c) * lengths[c].max() for c in chunks)
    random_steps = sum(len(c) * lengths[c].max() for c in batches(shuffled, 16))
    assert padded_steps < 0.75 * random_steps  # what the Bi-GRU runs for: much less padding than random batches
    assert [c.tolist() for c in length_bucketed_batches(shuffled, lengths, 16, seed=3)] == [c.tolist() for c in chunks]
    other = length_bucketed_batches(shuffled, lengths, 16, seed=4)
    assert [c.tolist() for c in other] != [c.tolist() for c in chunks]  # batch order changes with the seed
    assert all(len(c) >= 2 for c in length_bucketed_batches(np.arange(17), lengths[:17], 16, seed=0))


def test_ranks_share_each_global_batch_with_similar_lengths() -> None:
    lengths = np.random.default_rng(1).integers(20, 1025, 301)
    ranks = [rank_batches(lengths, 32, seed=5, epoch=2, rank=r, world_size=2) for r in (0, 1)]

    assert len(ranks[0]) == len(ranks[1])  # every DDP step has both ranks
    used = np.concatenate([c for chunks in ranks for c in chunks])
    assert len(set(used.tolist())) == len(used) and len(used) >= 301 - 3  # each window once; at most a stub dropped
    for mine, theirs in zip(*ranks):
        assert abs(len(mine) - len(theirs)) <= 1
        assert abs(int(lengths[mine].max()) - int(lengths[theirs].max())) <= 0.25 * lengths[mine].max()
    again = rank_batches(lengths, 32, seed=5, epoch=2, rank=0, world_size=2)
    assert [c.tolist() for c in again] == [c.tolist() for c in ranks[0]]  # a resumed epoch replays exactly
    assert [c.tolist() for c in rank_batches(lengths, 32, seed=5, epoch=3, rank=0, world_size=2)] != \
        [c.tolist() for c in ranks[0]]


def test_a_trained_model_gains_a_summary_head_without_retraining(first_run: TrainResult, small_emopia: Path,
                                                                 workdir: Path, tmp_path: Path) -> None:
    from mer.model import save_artifact
    from mer.train import build_artifact

    headless = tiny_config(summary_head=False)
    torch.manual_seed(3)
    network = MerModel(headless)
    storage = str(tmp_path / "storage")
    trained = save_artifact(network.state_dict(), config=headless, storage=storage,
                            meta={"seed": 3, "best_epoch": 2, "data_fingerprint": first_run.data_fingerprint})
    url = build_artifact([trained], storage=storage, cache_dir=workdir / "cache", emopia=small_emopia,
                         progress=False, summary_head=True)
    upgraded = load_artifact(url, device="cpu")
    assert upgraded.config.model.summary_head and upgraded.config.model == tiny_config().model
    assert upgraded.meta["seed"] == 3 and upgraded.meta["best_epoch"] == 2  # still the same trained network
    assert upgraded.meta["summary_head"]["fitted_on"]["regression"] == "train"
    assert upgraded.meta["source_models"] == [Path(trained).name]
    own = {k: v for k, v in upgraded.model.state_dict().items() if not k.startswith("summary_head.")}
    for key, value in network.state_dict().items():
        torch.testing.assert_close(own[key], value)  # the network's weights are untouched


def test_a_refit_on_train_and_val_keeps_its_last_epoch_and_the_given_choices(ray_cluster, small_emopia: Path,
                                                                             workdir: Path) -> None:
    """A configuration chosen on val, refitted on train + val: the weights are the last epoch's, every val clip is
    in what was fitted, and the summary head's C and blend and the temperature are the given ones."""
    config = tiny_config(epochs=2, workers=1)
    config = dataclasses.replace(config, training=dataclasses.replace(
        config.training, checkpoint="last", fit_on="train+val", summary_c=0.1, summary_blend=0.3, temperature=1.5))
    result = train_model(config, emopia=small_emopia, storage=str(workdir / "storage"), cache_dir=workdir / "cache",
                         run_name="refit", progress=False)
    artifact = load_artifact(result.artifact, device="cpu")
    usable_train = [c for c in load_split(small_emopia, "train") if c.name != BROKEN]
    assert result.best_epoch == 2 and artifact.meta["best_epoch"] == 2
    assert artifact.meta["fitted_on"] == "train+val"
    assert artifact.meta["fitted_clips"] == len(usable_train) + len(load_split(small_emopia, "val"))
    head = artifact.meta["summary_head"]
    assert (head["c"], head["blend"]) == (0.1, 0.3)
    assert head["fitted_on"] == {"regression": "train+val", "c": "given", "blend": "given"}
    assert artifact.meta["calibration"]["fitted_on"] == "given"
    assert artifact.model.quadrant_temperature == 1.5
    folders = sorted(f for f in Path(result.run).glob("checkpoint_*") if f.is_dir())
    last = torch.load(folders[-1] / CHECKPOINT_FILE, weights_only=True)
    assert last["epoch"] == 1  # zero-based: the second epoch
    for key, value in last["model"].items():
        if not key.startswith("summary_head."):  # fitted after training, on the network's outputs
            torch.testing.assert_close(artifact.model.state_dict()[key], value)

    no_head_choice = dataclasses.replace(config, training=dataclasses.replace(config.training, summary_c=None))
    with pytest.raises(ConfigError, match="summary_c and summary_blend"):
        train_model(no_head_choice, emopia=small_emopia, storage=str(workdir / "storage"),
                    cache_dir=workdir / "cache", run_name="refit-without-choices", progress=False)


def test_a_refitted_model_is_not_calibrated_again_on_the_val_it_was_trained_on(tmp_path: Path) -> None:
    from mer.model import save_artifact
    from mer.train import build_artifact

    config = tiny_config()
    storage = str(tmp_path / "storage")
    refitted = save_artifact(MerModel(config).state_dict(), config=config, storage=storage,
                             meta={"seed": 0, "fitted_on": "train+val"})
    with pytest.raises(ConfigError, match="in-sample"):
        build_artifact([refitted], storage=storage, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "storage" / "models").iterdir() if p.is_dir()) == \
        [Path(refitted).name]  # nothing new written
