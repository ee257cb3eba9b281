"""int8 inference on CPU: the Bi-GRU and the linear layers with int8 weights, quantised once when a model loads.

Most of a window's CPU time is the Bi-GRU (README, "At catalog scale"). Dynamic quantisation stores the weights of
every ``nn.GRU`` and ``nn.Linear`` as int8 and quantises their inputs on the fly, step by step; the convolutional
branches, the attention's output projection and everything else stay float32. On this machine, one thread,
it runs the paper's full-size model 2.1 times as fast, the default on MIDI alone 2.0 times and the fused default
1.3 times (its convolutions now dominate), and the labels it gives agree with float32 inference on all but 4 of
1,704 EMOPIA clip predictions of trained models (``tests/benchmarks/bench_int8.py``,
``tests/benchmarks/results/int8.json``). GPUs run float32: this is for CPU actors only.

torch 2.13 still ships ``torch.ao.quantization.quantize_dynamic`` and warns that it is deprecated (its successor,
torchao, quantises linear layers only, not recurrent ones). When a later torch removes it, :func:`quantize_int8`
raises :class:`Int8Unavailable` and the caller runs float32.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


class Int8Unavailable(RuntimeError):
    """This torch build cannot quantise the model (no ``torch.ao.quantization.quantize_dynamic``, or no int8
    kernels for this CPU)."""


def quantize_int8(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (a CPU model, put in eval mode) whose GRU and linear layers hold int8 weights; the
    original keeps its float32 weights (with ``inplace``: ``model`` itself, converted). Attributes set on the
    model (the calibration temperature, its config) are kept.

    Raises:
        Int8Unavailable: this torch cannot do it.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:
        raise Int8Unavailable(f"torch {torch.__version__} has no dynamic quantisation: {error}") from error
    if torch.backends.quantized.engine == "none":
        raise Int8Unavailable(f"torch {torch.__version__} has no quantised kernels for this CPU")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*are deprecated.*")
        return quantize_dynamic(model.eval(), {nn.GRU, nn.Linear}, dtype=torch.qint8, inplace=inplace)
