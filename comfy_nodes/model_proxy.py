"""The MODEL our loader returns: a stock ComfyUI ModelPatcher around a stock comfy Flux model_base
whose diffusion_model is `SidecarFlux`, a weightless nn.Module that ships each forward to the sidecar.

Everything ComfyUI does around the transformer (sigma schedules, CFG batching, conditioning
concatenation, latent formats, model_sampling patches) stays ComfyUI's own code; only the
transformer call crosses the channel. Per-clone state (the LoRA stack) lives in
model_options["transformer_options"], which ComfyUI deep-copies on clone and hands to forward.
"""
import functools
import hashlib
import threading

import torch
import torch.nn.functional as F

from . import tensors as tcodec
from .channel import Channel, ConnectionLost, SidecarError

LORA_KEY = "svdquant_loras"  # transformer_options key: list of {"path", "strength"}
# Repeat across sampling steps: sent once, then by hash.
CACHED_INPUTS = ("context", "y", "attention_mask", "ref_latents")
CACHE_MIN_BYTES = 64 * 1024       # below this a ref saves nothing

# What ComfyUI's model_detection would derive for a BFL FLUX checkpoint; the sidecar reports
# the sizes that differ between models (hidden size, depths, heads, embed widths).
_FLUX_DEFAULTS = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 768,
    "context_in_dim": 4096,
    "hidden_size": 3072,
    "mlp_ratio": 4.0,
    "num_heads": 24,
    "depth": 19,
    "depth_single_blocks": 38,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
    "txt_ids_dims": [],
}


# The engine's config names (sidecar `load` result, native/binding/engine.cpp) -> comfy unet_config.
_ENGINE_NAMES = {"inChannels": "in_channels", "outChannels": "out_channels", "hidden": "hidden_size",
                 "numHeads": "num_heads", "depthDouble": "depth", "depthSingle": "depth_single_blocks",
                 "contextDim": "context_in_dim", "vecDim": "vec_in_dim", "guidanceEmbed": "guidance_embed",
                 "axesDim": "axes_dim"}


def unet_config_from_sidecar(cfg: dict) -> dict:
    """A complete comfy Flux unet_config from the model config the sidecar reports (engine names,
    or comfy's own names)."""
    out = dict(_FLUX_DEFAULTS)
    for k, v in (cfg or {}).items():
        k = _ENGINE_NAMES.get(k, k)
        if k in out:
            out[k] = v
    if cfg and cfg.get("mlpHidden") and out["hidden_size"]:
        out["mlp_ratio"] = cfg["mlpHidden"] / out["hidden_size"]
    out["axes_dim"] = list(out["axes_dim"])
    head = out["hidden_size"] // out["num_heads"]
    if sum(out["axes_dim"]) != head:
        # A small model with a different head size: keep FLUX's (1 : 3.5 : 3.5) split of rope axes.
        a = head // 8
        b = (head - a) // 2
        out["axes_dim"] = [head - 2 * b, b, b]
    return out


class SidecarModel:
    """The sidecar-side model one loader node produced: how to (re)load it and how to call it."""

    def __init__(self, channel: Channel, load_args: dict, progress_factory=None):
        self.channel = channel
        self.load_args = dict(load_args)
        self.progress_factory = progress_factory
        self.model_id = None
        self.info: dict = {}
        self._generation = None
        self._sent_hashes: set[str] = set()
        self._lock = threading.RLock()

    # -- state on the sidecar ---------------------------------------------------------------------
    def ensure_loaded(self, force: bool = False):
        with self._lock:
            self.channel.ensure_connected()  # first, so a restarted sidecar shows as a new generation
            if not force and self.model_id is not None and self._generation == self.channel.generation:
                return
            progress = self.progress_factory() if self.progress_factory else None
            # A new connection may be a restarted sidecar: load again (the sidecar dedupes).
            result, _ = self.channel.request("load", self.load_args, progress=progress)
            self.model_id = result.get("model")
            if self.model_id is None:
                raise SidecarError(f"svdquant: sidecar 'load' reply has no model id: {result}")
            self.info = result
            self._generation = self.channel.generation
            self._sent_hashes = set()

    @property
    def config(self) -> dict:
        return self.info.get("config") or {}

    @property
    def weight_bytes(self) -> int:
        for k in ("weight_bytes", "weightBytes"):
            if k in self.info:
                return int(self.info[k])
        return 0

    @property
    def device(self) -> str:
        return str(self.info.get("device") or self.load_args.get("device") or "cpu")

    def forward(self, tensors: dict, loras: list, extra_args: dict | None = None) -> torch.Tensor:
        """One transformer evaluation. Retried once after a dropped connection (the sidecar may have
        restarted) or when the sidecar no longer knows the model (unloaded by someone else)."""
        for attempt in (0, 1):
            try:
                self.ensure_loaded(force=attempt == 1)
                args = {"model": self.model_id, "loras": loras}
                if extra_args:
                    args.update(extra_args)
                try:
                    result, out = self.channel.request("forward", args, tensors=self._by_ref(tensors))
                except SidecarError as e:
                    if e.code != "unknown_ref":
                        raise
                    # The sidecar evicted a cached tensor: send everything inline this once.
                    self._sent_hashes.clear()
                    result, out = self.channel.request("forward", args, tensors=tensors)
                if "out" not in out:
                    raise SidecarError(f"svdquant: sidecar 'forward' reply has no 'out' tensor (got {sorted(out)})")
                return out["out"]
            except ConnectionLost:
                if attempt == 1:
                    raise
            except SidecarError as e:
                if attempt == 1 or not (e.code == "not_found" and e.arg == "model"):
                    raise

    def _by_ref(self, tensors: dict) -> dict:
        """Replace the conditioning tensors (same for every step) by content-hash refs, uploading
        each once with put_tensor (docs/PROTOCOL.md section 3)."""
        out = dict(tensors)
        for name in CACHED_INPUTS:
            t = tensors.get(name)
            if isinstance(t, list):
                out[name] = [self._ref_of(f"{name}[{i}]", r) for i, r in enumerate(t)]
            elif t is not None:
                out[name] = self._ref_of(name, t)
        return out

    def _ref_of(self, name: str, t: torch.Tensor):
        if t.numel() * t.element_size() < CACHE_MIN_BYTES:
            return t
        wire = tcodec.encode(t)
        h = wire_hash(wire)
        if h not in self._sent_hashes:
            res, _ = self.channel.request("put_tensor", tensors={"tensor": wire})
            if res.get("hash") != h:
                raise SidecarError(f"svdquant: sidecar hashed {name} as {res.get('hash')}, expected {h}")
            self._sent_hashes.add(h)
        return {"ref": h}


class SidecarFlux(torch.nn.Module):
    """Stands where comfy.ldm.flux.model.Flux stands, with the same forward signature."""

    def __init__(self, image_model=None, dtype=None, device=None, operations=None, sidecar_model=None, **params):
        super().__init__()
        self.sidecar_model: SidecarModel = sidecar_model
        self.dtype = dtype if dtype is not None else torch.float32
        self.params = dict(params)
        self.patch_size = int(params.get("patch_size", 2))
        self.in_channels = int(params.get("in_channels", 16))
        self.out_channels = int(params.get("out_channels", 16))
        self.guidance_embed = bool(params.get("guidance_embed", True))

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                transformer_options={}, **kwargs):
        if control is not None:
            raise RuntimeError("SVDQuant model: ControlNet inputs are not supported by the sidecar engine")
        bs, _c, h, w = x.shape
        p = self.patch_size
        # ComfyUI's Flux pads to the patch size (circularly) and crops the output; do the same here
        # so the sidecar only ever sees whole patches.
        ph, pw = (p - h % p) % p, (p - w % p) % p
        xin = F.pad(x, (0, pw, 0, ph), mode="circular") if (ph or pw) else x
        wire = torch.float32
        tensors = {
            "x": xin.to(wire),
            "timestep": timestep.reshape(-1).to(torch.float32).expand(bs) if timestep.numel() == 1 else timestep.reshape(-1).to(torch.float32),
            "context": context.to(wire),
        }
        if y is not None:
            tensors["y"] = y.to(wire)
        else:
            tensors["y"] = torch.zeros((bs, int(self.params.get("vec_in_dim") or 768)), dtype=wire)
        if guidance is not None and self.guidance_embed:
            g = guidance.reshape(-1).to(torch.float32)
            tensors["guidance"] = g.expand(bs) if g.numel() == 1 else g
        mask = kwargs.get("attention_mask")
        if mask is not None:
            tensors["attention_mask"] = mask.to(torch.float32) if mask.dtype != torch.bool else mask
        extra = {}
        if ref_latents:
            tensors["ref_latents"] = [r.to(wire) for r in ref_latents]
            if kwargs.get("ref_latents_method") is not None:
                extra["ref_latents_method"] = str(kwargs["ref_latents_method"])
        loras = [dict(l) for l in (transformer_options.get(LORA_KEY) or [])]
        out = self.sidecar_model.forward(tensors, loras, extra)
        if tuple(out.shape) != tuple(xin.shape[:1]) + (self.out_channels,) + tuple(xin.shape[2:]):
            raise RuntimeError(f"SVDQuant model: sidecar returned {tuple(out.shape)} for input {tuple(xin.shape)}")
        out = out[:, :, :h, :w]
        return out.to(device=x.device, dtype=x.dtype)


def build_model_patcher(sidecar_model: SidecarModel):
    """A stock ModelPatcher around a stock comfy Flux model_base driving `sidecar_model`."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    sidecar_model.ensure_loaded()
    unet_config = unet_config_from_sidecar(sidecar_model.config)
    dev = unet_config["guidance_embed"]
    cls = comfy.supported_models.Flux if dev else comfy.supported_models.FluxSchnell
    model_config = cls(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model_type = comfy.model_base.ModelType.FLUX if dev else comfy.model_base.ModelType.FLOW
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model = comfy.model_base.Flux(model_config, model_type=model_type, device=offload_device,
                                  unet_model=functools.partial(SidecarFlux, sidecar_model=sidecar_model))
    # Memory: ComfyUI budgets VRAM from the patcher size. When the sidecar holds the weights on
    # the GPU we report their size so ComfyUI keeps that much free for it; a CPU sidecar uses no VRAM.
    on_gpu = sidecar_model.device.startswith("cuda")
    size = max(1, sidecar_model.weight_bytes) if on_gpu else 1
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device, size=size)
    patcher.model_options.setdefault("transformer_options", {})[LORA_KEY] = []
    return patcher


def sidecar_model_of(patcher):
    dm = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    if not isinstance(dm, SidecarFlux):
        raise TypeError("this MODEL does not come from an SVDQuant loader (connect an 'SVDQuant Model Loader' output)")
    return dm.sidecar_model


def with_lora(patcher, path: str, strength: float):
    """A clone of `patcher` whose LoRA list ends with (path, strength); the original is unchanged."""
    sidecar_model_of(patcher)
    n = patcher.clone()
    to = n.model_options.setdefault("transformer_options", {})
    to[LORA_KEY] = list(to.get(LORA_KEY) or []) + [{"path": path, "strength": float(strength)}]
    return n


def loras_of(patcher) -> list:
    return list(patcher.model_options.get("transformer_options", {}).get(LORA_KEY) or [])


def wire_hash(wire: dict) -> str:
    """The sidecar's content hash of a tensor map: sha256("<dtype>:<d0>,<d1>,...:" + data)."""
    h = hashlib.sha256()
    h.update(f"{wire['dtype']}:{','.join(str(d) for d in wire['shape'])}:".encode())
    h.update(wire["data"])
    return h.hexdigest()
