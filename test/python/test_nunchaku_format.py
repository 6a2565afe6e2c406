"""Loading Nunchaku's own INT4 FLUX checkpoints (svdq-int4_r32-flux.1-dev.safetensors style).

No published file can be downloaded here, so a tiny FLUX model is quantized by our quantizer and
its layers are written twice, from the same quantized values: once in Nunchaku's names and packed
layouts by the independent packer (nunchaku_packer.py), once in our own layout. Both files must run
the same forward through the engine. The second file differs from the quantizer's output only where
Nunchaku's format fixes a choice ours leaves open (single-block linear2 split in two layers with a
shifted unsigned GELU half, adaLN biases rounded like the exporter's "+1"), so both encode one model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import nunchaku_packer as nk
from conftest import ADDON, CLI, REPO, rel_l2

HIDDEN, HEADS, RANK = 128, 2, 16


def _np(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy()


def _bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)


def _round_bf16(a: np.ndarray) -> np.ndarray:
    return _np(_bf16(a))


def _nibbles(packed: torch.Tensor, signed: bool) -> np.ndarray:
    """Our qweight [n, k/2] (low nibble = even k) -> values [n, k]."""
    b = packed.numpy().astype(np.int16)
    q = np.stack([b & 0xF, b >> 4], axis=-1).reshape(b.shape[0], -1)
    return np.where(q >= 8, q - 16, q) if signed else q


def _e4m3(b: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(b, dtype=np.uint8)).view(torch.float8_e4m3fn)


def _pack_nibbles(q: np.ndarray) -> torch.Tensor:
    u = q.astype(np.int16) & 0xF
    return torch.from_numpy((u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8))


@dataclasses.dataclass
class W4A4:
    """One W4A4 layer as plain arrays. Our semantics: y = Q((x + shift)/smooth)·Q(W)ᵀ (· wcscales) + bias + x·downᵀ·upᵀ.
    INT4: q signed, wscales [n, k/64] floats. NVFP4: q E2M1 codes, wscales [n, k/16] E4M3 bytes, wtscale."""
    q: np.ndarray
    wscales: np.ndarray
    smooth: np.ndarray
    down: np.ndarray
    up: np.ndarray
    bias: np.ndarray | None
    shift: float = 0.0
    fp4: bool = False
    wtscale: float = 1.0
    wcscales: np.ndarray | None = None

    @property
    def group(self):
        return 16 if self.fp4 else 64

    @classmethod
    def read(cls, sd, name):
        fp4 = sd[f"{name}.wscales"].dtype == torch.float8_e4m3fn
        ws = sd[f"{name}.wscales"].view(torch.uint8).numpy() if fp4 else _np(sd[f"{name}.wscales"])
        return cls(q=_nibbles(sd[f"{name}.qweight"], not fp4), wscales=ws.T.copy(), smooth=_np(sd[f"{name}.smooth"]),
                   down=_np(sd[f"{name}.lora_down"]), up=_np(sd[f"{name}.lora_up"]),
                   bias=_np(sd[f"{name}.bias"]) if f"{name}.bias" in sd else None,
                   shift=float(sd[f"{name}.act_shift"][0]) if f"{name}.act_shift" in sd else 0.0,
                   fp4=fp4, wtscale=float(sd[f"{name}.wtscale"][0]) if fp4 else 1.0)

    def rows(self, a, b):
        return dataclasses.replace(self, q=self.q[a:b], wscales=self.wscales[a:b], up=self.up[a:b],
                                   bias=None if self.bias is None else self.bias[a:b],
                                   wcscales=None if self.wcscales is None else self.wcscales[a:b])

    def cols(self, a, b, bias=True):
        g = self.group
        return dataclasses.replace(self, q=self.q[:, a:b], wscales=self.wscales[:, a // g:b // g], smooth=self.smooth[a:b],
                                   down=self.down[:, a:b], bias=self.bias if bias else None)

    def shifted(self):
        """INT4: runs the layer on unsigned (x + 0.171875) / smooth, as Nunchaku's INT4 mlp_fc2 always does, with the
        shift compensated in the bias like the exporter does (the low-rank branch sees the unshifted x)."""
        if self.shift or self.fp4:
            return self
        deq = (self.q * np.repeat(self.wscales, 64, axis=1)) / self.smooth
        bias = (0 if self.bias is None else self.bias) - nk.GELU_SHIFT * deq.sum(axis=1)
        return dataclasses.replace(self, bias=_round_bf16(bias), shift=nk.GELU_SHIFT)

    def ours(self, name):
        sd = {f"{name}.qweight": _pack_nibbles(self.q), f"{name}.smooth": _bf16(self.smooth),
              f"{name}.lora_down": _bf16(self.down), f"{name}.lora_up": _bf16(self.up)}
        if self.fp4:
            sd[f"{name}.wscales"] = _e4m3(self.wscales.T)
            sd[f"{name}.wtscale"] = torch.tensor([self.wtscale], dtype=torch.float32)
            sd[f"{name}.act_tensor_scale"] = torch.tensor([1.0])  # Nunchaku's activations: no tensor scale
            if self.wcscales is not None:
                sd[f"{name}.wcscales"] = _bf16(self.wcscales)
        else:
            sd[f"{name}.wscales"] = _bf16(self.wscales.T)
        if self.bias is not None:
            sd[f"{name}.bias"] = _bf16(self.bias)
        if self.shift:
            sd[f"{name}.act_shift"] = torch.tensor([self.shift], dtype=torch.float32)
        return sd

    def nunchaku(self, name):
        n = self.q.shape[0]
        bias = self.bias if self.bias is not None else np.zeros(n, np.float32)  # Nunchaku always has one
        sd = {f"{name}.qweight": torch.from_numpy(nk.pack_weight(self.q)),
              f"{name}.bias": _bf16(nk.pack_scale(bias)),
              f"{name}.smooth": _bf16(nk.pack_scale(self.smooth)),
              f"{name}.smooth_orig": _bf16(nk.pack_scale(self.smooth)),
              f"{name}.lora_down": _bf16(nk.pack_lowrank(self.down, down=True)),
              f"{name}.lora_up": _bf16(nk.pack_lowrank(self.up, down=False))}
        if self.fp4:
            sd[f"{name}.wscales"] = _e4m3(nk.pack_micro_scale(self.wscales).reshape(-1, n))
            sd[f"{name}.wtscale"] = torch.tensor([self.wtscale], dtype=torch.float32)
            if self.wcscales is not None:
                sd[f"{name}.wcscales"] = _bf16(nk.pack_scale(self.wcscales))
        else:
            sd[f"{name}.wscales"] = _bf16(nk.pack_scale(self.wscales).reshape(-1, n))
        return sd


def _adaln(sd, name, nname, splits, ours, theirs):
    """Our W4A16 adaLN -> Nunchaku AWQ (rows interleaved, "+1" folded into the scale chunks' bias in BF16)."""
    q = _nibbles(sd[f"{name}.qweight"], False)
    s, z, b = _np(sd[f"{name}.wscales"]), _np(sd[f"{name}.wzeros"]), _np(sd[f"{name}.bias"])
    n, k = q.shape
    plus = np.zeros(n, np.float32)
    for c in {1, splits - 2}:
        plus[c * (n // splits):(c + 1) * (n // splits)] = 1
    folded = _round_bf16(nk.interleave_rows(b + plus, splits))  # the exporter adds in the model dtype
    ours.update({f"{name}.qweight": sd[f"{name}.qweight"], f"{name}.wscales": sd[f"{name}.wscales"],
                 f"{name}.wzeros": sd[f"{name}.wzeros"],
                 # the same bias as Nunchaku's after taking the "+1" out again (F32: not BF16-exact)
                 f"{name}.bias": torch.from_numpy(nk.interleave_rows(folded, n // splits) - plus)})
    g = nk.awq_groups(k)
    pad = lambda a: np.concatenate([nk.interleave_rows(a.T, splits).T, np.zeros((g - a.shape[0], n), np.float32)])
    theirs.update({f"{nname}.qweight": torch.from_numpy(nk.pack_awq(nk.interleave_rows(q, splits))),
                   f"{nname}.wscales": _bf16(pad(s)), f"{nname}.wzeros": _bf16(pad(z)), f"{nname}.bias": _bf16(folded)})


def _unquantized(sd, ours, theirs):
    top = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
           "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
           "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
           "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
           "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
           "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
           "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2"}
    for bfl, dif in top.items():
        for e in (".weight", ".bias"):
            if bfl + e in sd:
                ours[bfl + e] = theirs[dif + e] = sd[bfl + e]
    for e in (".weight", ".bias"):  # diffusers' norm_out is (scale, shift), BFL's (shift, scale)
        t = sd["final_layer.adaLN_modulation.1" + e]
        ours["final_layer.adaLN_modulation.1" + e] = t
        theirs["norm_out.linear" + e] = torch.cat(t.chunk(2, 0)[::-1]).contiguous()


def build_pair(quantized: str, out_dir: str) -> tuple[str, str]:
    """Our quantized checkpoint -> (our-layout file, Nunchaku-layout file) of one and the same model."""
    sd = load_file(quantized)
    ours, theirs = {}, {}
    fp4 = sd["double_blocks.0.img_attn.qkv.wscales"].dtype == torch.float8_e4m3fn

    def read(name):
        layer = W4A4.read(sd, name)
        if layer.bias is not None:
            layer.bias = _round_bf16(layer.bias)  # Nunchaku keeps biases in the model dtype
        if fp4:  # exercise the per-channel weight scale NVFP4 files may carry (same values in both files)
            layer.wcscales = _round_bf16(1 + 0.25 * np.sin(np.arange(layer.q.shape[0], dtype=np.float32)))
        return layer

    _unquantized(sd, ours, theirs)
    nd = sum(1 for k in sd if k.endswith("img_attn.norm.query_norm.scale"))
    ns = sum(1 for k in sd if k.endswith(".norm.query_norm.scale") and k.startswith("single_blocks."))
    for i in range(nd):
        b, t = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for ob, tb in (("img_attn.norm.query_norm.scale", "norm_q.weight"), ("img_attn.norm.key_norm.scale", "norm_k.weight"),
                       ("txt_attn.norm.query_norm.scale", "norm_added_q.weight"),
                       ("txt_attn.norm.key_norm.scale", "norm_added_k.weight")):
            ours[b + ob] = theirs[t + tb] = sd[b + ob]
        _adaln(sd, b + "img_mod.lin", t + "norm1.linear", 6, ours, theirs)
        _adaln(sd, b + "txt_mod.lin", t + "norm1_context.linear", 6, ours, theirs)
        for ob, tb, gelu in (("img_attn.qkv", "qkv_proj", False), ("txt_attn.qkv", "qkv_proj_context", False),
                             ("img_attn.proj", "out_proj", False), ("txt_attn.proj", "out_proj_context", False),
                             ("img_mlp.0", "mlp_fc1", False), ("img_mlp.2", "mlp_fc2", True),
                             ("txt_mlp.0", "mlp_context_fc1", False), ("txt_mlp.2", "mlp_context_fc2", True)):
            layer = read(b + ob)
            if gelu:
                layer = layer.shifted()  # Nunchaku's INT4 MLP always runs fc2 shifted and unsigned
            ours.update(layer.ours(b + ob))
            theirs.update(layer.nunchaku(t + tb))
    for i in range(ns):
        b, t = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for ob, tb in (("norm.query_norm.scale", "norm_q.weight"), ("norm.key_norm.scale", "norm_k.weight")):
            ours[b + ob] = theirs[t + tb] = sd[b + ob]
        _adaln(sd, b + "modulation.lin", t + "norm.linear", 3, ours, theirs)
        l1 = read(b + "linear1")
        ours.update(l1.ours(b + "linear1"))  # one layer: qkv_proj and mlp_fc1 share input, smooth and lora_down
        theirs.update(l1.rows(0, 3 * HIDDEN).nunchaku(t + "qkv_proj"))
        theirs.update(l1.rows(3 * HIDDEN, l1.q.shape[0]).nunchaku(t + "mlp_fc1"))
        l2 = read(b + "linear2")
        attn, mlp = l2.cols(0, HIDDEN), l2.cols(HIDDEN, l2.q.shape[1], bias=False).shifted()
        ours.update(attn.ours(b + "linear2.in_part.0"))  # our format's split layer
        ours.update(mlp.ours(b + "linear2.in_part.1"))
        theirs.update(attn.nunchaku(t + "out_proj"))
        theirs.update(mlp.nunchaku(t + "mlp_fc2"))
    if fp4:  # as nunchaku/merge_safetensors.py writes it
        qc = {"method": "svdquant", "weight": {"dtype": "fp4_e2m1_all", "scale_dtype": [None, "fp8_e4m3_nan"], "group_size": 16},
              "activation": {"dtype": "fp4_e2m1_all", "scale_dtype": "fp8_e4m3_nan", "group_size": 16}, "rank": RANK}
    else:
        qc = {"method": "svdquant", "weight": {"dtype": "int4", "scale_dtype": None, "group_size": 64},
              "activation": {"dtype": "int4", "scale_dtype": None, "group_size": 64}, "rank": RANK}
    a = os.path.join(out_dir, "ours.safetensors")
    n = os.path.join(out_dir, f"svdq-{'fp4' if fp4 else 'int4'}_r{RANK}-tiny.safetensors")
    save_file({k: v.contiguous() for k, v in ours.items()}, a)
    save_file({k: v.contiguous() for k, v in theirs.items()}, n,
              metadata={"quantization_config": json.dumps(qc), "model_class": "NunchakuFluxTransformer2dModel"})
    return a, n


def _svdq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["node", CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _make_pair(tmp_path_factory, precision: str) -> dict:
    if not os.path.exists(ADDON):
        pytest.skip(f"native addon not built ({ADDON} missing): run `npm run build`")
    from tools.fixtures.make_tiny_flux import make

    d = tmp_path_factory.mktemp(f"nunchaku-{precision}")
    fx = make(str(d / "fx"), hidden=HIDDEN, heads=HEADS, depth=1, single=1, dtype="bf16", guidance=True)
    q = str(d / "q.safetensors")
    r = _svdq("quantize", fx["model"], "-o", q, "--precision", precision, "--rank", str(RANK), "--grid-step", "0.25",
              "--refine", "2")
    assert r.returncode == 0, r.stderr
    ours, theirs = build_pair(q, str(d))
    return {"fx": fx, "ours": ours, "nunchaku": theirs, "dir": d}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _make_pair(tmp_path_factory, "int4")


@pytest.fixture(scope="module")
def pair_fp4(tmp_path_factory):
    return _make_pair(tmp_path_factory, "nvfp4")


# ------------------------------------------------------------------ the packer against the sources' own examples

def test_packer_matches_the_documented_scale_order():
    # packer.py pack_scale's comment: lane 0 loads channels 0 1 8 9, lane 1 2 3 10 11, lane 4 16 17 24 25.
    p = nk.pack_scale(np.arange(256, dtype=np.float32))
    assert list(p[:8]) == [0, 1, 8, 9, 2, 3, 10, 11]
    assert list(p[16:20]) == [16, 17, 24, 25]
    assert list(p[128:132]) == [128, 129, 136, 137]


def test_packer_weight_words_hold_eight_inputs_of_one_output():
    q = np.zeros((128, 128), np.int64)
    q[0, :8] = np.arange(8) - 4       # word 0: n 0, k 0..7, lowest nibble first
    q[0, 32:40] = 7                   # word 1: k_half 1
    q[8, 0] = -8                      # word 2: n_half 1 -> n 8
    words = nk.pack_weight(q).view("<u4").reshape(-1)
    assert words[0] == sum(((v - 4) & 0xF) << (4 * v) for v in range(8))
    assert words[1] == 0x77777777
    assert words[2] == 0x8


def test_packer_micro_scales_follow_the_documented_lane_order():
    # pack_micro_scale's comment: lane 0 loads channels 0 32 64 96, lane 1 8 40 72 104, lane 4 1 33 65 97;
    # each 32-bit element holds the 4 scales of one channel along 64 inputs.
    s = np.repeat(np.arange(128, dtype=np.uint8)[:, None], 4, axis=1)  # [128 channels, 64 inputs / 16]
    p = nk.pack_micro_scale(s)
    assert list(p[:16:4]) == [0, 32, 64, 96] and list(p[16:32:4]) == [8, 40, 72, 104] and list(p[64:80:4]) == [1, 33, 65, 97]
    assert list(p[:4]) == [0, 0, 0, 0]


def test_packer_lowrank_blocks():
    w = np.arange(32 * 16, dtype=np.float32).reshape(32, 16)  # up: 32 channels, rank 16
    p = nk.pack_lowrank(w, down=False).reshape(-1)
    # first lane: channel 0 (ranks 0, 1), then k_half 1 (ranks 8, 9), then n_half 1 (channel 8)
    assert list(p[:8]) == [w[0, 0], w[0, 1], w[0, 8], w[0, 9], w[8, 0], w[8, 1], w[8, 8], w[8, 9]]


# ------------------------------------------------------------------ the engine on the two encodings

@pytest.mark.parametrize("which", ["pair", "pair_fp4"])
def test_nunchaku_file_runs_like_our_checkpoint(which, request, svdq_forward):
    pair = request.getfixturevalue(which)
    a = svdq_forward(pair["ours"], pair["fx"]["inputs"])
    n = svdq_forward(pair["nunchaku"], pair["fx"]["inputs"])
    assert torch.isfinite(n).all()
    err = rel_l2(n, a)
    assert err < 1e-5, f"Nunchaku layout vs ours: relative error {err}"
    # and the quantized model is still the model (guards against both files being equally wrong)
    ref = load_file(pair["fx"]["expected"])["out"]
    assert rel_l2(a, ref) < 0.3


def test_lora_on_split_layers_matches(pair, svdq_forward):
    # A LoRA lands on whole BFL layers, also where Nunchaku's file keeps two layers (linear1, linear2).
    g = torch.Generator().manual_seed(5)
    lora = {}
    for layer, (n_in, n_out) in {"single_blocks.0.linear1": (HIDDEN, 7 * HIDDEN), "single_blocks.0.linear2": (5 * HIDDEN, HIDDEN),
                                 "double_blocks.0.img_attn.qkv": (HIDDEN, 3 * HIDDEN)}.items():
        lora[f"diffusion_model.{layer}.lora_A.weight"] = torch.randn(4, n_in, generator=g) / n_in ** 0.5
        lora[f"diffusion_model.{layer}.lora_B.weight"] = torch.randn(n_out, 4, generator=g) * 0.5
    path = str(pair["dir"] / "lora.safetensors")
    save_file(lora, path)
    outs = []
    for model in (pair["ours"], pair["nunchaku"]):
        out = str(pair["dir"] / f"lora-out{len(outs)}.safetensors")
        r = _svdq("forward", "--model", model, "--inputs", pair["fx"]["inputs"], "-o", out, "--lora", f"{path}:0.7", "--force")
        assert r.returncode == 0 and "3 layers patched" in r.stderr, r.stderr
        outs.append(load_file(out)["out"])
    assert rel_l2(outs[1], outs[0]) < 1e-5
    assert rel_l2(outs[1], svdq_forward(pair["nunchaku"], pair["fx"]["inputs"])) > 1e-3  # the LoRA did something


def test_convert_writes_the_same_model_in_our_layout(pair, svdq_forward):
    out = str(pair["dir"] / "converted.safetensors")
    r = _svdq("convert", "--from", "nunchaku", pair["nunchaku"], "-o", out)
    assert r.returncode == 0, r.stderr
    names = load_file(out).keys()
    assert "single_blocks.0.linear2.in_part.1.act_shift" in names and not any(k.startswith("transformer_blocks.") for k in names)
    a = svdq_forward(pair["nunchaku"], pair["fx"]["inputs"])
    c = svdq_forward(out, pair["fx"]["inputs"])
    assert rel_l2(c, a) == 0.0
    r = _svdq("convert", "--from", "nunchaku", pair["ours"], "-o", str(pair["dir"] / "never.safetensors"))
    assert r.returncode != 0 and "not a Nunchaku checkpoint" in r.stderr, r.stderr


def _broken(pair, name: str, edit) -> str:
    sd = load_file(pair["nunchaku"])
    edit(sd)
    path = str(pair["dir"] / f"{name}.safetensors")
    save_file(sd, path, metadata={"quantization_config": "{}"})
    return path


@pytest.mark.parametrize("case,tensor,words", [
    ("missing", "single_transformer_blocks.0.mlp_fc1.wscales", ["missing"]),
    ("lora_rank", "transformer_blocks.0.qkv_proj.lora_up", ["shape [384, 32]", "expected [384, 16]"]),
    ("out_features", "transformer_blocks.0.out_proj.qweight", ["[in 128, out 256]", "double_blocks.0.img_attn.proj"]),
    ("adaln_dtype", "single_transformer_blocks.0.norm.linear.qweight", ["dtype I8", "expected I32"]),
])
def test_malformed_nunchaku_file_names_the_tensor(pair, case, tensor, words):
    def edit(sd):
        if case == "missing":
            del sd[tensor]
        elif case == "lora_rank":
            sd[tensor] = torch.zeros(384, 32, dtype=torch.bfloat16)
        elif case == "out_features":
            sd[tensor] = torch.zeros(256, 64, dtype=torch.int8)
            sd[tensor.replace("qweight", "wscales")] = torch.ones(2, 256, dtype=torch.bfloat16)
            sd[tensor.replace("qweight", "bias")] = torch.zeros(256, dtype=torch.bfloat16)
            sd[tensor.replace("qweight", "lora_up")] = torch.zeros(256, 16, dtype=torch.bfloat16)
        else:
            sd[tensor] = sd[tensor].view(torch.int8)
    path = _broken(pair, case, edit)
    r = _svdq("forward", "--model", path, "--inputs", pair["fx"]["inputs"], "-o", str(pair["dir"] / "never.safetensors"))
    assert r.returncode != 0
    assert path in r.stderr and tensor in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
