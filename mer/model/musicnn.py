"""musicnn (Pons & Serra, 2019), trained to tag the Million Song Dataset, as a frozen torch module.

Not in the paper: a pretrained audio embedding (mer.features.musicnn cuts the log-mel patches it reads and says
why). The layers are those of the ``musicnn`` package's MSD_musicnn, with its weights (converted from TensorFlow
by ``infra/convert_musicnn.py``; ISC licence, ``mer/features/data/MUSICNN_LICENSE``):

    log-mel patch (P, 187, 96) -> input BN
      -> timbral convs (7 x 38, 7 x 67: 204 filters each) and temporal convs (128, 64, 32 frames x 1: 51 each),
         each ReLU, BN, max over frequency                           -> front end (P, 561, T)
      -> three 7-frame convs of 64 filters, ReLU, BN, the 2nd and 3rd residual -> mid end (P, 753, T) with the front
      -> max and mean over time (interleaved, 1506) -> BN -> dense 200, ReLU -> BN = the embedding (P, 200)
      -> dense 50 -> sigmoid = the tags (P, 50)
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mer.features import MUSICNN_WEIGHTS

BN_EPSILON = 1e-3  # TensorFlow's batch_normalization default
_TEMPORAL = ((2, 128), (3, 64), (4, 32))  # (conv index, frames): the temporal convs


class Musicnn(nn.Module):
    """MSD_musicnn with its trained weights, in eval mode, without gradients (it is never trained here)."""

    def __init__(self) -> None:
        super().__init__()
        with np.load(MUSICNN_WEIGHTS) as stored:
            for name in stored.files:  # TensorFlow names -> buffers ("conv2d_1/kernel" -> "conv2d_1__kernel")
                self.register_buffer(name.replace("/", "__"), torch.from_numpy(stored[name].astype(np.float32)))
        self.eval()

    def _w(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace("/", "__"))

    def _bn(self, x: torch.Tensor, name: str, dim: int) -> torch.Tensor:
        """TensorFlow's inference batch norm over the channels on ``dim``."""
        shape = [1] * x.dim()
        shape[dim] = -1
        mean, var = self._w(f"{name}/moving_mean").view(shape), self._w(f"{name}/moving_variance").view(shape)
        gamma, beta = self._w(f"{name}/gamma").view(shape), self._w(f"{name}/beta").view(shape)
        return (x - mean) / torch.sqrt(var + BN_EPSILON) * gamma + beta

    def _conv(self, x: torch.Tensor, name: str, pad: tuple[int, int]) -> torch.Tensor:
        """A TensorFlow conv2d (kernel (kt, kf, 1, C)) on (P, 1, T, F), time padded by ``pad``, then ReLU."""
        kernel = self._w(f"{name}/kernel").permute(3, 2, 0, 1)  # (C, 1, kt, kf)
        return F.relu(F.conv2d(F.pad(x, (0, 0, *pad)), kernel, self._w(f"{name}/bias")))

    @torch.no_grad()
    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel patches (P, 187, 96) -> (embedding (P, 200), tag probabilities (P, 50))."""
        x = self._bn(patches.float().unsqueeze(1), "batch_normalization", dim=1)  # (P, 1, T, 96)
        maps = [self._conv(x, "conv2d", (3, 3)), self._conv(x, "conv2d_1", (3, 3))]  # timbral: 7 x 38, 7 x 67
        maps += [self._conv(x, f"conv2d_{i}", ((k - 1) // 2, k // 2)) for i, k in _TEMPORAL]  # TF 'same', even k
        front = torch.cat([self._bn(m, f"batch_normalization_{i + 1}", dim=1).amax(dim=3)
                           for i, m in enumerate(maps)], dim=1)  # (P, 561, T)
        layers, h = [front], front
        for i, conv in enumerate(("conv2d_5", "conv2d_6", "conv2d_7")):
            out = self._conv(h.unsqueeze(1).transpose(2, 3), conv, (3, 3))  # (P, 64, T, 1): a conv over all of c
            out = self._bn(out.squeeze(3), f"batch_normalization_{6 + i}", dim=1)  # (P, 64, T)
            h = out if i == 0 else out + h
            layers.append(h)
        features = torch.cat(layers, dim=1)  # (P, 753, T)
        pooled = torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)  # (P, 1506)
        flat = self._bn(pooled, "batch_normalization_9", dim=1)
        embedding = self._bn(F.relu(flat @ self._w("dense/kernel") + self._w("dense/bias")),
                             "batch_normalization_10", dim=1)  # (P, 200)
        tags = torch.sigmoid(embedding @ self._w("dense_1/kernel") + self._w("dense_1/bias"))  # (P, 50)
        return embedding, tags


@functools.lru_cache(maxsize=1)
def musicnn() -> Musicnn:
    """The one frozen musicnn of this process (its weights load once)."""
    return Musicnn()


def window_embeddings(patches_per_window: list[np.ndarray]) -> np.ndarray:
    """Each window's patches (P_w, 187, 96) (mer.features.musicnn.window_patches) -> its embedding, the mean of
    its patches' (W, 200) float32."""
    network = musicnn()
    return np.stack([network(torch.from_numpy(np.asarray(p, dtype=np.float32)))[0].mean(dim=0).numpy()
                     for p in patches_per_window])
