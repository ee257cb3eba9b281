"""Inference near the hardware: compact window rows, length-bucketed model batches that change no label."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mer.config import BRANCHES
from mer.model import MerModel
from mer.model.artifact import save_artifact
from mer.model.quantization import Int8Unavailable
from mer.storage import LocalStore
from mer.tagging.predictor import WindowPredictor, length_buckets
from mer.features import token_dtype
from mer.tagging.prepare import batch_of, item_row, prepare_item
from mer.tagging.storage import list_items
from mer.train.emopia import emopia_root, load_split
from tiny import tiny_config

CLIPS = 6


@pytest.fixture(scope="module")
def config():
    return tiny_config(max_tokens=256)  # 5-s windows holding 20 to 256 tokens: lengths that differ a lot


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, config) -> str:
    torch.manual_seed(0)
    return save_artifact(MerModel(config).state_dict(), config=config,
                         storage=str(tmp_path_factory.mktemp("storage")), meta={"data_fingerprint": "test"})


@pytest.fixture(scope="module")
def window_rows(tmp_path_factory: pytest.TempPathFactory, config) -> list[dict]:
    """The window rows of a few EMOPIA clips (MIDI, audio rendered), as the feature tasks emit them."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    for clip in load_split(emopia_root(), "train")[:CLIPS]:
        store.write(f"{clip.name}.mid", clip.midi_path.read_bytes())
    items, _ = list_items(store)
    return [row for item in items for row in prepare_item(store, item_row(item), config=config,
                                                          render_missing_audio=True).window_rows(config)]


def test_bucketed_batches_give_the_labels_of_unbucketed_ones(model, window_rows) -> None:
    batch = batch_of(window_rows)
    lengths = np.asarray(batch["token_length"])
    assert lengths.min() < lengths.max() / 2  # the clips' windows differ in length: bucketing has work to do

    bucketed = WindowPredictor(model, batch_size=4, num_threads=1)(batch)
    arrival = WindowPredictor(model, batch_size=4, bucket=False, num_threads=1)(batch)
    alone = WindowPredictor(model, batch_size=1, num_threads=1)(batch)

    for out in (bucketed, arrival, alone):
        assert set(out["failed_stage"]) == {""}
        assert "tokens" not in out and "chroma" not in out  # what comes back is small
    for column in ("quadrant_probs", "arousal_prob", "valence_prob", "attention"):
        np.testing.assert_allclose(bucketed[column], arrival[column], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bucketed[column], alone[column], rtol=1e-5, atol=1e-6)
    assert np.array_equal(bucketed["quadrant_probs"].argmax(axis=1), alone["quadrant_probs"].argmax(axis=1))


def test_rows_say_whether_int8_ran_and_a_torch_without_it_says_float32(model, window_rows, monkeypatch) -> None:
    batch = batch_of(window_rows[:4])
    assert WindowPredictor(model, int8=True, num_threads=1)(batch)["int8"].all()
    assert not WindowPredictor(model, int8=False, num_threads=1)(batch)["int8"].any()

    def no_int8_kernels(model, **options):  # what quantize_int8 raises where torch.backends.quantized.engine is "none"
        raise Int8Unavailable("no quantised kernels for this CPU")

    monkeypatch.setattr("mer.model.inference.quantize_int8", no_int8_kernels)
    with pytest.warns(RuntimeWarning, match="int8 inference unavailable"):
        fallback = WindowPredictor(model, int8=True, num_threads=1)
    out = fallback(batch)
    assert not out["int8"].any()  # the driver records the run as float32, as it ran
    assert set(out["failed_stage"]) == {""}


def test_length_buckets_pad_less_than_arrival_order_and_use_every_window_once(window_rows) -> None:
    lengths = np.asarray([row["token_length"] for row in window_rows])
    rows = np.arange(lengths.shape[0])

    def padded_steps(chunks: list[np.ndarray]) -> int:  # GRU steps spent on padding: the batch runs to its longest
        return int(sum(lengths[chunk].max() * chunk.shape[0] - lengths[chunk].sum() for chunk in chunks))

    buckets = length_buckets(lengths, rows, 4)
    arrival = [rows[i:i + 4] for i in range(0, rows.shape[0], 4)]
    assert sorted(np.concatenate(buckets).tolist()) == rows.tolist()
    assert all(chunk.shape[0] <= 4 for chunk in buckets)
    assert padded_steps(buckets) < padded_steps(arrival)


def test_window_rows_are_compact(tmp_path: Path, config, model, window_rows) -> None:
    row = window_rows[0]
    assert row["tokens"].dtype == token_dtype(config.features) == np.uint16
    assert row["tokens"].shape == (row["token_length"],)  # no padding travels
    assert row["chroma"].shape == (12, config.features.frames_per_window)

    store = LocalStore(tmp_path)
    store.write("midi only.mid", (emopia_root() / "midis" / f"{load_split(emopia_root(), 'train')[0].name}.mid")
                .read_bytes())
    store.write("broken.mid", b"not a midi file")
    items, _ = list_items(store)
    rows = {item.stem: prepare_item(store, item_row(item), config=config).window_rows(config) for item in items}
    midi_only = rows["midi only"][0]
    assert midi_only["chroma"].shape == (12, 0) and midi_only["mfcc"].shape == (config.features.n_mfcc, 0)
    assert list(midi_only["present"]) == [True, False, False]
    (failure,) = rows["broken"]
    assert failure["failed_stage"] == "read"
    assert failure["tokens"].size == failure["chroma"].size == failure["mfcc"].size == 0
    assert not failure["present"].any() and len(failure["present"]) == len(BRANCHES)
    # A batch mixing all three kinds runs: absent inputs are never read, the failure passes through.
    out = WindowPredictor(model, batch_size=2, num_threads=1)(batch_of([*rows["midi only"], failure, *window_rows[:3]]))
    assert list(out["failed_stage"]) == [""] * len(rows["midi only"]) + ["read"] + [""] * 3



@pytest.mark.parametrize("module", ["mer.tagging.attempts", "mer.tagging.predictor"])
def test_a_worker_imports_neither_the_catalog_nor_the_metrics_nor_the_fft(module: str) -> None:
    # A Ray Data feature task unpickles a function of mer.tagging.attempts, an inference actor the predictor: four
    # such processes start per pass on two cores, and each import before the first item delays the pass.
    import subprocess
    import sys

    unwanted = ("mer.catalog", "sqlalchemy", "prometheus_client", "mer.tagging.plan", "scipy.fft", "librosa")
    code = f"import sys, {module}; print('imported:', *(m for m in {unwanted!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = done.stdout.strip().splitlines()[-1]  # pyfluidsynth may print a line of its own before
    assert imported == "imported:", f"{module} {imported}"


def test_the_driver_merges_windows_into_pieces_without_importing_torch() -> None:
    # The tagging driver shares the machine with the inference actors; importing torch to average a piece's windows
    # cost it 1.3 s of CPU in the middle of every pass. It plans with read_artifact and records with
    # aggregate_windows, neither of which needs torch.
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, mer.tagging.pipeline, mer.tagging.recorder\n"
        "from mer.model import aggregate_windows, read_artifact\n"
        "probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]], dtype=np.float32)\n"
        "(piece,) = aggregate_windows({'name': np.array(['a', 'a']), 'window_index': np.array([1, 0]),\n"
        "    'window_start': np.array([30.0, 0.0]), 'quadrant_probs': probs, 'arousal_prob': np.array([0.9, 0.1]),\n"
        "    'valence_prob': np.array([0.5, 0.5]), 'attention': np.zeros((2, 4, 3, 3))})\n"
        "print(piece.window_starts.tolist(), round(float(piece.arousal_prob), 3), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[0.0, 30.0] 0.5 False"
