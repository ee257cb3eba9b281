"""The tiny model configuration the tests share: the same code as the real model, small enough to train in seconds."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from mer.config import BRANCHES, SUMMARY_SIZE, MerConfig
from mer.model import MerModel, save_artifact
from mer.train.dataset import take
from mer.train.loop import evaluate_split
from mer.train.steps import train_step

TINY_MODEL = dict(token_embedding=8, gru_hidden=8, gru_layers=1, harmony_channels=4, harmony_time_kernel=5,
                  resnet_channels=4, resnet_blocks=3, fusion_dim=8, attention_heads=2, fc_hidden=8)


def tiny_config(*, window_seconds: float = 5.0, max_tokens: int = 64, training: dict | None = None,
                **model) -> MerConfig:
    """:class:`MerConfig` with the tiny model (``model`` overrides its sizes), ``window_seconds`` windows (hop the
    same) holding at most ``max_tokens`` tokens, and ``training`` overrides of :class:`mer.config.TrainConfig`."""
    config = MerConfig()
    return dataclasses.replace(
        config,
        features=dataclasses.replace(config.features, window_seconds=window_seconds, hop_seconds=window_seconds,
                                     max_tokens=max_tokens),
        model=dataclasses.replace(config.model, **{**TINY_MODEL, **model}),
        training=dataclasses.replace(config.training, **(training or {})),
    )


def random_windows(config: MerConfig, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """``n`` random model-input windows of ``config``'s shapes, every branch present and every window with tokens."""
    f = config.features
    return {
        "tokens": rng.integers(0, f.vocab_size - 1, (n, f.max_tokens)),
        "token_lengths": rng.integers(1, f.max_tokens + 1, n),
        "chroma": rng.random((n, 12, f.frames_per_window), dtype=np.float32),
        "mfcc": rng.standard_normal((n, f.n_mfcc, f.frames_per_window), dtype=np.float32),
        "present": np.ones((n, len(BRANCHES)), dtype=bool),
        "summary": rng.standard_normal((n, SUMMARY_SIZE)).astype(np.float32),
    }


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with random BatchNorm statistics and affine parameters, as a trained model has (a fresh
    BN is the identity, which would make folding it trivially right)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
    return model.eval()


def assert_untouched(model: nn.Module, before: tuple[list[type], dict[str, torch.Tensor]]) -> None:
    """``model`` has the module types and every parameter and buffer of ``before`` (:func:`state_of`): a copy was
    made of it, it was not converted in place (cheaper than predicting again with it)."""
    assert [type(m) for m in model.modules()] == before[0], "a module was swapped"
    _, state = state_of(model)
    assert state.keys() == before[1].keys()
    for key, value in state.items():
        torch.testing.assert_close(value, before[1][key], rtol=0, atol=0, msg=key)


def state_of(model: nn.Module) -> tuple[list[type], dict[str, torch.Tensor]]:
    """The module types and a copy of the state of ``model``, for :func:`assert_untouched`."""
    return [type(m) for m in model.modules()], {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_in_process(config: MerConfig, train_table, val_table, *, fingerprint: str, storage: str) -> str:
    """A real artifact without Ray Train: the model of ``config`` after a few AdamW steps on the training windows
    (seeded like train_model), val metrics on the val windows, saved with the data fingerprint."""
    torch.manual_seed(config.training.seed)
    model = MerModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.training.learning_rate)
    order = np.random.default_rng(config.training.seed).permutation(len(train_table["quadrant"]))
    for start in range(0, 32, 8):
        train_step(model, optimizer, take(train_table, order[start:start + 8]), device=torch.device("cpu"),
                   va_loss_weight=config.training.va_loss_weight)
    val = evaluate_split(model, val_table, batch_size=16, device=torch.device("cpu"))
    return save_artifact(model.state_dict(), config=config, storage=storage, meta={
        "data_fingerprint": fingerprint, "val_metrics": val, "seed": config.training.seed, "best_epoch": 1,
        "epochs": config.training.epochs})
