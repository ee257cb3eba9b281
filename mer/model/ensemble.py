"""Seed ensembles: several trained models of one configuration as one model whose probabilities are the mean of
the members' (not in the paper; the members differ only in their training seed).

:class:`MerEnsemble` answers like a :class:`~mer.model.network.MerModel`: its :class:`ModelOutput` holds the
log of the members' mean quadrant probabilities as ``quadrant_logits`` (so a softmax gives the mean back), the
logit of the mean arousal/valence probabilities as ``va_logits``, and the mean attention weights. Everything
downstream (inference, calibration, the catalog) therefore works on an ensemble unchanged. Each member costs one
more forward pass per window.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mer.config import MerConfig
from mer.model.network import MerModel, ModelOutput

PROBABILITY_FLOOR = 1e-7  # keeps the log of a mean probability finite


class MerEnsemble(nn.Module):
    """``members`` copies of :class:`MerModel` (one config), averaged in probability space."""

    def __init__(self, config: MerConfig, members: int) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.config = config
        self.members = nn.ModuleList(MerModel(config) for _ in range(members))

    def forward(self, **inputs: torch.Tensor) -> ModelOutput:
        """The members' mean probabilities, as logits (see the module docstring); inputs as MerModel's."""
        outputs = [member(**inputs) for member in self.members]
        quadrant = torch.stack([torch.softmax(o.quadrant_logits, dim=1) for o in outputs]).mean(0)  # (B, 4)
        va = torch.stack([torch.sigmoid(o.va_logits) for o in outputs]).mean(0)  # (B, 2)
        va = va.clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        attention = None
        if outputs[0].attention is not None:
            attention = torch.stack([o.attention for o in outputs]).mean(0)  # (B, h, 3, 3)
        return ModelOutput(
            quadrant_logits=quadrant.clamp_min(PROBABILITY_FLOOR).log(),  # (B, 4)
            va_logits=torch.log(va) - torch.log1p(-va),  # (B, 2)
            attention=attention,
        )

    @classmethod
    def from_members(cls, models: list[MerModel]) -> "MerEnsemble":
        """An ensemble holding copies of trained models' weights; every member must share one config."""
        unseeded = [dataclasses.replace(m.config, training=dataclasses.replace(m.config.training, seed=0))
                    for m in models]
        if len({c.to_json() for c in unseeded}) != 1:
            raise ValueError("ensemble members must share one configuration (they may differ only in the seed)")
        ensemble = cls(models[0].config, len(models))
        for slot, model in zip(ensemble.members, models, strict=True):
            slot.load_state_dict(model.state_dict())
        return ensemble
