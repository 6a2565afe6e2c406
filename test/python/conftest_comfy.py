"""Shared set-up for the ComfyUI-node tests: real ComfyUI when COMFYUI_DIR is set, else comfy_stub.

Imported by test_comfy_*.py (not a conftest.py, so other helpers' pytest files are unaffected).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR") or None


def setup_comfy():
    """Put ComfyUI (or the stand-in) and the repo on sys.path; returns "comfyui" or "stub"."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    if COMFYUI_DIR:
        if os.environ.get("SVDQ_COMFY_STANDINS", "1") != "0":
            # Import-only stand-ins for ComfyUI dependencies a CPU-only mirror lacks (only those missing).
            standins = os.path.join(HERE, "comfyui_standins")
            if standins not in sys.path:
                sys.path.insert(0, standins)
            import sitecustomize_standins  # noqa: F401
        if COMFYUI_DIR not in sys.path:
            sys.path.insert(0, COMFYUI_DIR)
        from comfy.cli_args import args
        # main.py imports the server (and ComfyUI's top-level `utils` package) before the node
        # modules, some of which would otherwise leave comfy/utils.py registered as `utils`.
        import utils.json_util  # noqa: F401
        import torch
        if not torch.cuda.is_available():
            args.cpu = True
        return "comfyui"
    stub = os.path.join(HERE, "comfy_stub")
    if stub not in sys.path:
        sys.path.insert(0, stub)
    return "stub"
