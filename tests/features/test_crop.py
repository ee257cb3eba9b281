"""Token crops (mer.features.crop): a training window's Bi-GRU input from a random place in the window."""
from __future__ import annotations

import numpy as np
import pytest

from mer.config import FeatureConfig
from mer.features import crop_batch, pad_id
from mer.features.crop import crop_offsets

PAD = pad_id(FeatureConfig())


def padded_batch(rng: np.random.Generator, lengths: list[int]) -> dict[str, np.ndarray]:
    width = max(lengths)
    tokens = np.full((len(lengths), width), PAD, dtype=np.int16)
    for row, length in enumerate(lengths):
        tokens[row, :length] = rng.integers(0, PAD, size=length)
    return {"tokens": tokens, "token_lengths": np.asarray(lengths, dtype=np.int64),
            "quadrant": np.arange(len(lengths)) % 4, "summary": rng.random((len(lengths), 25)).astype(np.float32)}


@pytest.mark.parametrize("seed", range(5))
def test_a_crop_is_a_contiguous_piece_of_its_own_window(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 1025, size=12)]
    batch = padded_batch(rng, lengths)
    out = crop_batch(batch, span=512, rng=np.random.default_rng(seed + 100))
    for row, length in enumerate(lengths):
        kept = out["token_lengths"][row]
        assert kept == min(length, 512)
        piece = out["tokens"][row, :kept]
        original = batch["tokens"][row, :length]
        starts = [s for s in range(length - kept + 1) if np.array_equal(original[s:s + kept], piece)]
        assert starts, f"row {row}: the crop is not a run of the window's own tokens"
        assert (out["tokens"][row, kept:] == PAD).all()
    for key in ("quadrant", "summary"):  # the label and the whole window's descriptors stay
        np.testing.assert_array_equal(out[key], batch[key])
    assert out["tokens"].shape[1] <= 512


def test_windows_within_the_span_are_left_as_they_are() -> None:
    rng = np.random.default_rng(0)
    batch = padded_batch(rng, [3, 200, 512])
    out = crop_batch(batch, span=512, rng=rng)
    np.testing.assert_array_equal(out["tokens"], batch["tokens"])
    np.testing.assert_array_equal(out["token_lengths"], batch["token_lengths"])


def test_crops_reach_every_part_of_a_long_window() -> None:
    """Over many draws a long window's end is read as often as its beginning (what the crop is for)."""
    offsets = crop_offsets(np.array([1024] * 4000), 512, np.random.default_rng(1))
    assert offsets.min() == 0 and offsets.max() == 512  # the first and the last 512 tokens both occur
    assert abs(offsets.mean() - 256) < 10  # uniform: no part of the window favoured
    assert (crop_offsets(np.array([300, 512]), 512, np.random.default_rng(1)) == 0).all()


def test_the_input_batch_is_not_modified() -> None:
    rng = np.random.default_rng(2)
    batch = padded_batch(rng, [900, 40])
    before = {k: v.copy() for k, v in batch.items()}
    crop_batch(batch, span=100, rng=rng)
    for key, value in before.items():
        np.testing.assert_array_equal(batch[key], value)


def test_a_span_below_one_token_is_refused() -> None:
    with pytest.raises(ValueError, match="span"):
        crop_batch(padded_batch(np.random.default_rng(0), [5]), span=0, rng=np.random.default_rng(0))
