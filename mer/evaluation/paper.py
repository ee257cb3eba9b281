"""The paper we reproduce: the rows of Tables I and III, their published numbers, and the caveats of comparing.

Zhao & Yoshii report per-clip 4Q, arousal and valence accuracy on EMOPIA's test split (Sec. IV). :data:`METHODS`
are the rows we reproduce — the full model and its four ablations (Table III) and the two linear baselines of
Table I — each with the paper's numbers; :data:`PAPER_ONLY` the Table I rows of other authors' models, shown for
context; :func:`caveats` says in words what differs in our setup.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from mer.config import BRANCHES, MerConfig, ModelConfig, TrainConfig, preset

METRIC_LABELS = {"4q": "4Q", "arousal": "Arousal", "valence": "Valence"}
PAPER_FULL = {"4q": 0.692, "arousal": 0.884, "valence": 0.869}


@dataclass(frozen=True)
class Method:
    """One row of the report: a deep model variant (``branches``, ``use_attention``) or a linear baseline
    (``baseline`` = "symbolic" | "audio"), with the paper's numbers and the table(s) they come from."""

    key: str
    label: str
    tables: str
    paper: dict[str, float]
    branches: tuple[str, ...] = BRANCHES
    use_attention: bool = True
    baseline: str | None = None
    preset: str | None = None  # a deep model of a named configuration (mer.config.preset) instead of the base's
    preset_changes: tuple[tuple[str, Any], ...] = ()  # ModelConfig fields changed from the preset's (ablations)
    training_changes: tuple[tuple[str, Any], ...] = ()  # TrainConfig fields changed from the preset's

    @property
    def deep(self) -> bool:
        return self.baseline is None


def _paper(q: float, a: float, v: float) -> dict[str, float]:
    return {"4q": q, "arousal": a, "valence": v}


MUSESCORE_LITE = "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"
"""Debian's musescore-general-soundfont-small (infra/dev-setup.sh): a second piano timbre to train with, unlike
FluidR3_GM, which stays unseen for the timbre test."""

TRANSPOSED = (("transpose_semitones", 6),)
"""Transposition augmentation of up to 6 semitones: in the default until 2026-12-06, so every row trained before
then names it (their runs were trained with it)."""

NOTE_STEPS = (("symbolic_input", "notes"), ("symbolic_max_tokens", 0))
"""One Bi-GRU step per note, over every note of the window (EMOPIA's windows: median 134 notes, at most 319)."""

KERNEL_HEAD = (("summary_texture", True), ("summary_kernel_centres", 1000))
"""The summary head over RBF kernel features of all 51 descriptors (texture too) at up to 1,000 training windows:
cross-validated alone over the descriptors it scored 0.707 against the linear head's 0.677
(tests/benchmarks/bench_summary_learners.py, 2026-12-07)."""
LAST6 = (("epochs", 6), ("checkpoint", "last"))
"""A 6-epoch cosine schedule whose last epoch is the model (the default's best val epochs over 12: 3 to 10,
median 6): a training that needs no val, so it can be refitted on train + val."""


def _refit(*, c: float, blend: float, temperature: float) -> tuple[tuple[str, Any], ...]:
    """LAST6 refitted on train + val, with what val chose for the same configuration trained on train alone."""
    return (*LAST6, ("fit_on", "train+val"), ("summary_c", c), ("summary_blend", blend), ("temperature", temperature))


REFIT = _refit(c=3.0, blend=0.6, temperature=1.012)
"""LAST6 refitted on train + val: what val chose for row default_last6 (seeds 0-2, results/default-last6/: C 3.0 on
every seed, blend 0.4, 0.6, 0.6, temperature 1.018, 0.995, 1.012), their medians given instead of chosen."""

SYMBOLIC_REFIT = _refit(c=3.0, blend=0.6, temperature=0.954)
"""LAST6 on MIDI alone, refitted on train + val: what val chose for row default_symbolic_last6 (seeds 0-2,
results/default-symbolic-last6/: C 3.0 on every seed, blend 0.6, 0.4, 0.7, temperature 0.954, 0.976, 0.944), their
medians."""

METHODS: tuple[Method, ...] = (
    Method("default", "Default configuration (best on val)", "-", PAPER_FULL, preset="default"),
    Method("default_transpose", "Default with transposition augmentation (±6 semitones; the default until "
           "2026-12-06)", "-", PAPER_FULL, preset="default", training_changes=TRANSPOSED),
    Method("default_transpose_rendered", "Default with transposition augmentation (±6 semitones), audio rendered "
           "from the transposed MIDI", "-", PAPER_FULL, preset="default",
           training_changes=(*TRANSPOSED, ("transpose_audio", "rendered"))),
    Method("default_label_smoothing", "Default with label smoothing (0.1) of the training targets", "-", PAPER_FULL,
           preset="default", training_changes=(("label_smoothing", 0.1),)),
    # Rows trained while the default had transposition augmentation (until 2026-12-06): each names it.
    Method("default_no_cmn", "Default without cepstral mean normalisation (the default until 2026-12-01)", "-",
           PAPER_FULL, preset="default", preset_changes=(("mfcc_mean_norm", False),), training_changes=TRANSPOSED),
    Method("default_network", "Default without the summary head or cepstral mean normalisation (network alone)",
           "-", PAPER_FULL, preset="default", preset_changes=(("summary_head", False), ("mfcc_mean_norm", False)),
           training_changes=TRANSPOSED),
    Method("default_two_pianos", "Default trained on two SoundFonts (TimGM6mb, MuseScore General Lite)", "-",
           PAPER_FULL, preset="default", training_changes=(*TRANSPOSED, ("extra_soundfonts", (MUSESCORE_LITE,)),)),
    Method("default_no_cmn_two_pianos", "Default without cepstral mean normalisation, trained on two SoundFonts",
           "-", PAPER_FULL, preset="default", preset_changes=(("mfcc_mean_norm", False),),
           training_changes=(*TRANSPOSED, ("extra_soundfonts", (MUSESCORE_LITE,)),)),
    # The symbolic additions ablated on the fused default too (the MIDI-only rows below are the cheaper screen).
    Method("default_mean_pool", "Default with mean pooling of the Bi-GRU instead of attention pooling", "-",
           PAPER_FULL, preset="default", preset_changes=(("symbolic_pooling", "mean"),),
           training_changes=TRANSPOSED),
    Method("default_weight_average", "Default with an exponential moving average of the weights (decay 0.98 a step)",
           "-", PAPER_FULL, preset="default", training_changes=(*TRANSPOSED, ("weight_average_decay", 0.98),)),
    Method("default_symbolic", "Default configuration with transposition, MIDI only (symbolic branch with key and "
           "mode)", "-", _paper(0.690, 0.833, 0.744), preset="default", preset_changes=(("branches", ("symbolic",)),),
           training_changes=TRANSPOSED),
    # What each symbolic addition buys, ablated on the MIDI-only default with transposition (row default_symbolic;
    # cheaper than the fused model, README); without transposition it is the MIDI-only form of today's default.
    Method("default_symbolic_mean_pool", "MIDI-only default with mean pooling instead of attention pooling", "-",
           _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), ("symbolic_pooling", "mean")),
           training_changes=TRANSPOSED),
    Method("default_symbolic_no_key", "MIDI-only default without key, mode and note statistics (no FiLM, no summary "
           "head)", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), ("summary_film", False), ("summary_head", False)),
           training_changes=TRANSPOSED),
    Method("default_symbolic_no_film", "MIDI-only default without FiLM (key, mode and note statistics only in the "
           "summary head)", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), ("summary_film", False)),
           training_changes=TRANSPOSED),
    Method("default_symbolic_no_head", "MIDI-only default without the summary head (key, mode and note statistics "
           "only by FiLM)", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), ("summary_head", False)),
           training_changes=TRANSPOSED),
    Method("default_symbolic_no_transpose", "MIDI-only default without transposition augmentation", "-",
           _paper(0.690, 0.833, 0.744), preset="default", preset_changes=(("branches", ("symbolic",)),),
           training_changes=(("transpose_semitones", 0),)),
    Method("default_symbolic_token_crop", "MIDI-only default with token crops (each training window's 512 tokens "
           "from a random offset)", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)),), training_changes=(*TRANSPOSED, ("token_crop", True),)),
    Method("default_symbolic_dropout", "MIDI-only default with dropout 0.3 on the token embeddings and the Bi-GRU "
           "layers' outputs", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), ("symbolic_dropout", 0.3)),
           training_changes=TRANSPOSED),
    Method("default_symbolic_weight_decay", "MIDI-only default with weight decay 0.05 (instead of 1e-4)", "-",
           _paper(0.690, 0.833, 0.744), preset="default", preset_changes=(("branches", ("symbolic",)),),
           training_changes=(*TRANSPOSED, ("weight_decay", 0.05),)),
    # Optimisation screened on the MIDI-only form of today's default (no transposition), 2026-12-07.
    Method("default_symbolic_va_weight", "MIDI-only default with the arousal/valence losses weighted 0.25 "
           "(instead of 1)", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)),), training_changes=(("va_loss_weight", 0.25),)),
    Method("default_symbolic_batch16", "MIDI-only default with global batch 16 (instead of 32; EMOPIA's baseline)",
           "-", _paper(0.690, 0.833, 0.744), preset="default", preset_changes=(("branches", ("symbolic",)),),
           training_changes=(("batch_size", 16),)),
    Method("default_symbolic_slow", "MIDI-only default trained slower and longer (learning rate 3e-4, 24 epochs)",
           "-", _paper(0.690, 0.833, 0.744), preset="default", preset_changes=(("branches", ("symbolic",)),),
           training_changes=(("learning_rate", 3e-4), ("epochs", 24))),
    # The summary's texture descriptors (mer.features.texture), 2026-12-07: fused and MIDI only.
    Method("default_texture", "Default with texture descriptors (intervals sounding together, register, top line, "
           "mode by segment, rhythm) in FiLM and the summary head", "-", PAPER_FULL, preset="default",
           preset_changes=(("summary_texture", True),)),
    Method("default_symbolic_texture", "MIDI-only default with texture descriptors in FiLM and the summary head", "-",
           _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), ("summary_texture", True))),
    # The summary head over kernel features of the descriptors (texture too), 2026-12-07: fused and MIDI only.
    Method("default_kernel_head", "Default with the summary head over RBF kernel features of the descriptors "
           "(texture too) instead of the descriptors", "-", PAPER_FULL, preset="default", preset_changes=KERNEL_HEAD),
    Method("default_symbolic_kernel_head", "MIDI-only default with the summary head over RBF kernel features of "
           "the descriptors (texture too)", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), *KERNEL_HEAD)),
    # The Bi-GRU over a window's notes instead of its tokens (mer.model.notes), reading the whole window, 2026-12-07.
    Method("default_notes", "Default with the Bi-GRU over the window's notes (pitch, velocity, onset gap, duration) "
           "instead of its first 512 tokens", "-", PAPER_FULL, preset="default", preset_changes=NOTE_STEPS),
    Method("default_symbolic_notes", "MIDI-only default with the Bi-GRU over the window's notes instead of its "
           "first 512 tokens", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), *NOTE_STEPS)),
    Method("default_symbolic_notes_transpose", "MIDI-only default over notes, with transposition augmentation "
           "(±6 semitones)", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), *NOTE_STEPS), training_changes=TRANSPOSED),
    Method("default_symbolic_notes_intervals", "MIDI-only default over notes, each note also embedding the interval "
           "from the previous note", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), *NOTE_STEPS, ("note_intervals", True))),
    Method("default_symbolic_notes_dropout", "MIDI-only default over notes, with dropout 0.3 on the note "
           "embeddings and the Bi-GRU layers' outputs", "-", _paper(0.690, 0.833, 0.744), preset="default",
           preset_changes=(("branches", ("symbolic",)), *NOTE_STEPS, ("symbolic_dropout", 0.3))),
    # A schedule fixed in advance (the last epoch kept, not the best on val): screened on val, so that the same
    # configuration can be refitted on train + val, where val can choose nothing (2026-12-07).
    Method("default_last6", "Default trained 6 epochs (cosine to zero), the last epoch kept instead of the best on "
           "val", "-", PAPER_FULL, preset="default", training_changes=LAST6),
    Method("default_refit", "Default trained 6 epochs on train + val (965 clips), the last epoch kept; the summary "
           "head's C and blend and the temperature from the row above", "-", PAPER_FULL, preset="default",
           training_changes=REFIT),
    Method("default_symbolic_last6", "MIDI-only default trained 6 epochs (cosine to zero), the last epoch kept",
           "-", _paper(0.690, 0.833, 0.744), preset="default", preset_changes=(("branches", ("symbolic",)),),
           training_changes=LAST6),
    Method("default_symbolic_refit", "MIDI-only default trained 6 epochs on train + val (965 clips), the last "
           "epoch kept; the summary head's C and blend and the temperature from the row above", "-",
           _paper(0.690, 0.833, 0.744), preset="default", preset_changes=(("branches", ("symbolic",)),),
           training_changes=SYMBOLIC_REFIT),
    Method("full", "Full model (ours)", "I, III", _paper(0.692, 0.884, 0.869)),
    Method("symbolic", "Symbolic analysis branch", "III", _paper(0.690, 0.833, 0.744), branches=("symbolic",)),
    Method("harmony", "Harmony analysis branch", "III", _paper(0.514, 0.726, 0.685), branches=("harmony",)),
    Method("tone", "Tone color analysis branch", "III", _paper(0.649, 0.871, 0.711), branches=("tone",)),
    Method("no_mhsa", "Without MHSA", "III", _paper(0.639, 0.858, 0.753), use_attention=False),
    Method("symbolic_lr", "Symbolic-LR", "I", _paper(0.581, 0.849, 0.651), baseline="symbolic"),
    Method("audio_lr", "Audio-LR", "I", _paper(0.523, 0.919, 0.558), baseline="audio"),
)
"""The rows we reproduce: Table III (full model and its four ablations) and Table I's two linear baselines."""

PAPER_ONLY: tuple[tuple[str, dict[str, float]], ...] = (
    ("LSTM-Attn + MIDI-like", _paper(0.684, 0.882, 0.833)),
    ("LSTM-Attn + REMI", _paper(0.615, 0.890, 0.746)),
    ("Short-chunk ResNet", _paper(0.677, 0.887, 0.704)),
)
"""Table I rows we do not reproduce (other authors' models), shown for context."""

CAVEAT_AUDIO = (
    "**Caveat — audio.** EMOPIA's recordings are not distributed (the paper downloaded them from YouTube); here "
    "every clip's audio is rendered from its MIDI file with FluidSynth and a General MIDI piano SoundFont "
    "(pretty_midi's bundled TimGM6mb unless configured otherwise). The harmony and tone-colour branches and "
    "Audio-LR therefore see a synthetic piano with the MIDI's exact notes, not a real recording — cleaner in "
    "pitch, poorer in timbre and performance acoustics — so their numbers are not directly comparable to the "
    "paper's."
)


def methods_named(keys: Sequence[str]) -> list[Method]:
    """The rows of :data:`METHODS` with these keys, in the keys' order; an unknown key is a ValueError that lists
    the keys there are."""
    by_key = {m.key: m for m in METHODS}
    unknown = sorted(set(keys) - set(by_key))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {[m.key for m in METHODS]}")
    return [by_key[key] for key in keys]


def method_key(config: MerConfig) -> str:
    """The :data:`METHODS` key of a deep model's configuration (``"custom"`` when it is none of them: also a
    preset row's model trained otherwise than the row says, e.g. with more epochs or another SoundFont)."""
    presets = [m for m in METHODS if m.preset is not None]
    for method in presets:
        if config.model == preset_model(method) and _settings(config.training) == _settings(preset_training(method)):
            return method.key
    if any(config.model == preset_model(m) for m in presets):
        return "custom"
    for method in METHODS:
        if method.preset is None and method.deep and method.branches == config.model.branches \
                and method.use_attention == config.model.use_attention:
            return method.key
    return "custom"


def preset_model(method: Method) -> ModelConfig:
    """A preset row's model: the preset's, with the row's ``preset_changes``."""
    return dataclasses.replace(preset(method.preset).model, **dict(method.preset_changes))


def preset_training(method: Method) -> TrainConfig:
    """A preset row's optimisation settings: the preset's, with the row's ``training_changes``."""
    return dataclasses.replace(preset(method.preset).training, **dict(method.training_changes))


def _settings(training: TrainConfig) -> TrainConfig:
    """What a row's training means, without where and with which seed it ran."""
    return dataclasses.replace(training, seed=0, num_workers=1, use_gpu=None)


def method_config(base: MerConfig, method: Method, *, seed: int, epochs: int | None = None) -> MerConfig:
    """``base`` with the method's branches / attention and the seed; for a preset's row, the preset's model and
    training settings on ``base``'s features and workers. ``epochs``: this many, whatever the row or its preset says
    (a budget asked for explicitly reaches every row)."""
    if method.preset is not None:
        config = dataclasses.replace(base, model=preset_model(method), training=dataclasses.replace(
            preset_training(method), seed=seed, num_workers=base.training.num_workers,
            use_gpu=base.training.use_gpu))
    else:
        config = dataclasses.replace(
            base,
            model=dataclasses.replace(base.model, branches=method.branches, use_attention=method.use_attention),
            training=dataclasses.replace(base.training, seed=seed),
        )
    return config if epochs is None else dataclasses.replace(
        config, training=dataclasses.replace(config.training, epochs=epochs))


def caveats(setup: dict[str, Any]) -> list[str]:
    """The report's caveats, in words, for this run's setup."""
    training, features = setup["training"], setup["features"]
    default_training = preset("default").training
    test_clips = setup["clips"]["test"]
    notes = [
        CAVEAT_AUDIO,
        f"**Training budget.** Each deep model of the paper's rows: {training['epochs']} epoch(s), global batch "
        f"{training['batch_size']}, AdamW lr {training['learning_rate']}, weight decay {training['weight_decay']}, "
        f"{training['num_workers']} Ray Train worker(s); the rows of the default configuration (keys `default...`) "
        f"train with `mer.config.preset('default')`'s settings ({default_training.epochs} epochs, global batch "
        f"{default_training.batch_size}, AdamW lr {default_training.learning_rate}) and their row's changes. "
        "Every run keeps the checkpoint with the best val 4Q accuracy, except the rows that say they keep the last "
        "epoch; a row refitted on train + val trains on val too, so its val scores are in-sample and its summary "
        "head's C and blend and its temperature are given, not chosen on val. "
        f"Inputs are cut into {features['window_seconds']:g} s windows (hop {features['hop_seconds']:g} s), at most "
        f"{features['max_tokens']} MIDI-like tokens per window; a clip's prediction is the mean of its windows'. "
        "The paper does not state its budget, so ours may be smaller than theirs.",
        f"**Protocol.** EMOPIA's official song-disjoint split; models and C selected on val only; test scored once "
        f"per seed. The test split has {test_clips} clips, so one clip moves an accuracy by "
        f"{100 / max(test_clips, 1):.1f} points: differences of a few points are within noise. ± is the sample "
        "standard deviation over seeds.",
        "**Linear baselines.** The lbfgs logistic regression is convex and deterministic, so its seeds agree "
        "(± 0). Features follow EMOPIA's description in spirit (clip-level note statistics / mean and std of "
        "chroma and MFCCs), not its exact code.",
        "**Data.** We use all EMOPIA MIDI clips of each split; the paper lost about 5% of the clips whose YouTube "
        "recordings were unavailable.",
    ]
    if setup.get("subset") is not None:
        notes.insert(0, f"**Subset run.** Only {setup['subset']} training clips (and proportional val/test clips) "
                        "were used: a smoke test, not a reproduction.")
    skipped = sum(len(v) for v in setup.get("skipped", {}).values())
    if skipped:
        notes.append(f"**Skipped clips.** {skipped} clip(s) failed feature extraction and were left out "
                     "(listed in report.json).")
    return notes
