"""ComfyUI node classes: SVDQuant model loader, LoRA loader, on-demand quantizer.

The nodes are thin: they resolve file names through ComfyUI's model folders, talk to the
sidecar through the channel, and return a stock ModelPatcher (see model_proxy).
"""
import os
import re

import folder_paths

from . import model_proxy
from .channel import SidecarError, default_channel

SVDQ_FOLDER = "svdquant"
CALIB_SUBDIR = "calibration"  # svdquant/calibration/*.safetensors: prompts saved for the quantizer
_EXTS = {".safetensors", ".sft"}


def _register_folder():
    """Add ComfyUI/models/svdquant as the `svdquant` model folder (extra_model_paths.yaml may add more)."""
    default = os.path.join(folder_paths.models_dir, SVDQ_FOLDER)
    if SVDQ_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[SVDQ_FOLDER] = ([default], set(_EXTS))
    else:
        folder_paths.add_model_folder_path(SVDQ_FOLDER, default)


_register_folder()


def _checkpoint_choices():
    """Names shown in the loader: `svdquant/<file>` and `diffusion_models/<file>`."""
    out = []
    for folder in (SVDQ_FOLDER, "diffusion_models"):
        try:
            names = folder_paths.get_filename_list(folder)
        except KeyError:
            names = []
        out += [f"{folder}/{n}" for n in names
                if os.path.splitext(n)[1].lower() in _EXTS and not n.startswith(CALIB_SUBDIR + "/")]
    return out


def _resolve_checkpoint(choice: str) -> str:
    folder, _, name = choice.partition("/")
    if folder not in (SVDQ_FOLDER, "diffusion_models") or not name:
        raise ValueError(f"SVDQuant: checkpoint '{choice}' is not of the form svdquant/<file> or diffusion_models/<file>")
    return folder_paths.get_full_path_or_raise(folder, name)


def _progress_factory():
    import comfy.utils

    bar = {}

    def progress(done, total, stage):
        if "bar" not in bar:
            bar["bar"] = comfy.utils.ProgressBar(max(1, total))
        bar["bar"].update_absolute(done, max(1, total))

    return progress


def _device_arg(device: str) -> str | None:
    return None if device == "auto" else device


class SVDQuantModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (_checkpoint_choices(), {"tooltip": "An SVDQuant checkpoint (svdquant folder) or a 16-bit FLUX checkpoint (diffusion_models), which the sidecar quantizes on demand."}),
                "precision": (["auto", "int4", "nvfp4", "16-bit"], {"default": "auto", "tooltip": "4-bit format. auto: the checkpoint's own, or int4 when quantizing a 16-bit checkpoint. 16-bit: run a 16-bit checkpoint unquantized (for A/B comparisons)."}),
                "device": (["auto", "cuda", "cpu"], {"default": "auto", "tooltip": "Where the sidecar runs the engine."}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "SVDQuant"
    DESCRIPTION = "Loads a FLUX transformer into the SVDQuant sidecar (4-bit weights and activations) and returns a MODEL for the stock samplers."

    def load(self, ckpt_name, precision, device):
        args = {"path": _resolve_checkpoint(ckpt_name)}
        if precision == "auto" and ckpt_name.startswith("diffusion_models/"):
            precision = "int4"  # a 16-bit checkpoint: the sidecar quantizes it on demand
        if precision == "16-bit" and ckpt_name.startswith(SVDQ_FOLDER + "/"):
            raise ValueError("SVDQuant loader: 16-bit applies to 16-bit checkpoints (diffusion_models/...), not to an SVDQuant checkpoint")
        if precision not in ("auto", "16-bit"):
            args["precision"] = precision
        if _device_arg(device):
            args["device"] = _device_arg(device)
        sm = model_proxy.SidecarModel(default_channel(), args, progress_factory=_progress_factory)
        return (model_proxy.build_model_patcher(sm),)


class SVDQuantLoraLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A MODEL from the SVDQuant loader (or from another SVDQuant LoRA node)."}),
                "lora_name": (folder_paths.get_filename_list("loras"), {"tooltip": "A FLUX LoRA (kohya, diffusers/PEFT or BFL/ComfyUI keys)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora"
    CATEGORY = "SVDQuant"
    DESCRIPTION = "Adds a LoRA to an SVDQuant MODEL's low-rank branch (no re-quantization). Chain several to stack them."

    def load_lora(self, model, lora_name, strength):
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        if strength == 0:
            return (model,)
        return (model_proxy.with_lora(model, path, strength),)


CALIB_LATENT_HW = 64  # calibration latents: 64x64 (a 512x512 image, 1024 image tokens)


def _calibration_from_conditioning(conditioning, limit: int, seed: int) -> dict:
    """Forward inputs for the quantizer's calibration, one row per prompt: the prompts' context
    [N,T,D], pooled y [N,Dv] and guidance [N], with noise latents x [N,16,64,64] at timesteps spread
    over (0, 1] (the activations a denoising run meets, without needing images)."""
    import torch

    ctx, pooled, guidance = [], [], []
    for c in conditioning or []:
        t, extra = c[0], (c[1] if len(c) > 1 else {})
        p = extra.get("pooled_output")
        if p is None:
            raise ValueError("SVDQuant quantize: the CONDITIONING has no pooled output (use FLUX text encoders: DualCLIPLoader type flux)")
        for i in range(t.shape[0]):
            ctx.append(t[i:i + 1].float().cpu())
            pooled.append(p[min(i, p.shape[0] - 1)].unsqueeze(0).float().cpu())
            guidance.append(float(extra.get("guidance", 3.5)))
    ctx, pooled, guidance = ctx[:limit], pooled[:limit], guidance[:limit]
    if not ctx:
        raise ValueError("SVDQuant quantize: the CONDITIONING input holds no prompts")
    n = len(ctx)
    tmax = max(c.shape[1] for c in ctx)
    # Pad text to one length so the prompts stack (zeros, like an empty T5 tail).
    ctx = [torch.nn.functional.pad(c, (0, 0, 0, tmax - c.shape[1])) for c in ctx]
    g = torch.Generator().manual_seed(int(seed))
    return {
        "x": torch.randn(n, 16, CALIB_LATENT_HW, CALIB_LATENT_HW, generator=g),
        "timestep": ((torch.arange(n, dtype=torch.float32) + 0.5) / n).clamp(0.02, 1.0),
        "context": torch.cat(ctx),
        "y": torch.cat(pooled),
        "guidance": torch.tensor(guidance, dtype=torch.float32),
    }


def _write_calibration(conditioning, limit: int, seed: int, out_dir: str, output_name: str) -> str:
    """Save calibration inputs where the sidecar may read them (inside the svdquant folder), in the
    quantizer's `calib` format: safetensors {x, timestep, context, y, guidance}, F32."""
    from safetensors.torch import save_file

    tensors = _calibration_from_conditioning(conditioning, limit, seed)
    d = os.path.join(out_dir, CALIB_SUBDIR)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, os.path.splitext(output_name)[0] + ".calib.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              metadata={"format": "svdquant-calibration", "source": "comfyui-conditioning"})
    return path


class SVDQuantQuantize:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "source": ([n for n in folder_paths.get_filename_list("diffusion_models") if os.path.splitext(n)[1].lower() in _EXTS],
                           {"tooltip": "A 16-bit FLUX transformer checkpoint (BFL or diffusers keys)."}),
                "precision": (["int4", "nvfp4"], {"default": "int4"}),
                "rank": ("INT", {"default": 32, "min": 0, "max": 1024, "step": 8, "tooltip": "Rank of the 16-bit low-rank branch."}),
                "calibration": (["random", "conditioning"], {"default": "random", "tooltip": "random: synthetic prompts; conditioning: the prompts wired in below."}),
                "calib_samples": ("INT", {"default": 32, "min": 1, "max": 512}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
                "output_name": ("STRING", {"default": "svdq-int4_r32-model.safetensors"}),
                "overwrite": ("BOOLEAN", {"default": False}),
                "device": (["auto", "cuda", "cpu"], {"default": "auto"}),
            },
            "optional": {
                "conditioning": ("CONDITIONING", {"tooltip": "Encoded prompts to calibrate on (calibration = conditioning)."}),
            },
        }

    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "checkpoint")
    FUNCTION = "quantize"
    CATEGORY = "SVDQuant"
    DESCRIPTION = "Quantizes a 16-bit FLUX checkpoint to SVDQuant 4-bit in the sidecar, writes it to models/svdquant and returns the MODEL."

    def quantize(self, source, precision, rank, calibration, calib_samples, seed, output_name, overwrite, device,
                 conditioning=None):
        src = folder_paths.get_full_path_or_raise("diffusion_models", source)
        if not re.fullmatch(r"[\w.\- ]+\.safetensors", output_name or ""):
            raise ValueError(f"SVDQuant quantize: output_name '{output_name}' must be a plain file name ending in .safetensors")
        out_dir = folder_paths.get_folder_paths(SVDQ_FOLDER)[0]
        os.makedirs(out_dir, exist_ok=True)
        out_path = os.path.join(out_dir, output_name)
        args = {"input": src, "output": out_path, "precision": precision, "rank": int(rank),
                "samples": int(calib_samples), "seed": int(seed), "force": bool(overwrite)}
        if calibration == "conditioning":
            if not conditioning:
                raise ValueError("SVDQuant quantize: calibration = conditioning needs a CONDITIONING input")
            args["calib"] = _write_calibration(conditioning, int(calib_samples), int(seed), out_dir, output_name)
        ch = default_channel()
        ch.request("quantize", args, progress=_progress_factory())
        load = {"path": out_path}
        if _device_arg(device):
            load["device"] = _device_arg(device)
        sm = model_proxy.SidecarModel(ch, load, progress_factory=_progress_factory)
        return (model_proxy.build_model_patcher(sm), out_path)


NODE_CLASS_MAPPINGS = {
    "SVDQuantModelLoader": SVDQuantModelLoader,
    "SVDQuantLoraLoader": SVDQuantLoraLoader,
    "SVDQuantQuantize": SVDQuantQuantize,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SVDQuantModelLoader": "SVDQuant Model Loader",
    "SVDQuantLoraLoader": "SVDQuant LoRA Loader",
    "SVDQuantQuantize": "SVDQuant Quantize",
}
