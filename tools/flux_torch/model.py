"""Independent PyTorch reference of the FLUX transformer (test tooling and training).

Written from the published FLUX architecture (Black Forest Labs' flux model) and ComfyUI's
forward conventions for latents. Module attribute names follow BFL's, so ``state_dict()`` keys
are BFL checkpoint keys (``double_blocks.0.img_attn.qkv.weight`` ...). Helpers at the bottom map
ComfyUI-prefixed and diffusers-named checkpoints onto those keys and back.

The module runs in whatever dtype its parameters have; the test reference casts the model and
inputs to float64 so that it is a tighter bound than the engine under test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COMFY_PREFIX = "model.diffusion_model."


# ----------------------------------------------------------------------------- config

def default_axes(head_dim: int) -> List[int]:
    """FLUX's RoPE split [16, 56, 56] for head_dim 128, scaled to other head dims.

    The two spatial axes get round(56*h/128) rounded to an even number, the first axis the rest.
    """
    if head_dim == 128:
        return [16, 56, 56]
    spatial = int(round(56 * head_dim / 128 / 2)) * 2
    first = head_dim - 2 * spatial
    if first <= 0 or first % 2:
        raise ValueError(f"no default RoPE axes for head_dim {head_dim}; pass axes explicitly")
    return [first, spatial, spatial]


@dataclass
class FluxConfig:
    in_channels: int = 16          # latent channels C; img_in sees C*4 after 2x2 patchify
    out_channels: int = 16
    hidden_size: int = 128
    num_heads: int = 2
    depth: int = 2                 # double-stream blocks
    depth_single_blocks: int = 2
    context_in_dim: int = 64
    vec_in_dim: int = 32
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    guidance_embed: bool = False
    axes_dim: Optional[List[int]] = None   # None -> default_axes(head_dim)
    theta: int = 10000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def axes(self) -> List[int]:
        return list(self.axes_dim) if self.axes_dim is not None else default_axes(self.head_dim)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["axes_dim"] = self.axes
        return d

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if sum(self.axes) != self.head_dim or any(a % 2 for a in self.axes):
            raise ValueError(f"RoPE axes {self.axes} must be even and sum to head_dim {self.head_dim}")


# ----------------------------------------------------------------------------- pieces

def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0,
                       time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of t*1000, cosine half first (FLUX's convention)."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    args = t[:, None].to(torch.float64) * freqs[None].to(t.device)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(t.dtype) if t.is_floating_point() else emb


def rope_freqs(pos: Tensor, dim: int, theta: int) -> Tensor:
    """Rotation matrices [..., n, dim/2, 2, 2] for positions pos [..., n] on one axis."""
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta ** scale)
    ang = pos.to(torch.float64)[..., None] * omega          # [..., n, dim/2]
    c, s = torch.cos(ang), torch.sin(ang)
    return torch.stack([c, -s, s, c], dim=-1).reshape(*ang.shape, 2, 2)


def embed_nd(ids: Tensor, axes: Sequence[int], theta: int) -> Tensor:
    """ids [B, L, n_axes] -> pe [B, 1, L, head_dim/2, 2, 2]; axes concatenated in order."""
    parts = [rope_freqs(ids[..., i], axes[i], theta) for i in range(len(axes))]
    return torch.cat(parts, dim=-3).unsqueeze(1)


def apply_rope(x: Tensor, pe: Tensor) -> Tensor:
    """Rotate consecutive channel pairs (x0, x1) -> (c*x0 - s*x1, s*x0 + c*x1)."""
    xp = x.reshape(*x.shape[:-1], -1, 1, 2).to(pe.dtype)
    out = pe[..., 0] * xp[..., 0] + pe[..., 1] * xp[..., 1]
    return out.reshape(x.shape).to(x.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """q, k, v [B, H, L, D]; mask broadcastable to [B, H, L, L] (bool: True = attend, else added to
    the scores), as ComfyUI's optimized_attention takes it; returns [B, L, H*D]."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, l, d = x.shape
    return x.transpose(1, 2).reshape(b, l, h * d)


def layer_norm(x: Tensor) -> Tensor:
    """LayerNorm without affine parameters, eps 1e-6."""
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        rrms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x * rrms * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)


class SelfAttention(nn.Module):
    """Parameter holder for one stream's attention: qkv, QK norm, output proj."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: Tensor):
        b, l, _ = x.shape
        qkv = self.qkv(x).reshape(b, l, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        return self.norm.query_norm(q), self.norm.key_norm(k), v


class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec: Tensor):
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return out  # (shift, scale, gate) once or twice


def mlp(hidden: int, mlp_hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"),
                         nn.Linear(mlp_hidden, hidden))


class DoubleStreamBlock(nn.Module):
    def __init__(self, cfg: FluxConfig):
        super().__init__()
        h, m = cfg.hidden_size, cfg.mlp_hidden
        self.img_mod = Modulation(h, True)
        self.img_attn = SelfAttention(h, cfg.num_heads, cfg.qkv_bias)
        self.img_mlp = mlp(h, m)
        self.txt_mod = Modulation(h, True)
        self.txt_attn = SelfAttention(h, cfg.num_heads, cfg.qkv_bias)
        self.txt_mlp = mlp(h, m)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor, mask: Optional[Tensor] = None):
        i_sh1, i_sc1, i_g1, i_sh2, i_sc2, i_g2 = self.img_mod(vec)
        t_sh1, t_sc1, t_g1, t_sh2, t_sc2, t_g2 = self.txt_mod(vec)
        iq, ik, iv = self.img_attn.qkv_heads((1 + i_sc1) * layer_norm(img) + i_sh1)
        tq, tk, tv = self.txt_attn.qkv_heads((1 + t_sc1) * layer_norm(txt) + t_sh1)
        # joint attention over concat(txt, img), txt first
        a = attention(torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2), pe, mask)
        lt = txt.shape[1]
        t_a, i_a = a[:, :lt], a[:, lt:]
        img = img + i_g1 * self.img_attn.proj(i_a)
        img = img + i_g2 * self.img_mlp((1 + i_sc2) * layer_norm(img) + i_sh2)
        txt = txt + t_g1 * self.txt_attn.proj(t_a)
        txt = txt + t_g2 * self.txt_mlp((1 + t_sc2) * layer_norm(txt) + t_sh2)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, cfg: FluxConfig):
        super().__init__()
        h, m = cfg.hidden_size, cfg.mlp_hidden
        self.hidden, self.mlp_hidden, self.num_heads = h, m, cfg.num_heads
        self.linear1 = nn.Linear(h, 3 * h + m)
        self.linear2 = nn.Linear(h + m, h)
        self.norm = QKNorm(cfg.head_dim)
        self.modulation = Modulation(h, False)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        shift, scale, gate = self.modulation(vec)
        x_mod = (1 + scale) * layer_norm(x) + shift
        qkv, mlp_in = torch.split(self.linear1(x_mod), [3 * self.hidden, self.mlp_hidden], dim=-1)
        b, l, _ = x.shape
        qkv = qkv.reshape(b, l, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = self.norm.query_norm(qkv[0]), self.norm.key_norm(qkv[1]), qkv[2]
        a = attention(q, k, v, pe, mask)
        out = self.linear2(torch.cat([a, F.gelu(mlp_in, approximate="tanh")], dim=-1))
        return x + gate * out


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None]) * layer_norm(x) + shift[:, None])


# ----------------------------------------------------------------------------- model

class Flux(nn.Module):
    def __init__(self, cfg: FluxConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        h = cfg.hidden_size
        self.img_in = nn.Linear(cfg.in_channels * 4, h)
        self.time_in = MLPEmbedder(256, h)
        self.vector_in = MLPEmbedder(cfg.vec_in_dim, h)
        if cfg.guidance_embed:
            self.guidance_in = MLPEmbedder(256, h)
        self.txt_in = nn.Linear(cfg.context_in_dim, h)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(cfg) for _ in range(cfg.depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(cfg) for _ in range(cfg.depth_single_blocks)])
        self.final_layer = LastLayer(h, 4 * cfg.out_channels)

    def forward_tokens(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor,
                       timesteps: Tensor, y: Tensor, guidance: Optional[Tensor] = None,
                       mask: Optional[Tensor] = None) -> Tensor:
        dt = img.dtype
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(dt))
        if self.cfg.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(dt))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = embed_nd(torch.cat([txt_ids, img_ids], dim=1), self.cfg.axes, self.cfg.theta)
        if dt != torch.float64:
            pe = pe.to(dt)
        if mask is not None:  # [L, L] / [B, L, L] / [B, H, L, L] -> 4-D
            mask = mask[None, None] if mask.ndim == 2 else mask[:, None] if mask.ndim == 3 else mask
            mask = mask if mask.dtype == torch.bool else mask.to(dt)
        for blk in self.double_blocks:
            img, txt = blk(img, txt, vec, pe, mask)
        x = torch.cat([txt, img], dim=1)
        for blk in self.single_blocks:
            x = blk(x, vec, pe, mask)
        return self.final_layer(x[:, txt.shape[1]:], vec)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor,
                guidance: Optional[Tensor] = None, ref_latents: Optional[Sequence[Tensor]] = None,
                ref_latents_method: str = "offset", attention_mask: Optional[Tensor] = None) -> Tensor:
        """ComfyUI's Flux forward: x [B, C, H, W] -> [B, C, H, W]. Reference latents (Kontext) join
        the image tokens with the position ids ComfyUI gives them; the output covers x's tokens."""
        b, c, h, w = x.shape
        img, img_ids, hl, wl = patchify(x)
        for ref, (index, h_off, w_off) in zip(ref_latents or [], reference_offsets(ref_latents or [], ref_latents_method, h, w)):
            r_tok, r_ids, _, _ = patchify(ref.expand(b, -1, -1, -1) if ref.shape[0] == 1 else ref)
            r_ids = r_ids.clone()
            r_ids[..., 0] = index
            r_ids[..., 1] += (h_off + 1) // 2
            r_ids[..., 2] += (w_off + 1) // 2
            img, img_ids = torch.cat([img, r_tok], 1), torch.cat([img_ids, r_ids], 1)
        txt_ids = torch.zeros(b, context.shape[1], 3, dtype=x.dtype, device=x.device)
        out = self.forward_tokens(img, img_ids, context, txt_ids, timestep, y, guidance, attention_mask)
        return unpatchify(out[:, :hl * wl], hl, wl, h, w)


def reference_offsets(refs: Sequence[Tensor], method: str, h: int, w: int) -> List[tuple]:
    """(index, row offset, column offset) in latent pixels per reference latent, following
    ComfyUI's Flux._forward: 'index' numbers them, 'uxo' places them below-right of the image,
    anything else ('offset') tiles them at index 1 along their shorter side."""
    out, hh, ww, index = [], 0, 0, 0.0
    for r in refs:
        rh, rw = r.shape[-2], r.shape[-1]
        if method == "index":
            index += 1.0
            out.append((index, 0, 0))
        elif method == "uxo":
            out.append((0.0, (h + 1) // 2 * 2 + hh, (w + 1) // 2 * 2 + ww))
            hh, ww = hh + rh, ww + rw
        else:
            ho, wo = (0, ww) if rh + hh > rw + ww else (hh, 0)
            out.append((1.0, ho, wo))
            hh, ww = max(hh, rh + ho), max(ww, rw + wo)
    return out


def patchify(x: Tensor):
    """Pad H, W to even (circular, as ComfyUI's pad_to_patch_size does), then 2x2 patches.

    Returns tokens [B, hl*wl, C*4] with channel order (c, ph, pw), ids [B, hl*wl, 3]
    (axis 0 zero, axis 1 row, axis 2 column), hl, wl.
    """
    b, c, h, w = x.shape
    ph, pw = (-h) % 2, (-w) % 2
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="circular")
    hl, wl = x.shape[2] // 2, x.shape[3] // 2
    tok = x.reshape(b, c, hl, 2, wl, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, hl * wl, c * 4)
    ids = torch.zeros(hl, wl, 3, dtype=x.dtype, device=x.device)
    ids[..., 1] = torch.arange(hl, dtype=x.dtype, device=x.device)[:, None]
    ids[..., 2] = torch.arange(wl, dtype=x.dtype, device=x.device)[None, :]
    return tok, ids.reshape(1, hl * wl, 3).expand(b, -1, -1), hl, wl


def unpatchify(tok: Tensor, hl: int, wl: int, h: int, w: int) -> Tensor:
    b, _, d = tok.shape
    c = d // 4
    x = tok.reshape(b, hl, wl, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hl * 2, wl * 2)
    return x[:, :, :h, :w]


# ----------------------------------------------------------------------------- checkpoint keys

def strip_comfy_prefix(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    if any(k.startswith(COMFY_PREFIX) for k in sd):
        return {k[len(COMFY_PREFIX):]: v for k, v in sd.items() if k.startswith(COMFY_PREFIX)}
    return dict(sd)


def is_diffusers(sd: Dict[str, Tensor]) -> bool:
    return any(k.startswith(("transformer_blocks.", "x_embedder.", "single_transformer_blocks."))
               for k in sd)


_DIFF_DOUBLE = {  # diffusers suffix -> BFL suffix, per double block
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
}
_DIFF_DOUBLE_NORM = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_DIFF_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_DIFF_SINGLE_NORM = {"attn.norm_q.weight": "norm.query_norm.scale",
                     "attn.norm_k.weight": "norm.key_norm.scale"}
_DIFF_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}


def _swap_halves(t: Tensor) -> Tensor:
    """diffusers' norm_out (AdaLayerNormContinuous) emits (scale, shift); BFL's final layer
    emits (shift, scale). Swapping the output halves of the weight/bias converts either way."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0).contiguous()


def bfl_to_diffusers(sd: Dict[str, Tensor], cfg: FluxConfig) -> Dict[str, Tensor]:
    h = cfg.hidden_size
    out: Dict[str, Tensor] = {}
    for dk, bk in _DIFF_TOP.items():
        for e in ("weight", "bias"):
            if f"{bk}.{e}" in sd:
                out[f"{dk}.{e}"] = sd[f"{bk}.{e}"]
    for e in ("weight", "bias"):
        out[f"norm_out.linear.{e}"] = _swap_halves(sd[f"final_layer.adaLN_modulation.1.{e}"])
    for i in range(cfg.depth):
        p, q = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for dk, bk in _DIFF_DOUBLE.items():
            for e in ("weight", "bias"):
                out[f"{q}{dk}.{e}"] = sd[f"{p}{bk}.{e}"]
        for dk, bk in _DIFF_DOUBLE_NORM.items():
            out[q + dk] = sd[p + bk]
        for stream, names in (("img", ("to_q", "to_k", "to_v")),
                              ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for e in ("weight", "bias"):
                key = f"{p}{stream}_attn.qkv.{e}"
                if key in sd:
                    for n, part in zip(names, sd[key].split(h, dim=0)):
                        out[f"{q}attn.{n}.{e}"] = part.contiguous()
    for i in range(cfg.depth_single_blocks):
        p, q = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for dk, bk in _DIFF_SINGLE.items():
            for e in ("weight", "bias"):
                out[f"{q}{dk}.{e}"] = sd[f"{p}{bk}.{e}"]
        for dk, bk in _DIFF_SINGLE_NORM.items():
            out[q + dk] = sd[p + bk]
        for e in ("weight", "bias"):
            parts = sd[f"{p}linear1.{e}"].split([h, h, h, cfg.mlp_hidden], dim=0)
            for n, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts):
                out[f"{q}{n}.{e}"] = part.contiguous()
    return out


def diffusers_to_bfl(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    out: Dict[str, Tensor] = {}
    used = set()

    def take(k):
        used.add(k)
        return sd[k]

    for dk, bk in _DIFF_TOP.items():
        for e in ("weight", "bias"):
            if f"{dk}.{e}" in sd:
                out[f"{bk}.{e}"] = take(f"{dk}.{e}")
    for e in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{e}"] = _swap_halves(take(f"norm_out.linear.{e}"))
    n_double = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    n_single = len({k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")})
    for i in range(n_double):
        p, q = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for dk, bk in _DIFF_DOUBLE.items():
            for e in ("weight", "bias"):
                out[f"{p}{bk}.{e}"] = take(f"{q}{dk}.{e}")
        for dk, bk in _DIFF_DOUBLE_NORM.items():
            out[p + bk] = take(q + dk)
        for stream, names in (("img", ("to_q", "to_k", "to_v")),
                              ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for e in ("weight", "bias"):
                ks = [f"{q}attn.{n}.{e}" for n in names]
                if all(k in sd for k in ks):
                    out[f"{p}{stream}_attn.qkv.{e}"] = torch.cat([take(k) for k in ks], 0)
    for i in range(n_single):
        p, q = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for dk, bk in _DIFF_SINGLE.items():
            for e in ("weight", "bias"):
                out[f"{p}{bk}.{e}"] = take(f"{q}{dk}.{e}")
        for dk, bk in _DIFF_SINGLE_NORM.items():
            out[p + bk] = take(q + dk)
        for e in ("weight", "bias"):
            ks = [f"{q}{n}.{e}" for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
            out[f"{p}linear1.{e}"] = torch.cat([take(k) for k in ks], 0)
    left = sorted(set(sd) - used)
    if left:
        raise KeyError(f"unmapped diffusers keys: {left[:5]}")
    return out


def to_bfl(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Any supported key format (BFL, ComfyUI-prefixed BFL, diffusers) -> BFL keys."""
    sd = strip_comfy_prefix(sd)
    return diffusers_to_bfl(sd) if is_diffusers(sd) else sd


def export_state(sd_bfl: Dict[str, Tensor], cfg: FluxConfig, fmt: str) -> Dict[str, Tensor]:
    if fmt == "bfl":
        return dict(sd_bfl)
    if fmt == "comfy":
        return {COMFY_PREFIX + k: v for k, v in sd_bfl.items()}
    if fmt == "diffusers":
        return bfl_to_diffusers(sd_bfl, cfg)
    raise ValueError(f"unknown key format {fmt!r} (bfl, comfy, diffusers)")


def config_from_state(sd: Dict[str, Tensor], axes: Optional[Sequence[int]] = None) -> FluxConfig:
    """Read the configuration from a BFL-keyed state dict's shapes."""
    h, in4 = sd["img_in.weight"].shape
    head_dim = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0] \
        if "double_blocks.0.img_attn.norm.query_norm.scale" in sd \
        else sd["single_blocks.0.norm.query_norm.scale"].shape[0]
    depth = len({k.split(".")[1] for k in sd if k.startswith("double_blocks.")})
    depth_s = len({k.split(".")[1] for k in sd if k.startswith("single_blocks.")})
    mlp_hidden = sd["single_blocks.0.linear1.weight"].shape[0] - 3 * h if depth_s else \
        sd["double_blocks.0.img_mlp.0.weight"].shape[0]
    return FluxConfig(
        in_channels=in4 // 4, out_channels=sd["final_layer.linear.weight"].shape[0] // 4,
        hidden_size=h, num_heads=h // head_dim, depth=depth, depth_single_blocks=depth_s,
        context_in_dim=sd["txt_in.weight"].shape[1], vec_in_dim=sd["vector_in.in_layer.weight"].shape[1],
        mlp_ratio=mlp_hidden / h, qkv_bias=any(k.endswith("qkv.bias") for k in sd) or depth == 0,
        guidance_embed="guidance_in.in_layer.weight" in sd,
        axes_dim=list(axes) if axes is not None else None)


def load_reference(path: str, axes: Optional[Sequence[int]] = None,
                   dtype: torch.dtype = torch.float64) -> Flux:
    """Load any supported checkpoint file into a reference model upcast to dtype."""
    from safetensors.torch import load_file
    sd = to_bfl(load_file(path))
    cfg = config_from_state(sd, axes)
    model = Flux(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    return model.to(dtype).eval()
