"""EMOPIA in its own layout: ``midis/Q<n>_<song>_<clip>.mid`` and ``split/{train,val,test}.csv``.

EMOPIA (Hung et al., ISMIR 2021) is CC BY-NC-SA 4.0; mer reads it where it lies and never copies it.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from mer.config import QUADRANTS
from mer.errors import DatasetNotFoundError
from mer.labels import arousal_valence

EMOPIA_ENV = "MER_EMOPIA"
SPLITS: tuple[str, ...] = ("train", "val", "test")
_WHERE = (
    "EMOPIA comes from https://zenodo.org/record/5090631 (Hung et al., ISMIR 2021, CC BY-NC-SA 4.0); "
    f"pass its folder with --emopia or the {EMOPIA_ENV} environment variable"
)


def song_of(clip_name: str) -> str:
    """The song of an EMOPIA clip name ``Q<n>_<song>_<clip>`` (song ids may hold underscores)."""
    return clip_name.split("_", 1)[1].rsplit("_", 1)[0]


@dataclass(frozen=True)
class Clip:
    """One EMOPIA clip: its name (``Q1_<song>_<clip>``), quadrant index 0..3 and MIDI path."""

    name: str
    quadrant: int
    midi_path: Path

    @property
    def song(self) -> str:
        return song_of(self.name)

    @property
    def arousal(self) -> int:
        """1 for high arousal (Q1/Q2), else 0 (:func:`mer.labels.arousal_valence`)."""
        return int(arousal_valence(self.quadrant)[0])

    @property
    def valence(self) -> int:
        """1 for positive valence (Q1/Q4), else 0."""
        return int(arousal_valence(self.quadrant)[1])


def emopia_root(path: str | os.PathLike | None = None) -> Path:
    """The EMOPIA folder: ``path``, else ``$MER_EMOPIA``, else ``../shared/emopia`` (from the working directory
    or from the project checkout). Raises :class:`DatasetNotFoundError` saying what is missing and where
    EMOPIA comes from."""
    if path is None:
        path = os.environ.get(EMOPIA_ENV)
    if path is not None:
        candidates = [Path(path)]
    else:
        candidates = [Path.cwd() / "../shared/emopia", Path(__file__).resolve().parents[2] / "../shared/emopia"]
    for candidate in candidates:
        if (candidate / "midis").is_dir() and (candidate / "split").is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(f"EMOPIA not found: no midis/ and split/ folders in {tried}. {_WHERE}.")


def load_split(root: str | os.PathLike, split: str) -> list[Clip]:
    """The clips of one official split, in the CSV's order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    csv_path = root / "split" / f"{split}.csv"
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"EMOPIA split file missing: {csv_path}. {_WHERE}.")
    clips = []
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            name, label = row["fname"].strip(), row["label"].strip()
            midi_path = root / "midis" / f"{name}.mid"
            if not midi_path.is_file():
                raise DatasetNotFoundError(f"EMOPIA clip {name} is listed in {csv_path} but {midi_path} is missing")
            clips.append(Clip(name=name, quadrant=QUADRANTS.index(label), midi_path=midi_path))
    return clips


def song_folds(clips: list[Clip], folds: int, *, seed: int = 0) -> list[list[Clip]]:
    """``clips`` cut into ``folds`` parts with every song's clips in one part and the quadrants spread about
    evenly over the parts (scikit-learn's ``StratifiedGroupKFold``, shuffled by ``seed``); each part in the
    clips' own order. Cross-validation over EMOPIA's train + val keeps EMOPIA's rule that a song never sits on
    both sides of a split."""
    songs = [c.song for c in clips]
    if folds < 2 or folds > len(set(songs)):
        raise ValueError(f"song_folds needs 2 <= folds <= the number of songs ({len(set(songs))}), got {folds}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    parts = splitter.split(np.zeros(len(clips)), [c.quadrant for c in clips], songs)
    return [[clips[i] for i in sorted(held_out)] for _, held_out in parts]
