"""The MODEL wrapper inside ComfyUI's own model stack, with the transformer replaced by a known
function (no sidecar): checks that ComfyUI drives SidecarFlux with the right tensors and that the
wrapper hands results back unchanged. Runs against real ComfyUI when COMFYUI_DIR is set, else
against the stand-in. The same checks with the real sidecar are in test_comfy_sidecar.py."""
import pytest
import torch

from conftest_comfy import setup_comfy

MODE = setup_comfy()

import comfy_sampling_ref as ref  # noqa: E402
from comfy_nodes import model_proxy, tensors as tcodec  # noqa: E402

TINY = {"hidden_size": 64, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "context_in_dim": 32,
        "vec_in_dim": 24, "in_channels": 16, "out_channels": 16, "guidance_embed": True}


class KnownFunctionModel:
    """Stands in for SidecarModel: forward is a fixed function of every input, and calls are recorded."""

    def __init__(self, config=TINY, device="cpu"):
        self.info = {"config": dict(config), "device": device, "weightBytes": 12345}
        self.calls = []

    config = property(lambda self: self.info["config"])
    weight_bytes = property(lambda self: self.info["weightBytes"])
    device = property(lambda self: self.info["device"])

    def ensure_loaded(self):
        pass

    @staticmethod
    def velocity(x, t, ctx, y, g=None):
        v = 0.5 * x - 0.25 * t.view(-1, 1, 1, 1) + ctx.float().mean(dim=(1, 2)).view(-1, 1, 1, 1) + y.float().mean(1).view(-1, 1, 1, 1)
        if g is not None:
            v = v + 0.01 * g.view(-1, 1, 1, 1)
        return v

    def forward(self, tensors, loras, extra):
        # Go through the wire codec so dtype/shape handling is exercised as in real use.
        t = {k: tcodec.decode(tcodec.encode(v)) for k, v in tensors.items()}
        self.calls.append({"shapes": {k: tuple(v.shape) for k, v in t.items()}, "loras": loras, "extra": extra, "t": t})
        return self.velocity(t["x"], t["timestep"], t["context"], t["y"], t.get("guidance"))


def test_tensor_codec_round_trip_all_dtypes():
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool):
        x = (torch.randn(3, 5, 7) * 10).to(dt)
        m = tcodec.encode(x)
        assert m["shape"] == [3, 5, 7] and isinstance(m["data"], bytes)
        y = tcodec.decode(m)
        assert y.dtype == dt and torch.equal(x, y)
    # non-contiguous input
    x = torch.randn(4, 6).t()
    assert torch.equal(tcodec.decode(tcodec.encode(x)), x)


def test_tensor_codec_rejects_malformed_maps():
    m = tcodec.encode(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"F32\[2, 3\] needs 24 bytes, got 20"):
        tcodec.decode({**m, "data": m["data"][:20]})
    with pytest.raises(ValueError, match="malformed tensor map"):
        tcodec.decode({**m, "dtype": "F64"})
    with pytest.raises(TypeError, match="cannot be sent"):
        tcodec.encode(torch.ones(2, dtype=torch.float64))


def test_unet_config_is_complete_flux_config():
    cfg = model_proxy.unet_config_from_sidecar({"hidden_size": 64, "num_heads": 2, "depth": 1, "depth_single_blocks": 2})
    assert cfg["image_model"] == "flux" and cfg["patch_size"] == 2
    assert sum(cfg["axes_dim"]) == 32  # head dim of a 64-wide, 2-head model
    full = model_proxy.unet_config_from_sidecar({})
    assert full["axes_dim"] == [16, 56, 56] and full["hidden_size"] == 3072 and full["depth"] == 19
    # The names the sidecar's engine reports (`load` result config), every one of them mapped.
    engine = {"inChannels": 8, "outChannels": 8, "hidden": 128, "numHeads": 2, "headDim": 64, "depthDouble": 2,
              "depthSingle": 3, "contextDim": 64, "vecDim": 32, "mlpHidden": 384, "guidanceEmbed": False,
              "axesDim": [8, 28, 28]}
    cfg = model_proxy.unet_config_from_sidecar(engine)
    assert (cfg["in_channels"], cfg["out_channels"], cfg["hidden_size"], cfg["num_heads"]) == (8, 8, 128, 2)
    assert (cfg["depth"], cfg["depth_single_blocks"], cfg["context_in_dim"], cfg["vec_in_dim"]) == (2, 3, 64, 32)
    assert cfg["mlp_ratio"] == 3.0 and cfg["guidance_embed"] is False and cfg["axes_dim"] == [8, 28, 28]


def _patcher(m=None, config=TINY):
    m = m or KnownFunctionModel(config)
    return model_proxy.build_model_patcher(m), m


def test_euler_through_wrapper_equals_direct_calls():
    p, m = _patcher()
    torch.manual_seed(0)
    b, h, w = 2, 6, 8
    noise = torch.randn(b, 16, h, w)
    ctx, y = torch.randn(b, 7, 32), torch.randn(b, 24)
    g = torch.full((b,), 3.5)
    lat = p.model.process_latent_in(torch.zeros(b, 16, h, w))
    sig = ref.simple_flux_sigmas(4)
    got = ref.euler_through_model(p, noise, lat, sig, ctx, y, g)
    want = ref.euler_direct(lambda x, t: m.velocity(x, t, ctx, y, g), noise, lat, sig)
    assert torch.equal(got, want)
    assert len(m.calls) == 4
    c = m.calls[0]
    assert c["shapes"] == {"x": (b, 16, h, w), "timestep": (b,), "context": (b, 7, 32), "y": (b, 24), "guidance": (b,)}
    assert torch.allclose(c["t"]["timestep"], sig[0].expand(b))  # FLUX timestep = sigma in 0..1


def test_odd_latent_sizes_are_padded_and_cropped():
    p, m = _patcher()
    x = torch.randn(1, 16, 5, 7)
    out = p.model.diffusion_model(x, torch.tensor([0.5]), torch.randn(1, 3, 32), y=torch.randn(1, 24))
    assert out.shape == x.shape
    assert m.calls[-1]["shapes"]["x"] == (1, 16, 6, 8)


def test_schnell_config_sends_no_guidance():
    p, m = _patcher(config={**TINY, "guidance_embed": False})
    p.model.diffusion_model(torch.randn(1, 16, 4, 4), torch.tensor([0.5]), torch.randn(1, 3, 32), y=torch.randn(1, 24), guidance=torch.tensor([3.5]))
    assert "guidance" not in m.calls[-1]["shapes"]


def test_lora_chaining_clones_and_keeps_parents():
    p, m = _patcher()
    a = model_proxy.with_lora(p, "/loras/a.safetensors", 0.8)
    b = model_proxy.with_lora(a, "/loras/b.safetensors", -0.5)
    c = model_proxy.with_lora(p, "/loras/c.safetensors", 1.0)  # a branch from the base
    assert model_proxy.loras_of(p) == []
    assert model_proxy.loras_of(a) == [{"path": "/loras/a.safetensors", "strength": 0.8}]
    assert model_proxy.loras_of(b) == [{"path": "/loras/a.safetensors", "strength": 0.8}, {"path": "/loras/b.safetensors", "strength": -0.5}]
    assert model_proxy.loras_of(c) == [{"path": "/loras/c.safetensors", "strength": 1.0}]
    assert b.model is p.model  # clones share the (weightless) model; the list rides in model_options
    x, t, ctx, y = torch.randn(1, 16, 4, 4), torch.tensor([0.3]), torch.randn(1, 3, 32), torch.randn(1, 24)
    for patcher, want in ((b, model_proxy.loras_of(b)), (p, [])):
        patcher.model.apply_model(x, t, c_crossattn=ctx, y=y, transformer_options=patcher.model_options["transformer_options"])
        assert m.calls[-1]["loras"] == want


def test_lora_node_rejects_foreign_models():
    class NotOurs:
        model = torch.nn.Module()
    with pytest.raises(TypeError, match="SVDQuant loader"):
        model_proxy.with_lora(NotOurs(), "/x.safetensors", 1.0)


def test_memory_reported_for_gpu_sidecar_only():
    p, _ = _patcher(KnownFunctionModel(device="cuda:0"))
    assert p.model_size() == 12345
    p, _ = _patcher(KnownFunctionModel(device="cpu"))
    assert p.model_size() <= 1


@pytest.mark.skipif(MODE != "comfyui", reason="needs a ComfyUI checkout (set COMFYUI_DIR)")
def test_comfyui_ksampler_through_wrapper_equals_reference_loop():
    p, m = _patcher()
    torch.manual_seed(1)
    ctx, y = torch.randn(1, 9, 32), torch.randn(1, 24)
    got = ref.comfy_ksampler(p, seed=7, steps=4, context=ctx, y=y, guidance=3.5, latent_hw=(6, 6))
    g = torch.tensor([3.5])
    want = ref.comfy_reference(p, lambda x, t: m.velocity(x, t, ctx, y, g), seed=7, steps=4, batch=1, latent_hw=(6, 6))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(m.calls) == 4 and m.calls[0]["shapes"]["x"] == (1, 16, 6, 6)


@pytest.mark.skipif(MODE != "comfyui", reason="needs a ComfyUI checkout (set COMFYUI_DIR)")
def test_comfyui_cfg_batches_cond_and_uncond_and_long_text():
    p, m = _patcher()
    ctx = torch.randn(1, 600, 32)  # more than 512 tokens
    out = ref.comfy_ksampler(p, seed=3, steps=2, context=ctx, y=torch.randn(1, 24), guidance=3.5, latent_hw=(4, 4), cfg=2.0,
                             negative_context=torch.randn(1, 600, 32))
    assert out.shape == (1, 16, 4, 4) and torch.isfinite(out).all()
    assert m.calls[0]["shapes"]["x"][0] == 2 and m.calls[0]["shapes"]["context"] == (2, 600, 32)


@pytest.mark.skipif(MODE != "comfyui", reason="needs a ComfyUI checkout (set COMFYUI_DIR)")
def test_comfyui_loads_the_package_through_its_custom_node_loader():
    import asyncio
    import os
    import folder_paths
    import nodes
    from conftest_comfy import REPO
    assert asyncio.run(nodes.load_custom_node(REPO))
    for name in ("SVDQuantModelLoader", "SVDQuantLoraLoader", "SVDQuantQuantize"):
        assert name in nodes.NODE_CLASS_MAPPINGS and nodes.NODE_DISPLAY_NAME_MAPPINGS[name].startswith("SVDQuant")
        nodes.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()  # what /object_info calls
    assert "svdquant" in folder_paths.folder_names_and_paths
    assert folder_paths.get_folder_paths("svdquant")[0] == os.path.join(folder_paths.models_dir, "svdquant")
    from comfy_config import config_parser
    cfg = config_parser.extract_node_configuration(REPO)
    assert cfg.project.name == "svdquant-comfy" and cfg.tool_comfy.publisher_id and cfg.tool_comfy.display_name
    assert set(cfg.project.dependencies) == {"msgpack>=1.0", "websocket-client>=1.6"}


def test_calibration_inputs_from_conditioning(tmp_path):
    from comfy_nodes import nodes as svdq_nodes
    cond = [[torch.randn(2, 5, 64), {"pooled_output": torch.randn(2, 32), "guidance": 3.0}],
            [torch.randn(1, 9, 64), {"pooled_output": torch.randn(1, 32)}]]
    d = svdq_nodes._calibration_from_conditioning(cond, 8, seed=0)
    assert {k: tuple(v.shape) for k, v in d.items()} == {"x": (3, 16, 64, 64), "timestep": (3,), "context": (3, 9, 64), "y": (3, 32), "guidance": (3,)}
    assert torch.equal(d["context"][0, :5], cond[0][0][0]) and torch.equal(d["context"][0, 5:], torch.zeros(4, 64))
    assert torch.equal(d["y"][2], cond[1][1]["pooled_output"][0])
    assert d["guidance"].tolist() == [3.0, 3.0, 3.5] and ((d["timestep"] > 0) & (d["timestep"] <= 1)).all()
    assert svdq_nodes._calibration_from_conditioning(cond, 2, seed=0)["x"].shape[0] == 2
    with pytest.raises(ValueError, match="no pooled output"):
        svdq_nodes._calibration_from_conditioning([[torch.randn(1, 5, 64), {}]], 8, seed=0)
    from safetensors.torch import load_file
    p = svdq_nodes._write_calibration(cond, 8, 0, str(tmp_path), "m.safetensors")
    assert p == str(tmp_path / "calibration" / "m.calib.safetensors")
    assert set(load_file(p)) == {"x", "timestep", "context", "y", "guidance"}
