"""Behaviour of the fused emotion model (mer/model/network.py) on a tiny debug configuration."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from mer.config import BRANCHES, FeatureConfig, MerConfig, ModelConfig
from mer.model import MerModel
from mer.model.network import reverse_valid

# 3-s windows (F = 130 frames), 64 tokens, narrow layers: every test runs in well under a second.
TINY = MerConfig(
    features=FeatureConfig(window_seconds=3.0, hop_seconds=3.0, max_tokens=64),
    model=ModelConfig(
        token_embedding=16, gru_hidden=16, harmony_channels=8, harmony_time_kernel=48, resnet_channels=4,
        fusion_dim=16, attention_heads=4, fc_hidden=16, dropout=0.1,
    ),
)
B = 4
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(BRANCHES, r)]  # the 7 non-empty branch sets


def tiny(**model_changes) -> MerConfig:
    return dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, **model_changes))


def build(config: MerConfig = TINY, *, seed: int = 0) -> MerModel:
    torch.manual_seed(seed)
    return MerModel(config)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model gains nothing from threads, and on a busy 2-core machine (Ray workers in other tests)
    spinning OpenMP threads made a 1-s test take minutes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def make_batch(rng: torch.Generator, config: MerConfig = TINY, batch: int = B) -> dict[str, torch.Tensor]:
    """Random inputs shaped like a real batch: tokens padded with PAD after random lengths, all present."""
    features = config.features
    length = features.max_tokens
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=rng)
    tokens = torch.randint(0, features.vocab_size - 1, (batch, length), generator=rng)
    tokens[torch.arange(length) >= lengths[:, None]] = features.vocab_size - 1  # PAD after each length
    frames = features.frames_per_window
    return {
        "tokens": tokens,
        "token_lengths": lengths,
        "chroma": torch.rand(batch, 12, frames, generator=rng),
        "mfcc": 20 * torch.randn(batch, features.n_mfcc, frames, generator=rng),
        "present": torch.ones(batch, 3, dtype=torch.bool),
    }


def loss_of(out) -> torch.Tensor:
    return out.quadrant_logits.square().sum() + out.va_logits.square().sum()


def test_output_shapes(rng):
    out = build()(**make_batch(rng))
    assert out.quadrant_logits.shape == (B, 4)
    assert out.va_logits.shape == (B, 2)
    assert out.attention.shape == (B, TINY.model.attention_heads, 3, 3)


@pytest.mark.parametrize("mask", list(itertools.product([False, True], repeat=3))[1:])
def test_every_modality_mask_trains_without_nan(rng, mask):
    model = build()
    batch = make_batch(rng)
    batch["present"] = torch.tensor([mask] * B)
    batch["chroma"].requires_grad_(True)
    out = model(**batch)
    loss_of(out).backward()
    assert torch.isfinite(out.quadrant_logits).all() and torch.isfinite(out.va_logits).all()
    assert torch.isfinite(out.attention).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # Every parameter takes part (zero gradient for an absent branch), as DDP requires.
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("use_attention", [True, False])
@pytest.mark.parametrize("branches", SUBSETS, ids="+".join)
def test_every_branch_set_trains(rng, branches, use_attention):
    model = build(tiny(branches=branches, use_attention=use_attention))
    out = model(**make_batch(rng))
    loss_of(out).backward()
    assert out.quadrant_logits.shape == (B, 4) and torch.isfinite(out.quadrant_logits).all()
    assert (out.attention is None) == (not use_attention)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_branch_flags_decide_which_parameters_exist():
    names = {b: {n for n, _ in build(tiny(branches=(b,))).named_parameters()} for b in BRANCHES}
    assert any("gru" in n for n in names["symbolic"])
    assert not any("gru" in n or "embedding" in n for n in names["harmony"] | names["tone"])
    assert not any("encoders.tone" in n for n in names["harmony"] | names["symbolic"])
    assert not any("encoders.harmony" in n for n in names["tone"] | names["symbolic"])
    no_attention = {n for n, _ in build(tiny(use_attention=False)).named_parameters()}
    assert not any("attention" in n for n in no_attention)


def test_attention_rows_of_present_branches_sum_to_one_and_absent_are_zero(rng):
    model = build().eval()
    batch = make_batch(rng)
    batch["present"] = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    batch["token_lengths"][3] = 0  # a window without notes has no symbolic input, whatever `present` says
    effective = batch["present"].clone()
    effective[3, 0] = False
    attention = model(**batch).attention  # (B, h, 3, 3)
    for i in range(B):
        for q in range(3):
            row = attention[i, :, q]  # (h, 3)
            if effective[i, q]:
                torch.testing.assert_close(row.sum(-1), torch.ones(TINY.model.attention_heads))
                assert (row[:, ~effective[i]] == 0).all()
            else:
                assert (row == 0).all()


def test_attention_of_branches_not_built_is_zero(rng):
    attention = build(tiny(branches=("symbolic", "tone"))).eval()(**make_batch(rng)).attention
    assert (attention[:, :, 1, :] == 0).all() and (attention[:, :, :, 1] == 0).all()
    torch.testing.assert_close(attention[:, :, [0, 2]].sum(-1), torch.ones(B, TINY.model.attention_heads, 2))


def test_without_attention_returns_none(rng):
    assert build(tiny(use_attention=False))(**make_batch(rng)).attention is None


def test_item_without_any_built_branch_raises(rng):
    batch = make_batch(rng)
    batch["present"][2] = torch.tensor([True, False, False])
    build(tiny(branches=("symbolic",)))(**batch)  # fine: item 2 has its symbolic input
    with pytest.raises(ValueError, match=r"\[2\]"):
        build(tiny(branches=("harmony", "tone")))(**batch)
    batch["present"][2] = torch.tensor([False, False, False])
    with pytest.raises(ValueError, match=r"\[2\]"):
        build()(**batch)


@pytest.mark.parametrize("symbolic_input", ["tokens", "notes"])
def test_batch_items_are_independent(rng, symbolic_input):
    model = build(tiny(symbolic_input=symbolic_input)).eval()  # eval: BatchNorm uses running statistics, not the batch's
    batch = make_batch(rng)
    batch["chroma"].requires_grad_(True)
    batch["mfcc"].requires_grad_(True)
    out = model(**batch)
    (out.quadrant_logits[1].sum() + out.va_logits[1].sum()).backward()
    for name in ("chroma", "mfcc"):
        grad = batch[name].grad
        assert grad[1].abs().sum() > 0
        assert (grad[[0, 2, 3]] == 0).all()
    # Tokens are discrete: changing item 0's tokens leaves the others' outputs unchanged.
    other = {k: v.detach().clone() for k, v in batch.items()}
    other["tokens"][0] = torch.randint(0, 300, (TINY.features.max_tokens,), generator=rng)
    changed = model(**other)
    assert not torch.equal(changed.quadrant_logits[0], out.quadrant_logits[0])
    torch.testing.assert_close(changed.quadrant_logits[1:], out.quadrant_logits[1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("symbolic_input", ["tokens", "notes", "notes+intervals"])
def test_padding_tokens_do_not_change_the_output(rng, symbolic_input):
    form, _, intervals = symbolic_input.partition("+")
    model = build(tiny(branches=("symbolic",), symbolic_input=form, note_intervals=bool(intervals))).eval()
    batch = make_batch(rng)
    batch["token_lengths"] = torch.tensor([10, 64, 33, 1])
    reference = model(**batch).quadrant_logits
    # Junk after each length (instead of PAD) and a longer padded tensor give the same output.
    longer = dict(batch)
    longer["tokens"] = torch.randint(0, 300, (B, 100), generator=rng)
    longer["tokens"][:, :64] = torch.where(
        torch.arange(64) < batch["token_lengths"][:, None], batch["tokens"], longer["tokens"][:, :64]
    )
    torch.testing.assert_close(model(**longer).quadrant_logits, reference, rtol=0, atol=1e-6)
    # And the same item alone, cut to its length, equals its row in the padded batch.
    alone = {k: v[2:3] for k, v in batch.items()}
    alone["tokens"] = alone["tokens"][:, :33]
    torch.testing.assert_close(model(**alone).quadrant_logits, reference[2:3], rtol=0, atol=1e-6)


def test_symbolic_dropout_acts_in_training_only(rng):
    model = build(tiny(branches=("symbolic",), symbolic_dropout=0.5, dropout=0.0))
    plain = build(tiny(branches=("symbolic",), dropout=0.0))
    plain.load_state_dict(model.state_dict())  # dropout adds no weights: the same artifact loads either way
    batch = make_batch(rng)
    model.eval(), plain.eval()
    torch.testing.assert_close(model(**batch).quadrant_logits, plain(**batch).quadrant_logits, rtol=0, atol=0)
    model.train(), plain.train()
    assert torch.equal(plain(**batch).quadrant_logits, plain(**batch).quadrant_logits)  # nothing random without it
    assert not torch.equal(model(**batch).quadrant_logits, model(**batch).quadrant_logits)
    with pytest.raises(ValueError, match="symbolic_dropout"):
        tiny(symbolic_dropout=1.0)


def test_an_unknown_symbolic_input_or_a_negative_token_cap_is_refused_by_name():
    with pytest.raises(ValueError, match="symbolic_input must be 'tokens' or 'notes', got 'chords'"):
        tiny(symbolic_input="chords")
    with pytest.raises(ValueError, match="note_intervals needs symbolic_input='notes'"):
        tiny(note_intervals=True)
    with pytest.raises(ValueError, match="symbolic_max_tokens must be >= 0"):
        tiny(symbolic_max_tokens=-1)


def test_harmony_branch_does_not_depend_on_the_key(rng):
    # Pitch-class rows wrap (circular padding) and are max-pooled: a transposed piece gives the same feature.
    encoder = build(tiny(branches=("harmony",))).encoders["harmony"]
    with torch.no_grad():
        encoder.train()
        for _ in range(10):  # move BatchNorm's running statistics off their initial values
            encoder(make_batch(rng)["chroma"])
    encoder.eval()
    frames = TINY.features.frames_per_window
    major, minor = torch.zeros(2, 12, frames), torch.zeros(2, 12, frames)
    major[0, [0, 4, 7]] = major[1, [2, 5, 9]] = 1  # C major, D minor...
    minor[0, [0, 3, 7]] = minor[1, [2, 6, 9]] = 1  # ...C minor, D major
    reference = encoder(major)
    torch.testing.assert_close(encoder(major.roll(5, dims=1)), reference, rtol=1e-5, atol=1e-6)  # up a fourth
    assert (encoder(minor) - reference).abs().max() > 0.01 * reference.abs().max()  # chord quality still matters


def test_mean_normalised_tone_branch_ignores_a_fixed_eq_and_gain(rng):
    # A gain or a fixed EQ adds a constant to each cepstral coefficient: with mfcc_mean_norm the tone branch sees
    # the same window, whatever the constant, and the zero frames past the audio's end stay padding.
    frames = TINY.features.frames_per_window
    real = frames * 2 // 3  # the rest is padding (all zero)
    mfcc = make_batch(rng)["mfcc"]
    mfcc[:, :, real:] = 0
    tilt = torch.zeros_like(mfcc)
    tilt[:, :, :real] = 15 * torch.randn(B, TINY.features.n_mfcc, 1, generator=rng)  # per window and coefficient
    for mean_norm, same in ((True, True), (False, False)):
        encoder = build(tiny(branches=("tone",), mfcc_mean_norm=mean_norm)).encoders["tone"]
        with torch.no_grad():
            encoder.train()
            for _ in range(10):  # move BatchNorm's running statistics off their initial values
                encoder(make_batch(rng)["mfcc"])
        encoder.eval()
        reference, moved = encoder(mfcc), encoder(mfcc + tilt)
        assert torch.allclose(moved, reference, rtol=1e-4, atol=1e-4) == same

def test_reverse_valid_reverses_within_length_only():
    x = torch.arange(10.0).view(2, 5, 1)  # (N, L, E)
    out = reverse_valid(x, torch.tensor([3, 5]))
    assert out.flatten().tolist() == [2, 1, 0, 3, 4, 9, 8, 7, 6, 5]
    torch.testing.assert_close(reverse_valid(out, torch.tensor([3, 5])), x)


@pytest.mark.parametrize("absent", ["symbolic", "harmony", "tone"])
def test_absent_modality_gets_no_gradient_and_changes_nothing(rng, absent):
    model = build().train()  # train mode: absent inputs must not reach BatchNorm's batch statistics either
    batch = make_batch(rng)
    index = BRANCHES.index(absent)
    batch["present"][1, index] = False
    key = {"symbolic": "tokens", "harmony": "chroma", "tone": "mfcc"}[absent]
    encoded_items = []  # batch size each encoder call saw
    model.encoders[absent].register_forward_hook(lambda module, args, output: encoded_items.append(args[0].shape[0]))
    if absent != "symbolic":  # tokens are discrete: no gradient to take
        batch[key].requires_grad_(True)
    torch.manual_seed(0)  # same dropout mask in both passes
    out = model(**batch)
    loss_of(out).backward()
    assert encoded_items == [B - 1]  # item 1's input never entered the encoder (nor its BatchNorm statistics)
    if absent != "symbolic":
        grad = batch[key].grad
        assert (grad[1] == 0).all() and grad[0].abs().sum() > 0
    # Replacing the absent input by anything else changes no output.
    other = {k: v.detach().clone() for k, v in batch.items()}
    other[key][1] = other[key][1].flip(-1) * 3 if key != "tokens" else torch.randint(0, 300, other[key][1].shape)
    torch.manual_seed(0)
    again = model(**other)
    torch.testing.assert_close(again.quadrant_logits, out.quadrant_logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("symbolic_input", ["tokens", "notes"])
def test_loss_falls_when_overfitting_one_batch(rng, symbolic_input):
    model = build(tiny(symbolic_input=symbolic_input)).train()
    batch = make_batch(rng, batch=8)
    quadrant = torch.arange(8) % 4
    va = torch.stack([(quadrant <= 1).float(), (quadrant % 3 == 0).float()], dim=1)  # Q1, Q2 high arousal...
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(**batch)
        loss = F.cross_entropy(out.quadrant_logits, quadrant) + F.binary_cross_entropy_with_logits(out.va_logits, va)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_state_dict_round_trip_through_config_json(rng, tmp_path):
    config = tiny(branches=("symbolic", "tone"))
    model = build(config, seed=3)
    batch = make_batch(rng)
    model.train()
    model(**batch)  # move the BatchNorm running statistics away from their initial values
    model.eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    rebuilt = MerModel(MerConfig.from_json(config.to_json()))
    rebuilt.load_state_dict(torch.load(path, weights_only=True))
    rebuilt.eval()
    a, b = model(**batch), rebuilt(**batch)
    assert torch.equal(a.quadrant_logits, b.quadrant_logits)
    assert torch.equal(a.va_logits, b.va_logits)
    assert torch.equal(a.attention, b.attention)


def test_bad_shapes_raise_value_error(rng):
    batch = make_batch(rng)
    batch["chroma"] = batch["chroma"][:, :11]
    with pytest.raises(ValueError, match="harmony"):
        build()(**batch)
