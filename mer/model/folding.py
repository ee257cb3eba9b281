"""The convolutional branches made cheaper for inference, with the same outputs: BatchNorm folded into the
convolution before it, and the harmony CNN in channels-last memory order.

In eval mode a BatchNorm after a convolution is a fixed per-channel scale and shift, so it can live in the
convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): one pass over the activations
instead of two. The harmony branch's activations (32 channels x 12 pitch classes x 1,292 frames a window) are
large; oneDNN runs its (12, 1) and (1, 48) kernels faster over channels-last tensors. The tone ResNet is not
converted: on this machine channels-last made it slower. int8 on one thread, EMOPIA windows: the paper's model
1.19 times as fast, the default's 1.43 times (``tests/benchmarks/bench_folding.py``, ``results/folding.json``).
Outputs agree with the unfolded model within float rounding (tested); a model being trained is never folded (its
BatchNorm statistics still move).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mer.model.network import MerModel, PitchConv, ResBlock, TimeConv


def _fold_block(block: nn.Module) -> None:
    """Fold the BatchNorms of one conv block into its convolutions, in place (the BN becomes an identity)."""
    if isinstance(block, (PitchConv, TimeConv)):
        block.conv, block.bn = fuse_conv_bn_eval(block.conv, block.bn), nn.Identity()
    elif isinstance(block, ResBlock):
        block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
        block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
        block.shortcut = nn.Sequential(fuse_conv_bn_eval(block.shortcut[0], block.shortcut[1]))


def fold_for_inference(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (a :class:`MerModel`, or an ensemble of them) in eval mode with every conv block's
    BatchNorm folded into its convolution and each harmony branch in channels-last order; ``model`` itself is
    unchanged (with ``inplace``: ``model`` itself, converted, for a caller that holds no other reference).
    Attributes set on the model (its config, the calibration temperature) are kept."""
    folded = (model if inplace else copy.deepcopy(model)).eval()
    for module in list(folded.modules()):
        _fold_block(module)
        if isinstance(module, MerModel) and "harmony" in module.encoders:
            module.encoders["harmony"].to(memory_format=torch.channels_last)
    return folded
