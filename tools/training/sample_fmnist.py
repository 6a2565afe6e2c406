"""Sample the bundled Fashion-MNIST FLUX model with Euler on FLUX's time schedule and judge the
samples with the bundled classifier.

The model runs from its BF16 checkpoint values (upcast to F32 for the math), conditioned on the
shipped conditioning table, optionally with classifier-free guidance against the unconditional
entry. Prints the classifier accuracy over `--per-class` samples per class; `--png` writes a grid.

Usage: python3 tools/training/sample_fmnist.py [--per-class 10] [--steps 20] [--cfg 1.0] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from tools.training.common import MODEL_DIR, flux_mu, flux_sigmas, load_classifier  # noqa: E402
from tools.flux_torch.model import load_reference
from tools.training import fmnist


@torch.no_grad()
def sample(model, cond: dict, labels: torch.Tensor, steps: int, cfg: float, seed: int) -> torch.Tensor:
    n = labels.shape[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, fmnist.LATENT_CHANNELS, fmnist.LATENT_SIZE, fmnist.LATENT_SIZE, generator=g)
    ctx, y = cond["context"][labels], cond["y"][labels]
    sig = flux_sigmas(steps, flux_mu(64))
    for i in range(steps):
        t = torch.full((n,), float(sig[i]))
        v = model(x, t, ctx, y)
        if cfg != 1.0:
            vu = model(x, t, cond["context_uncond"].expand(n, -1, -1), cond["y_uncond"].expand(n, -1))
            v = vu + cfg * (v - vu)
        x = x + float(sig[i + 1] - sig[i]) * v
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=MODEL_DIR)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--png", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_reference(os.path.join(a.model_dir, "model.safetensors"), dtype=torch.float32)
    cond = load_file(os.path.join(a.model_dir, "conditioning.safetensors"))
    clf = load_classifier(os.path.join(a.model_dir, "classifier.safetensors"))
    labels = torch.arange(10).repeat(a.per_class)
    t0 = time.time()
    z = sample(model, cond, labels, a.steps, a.cfg, a.seed)
    el = time.time() - t0
    imgs = fmnist.from_latent(z)
    with torch.no_grad():
        pred = clf(torch.tensor(imgs, dtype=torch.float32) / 255).argmax(1)
    acc = (pred == labels).float().mean().item()
    per = [(pred[labels == c] == c).float().mean().item() for c in range(10)]
    print(json.dumps({"samples": len(labels), "steps": a.steps, "cfg": a.cfg, "seed": a.seed,
                      "accuracy": round(acc, 4), "per_class": [round(p, 2) for p in per],
                      "seconds": round(el, 1)}))
    if a.png:
        from PIL import Image
        rows = a.per_class
        grid = imgs.reshape(rows, 10, 28, 28).transpose(0, 2, 1, 3).reshape(rows * 28, 280)
        Image.fromarray(grid).resize((280 * 2, rows * 56), Image.NEAREST).save(a.png)


if __name__ == "__main__":
    main()
