"""Shared fixtures for the FLUX reference / engine tests and the Fashion-MNIST model tests."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# The repo root is itself a ComfyUI custom-node package (root __init__.py imports comfy_nodes, which
# imports ComfyUI's folder_paths); pytest imports that package while setting up any test below it,
# so ComfyUI or its stand-in must be importable even when only non-ComfyUI tests are selected.
from conftest_comfy import setup_comfy  # noqa: E402

setup_comfy()

ADDON = os.path.join(REPO, "native", "build", "Release", "svdq.node")
CLI = os.path.join(REPO, "bin", "svdq.mjs")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture
def make_fixture(tmp_path):
    """make_fixture(**kw) -> dict with model/inputs/expected paths (tools/fixtures/make_tiny_flux)."""
    from tools.fixtures.make_tiny_flux import make

    counter = iter(range(1000))

    def _make(**kw):
        d = tmp_path / f"fx{next(counter)}"
        return make(str(d), **kw)

    return _make


@pytest.fixture
def svdq_forward(tmp_path):
    """Runs `node bin/svdq.mjs forward` from the repo root; returns the `out` tensor."""
    if not os.path.exists(ADDON):
        pytest.skip(f"native addon not built ({ADDON} missing): run `npm run build`")
    assert os.path.exists(CLI), f"{CLI} missing: the CLI entry point is required for engine tests"
    from safetensors.torch import load_file

    counter = iter(range(1000))

    def _run(model: str, inputs: str, axes=None) -> torch.Tensor:
        out = str(tmp_path / f"out{next(counter)}.safetensors")
        cmd = ["node", CLI, "forward", "--model", model, "--inputs", inputs, "-o", out]
        if axes is not None:
            cmd += ["--axes", ",".join(str(a) for a in axes)]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return load_file(out)["out"]

    return _run
