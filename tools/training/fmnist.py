"""Fashion-MNIST from Debian's dataset-fashion-mnist package (idx format, gzip), and the fixed
latent mapping the bundled FLUX-architecture model lives in.

Latent mapping (no VAE):
  uint8 image [28, 28] -> float in [-1, 1] (p / 127.5 - 1) -> pad 2 px each side with -1 (black)
  to 32x32 -> pixel-unshuffle by 2 -> latent [4, 16, 16]. FLUX's 2x2 patchify then gives
  8*8 = 64 tokens of 16 dims (in_channels 4).
Inverse: pixel-shuffle by 2 -> crop the 2 px border -> (z + 1) * 127.5, rounded and clipped.
The round trip uint8 -> latent -> uint8 is exact.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

DATA_DIR = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
LATENT_CHANNELS, LATENT_SIZE, PAD = 4, 16, 2


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, body has {body.size} bytes")
    return body.reshape(dims)


def load(split: str = "train", data_dir: str = DATA_DIR):
    """Returns (images uint8 [N, 28, 28], labels int64 [N])."""
    prefix = {"train": "train", "test": "t10k"}[split]
    x = _read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{split}: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def to_latent(img_u8) -> torch.Tensor:
    """uint8 [N, 28, 28] (numpy or tensor) -> float32 latent [N, 4, 16, 16]."""
    x = torch.as_tensor(np.array(img_u8), dtype=torch.float32) / 127.5 - 1.0
    x = F.pad(x[:, None], (PAD, PAD, PAD, PAD), value=-1.0)
    return F.pixel_unshuffle(x, 2)


def from_latent_float(z: torch.Tensor) -> torch.Tensor:
    """latent [N, 4, 16, 16] -> float image in [-1, 1]-ish [N, 28, 28] (no clipping)."""
    x = F.pixel_shuffle(z.float(), 2)[:, 0]
    return x[:, PAD:-PAD, PAD:-PAD]


def from_latent(z: torch.Tensor) -> np.ndarray:
    """latent -> uint8 [N, 28, 28]."""
    x = (from_latent_float(z) + 1.0) * 127.5
    return x.round().clamp(0, 255).to(torch.uint8).numpy()
