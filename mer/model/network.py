"""The multimodal multifaceted emotion model of Zhao & Yoshii (paper, Sec. III, Fig. 2).

Read top to bottom like Fig. 2: building blocks, then the three branch encoders (symbolic Bi-GRU over MIDI-like
tokens, Sec. III-A; harmony CNN over the chromagram, III-B; tone-colour short-chunk ResNet over MFCCs, III-C),
then the attention fusion and the classifier (III-D), then :class:`MerModel`, which wires them together.

Shapes: ``B`` items in a batch, ``L`` tokens per window, ``F`` feature frames per window
(``FeatureConfig.frames_per_window``), ``M`` MFCCs, ``C`` channels, ``T`` time steps after down-sampling,
``n`` built branches, ``D`` = ``ModelConfig.fusion_dim``, ``h`` attention heads.

Missing modalities. ``present`` (B, 3) says per item which inputs exist (BRANCHES order). Each branch encodes only
the items that have it, so an absent input is never read: it cannot change any output or receive a gradient, and
it does not enter BatchNorm's batch statistics. Absent branches are masked out of attention (``key_padding_mask``)
and their tokens are zeroed before the classifier. A symbolic input with ``token_length == 0`` (no notes in the
window) counts as absent.

The model returns logits; softmax (quadrants) and sigmoid (arousal, valence) belong to the loss and to
prediction. Nothing here depends on a device: every tensor follows the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mer.config import BRANCHES, FeatureConfig, MerConfig, ModelConfig
from mer.model.notes import MAX_INTERVAL, PITCHES, TIME_BUCKETS, note_steps, time_bucket
from mer.model.summary_head import SummaryHead

N_QUADRANTS = 4
N_VA = 2  # arousal, valence (in this column order)
PITCH_CLASSES = 12
HARMONY_TIME_POOL = 8  # frames merged after the first pitch conv: 23 ms -> 186 ms, still finer than chord changes


@dataclass
class ModelOutput:
    """What :meth:`MerModel.forward` returns.

    ``quadrant_logits`` (B, 4): Q1..Q4 logits (softmax gives probabilities).
    ``va_logits`` (B, 2): column 0 arousal, column 1 valence logits (sigmoid gives P(high)).
    ``attention`` (B, h, 3, 3) | None: per-head attention weights, query rows and key columns in BRANCHES order;
    rows of present branches sum to 1, rows and columns of branches not built or not present are 0.
    None when the model was built with ``use_attention=False``.
    """

    quadrant_logits: torch.Tensor
    va_logits: torch.Tensor
    attention: torch.Tensor | None


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[i]`` steps of each sequence, leaving the padding after them in place.

    x (N, L, E), lengths (N,) in 1..L -> (N, L, E). Its own inverse.
    """
    steps = torch.arange(x.shape[1], device=x.device)  # (L,)
    lengths = lengths.to(x.device).unsqueeze(1)  # (N, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (N, L)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))  # (N, L, E)


class BiGRULayer(nn.Module):
    """One bidirectional GRU layer over padded sequences (paper, Sec. III-A, Eqs. 1-3).

    The forward GRU reads the padded batch as is: step t depends on steps <= t only, so the padding after a
    sequence never reaches its valid steps. The backward GRU reads each sequence reversed within its length
    (:func:`reverse_valid`), so it too meets the padding only after the valid steps. This is what
    ``pack_padded_sequence`` guarantees, without it: on CPU (torch 2.13) the backward pass of a packed 2-layer
    Bi-GRU took 48 CPU-seconds for 16 sequences of 600-800 tokens, against 1.4 s for the fused padded kernel.
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.forward_gru = nn.GRU(in_features, hidden, batch_first=True)
        self.backward_gru = nn.GRU(in_features, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (N, L, E), lengths (N,) in 1..L -> (N, L, 2H); steps past a sequence's length hold junk."""
        forward, _ = self.forward_gru(x)  # (N, L, H)
        backward, _ = self.backward_gru(reverse_valid(x, lengths))  # (N, L, H), in reversed order
        return torch.cat([forward, reverse_valid(backward, lengths)], dim=-1)  # (N, L, 2H)


class AttentionPooling(nn.Module):
    """Attention pooling over the valid steps of a sequence (Lin et al. 2017, one head; the pooling of EMOPIA's
    symbolic baseline): a score ``w2 . tanh(W1 h_t)`` per step, softmax over the valid steps, the weighted sum.
    Steps past a sequence's length get no weight, so padding cannot change the result."""

    def __init__(self, features: int, hidden: int = 128) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (N, L, F), valid (N, L) bool with >= 1 True per row -> (N, F)."""
        scores = self.score(x).squeeze(-1).masked_fill(~valid, float("-inf"))  # (N, L)
        weights = torch.softmax(scores, dim=1)  # (N, L): 0 on padding
        return (weights.unsqueeze(-1) * x.masked_fill(~valid.unsqueeze(-1), 0.0)).sum(dim=1)  # (N, F)


class PitchConv(nn.Module):
    """A (12, 1) convolution over the pitch-class axis, + BN + ReLU (paper, Sec. III-B, "vertical" kernel).

    The 12 pitch-class rows wrap (B is next to C), so the axis is padded circularly (5 rows above, 6 below) and
    stays 12 rows. Each output row then sees all 12 pitch classes starting from a different root: transposing
    the input (rolling its rows) rolls the output rows the same way, and global pooling later makes the branch
    key-independent while it still tells chord qualities (major/minor) apart.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (PITCH_CLASSES, 1), bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, 12, T) -> (N, C_out, 12, T)."""
        x = F.pad(x, (0, 0, 5, 6), mode="circular")  # (N, C_in, 23, T): rows wrap around the octave
        return F.relu(self.bn(self.conv(x)))


class TimeConv(nn.Module):
    """A (1, K) convolution along time with stride 2, + BN + ReLU (paper, Sec. III-B, "horizontal" kernel).

    Padding K // 2 makes the output ``floor(T / 2) + 1`` steps long: it halves time and never reaches 0.
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, (1, kernel), stride=(1, 2), padding=(0, kernel // 2), bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 12, T) -> (N, C, 12, floor(T / 2) + 1)."""
        return F.relu(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    """Residual block of the short-chunk ResNet (Won et al. 2020, sota-music-tagging-models ``Res_2d``).

    conv3x3 (stride 2) -> BN -> ReLU -> conv3x3 -> BN, plus a strided projection shortcut, then ReLU.
    As in Won's ``Res_2d`` only the first conv strides. The paper (Sec. III-C) says "stride 2 for every Conv2D
    layer", which would divide both axes by 4 per block: the 23 MFCCs would be one row after three blocks and a
    30-s window one time step after six. The shortcut is a 1x1 conv + BN (the standard ResNet projection);
    Won's uses a 3x3 conv there, 9x the cost for the same role.
    Padding 1 keeps any axis of size 1 at size 1, so a block never shrinks an axis to 0.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


# ----------------------------------------------------------------------------------------------------------------
# Branch encoders
# ----------------------------------------------------------------------------------------------------------------


class NoteEmbedding(nn.Module):
    """One vector per note (``symbolic_input="notes"``): the sum of embeddings of its pitch, velocity bin, onset gap
    and duration (compound words, mer.model.notes), and with ``intervals`` of the interval from the previous note.
    Padding steps embed to zero."""

    def __init__(self, features: FeatureConfig, dim: int, *, intervals: bool = False) -> None:
        super().__init__()
        self.features = features
        self.pitch = nn.Embedding(PITCHES + 1, dim, padding_idx=PITCHES)
        self.velocity = nn.Embedding(features.velocity_bins, dim)
        self.onset_gap = nn.Embedding(TIME_BUCKETS, dim)
        self.duration = nn.Embedding(TIME_BUCKETS, dim)
        self.interval = nn.Embedding(2 * MAX_INTERVAL + 2, dim) if intervals else None

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (N, L), lengths (N,) -> note vectors (N, S, E) and notes per window (N,), each in 1..S."""
        notes = note_steps(tokens, lengths, config=self.features)
        x = self.pitch(notes.pitch) + self.velocity(notes.velocity) \
            + self.onset_gap(time_bucket(notes.onset_gaps())) + self.duration(time_bucket(notes.duration))  # (N, S, E)
        if self.interval is not None:
            x = x + self.interval(notes.intervals())  # (N, S, E)
        return x * (notes.pitch < PITCHES).unsqueeze(-1).to(x.dtype), notes.counts


class SymbolicEncoder(nn.Module):
    """Melody, rhythm and dynamics from MIDI-like tokens (paper, Sec. III-A, Eqs. 1-3).

    Token embedding (the PAD id ``vocab_size - 1`` embeds to a fixed zero vector) -> ``gru_layers`` stacked
    :class:`BiGRULayer` with ``gru_hidden`` units per direction -> mean of ``h_t = [forward_t, backward_t]`` over
    the valid steps. Padding cannot change the result (every valid step only sees valid steps), and the batch is
    cut to its longest sequence, so padding beyond that costs nothing.
    Mean pooling rather than the last states: a window holds ~700 tokens, and the mean gives every step a direct
    gradient and summarises the whole window (note density, velocity spread) instead of its two ends.
    ``symbolic_pooling="attention"`` learns which steps matter instead (:class:`AttentionPooling`).
    ``symbolic_input="notes"`` steps over the window's notes instead of its tokens (:class:`NoteEmbedding`).
    """

    def __init__(self, config: MerConfig) -> None:
        super().__init__()
        model = config.model
        vocab = config.features.vocab_size
        self.notes = NoteEmbedding(config.features, model.token_embedding, intervals=model.note_intervals) \
            if model.symbolic_input == "notes" else None
        self.embedding = None if self.notes is not None else \
            nn.Embedding(vocab, model.token_embedding, padding_idx=vocab - 1)
        sizes = [model.token_embedding] + [2 * model.gru_hidden] * (model.gru_layers - 1)
        self.layers = nn.ModuleList(BiGRULayer(size, model.gru_hidden) for size in sizes)
        self.out_features = 2 * model.gru_hidden
        self.pooling = AttentionPooling(self.out_features) if model.symbolic_pooling == "attention" else None
        self.max_tokens = model.symbolic_max_tokens
        self.dropout = nn.Dropout(model.symbolic_dropout)  # no-op in eval mode and at p = 0

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (N, L) long, lengths (N,) long, each in 1..L -> (N, 2 * gru_hidden)."""
        if self.max_tokens:  # read only the window's beginning (a cheaper GRU; the features stay the same)
            lengths = lengths.clamp(max=self.max_tokens)
        tokens = tokens[:, : int(lengths.max())]  # (N, L'): padding past the longest sequence is never computed
        if self.notes is not None:
            x, lengths = self.notes(tokens, lengths)  # (N, S, E), notes per window: the steps from here on
            x = self.dropout(x)
        else:
            x = self.dropout(self.embedding(tokens))  # (N, L', E)
        for layer in self.layers:
            x = self.dropout(layer(x, lengths))  # (N, L', 2H)
        valid = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)  # (N, L')
        if self.pooling is not None:
            return self.pooling(x, valid)  # (N, 2H)
        x = x * valid.unsqueeze(-1).to(x.dtype)  # (N, L', 2H): padded steps -> 0
        return x.sum(dim=1) / lengths.to(x.dtype).unsqueeze(1)  # (N, 2H): mean over the valid steps


class HarmonyEncoder(nn.Module):
    """Harmony from the chromagram (paper, Sec. III-B).

    Input BN -> three (12, 1) pitch-class convs (:class:`PitchConv`; the first reads every 23 ms frame, then
    time is max-pooled by ``HARMONY_TIME_POOL``) -> three (1, K) time convs with stride 2 (:class:`TimeConv`)
    -> global max pool over pitch rows and time. For F = 1292 frames (30 s): 1292 -> 162 -> 82 -> 42 -> 22 steps.
    Max pooling is not diluted by the zero-padded tail of a short piece's window.
    """

    def __init__(self, config: MerConfig) -> None:
        super().__init__()
        channels = config.model.harmony_channels
        kernel = config.model.harmony_time_kernel
        self.input_bn = nn.BatchNorm2d(1)
        self.pitch_convs = nn.ModuleList(PitchConv(c, channels) for c in (1, channels, channels))
        self.pool = nn.MaxPool2d((1, HARMONY_TIME_POOL), ceil_mode=True)  # ceil: a window shorter than 8 frames -> 1
        self.time_convs = nn.Sequential(*(TimeConv(channels, kernel) for _ in range(3)))
        self.out_features = channels

    def forward(self, chroma: torch.Tensor) -> torch.Tensor:
        """chroma (N, 12, F) -> (N, harmony_channels)."""
        x = self.input_bn(chroma.unsqueeze(1))  # (N, 1, 12, F)
        x = self.pool(self.pitch_convs[0](x))  # (N, C, 12, ceil(F / 8))
        x = self.pitch_convs[2](self.pitch_convs[1](x))  # (N, C, 12, T)
        x = self.time_convs(x)  # (N, C, 12, T'), T' ~ T / 8
        return x.amax(dim=(2, 3))  # (N, C)


def resnet_widths(channels: int, blocks: int) -> list[int]:
    """Output channels per residual block, Won's schedule: c, c, 2c, 2c, 2c, 2c, 4c for seven blocks."""
    return [channels * (1 if i < 2 else 2 if i < blocks - 1 else 4) for i in range(blocks)]


def centre_frames(frames: torch.Tensor) -> torch.Tensor:
    """(N, M, F) frames minus each row's mean over the window's real frames; padding frames (all M rows exactly
    zero: past the audio's end) are not counted and stay zero. A constant added to a row (a gain or a fixed EQ,
    in the cepstrum) leaves the result unchanged."""
    real = (frames != 0).any(dim=1, keepdim=True)  # (N, 1, F)
    count = real.sum(dim=2, keepdim=True).clamp(min=1)  # (N, 1, 1)
    mean = (frames * real).sum(dim=2, keepdim=True) / count  # (N, M, 1)
    return (frames - mean) * real  # (N, M, F)


class ToneEncoder(nn.Module):
    """Tone colour from MFCCs: the short-chunk ResNet (paper, Sec. III-C; Won et al. 2020, ``ShortChunkCNN_Res``).

    Input BN per coefficient -> ``resnet_blocks`` :class:`ResBlock` (each halves both axes) -> global max pool.
    Won normalises a mel spectrogram with one ``BatchNorm2d(1)``; MFCCs differ in scale per coefficient (c0 is
    log energy, hundreds; the rest tens), so each coefficient gets its own BN. With M = 23 the coefficient axis
    goes 23 -> 12 -> 6 -> 3 -> 2 -> 1 -> 1 -> 1 and time 1292 -> ... -> 11 over seven blocks. With
    ``mfcc_mean_norm`` each window is first centred per coefficient (:func:`centre_frames`; not in the paper).
    """

    def __init__(self, config: MerConfig) -> None:
        super().__init__()
        widths = resnet_widths(config.model.resnet_channels, config.model.resnet_blocks)
        self.mean_norm = config.model.mfcc_mean_norm
        self.input_bn = nn.BatchNorm1d(config.features.n_mfcc)
        self.blocks = nn.Sequential(*(ResBlock(c_in, c_out) for c_in, c_out in zip([1, *widths[:-1]], widths)))
        self.out_features = widths[-1]

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        """mfcc (N, M, F) -> (N, 4 * resnet_channels)."""
        if self.mean_norm:
            mfcc = centre_frames(mfcc)  # (N, M, F)
        x = self.input_bn(mfcc).unsqueeze(1)  # (N, 1, M, F)
        x = self.blocks(x)  # (N, 4c, M', F')
        return x.amax(dim=(2, 3))  # (N, 4c)


# ----------------------------------------------------------------------------------------------------------------
# Fusion and classifier
# ----------------------------------------------------------------------------------------------------------------


class SummaryFiLM(nn.Module):
    """Key, mode and note statistics as feature-wise modulation of the branch tokens (FiLM, Perez et al. 2018;
    a Krumhansl–Kessler mode prior injected this way helped a symbolic EMOPIA model). Not in the paper.

    A small MLP maps the window's summary (its first ``width`` descriptors: ``ModelConfig.summary_width``,
    mer.features.summary) to a scale and shift per fusion dimension: ``token * (1 + gamma) + beta``, the same for
    every branch token, before the attention. The last layer starts at zero, so an untrained FiLM is the identity
    and the paper's fusion.
    """

    def __init__(self, dim: int, hidden: int, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tokens: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """tokens (B, n, D), summary (B, width) -> (B, n, D)."""
        gamma, beta = self.mlp(summary).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, D) each
        return tokens * (1 + gamma) + beta


class AttentionFusion(nn.Module):
    """Adaptive fusion by multi-head self-attention, then two FC layers (paper, Sec. III-D, Eqs. 4-7).

    Each branch feature is projected to ``fusion_dim`` and becomes one token; ``attention_heads``-head
    self-attention mixes the tokens (absent branches masked as keys); absent tokens are zeroed; the tokens are
    flattened and fed to FC -> ReLU -> dropout -> FC, giving 4 quadrant and 2 V/A logits. As in the paper there
    is no residual connection or layer norm around the attention. ``use_attention=False`` (the "without MHSA"
    ablation, Table III) flattens the projected features directly.
    """

    def __init__(self, in_features: list[int], config: ModelConfig) -> None:
        super().__init__()
        dim = config.fusion_dim
        self.projections = nn.ModuleList(nn.Linear(f, dim) for f in in_features)
        self.film = SummaryFiLM(dim, config.summary_hidden, config.summary_width) if config.summary_film else None
        self.attention = (
            nn.MultiheadAttention(dim, config.attention_heads, batch_first=True) if config.use_attention else None
        )
        self.classifier = nn.Sequential(
            nn.Linear(len(in_features) * dim, config.fc_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.fc_hidden, N_QUADRANTS + N_VA),
        )

    def forward(self, features: list[torch.Tensor], present: torch.Tensor, summary: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """features: n tensors (B, f_i); present (B, n) bool, >= 1 True per row; summary (B, summary_width),
        read only when the model was built with ``summary_film``.

        Returns logits (B, 6) and attention weights (B, h, n, n) (None without attention).
        """
        tokens = torch.stack([proj(f) for proj, f in zip(self.projections, features)], dim=1)  # (B, n, D)
        if self.film is not None:
            if summary is None:
                raise ValueError("this model reads the summary descriptors (summary_film): pass summary")
            tokens = self.film(tokens, summary)  # (B, n, D)
        weights = None
        if self.attention is not None:
            tokens, weights = self.attention(
                tokens, tokens, tokens,
                key_padding_mask=~present,  # absent branches give nothing to the others
                need_weights=True,
                average_attn_weights=False,
            )  # (B, n, D), (B, h, n, n)
            # An absent query still attends over the present keys (finite, sums to 1); it is not part of the
            # piece, so its row is reported as 0 and its token dropped below.
            weights = weights * present[:, None, :, None].to(weights.dtype)  # (B, h, n, n)
        tokens = tokens * present.unsqueeze(-1).to(tokens.dtype)  # (B, n, D): absent tokens -> 0
        logits = self.classifier(tokens.flatten(1))  # (B, n * D) -> (B, 6)
        return logits, weights


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------

ENCODERS = {"symbolic": SymbolicEncoder, "harmony": HarmonyEncoder, "tone": ToneEncoder}


class MerModel(nn.Module):
    """Zhao & Yoshii's multimodal multifaceted MER network (paper, Sec. III, Fig. 2).

    Builds only the branches in ``config.model.branches`` (the single-branch ablations of Table III); the
    inputs of the others are ignored. ``config`` is the whole :class:`MerConfig`: the token vocabulary and the
    number of MFCCs come from ``config.features``, every size from ``config.model``.

    With DistributedDataParallel: when no item of a batch has some branch, that branch's parameters are still
    tied into the graph with a zero gradient (in training mode), so DDP does not wait for gradients that never
    come and ``find_unused_parameters`` is not needed.
    """

    def __init__(self, config: MerConfig) -> None:
        super().__init__()
        self.config = config
        self.branches: tuple[str, ...] = config.model.branches  # canonical BRANCHES order (ModelConfig ensures it)
        self.branch_index = [BRANCHES.index(b) for b in self.branches]
        self.encoders = nn.ModuleDict({name: ENCODERS[name](config) for name in self.branches})
        self.fusion = AttentionFusion([self.encoders[b].out_features for b in self.branches], config.model)
        # Fitted after training (mer.train.summary_head); until then it passes the network's logits through.
        self.summary_head = SummaryHead(config.model.summary_width, config.model.summary_kernel_centres) \
            if config.model.summary_head else None

    def forward(
        self,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor,
        chroma: torch.Tensor,
        mfcc: torch.Tensor,
        present: torch.Tensor,
        summary: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Emotion logits for a batch of windows.

        tokens (B, L) long, PAD-padded; token_lengths (B,) long, 0..L; chroma (B, 12, F) float;
        mfcc (B, M, F) float; present (B, 3) bool in BRANCHES order; summary (B, S >= summary_width) float, the
        windows' key/mode/note descriptors (read only with ``summary_film`` or a fitted ``summary_head``).
        Inputs of branches that are not built are not read (any placeholder of the right batch size will do).

        Raises ValueError when an item has no present built branch or the shapes disagree.
        """
        batch = present.shape[0]
        present = present.to(torch.bool)
        if "symbolic" in self.branches:  # a window without tokens (no notes in it) has no symbolic input
            has_tokens = token_lengths.view(-1, 1) > 0  # (B, 1)
            present = torch.cat([present[:, :1] & has_tokens, present[:, 1:]], dim=1)  # (B, 3)
        built = present[:, self.branch_index]  # (B, n)
        empty = (~built.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"batch items {empty} have none of the model's branches {self.branches} present")

        # Branch encoders (Sec. III-A/B/C), each on the items that have its input.
        inputs = {"symbolic": (tokens, token_lengths), "harmony": (chroma,), "tone": (mfcc,)}
        features = []
        for name, has in zip(self.branches, built.unbind(dim=1)):
            self._check_batch(name, inputs[name], batch)
            features.append(self._encode(name, inputs[name], has))  # (B, f)

        # Fusion and classifier (Sec. III-D). The model reads the summary's first summary_width descriptors.
        if summary is not None:
            width = self.config.model.summary_width
            if summary.shape[-1] < width:
                raise ValueError(f"summary has {summary.shape[-1]} descriptors; this model reads {width} "
                                 "(features extracted before the texture descriptors? extract them again)")
            summary = summary[:, :width]  # (B, width)
        logits, weights = self.fusion(features, built, summary)  # (B, 6), (B, h, n, n) | None
        attention = None
        if weights is not None:
            attention = weights.new_zeros(batch, weights.shape[1], len(BRANCHES), len(BRANCHES))  # (B, h, 3, 3)
            index = torch.tensor(self.branch_index, device=weights.device)
            attention[:, :, index[:, None], index[None, :]] = weights  # place built branches in BRANCHES order
        quadrant_logits = logits[:, :N_QUADRANTS]  # (B, 4)
        if self.summary_head is not None:  # the mixture with the summary regression, as log probabilities
            has_notes = present[:, 0] & (token_lengths > 0)  # (B,): the summary comes from MIDI notes
            quadrant_logits = self.summary_head(quadrant_logits, summary, has_notes)  # (B, 4)
        return ModelOutput(
            quadrant_logits=quadrant_logits,  # (B, 4)
            va_logits=logits[:, N_QUADRANTS:],  # (B, 2): arousal, valence
            attention=attention,
        )

    def _encode(self, name: str, inputs: tuple[torch.Tensor, ...], has: torch.Tensor) -> torch.Tensor:
        """Run one encoder on the items where ``has`` (B,) is True; zeros (B, f) for the others."""
        encoder = self.encoders[name]
        batch = has.shape[0]
        rows = has.nonzero().flatten()  # (N,)
        if rows.numel() == 0:
            features = next(encoder.parameters()).new_zeros(batch, encoder.out_features)  # (B, f)
            if self.training:  # keep every parameter in the graph (zero gradient) for DDP's gradient reduction
                features = features + 0.0 * sum(p.sum() for p in encoder.parameters())
            return features
        if name == "symbolic":
            tokens, lengths = inputs
            lengths = lengths[rows]  # (N,)
            if int(lengths.max()) > tokens.shape[1]:
                raise ValueError(f"token_lengths up to {int(lengths.max())} exceed the {tokens.shape[1]} tokens given")
            encoded = encoder(tokens[rows], lengths)  # (N, f)
        else:
            encoded = encoder(inputs[0][rows])  # (N, f)
        return encoded.new_zeros(batch, encoded.shape[1]).index_copy(0, rows, encoded)  # (B, f)

    def _check_batch(self, name: str, inputs: tuple[torch.Tensor, ...], batch: int) -> None:
        """Fail with a readable message instead of a shape error deep inside a layer."""
        expected_dims = {"symbolic": (2, 1), "harmony": (3,), "tone": (3,)}[name]
        for tensor, dims in zip(inputs, expected_dims):
            if tensor.dim() != dims or tensor.shape[0] != batch:
                shape = tuple(tensor.shape)
                raise ValueError(f"{name} input has shape {shape}, expected {dims} dims and batch {batch}")
        rows = {"harmony": PITCH_CLASSES, "tone": self.config.features.n_mfcc}.get(name)
        if rows is not None and inputs[0].shape[1] != rows:
            raise ValueError(f"{name} input has {inputs[0].shape[1]} rows, expected {rows}")
