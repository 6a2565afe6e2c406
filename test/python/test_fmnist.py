"""Fashion-MNIST loader, the fixed latent mapping, and the shipped model/classifier files."""
from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import REPO
from tools.training import fmnist

MODEL_DIR = os.path.join(REPO, "models", "flux-fmnist")
needs_data = pytest.mark.skipif(not os.path.isdir(fmnist.DATA_DIR),
                                reason=f"{fmnist.DATA_DIR} missing (apt package dataset-fashion-mnist)")


@needs_data
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_loader_shapes_and_labels(split, n):
    x, y = fmnist.load(split)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8
    assert y.shape == (n,) and y.min() == 0 and y.max() == 9
    assert np.bincount(y).tolist() == [n // 10] * 10          # the dataset is balanced
    assert x.max() == 255 and x.min() == 0
    # images are not constant and differ between classes (a shuffled/misaligned read would not)
    means = [x[y == c].mean() for c in range(10)]
    assert max(means) - min(means) > 20                           # trousers vs. coats differ in ink


def _write_idx(path, magic: bytes, dims, body: bytes):
    with gzip.open(path, "wb") as f:
        f.write(magic + struct.pack(">" + "I" * len(dims), *dims) + body)


def test_loader_rejects_malformed_files(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", b"\x00\x00\x08\x03", (2, 28, 28), bytes(100))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", b"\x00\x00\x08\x01", (2,), bytes(2))
    with pytest.raises(ValueError, match="train-images.*header says"):
        fmnist.load("train", str(tmp_path))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", b"\x00\x00\x0d\x03", (2, 28, 28), bytes(2 * 784))
    with pytest.raises(ValueError, match="not an unsigned-byte idx"):
        fmnist.load("train", str(tmp_path))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", b"\x00\x00\x08\x03", (3, 28, 28), bytes(3 * 784))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        fmnist.load("train", str(tmp_path))


@needs_data
def test_latent_mapping_round_trip_is_exact():
    x, _ = fmnist.load("test")
    z = fmnist.to_latent(x)
    assert z.shape == (10000, 4, 16, 16) and z.dtype == torch.float32
    assert z.min() >= -1 and z.max() <= 1
    assert np.array_equal(fmnist.from_latent(z), x)


def test_latent_layout_is_pixel_unshuffle_of_padded_image():
    img = np.random.default_rng(0).integers(0, 256, (1, 28, 28), dtype=np.uint8)
    z = fmnist.to_latent(img)
    # latent channel (2*i + j) at (r, c) is padded pixel (2r + i, 2c + j); the pad is black (-1)
    r, c, i, j = 5, 7, 1, 0
    assert z[0, 2 * i + j, r, c].item() == pytest.approx(img[0, 2 * r + i - 2, 2 * c + j - 2] / 127.5 - 1)
    assert z[0, :, 0, :].eq(-1).all()                               # top border rows 0..1 are pad
    assert np.array_equal(fmnist.from_latent(torch.full((1, 4, 16, 16), 3.0)), np.full((1, 28, 28), 255))


def test_shipped_model_loads_and_gives_finite_output():
    from tools.flux_torch.model import load_reference
    path = os.path.join(MODEL_DIR, "model.safetensors")
    assert os.path.getsize(path) <= 20 * 1024 * 1024
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in keys)
    assert "double_blocks.0.img_attn.qkv.weight" in keys and "final_layer.linear.weight" in keys
    cfg = json.loads(meta["config"])
    assert cfg["hidden_size"] % 64 == 0 and cfg["in_channels"] == 4
    model = load_reference(path, axes=cfg["axes_dim"], dtype=torch.float32)
    cond = load_file(os.path.join(MODEL_DIR, "conditioning.safetensors"))
    assert cond["context"].shape[0] == 10 and cond["y"].shape == (10, cfg["vec_in_dim"])
    assert cond["context"].shape[2] == cfg["context_in_dim"]
    x = torch.randn(10, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = model(x, torch.full((10,), 0.5), cond["context"], cond["y"])
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert 0.1 < v.std().item() < 10                                # a trained velocity, not zeros


@needs_data
def test_shipped_classifier_accuracy_matches_its_metadata():
    from tools.training.common import load_classifier
    path = os.path.join(MODEL_DIR, "classifier.safetensors")
    with safe_open(path, "pt") as f:
        claimed = float(f.metadata()["test_accuracy"])
    clf = load_classifier(path)
    x, y = fmnist.load("test")
    with torch.no_grad():
        pred = clf(torch.tensor(x, dtype=torch.float32) / 255).argmax(1).numpy()
    acc = float((pred == y).mean())
    assert acc == pytest.approx(claimed, abs=1e-3) and acc >= 0.85


@needs_data
def test_shipped_model_samples_are_recognised_by_the_classifier():
    """Issue 6's bar: BF16 samples (Euler, FLUX schedule, 20 steps, classifier-free guidance 2.0
    against the shipped unconditional entry, fixed seed) are classified as their class at >= 80%.
    (Without guidance the shipped model reaches 76% on 100 samples; see the model card.)"""
    from tools.flux_torch.model import load_reference
    from tools.training.common import load_classifier
    from tools.training.sample_fmnist import sample
    torch.set_num_threads(2)
    model = load_reference(os.path.join(MODEL_DIR, "model.safetensors"), dtype=torch.float32)
    cond = load_file(os.path.join(MODEL_DIR, "conditioning.safetensors"))
    clf = load_classifier(os.path.join(MODEL_DIR, "classifier.safetensors"))
    labels = torch.arange(10).repeat(5)
    imgs = fmnist.from_latent(sample(model, cond, labels, steps=20, cfg=2.0, seed=0))
    with torch.no_grad():
        pred = clf(torch.tensor(imgs, dtype=torch.float32) / 255).argmax(1)
    acc = (pred == labels).float().mean().item()
    assert acc >= 0.8, f"sample accuracy {acc:.2f} < 0.80"
