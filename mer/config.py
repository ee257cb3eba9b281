"""One frozen configuration per concern, combined in :class:`MerConfig`.

Every feature and model parameter lives here. A trained model artifact saves the whole ``MerConfig`` next to
its weights (``MerConfig.to_json``), so training and tagging extract features the same way and a checkpoint
rebuilds its own model. Override with :func:`dataclasses.replace`; flags are parsed only in ``jobs/``.
Nothing here imports anything else of mer's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

BRANCHES: tuple[str, ...] = ("symbolic", "harmony", "tone")
"""The model's three branches, in the order they appear as attention tokens: Bi-GRU over MIDI-like tokens
(rhythm, dynamics, melody), CNN over the chromagram (harmony), short-chunk ResNet over MFCCs (tone colour)."""

QUADRANTS: tuple[str, ...] = ("Q1", "Q2", "Q3", "Q4")

SUMMARY_SIZE: int = 51
"""Length of a window's summary descriptors (key and mode, note statistics, texture:
``mer.features.summary.SUMMARY_NAMES``), the model's FiLM and summary-head input. Here so the model knows it
without importing the feature code."""

SUMMARY_KEY_SIZE: int = 25
"""The summary's first descriptors, key and mode and note statistics: all that a model built without
``ModelConfig.summary_texture`` reads (every model trained before 2026-12-07)."""


NOTE_ON: int = 0
"""MIDI-like token ids (mer.features.tokens): note-on of pitch p is ``NOTE_ON + p``."""
NOTE_OFF: int = 128
"""Note-off of pitch p is ``NOTE_OFF + p``."""
TIME_SHIFT: int = 256
"""A shift of k steps (1 <= k <= max_shift_steps) is ``TIME_SHIFT + k - 1``; the velocity bins follow the shifts,
then the padding id. Here, not in the feature code, so the model can read tokens without the feature libraries."""


@dataclass(frozen=True)
class FeatureConfig:
    """How a piece becomes model input: tokens, rendered audio, chromagram, MFCCs, windows.

    Times are in seconds, rates in Hz. ``window_seconds`` fixes every model input's size: a piece is cut into
    windows of this length (hop ``hop_seconds``); each window is one model input; a short piece is one
    zero-padded window.
    """

    # Audio (rendering from MIDI and decoding of audio files).
    sample_rate: int = 22_050
    soundfont: str | None = None  # None: pretty_midi's bundled General MIDI soundfont
    # MIDI-like tokens (Oore et al. 2018): 128 note-on, 128 note-off, 100 time shifts of 10 ms, 32 velocity bins.
    time_shift_ms: int = 10
    max_shift_steps: int = 100
    velocity_bins: int = 32
    sustain_pedal: bool = True  # pedal-held notes are extended to the pedal release
    max_tokens: int = 1024  # per window; longer token sequences are truncated (the window's first notes kept)
    # STFT front end shared by the chromagram and the MFCCs.
    n_fft: int = 2048
    hop_length: int = 512
    # MFCCs: 23 mel bands as in the paper; the DCT of 23 bands has 23 coefficients, so 23 MFCCs (see README).
    n_mels: int = 23
    n_mfcc: int = 23
    # Windows.
    window_seconds: float = 30.0
    hop_seconds: float = 30.0
    min_seconds: float = 0.5  # shorter pieces are rejected as "too short"
    silence_rms: float = 1e-4  # audio whose RMS is below this is rejected as "silent"

    @property
    def frames_per_window(self) -> int:
        """Chromagram/MFCC frames in one window: ``1 + floor(window_seconds * sample_rate / hop_length)``."""
        return 1 + int(self.window_seconds * self.sample_rate) // self.hop_length

    @property
    def vocab_size(self) -> int:
        """Token vocabulary including the padding token (the last id)."""
        return TIME_SHIFT + self.max_shift_steps + self.velocity_bins + 1


@dataclass(frozen=True)
class ModelConfig:
    """The fused model's sizes (paper, Sec. III). ``branches`` selects the branches built (ablations)."""

    branches: tuple[str, ...] = BRANCHES
    use_attention: bool = True  # False: the "without MHSA" ablation (concatenate, then the FC head)
    # Symbolic branch: token embedding + 2-layer Bi-GRU with 256 units per direction.
    token_embedding: int = 128
    gru_hidden: int = 256
    gru_layers: int = 2
    symbolic_pooling: str = "mean"  # "mean" over the valid steps, or "attention" (learned weights per step)
    symbolic_max_tokens: int = 0  # > 0: the Bi-GRU reads only a window's first N tokens (0: all of them)
    # Dropout on the token embeddings and on each Bi-GRU layer's output, in training only: with ~1,250 training
    # windows the branch fits its training set within a few epochs.
    symbolic_dropout: float = 0.0
    # What the Bi-GRU steps over: "tokens" (one step per MIDI-like token, the paper) or "notes" (one step per note:
    # pitch, velocity, onset gap and duration read back from the tokens inside the model, mer.model.notes).
    symbolic_input: str = "tokens"
    # With "notes": each note also embeds the interval from the previous note (key-invariant melody and voicing).
    note_intervals: bool = False
    # Harmony branch: 3 convolutions with (12, 1) kernels, then 3 with (1, 48) kernels.
    harmony_channels: int = 32  # not fixed by the paper; 32 keeps training within budget on 2 CPU cores
    harmony_time_kernel: int = 48
    # Tone-colour branch: short-chunk ResNet, seven residual blocks.
    resnet_channels: int = 32  # Won et al. use 128 on GPUs; 32 fits the 2-core training budget
    resnet_blocks: int = 7
    # Cepstral mean normalisation: each window's MFCCs are centred per coefficient over its frames before the
    # input BN, so a piano's (or a room's, a microphone's) average spectral envelope and the gain do not reach the
    # ResNet, only how the timbre moves within the window (README, "Other timbres").
    mfcc_mean_norm: bool = False
    # Fusion: each branch projected to ``fusion_dim``, 4-head self-attention, two FC layers.
    fusion_dim: int = 256
    attention_heads: int = 4
    fc_hidden: int = 256
    dropout: float = 0.3
    # Key, mode and note statistics (mer.features.key) modulate the branch tokens before the attention (FiLM).
    summary_film: bool = False
    summary_hidden: int = 64
    # A logistic regression over the summary descriptors, fitted after training and blended with the network's
    # quadrant probabilities (mer.model.summary_head; the blend weight is chosen on val).
    summary_head: bool = False
    # > 0: the summary head's regression is over RBF kernel features of the descriptors at up to this many training
    # windows (Nystroem) instead of over the descriptors themselves: it can fit interactions (minor *and* slow).
    summary_kernel_centres: int = 0
    # Both also read the summary's texture descriptors (mer.features.texture: intervals sounding together,
    # register, the top line, the mode segment by segment, rhythm), not only its first SUMMARY_KEY_SIZE.
    summary_texture: bool = False

    @property
    def summary_width(self) -> int:
        """How many of the summary's first descriptors the model reads (FiLM, summary head)."""
        return SUMMARY_SIZE if self.summary_texture else SUMMARY_KEY_SIZE

    def __post_init__(self) -> None:
        unknown = [b for b in self.branches if b not in BRANCHES]
        if not self.branches or unknown:
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {self.branches!r}")
        if not 0.0 <= self.symbolic_dropout < 1.0:
            raise ValueError(f"symbolic_dropout must be in [0, 1), got {self.symbolic_dropout!r}")
        if self.symbolic_max_tokens < 0:
            raise ValueError(f"symbolic_max_tokens must be >= 0 (0: all tokens), got {self.symbolic_max_tokens!r}")
        if self.symbolic_input not in ("tokens", "notes"):
            raise ValueError(f"symbolic_input must be 'tokens' or 'notes', got {self.symbolic_input!r}")
        if self.note_intervals and self.symbolic_input != "notes":
            raise ValueError("note_intervals needs symbolic_input='notes'")
        if self.summary_kernel_centres < 0:
            raise ValueError(f"summary_kernel_centres must be >= 0 (0: a linear head), "
                             f"got {self.summary_kernel_centres!r}")
        if self.summary_kernel_centres and not self.summary_head:
            raise ValueError("summary_kernel_centres shapes the summary head: it needs summary_head=True")
        if self.symbolic_pooling not in ("mean", "attention"):
            raise ValueError(f"symbolic_pooling must be 'mean' or 'attention', got {self.symbolic_pooling!r}")
        # Keep the canonical order so attention token i always means the same branch.
        object.__setattr__(self, "branches", tuple(b for b in BRANCHES if b in self.branches))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and Ray Train settings."""

    epochs: int = 16  # with the defaults, about 50 minutes on 2 CPU cores for all of EMOPIA (README)
    batch_size: int = 32  # global: split over the workers
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_workers: int = 2
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    va_loss_weight: float = 1.0  # weight of the binary arousal/valence losses beside the 4Q loss
    transpose_semitones: int = 0  # > 0: each training window is moved by a random k in [-n, n] (key changes, label not)
    # How a transposed window's audio features move: "rolled" (chroma rolled by k, MFCCs unchanged: free) or
    # "rendered" (chroma and MFCCs of the transposed MIDI's rendering, extracted once per k: mer.train.renderings).
    transpose_audio: str = "rolled"
    # With ModelConfig.symbolic_max_tokens > 0: each training window's Bi-GRU reads that many consecutive tokens
    # from a random offset (mer.features.crop) instead of always the window's beginning; inference reads the beginning.
    token_crop: bool = False
    # More piano timbres: each training window takes its audio features from a rendering with one of these
    # SoundFonts or the feature config's, drawn at every step (mer.train.renderings). Val and test stay on the
    # feature config's SoundFont.
    extra_soundfonts: tuple[str, ...] = ()
    # > 0: an exponential moving average of the weights (and BatchNorm statistics), updated after every step with
    # this decay, is what each epoch evaluates on val and checkpoints (mer.train.steps.weight_average); 0: off.
    weight_average_decay: float = 0.0
    # > 0: the training loss's targets are smoothed (4Q: 1 - s + s/4 on the true quadrant, s/4 elsewhere; arousal
    # and valence: 1 - s/2 and s/2), so the network is not pushed to certainty on ~1,250 windows; val loss is not.
    label_smoothing: float = 0.0
    # Which epoch becomes the model: "best_val" (highest val 4Q accuracy) or "last" (a schedule fixed in advance).
    checkpoint: str = "best_val"
    # What the network and the summary head are fitted on: "train", or "train+val" — a configuration chosen on
    # val, refitted on both splits (965 clips instead of 767). Val then says nothing about the model: the epoch
    # is the last, and the summary head's C and blend and the calibration temperature are given (below), taken
    # from runs of the same configuration on train alone, where val chose them.
    fit_on: str = "train"
    summary_c: float | None = None  # the summary head's regression strength; None: chosen on val
    summary_blend: float | None = None  # the summary head's blend weight in [0, 1]; None: chosen on val
    temperature: float | None = None  # the quadrant probabilities' temperature; None: fitted on val

    def __post_init__(self) -> None:
        # Checked here, where every entry point builds the config, so a bad flag stops jobs/train.py before Ray
        # starts instead of inside a training worker.
        if self.transpose_semitones < 0:
            raise ValueError(f"transpose_semitones must be >= 0, got {self.transpose_semitones!r}")
        if not 0.0 <= self.weight_average_decay < 1.0:
            raise ValueError(f"weight_average_decay must be in [0, 1), got {self.weight_average_decay!r}")
        if self.va_loss_weight < 0.0:
            raise ValueError(f"va_loss_weight must be >= 0, got {self.va_loss_weight!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.transpose_audio not in ("rolled", "rendered"):
            raise ValueError(f"transpose_audio must be 'rolled' or 'rendered', got {self.transpose_audio!r}")
        if self.checkpoint not in ("best_val", "last"):
            raise ValueError(f"checkpoint must be 'best_val' or 'last', got {self.checkpoint!r}")
        if self.fit_on not in ("train", "train+val"):
            raise ValueError(f"fit_on must be 'train' or 'train+val', got {self.fit_on!r}")
        if self.fit_on == "train+val" and self.checkpoint != "last":
            raise ValueError("fit_on='train+val' trains on val: the epoch cannot be chosen on it (checkpoint='last')")
        if self.fit_on == "train+val" and self.temperature is None:
            raise ValueError("fit_on='train+val' trains on val: the temperature cannot be fitted on it; give one")
        if self.summary_c is not None and self.summary_c <= 0:
            raise ValueError(f"summary_c must be > 0, got {self.summary_c!r}")
        if self.summary_blend is not None and not 0.0 <= self.summary_blend <= 1.0:
            raise ValueError(f"summary_blend must be in [0, 1], got {self.summary_blend!r}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.transpose_audio == "rendered" and self.extra_soundfonts:
            # A window's SoundFont is drawn first; its transposed renderings exist for the primary SoundFont only.
            raise ValueError("transpose_audio='rendered' renders with the feature config's SoundFont only; "
                             "it cannot be combined with extra_soundfonts")


@dataclass(frozen=True)
class TagConfig:
    """Nightly tagging settings (Ray Data)."""

    batch_size: int = 16  # windows per model call (bigger batches amortise the Bi-GRU) and items per transaction
    feature_concurrency: int = 2
    inference_concurrency: int = 2  # at most; single-threaded actors, so a 2-core machine runs one per core
    use_gpu: bool | None = None  # None: one GPU per inference actor when the cluster has GPUs at the start
    page_size: int = 50_000  # keys listed and compared with the catalog at a time, and items per Ray Data pass
    heartbeat_seconds: float = 30.0  # a running run stamps runs.heartbeat_at (and pushes its heartbeat) this often
    dead_after_seconds: float = 300.0  # a 'running' run whose heartbeat is older is closed as failed by the next run
    int8: bool = True  # CPU actors run the Bi-GRU and linear layers with int8 weights (mer.model.quantization)


@dataclass(frozen=True)
class MerConfig:
    """Everything a model artifact needs to rebuild itself and its inputs."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    tagging: TagConfig = field(default_factory=TagConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MerConfig":
        def build(kind, values):
            names = {f.name for f in dataclasses.fields(kind)}
            kwargs = {k: v for k, v in values.items() if k in names}
            for name in ("branches", "extra_soundfonts"):  # JSON lists back to tuples
                if name in kwargs:
                    kwargs[name] = tuple(kwargs[name])
            return kind(**kwargs)

        return cls(
            features=build(FeatureConfig, data.get("features", {})),
            model=build(ModelConfig, data.get("model", {})),
            training=build(TrainConfig, data.get("training", {})),
            tagging=build(TagConfig, data.get("tagging", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> "MerConfig":
        return cls.from_dict(json.loads(text))


def config_fingerprint(config: FeatureConfig) -> str:
    """A short stable hash of a feature config: part of every feature-cache key."""
    payload = json.dumps(dataclasses.asdict(config), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def preset(name: str) -> MerConfig:
    """A named configuration. ``"paper"``: the paper's model as we first built it (the dataclass defaults: Bi-GRU
    256 x 2 with mean pooling, 1024 tokens a window, 16 epochs, no key/mode input, no augmentation).
    ``"default"``: the best configuration found on EMOPIA's validation split, rendered with TimGM6mb and with
    FluidR3_GM (README, "Where we stand"): a
    cheaper Bi-GRU (128 x 2 over the first 512 tokens of a window) with attention pooling, key/mode/note
    statistics by FiLM and by a summary head blended with the network's probabilities, cepstral mean
    normalisation of the MFCCs (``mfcc_mean_norm``: it holds up on a piano it never heard, README "Other piano
    timbres"), 12 epochs. No transposition augmentation since 2026-12-06 (``transpose_semitones``: val was higher
    without it on every seed, README "Where we stand"). Both read the same features (one feature
    cache serves every model version).

    Raises:
        ValueError: an unknown name.
    """
    paper = MerConfig()
    if name == "paper":
        return paper
    if name == "default":
        return dataclasses.replace(
            paper,
            model=dataclasses.replace(paper.model, gru_hidden=128, symbolic_pooling="attention",
                                      symbolic_max_tokens=512, summary_film=True, summary_head=True,
                                      mfcc_mean_norm=True),
            training=dataclasses.replace(paper.training, epochs=12),
        )
    raise ValueError(f"unknown preset {name!r}; known: {PRESETS}")


PRESETS: tuple[str, ...] = ("default", "paper")
