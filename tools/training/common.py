"""Pieces shared by the Fashion-MNIST training, sampling and classifier scripts."""
from __future__ import annotations

import math
import os
import sys

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODEL_DIR = os.path.join(ROOT, "models", "flux-fmnist")


def flux_mu(seq_len: int) -> float:
    """FLUX's resolution-dependent time shift: linear in the image token count through
    (256 tokens, 0.5) and (4096 tokens, 1.15)."""
    return 0.5 + (seq_len - 256) * (1.15 - 0.5) / (4096 - 256)


def flux_sigmas(steps: int, mu: float) -> torch.Tensor:
    """sigma_i = e^mu / (e^mu + (1/t - 1)) for t running linearly from 1 to 0."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    e = math.exp(mu)
    s = torch.where(t > 0, e / (e + (1.0 / t.clamp_min(1e-12) - 1.0)), torch.zeros_like(t))
    return s


class MLPClassifier(torch.nn.Module):
    """784 -> 256 (ReLU, the feature space for Frechet distances) -> 10. Input: pixels / 255."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, hidden)
        self.fc2 = torch.nn.Linear(hidden, 10)

    def features(self, x_u8_or_unit: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc1(x_u8_or_unit.reshape(x_u8_or_unit.shape[0], -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def load_classifier(path: str = os.path.join(MODEL_DIR, "classifier.safetensors")) -> MLPClassifier:
    from safetensors.torch import load_file
    sd = load_file(path)
    clf = MLPClassifier(sd["fc1.weight"].shape[0])
    clf.load_state_dict({k: v.float() for k, v in sd.items()})
    return clf.eval()
