"""The PyTorch FLUX reference (tools/flux_torch) checked on its own, and the C++ engine checked
against it through `svdq forward` on tiny random checkpoints in every key format."""
from __future__ import annotations

import math
import random

import pytest
import torch
from safetensors.torch import load_file

from conftest import rel_l2
from tools.flux_torch import model as fm

TOL = 1e-5


# ------------------------------------------------------------------ reference on its own

def test_timestep_embedding_is_cos_first_of_t_times_1000():
    t = torch.tensor([0.25, 0.7], dtype=torch.float64)
    e = fm.timestep_embedding(t, 256)
    k = 3
    freq = math.exp(-math.log(10000.0) * k / 128)
    assert e.shape == (2, 256)
    assert e[1, k].item() == pytest.approx(math.cos(700.0 * freq), abs=1e-12)
    assert e[1, 128 + k].item() == pytest.approx(math.sin(700.0 * freq), abs=1e-12)


def test_rope_matches_complex_rotation():
    # independent formulation: channel pairs as complex numbers times e^{i * pos * theta^(-2j/d)}
    torch.manual_seed(1)
    axes = [4, 6, 6]
    ids = torch.randint(0, 9, (1, 5, 3)).double()
    q = torch.randn(1, 2, 5, 16, dtype=torch.float64)
    got = fm.apply_rope(q, fm.embed_nd(ids, axes, 10000))
    ang = []
    for i, d in enumerate(axes):
        w = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang.append(ids[0, :, i, None] * w)
    ang = torch.cat(ang, -1)                                # [5, 8]
    z = torch.view_as_complex(q.reshape(1, 2, 5, 8, 2).contiguous()) * torch.polar(torch.ones_like(ang), ang)
    want = torch.view_as_real(z).reshape(q.shape)
    assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("h,w", [(10, 14), (9, 11)])
def test_patchify_layout_and_round_trip(h, w):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    tok, ids, hl, wl = fm.patchify(x)
    assert (hl, wl) == ((h + 1) // 2, (w + 1) // 2) and tok.shape == (2, hl * wl, 12)
    # token (r, c) holds x[:, :, 2r:2r+2, 2c:2c+2] flattened as (c, ph, pw)
    r, c = 1, 2
    assert torch.equal(tok[:, r * wl + c], x[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(2, 12))
    assert ids[0, r * wl + c].tolist() == [0.0, r, c]
    assert torch.equal(fm.unpatchify(tok, hl, wl, h, w), x)
    if h % 2:  # circular padding (ComfyUI's pad_to_patch_size): the pad row repeats row 0
        last = tok[:, (hl - 1) * wl].reshape(2, 3, 2, 2)
        assert torch.equal(last[:, :, 1, :], x[:, :, 0, 0:2])


def test_default_axes():
    assert fm.default_axes(128) == [16, 56, 56]
    assert fm.default_axes(64) == [8, 28, 28]
    assert fm.default_axes(32) == [4, 14, 14]


def test_key_formats_give_identical_reference_output(make_fixture):
    outs = {}
    for fmt in ("bfl", "comfy", "diffusers"):
        f = make_fixture(fmt=fmt, guidance=True, seed=7)
        model = fm.load_reference(f["model"], axes=f["axes"])
        inp = load_file(f["inputs"])
        with torch.no_grad():
            outs[fmt] = model(*(inp[k].double() for k in ("x", "timestep", "context", "y", "guidance")))
        # what the loader reconstructs equals what the generator computed with BFL keys
        assert torch.equal(outs[fmt].float(), load_file(f["expected"])["out"])
    assert torch.equal(outs["bfl"], outs["comfy"]) and torch.equal(outs["bfl"], outs["diffusers"])


def test_diffusers_mapping_round_trip_and_final_layer_swap(make_fixture):
    f = make_fixture(fmt="bfl", guidance=True, seed=3)
    sd = load_file(f["model"])
    cfg = fm.config_from_state(sd)
    d = fm.bfl_to_diffusers(sd, cfg)
    assert "transformer_blocks.0.attn.add_k_proj.weight" in d
    assert "single_transformer_blocks.1.proj_mlp.bias" in d
    h = cfg.hidden_size
    # diffusers' norm_out emits (scale, shift); BFL's final layer (shift, scale)
    assert torch.equal(d["norm_out.linear.weight"][:h], sd["final_layer.adaLN_modulation.1.weight"][h:])
    back = fm.diffusers_to_bfl(d)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_config_read_from_shapes(make_fixture):
    f = make_fixture(hidden=128, heads=4, depth=3, single=1, in_channels=8, context=48, vec=24,
                     guidance=True, axes=[4, 14, 14])
    cfg = fm.config_from_state(fm.to_bfl(load_file(f["model"])))
    assert (cfg.hidden_size, cfg.num_heads, cfg.depth, cfg.depth_single_blocks) == (128, 4, 3, 1)
    assert (cfg.in_channels, cfg.context_in_dim, cfg.vec_in_dim, cfg.guidance_embed) == (8, 48, 24, True)
    assert cfg.mlp_hidden == 512 and cfg.axes == [4, 14, 14]


def test_mixed_up_weights_change_the_output(make_fixture):
    # the fixtures are sensitive: swapping q and k in one block moves the output well past TOL
    f = make_fixture(fmt="bfl", seed=5)
    sd = load_file(f["model"])
    w = sd["double_blocks.1.img_attn.qkv.weight"].clone()
    h = w.shape[1]
    sd["double_blocks.1.img_attn.qkv.weight"] = torch.cat([w[h:2 * h], w[:h], w[2 * h:]])
    cfg = fm.config_from_state(sd, f["axes"])
    m = fm.Flux(cfg)
    m.load_state_dict(sd)
    m = m.double()
    inp = load_file(f["inputs"])
    with torch.no_grad():
        out = m(*(inp[k].double() for k in ("x", "timestep", "context", "y")))
    assert rel_l2(out, load_file(f["expected"])["out"]) > 1e-3


# ------------------------------------------------------------------ engine vs reference

CASES = [
    dict(fmt=fmt, guidance=g, height=h, width=w)
    for fmt in ("bfl", "comfy", "diffusers") for g in (False, True) for (h, w) in ((10, 14), (9, 11))
]


def _check(svdq_forward, f, pass_axes=True, tol=TOL):
    out = svdq_forward(f["model"], f["inputs"], f["axes"] if pass_axes else None)
    want = load_file(f["expected"])["out"]
    assert out.shape == want.shape, f"shape {tuple(out.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(out).any(), "NaN in engine output"
    err = rel_l2(out, want)
    assert err <= tol, f"relative L2 error {err:.3e} > {tol:g}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['fmt']}-{'g' if c['guidance'] else 'nog'}-{c['height']}x{c['width']}")
def test_engine_matches_reference_f32(make_fixture, svdq_forward, case):
    f = make_fixture(batch=2, seed=random.randrange(1 << 30), **case)
    _check(svdq_forward, f)


@pytest.mark.parametrize("fmt", ["bfl", "diffusers"])
def test_engine_matches_reference_bf16_weights(make_fixture, svdq_forward, fmt):
    f = make_fixture(fmt=fmt, dtype="bf16", guidance=fmt == "bfl", height=9, width=11,
                     seed=random.randrange(1 << 30))
    _check(svdq_forward, f)


def test_engine_head_dim_32_explicit_axes(make_fixture, svdq_forward):
    f = make_fixture(hidden=128, heads=4, axes=[4, 14, 14], seed=random.randrange(1 << 30))
    _check(svdq_forward, f)


def test_engine_head_dim_128_default_axes(make_fixture, svdq_forward):
    # no --axes: the engine must pick FLUX's [16, 56, 56] for head_dim 128 by itself
    f = make_fixture(hidden=256, heads=2, depth=1, single=1, seed=random.randrange(1 << 30))
    assert f["axes"] == [16, 56, 56]
    _check(svdq_forward, f, pass_axes=False)


# ------------------------------------------------------------------ Kontext reference latents, attention mask

def _tokens(t: torch.Tensor) -> int:
    return ((t.shape[-2] + 1) // 2) * ((t.shape[-1] + 1) // 2)


@pytest.mark.parametrize("method,mask_kind", [("offset", "bool"), ("index", "float"), ("uxo", None),
                                              ("offset", None)])
def test_engine_matches_reference_with_reference_latents_and_mask(make_fixture, svdq_forward, tmp_path, method, mask_kind):
    from safetensors.torch import save_file

    seed = random.randrange(1 << 30)
    f = make_fixture(fmt="bfl", guidance=True, batch=2, height=10, width=14, seed=seed)
    inp = load_file(f["inputs"])
    g = torch.Generator().manual_seed(seed)
    b, c = inp["x"].shape[:2]
    # one reference shared by the batch (batch 1), one per item with odd sides (padded to patches)
    refs = [torch.randn(1, c, 8, 12, generator=g), torch.randn(b, c, 9, 7, generator=g)]
    L = inp["context"].shape[1] + _tokens(inp["x"]) + sum(_tokens(r) for r in refs)
    mask = None
    if mask_kind == "bool":  # every query keeps itself, so no row is fully masked
        mask = (torch.rand(b, L, L, generator=g) > 0.3) | torch.eye(L, dtype=torch.bool)
    elif mask_kind == "float":
        mask = torch.randn(L, L, generator=g) * 2
    model = fm.load_reference(f["model"], axes=f["axes"])
    args = [inp[k].double() for k in ("x", "timestep", "context", "y", "guidance")]
    with torch.no_grad():
        want = model(*args, ref_latents=[r.double() for r in refs], ref_latents_method=method,
                     attention_mask=None if mask is None else (mask if mask.dtype == torch.bool else mask.double()))
        plain = model(*args)
    assert rel_l2(want, plain) > 1e-3, "the reference latents should change the output"

    tensors = dict(inp)
    tensors.update({f"ref_latents.{i}": r.contiguous() for i, r in enumerate(refs)})
    if mask is not None:
        tensors["attention_mask"] = mask.contiguous()
    path = str(tmp_path / "kontext-inputs.safetensors")
    save_file(tensors, path, metadata={"ref_latents_method": method})
    out = svdq_forward(f["model"], path, f["axes"])
    assert out.shape == want.shape and not torch.isnan(out).any()
    err = rel_l2(out, want)
    assert err <= TOL, f"relative L2 error {err:.3e} > {TOL:g}"


def test_reference_offsets_follow_comfyui_rules():
    r = [torch.zeros(1, 1, 8, 12), torch.zeros(1, 1, 10, 4)]
    # offset: first at (0, 0); the second (taller than the running width allows) goes beside it
    assert fm.reference_offsets(r, "offset", 16, 16) == [(1.0, 0, 0), (1.0, 0, 12)]
    assert fm.reference_offsets(r, "index", 16, 16) == [(1.0, 0, 0), (2.0, 0, 0)]
    # uxo: below-right of the (patch-rounded) image, accumulating
    assert fm.reference_offsets(r, "uxo", 15, 16) == [(0.0, 16, 16), (0.0, 24, 28)]
