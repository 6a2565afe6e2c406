"""The ComfyUI nodes against the real sidecar (`svdq serve` from this repository) and a tiny random
FLUX checkpoint: sampling through the MODEL wrapper equals calling the sidecar directly, LoRA
chaining, sidecar errors surface with the sidecar's message, cancel, restart, progress.

Needs `npm run build` (native/build/Release/svdq.node) and bin/svdq.mjs; skips otherwise.
With COMFYUI_DIR set the nodes are loaded through ComfyUI's own loader and its KSampler runs.
"""
import asyncio
import os
import shutil
import sys

import pytest
import torch

from conftest_comfy import COMFYUI_DIR, REPO, setup_comfy

MODE = setup_comfy()

import comfy_sampling_ref as ref  # noqa: E402

ADDON = os.path.join(REPO, "native", "build", "Release", "svdq.node")
CLI = os.path.join(REPO, "bin", "svdq.mjs")
_missing = [p for p in (ADDON, CLI) if not os.path.isfile(p)]
pytestmark = pytest.mark.skipif(bool(_missing) or shutil.which("node") is None,
                                reason=f"sidecar not built: missing {', '.join(_missing) or 'node'} (run npm ci && npm run build)")

# Tiny FLUX-dev-shaped config: 2 double + 2 single blocks, hidden 128 (head 64), T5 width 64.
TINY = dict(in_channels=16, out_channels=16, hidden_size=128, num_heads=2, depth=2, depth_single_blocks=2,
            context_in_dim=64, vec_in_dim=32, guidance_embed=True)


def make_tiny_flux(outdir, seed=0):
    """The repository's tiny random FLUX fixture (tools/fixtures/make_tiny_flux.py): BFL keys, BF16,
    guidance-distilled; also writes inputs.safetensors and the float64 reference expected.safetensors."""
    import subprocess
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "fixtures", "make_tiny_flux.py"), str(outdir),
                        "--guidance", "--dtype", "bf16", "--hidden", "128", "--heads", "2", "--depth", "2", "--single", "2",
                        "--context", "64", "--vec", "32", "--seed", str(seed)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return os.path.join(str(outdir), "model.safetensors")


def make_lora(path, rank=4, seed=1, scale=0.5, layer="double_blocks.0.img_attn.qkv", shape=(3 * 128, 128)):
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(seed)
    out_f, in_f = shape
    save_file({f"diffusion_model.{layer}.lora_A.weight": (torch.randn(rank, in_f, generator=g) * scale).contiguous(),
               f"diffusion_model.{layer}.lora_B.weight": (torch.randn(out_f, rank, generator=g) * scale).contiguous()}, path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_models")
    dirs = {n: root / n for n in ("svdquant", "diffusion_models", "loras")}
    for d in dirs.values():
        d.mkdir()
    fx = root / "fixture"
    os.replace(make_tiny_flux(fx), dirs["diffusion_models"] / "tiny-flux.safetensors")
    make_lora(str(dirs["loras"] / "a.safetensors"), seed=1)
    make_lora(str(dirs["loras"] / "b.safetensors"), seed=2, layer="single_blocks.1.linear2", shape=(128, 128 * 5))
    with open(dirs["diffusion_models"] / "broken.safetensors", "wb") as f:
        f.write(b"\xff" * 8 + b"{not json")

    import folder_paths
    saved = {k: folder_paths.folder_names_and_paths.get(k) for k in dirs}
    for k, d in dirs.items():
        folder_paths.folder_names_and_paths[k] = ([str(d)], {".safetensors"})

    if MODE == "comfyui":
        # Load the package through ComfyUI's own loader and use the modules it loaded from then on.
        import nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        assert asyncio.run(nodes.load_custom_node(REPO))
    chmod, sp = _mod("channel"), _mod("sidecar_process")
    side = sp.Sidecar(model_dirs=[str(dirs["svdquant"]), str(dirs["diffusion_models"]), str(dirs["loras"])])
    ch = chmod.Channel(side)
    # The nodes use the process-wide default channel: point it at this sidecar.
    chmod._default_channel = ch
    yield {"dirs": dirs, "channel": ch, "sidecar": side, "fixture": fx}
    ch.close()
    side.stop()
    chmod._default_channel = None
    for k, v in saved.items():
        if v is None:
            folder_paths.folder_names_and_paths.pop(k, None)
        else:
            folder_paths.folder_names_and_paths[k] = v


def _mod(name):
    """comfy_nodes.<name> as the nodes in use see it: under ComfyUI, the copy its loader imported."""
    if MODE == "comfyui":
        import importlib
        import nodes
        pkg = nodes.NODE_CLASS_MAPPINGS["SVDQuantModelLoader"].__module__.rsplit(".", 1)[0]
        return importlib.import_module(f"{pkg}.{name}")
    import importlib
    return importlib.import_module(f"comfy_nodes.{name}")


def _node(name):
    if MODE == "comfyui":
        import nodes
        return nodes.NODE_CLASS_MAPPINGS[name]()  # the class ComfyUI's loader registered
    from comfy_nodes import NODE_CLASS_MAPPINGS
    return NODE_CLASS_MAPPINGS[name]()


def _load(env, name="diffusion_models/tiny-flux.safetensors", precision="16-bit"):
    # "16-bit" runs the checkpoint as it is; "auto"/"int4" on a 16-bit file quantizes it on demand.
    (model,) = _node("SVDQuantModelLoader").load(name, precision, "cpu")
    return model


def _direct(env, model_id, loras=None):
    """velocity(x, t) by calling the sidecar's forward ourselves, without the wrapper."""
    ch = env["channel"]

    def velocity(x, t, ctx, y, g):
        res, out = ch.request("forward", {"model": model_id, "loras": loras or []},
                              tensors={"x": x.float(), "timestep": t.float(), "context": ctx.float(), "y": y.float(), "guidance": g.float()})
        return out["out"]
    return velocity


def _inputs(b=1, h=8, w=8, t_len=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 16, h, w, generator=g), torch.randn(b, t_len, 64, generator=g),
            torch.randn(b, 32, generator=g), torch.full((b,), 3.5))


def test_sampling_through_wrapper_equals_direct_sidecar_calls(env):
    model = _load(env)
    model_proxy = _mod("model_proxy")
    sm = model_proxy.sidecar_model_of(model)
    noise, ctx, y, g = _inputs(b=2)
    lat = model.model.process_latent_in(torch.zeros_like(noise))
    sig = ref.simple_flux_sigmas(4)
    got = ref.euler_through_model(model, noise, lat, sig, ctx, y, g)
    v = _direct(env, sm.model_id)
    want = ref.euler_direct(lambda x, t: v(x, t, ctx, y, g), noise, lat, sig)
    assert torch.isfinite(got).all()
    assert torch.equal(got, want)
    assert not torch.allclose(got, noise * sig[0] + (1 - sig[0]) * lat)  # the model did something


@pytest.mark.skipif(MODE != "comfyui", reason="needs a ComfyUI checkout (set COMFYUI_DIR)")
def test_comfyui_ksampler_through_wrapper_equals_direct_sidecar_calls(env):
    model = _load(env)
    model_proxy = _mod("model_proxy")
    sm = model_proxy.sidecar_model_of(model)
    _noise, ctx, y, g = _inputs(b=1, t_len=9)
    got = ref.comfy_ksampler(model, seed=5, steps=3, context=ctx, y=y, guidance=3.5, latent_hw=(8, 8))
    v = _direct(env, sm.model_id)
    want = ref.comfy_reference(model, lambda x, t: v(x, t, ctx, y, g), seed=5, steps=3, batch=1, latent_hw=(8, 8))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_wrapper_forward_matches_float64_reference(env):
    """One forward through the MODEL's diffusion_model on the fixture's inputs vs tools/flux_torch in float64."""
    from safetensors.torch import load_file
    inp = load_file(str(env["fixture"] / "inputs.safetensors"))
    want = load_file(str(env["fixture"] / "expected.safetensors"))["out"]
    model = _load(env)
    got = model.model.diffusion_model(inp["x"], inp["timestep"], inp["context"], y=inp["y"], guidance=inp["guidance"])
    assert got.shape == want.shape and got.dtype == inp["x"].dtype
    rel = ((got.double() - want.double()).norm() / want.double().norm()).item()
    assert rel < 1e-3, f"relative L2 error {rel:.2e}"


def test_wrapper_forward_with_reference_latents_and_mask_matches_float64_reference(env):
    """Kontext-style reference latents and an attention mask go through the wrapper to the sidecar
    and give what tools/flux_torch computes in float64 with ComfyUI's conventions."""
    from safetensors.torch import load_file
    from tools.flux_torch import model as fm
    inp = load_file(str(env["fixture"] / "inputs.safetensors"))
    x, t, ctx, y, g = (inp[k] for k in ("x", "timestep", "context", "y", "guidance"))
    gen = torch.Generator().manual_seed(11)
    # The first reference (256 KiB) crosses CACHE_MIN_BYTES and is sent once by content hash.
    refs = [torch.randn(1, 16, 64, 64, generator=gen), torch.randn(x.shape[0], 16, 7, 9, generator=gen)]
    tok = lambda a: ((a.shape[-2] + 1) // 2) * ((a.shape[-1] + 1) // 2)  # noqa: E731
    L = ctx.shape[1] + tok(x) + sum(tok(r) for r in refs)
    mask = (torch.rand(x.shape[0], L, L, generator=gen) > 0.2) | torch.eye(L, dtype=torch.bool)
    ref_model = fm.load_reference(str(env["dirs"]["diffusion_models"] / "tiny-flux.safetensors"))
    dm = _load(env).model.diffusion_model
    for method in ("offset", "index"):
        got = dm(x, t, ctx, y=y, guidance=g, ref_latents=refs, ref_latents_method=method, attention_mask=mask)
        with torch.no_grad():
            want = ref_model(x.double(), t.double(), ctx.double(), y.double(), g.double(),
                             ref_latents=[r.double() for r in refs], ref_latents_method=method, attention_mask=mask)
        assert got.shape == x.shape and torch.isfinite(got).all()
        rel = ((got.double() - want).norm() / want.norm()).item()
        assert rel < 1e-4, f"{method}: relative L2 error {rel:.2e}"
    plain = dm(x, t, ctx, y=y, guidance=g)
    assert not torch.allclose(plain, got, atol=1e-3), "the reference latents should change the output"
    # A mask that ignores the reference tokens: the sidecar names the tensor and the expected length.
    SidecarError = _mod("channel").SidecarError
    with pytest.raises(SidecarError) as e:
        dm(x, t, ctx, y=y, guidance=g, ref_latents=refs, attention_mask=mask[:, :-1, :-1])
    assert e.value.code == "bad_tensor" and "attention_mask" in str(e.value) and f"L = {L}" in str(e.value)


@pytest.mark.skipif(MODE != "comfyui", reason="needs a ComfyUI checkout (set COMFYUI_DIR)")
def test_reference_latents_and_mask_match_comfyuis_own_flux(env):
    """ComfyUI's own comfy.ldm.flux Flux with the fixture's weights, given reference latents (every
    method) and a mask, computes what the sidecar computes through the wrapper."""
    import comfy.ldm.flux.model
    import comfy.ops
    from safetensors.torch import load_file
    model = _load(env)
    cfg = _mod("model_proxy").unet_config_from_sidecar(_mod("model_proxy").sidecar_model_of(model).config)
    params = {k: v for k, v in cfg.items() if k not in ("image_model",)}
    theirs = comfy.ldm.flux.model.Flux(dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init, **params)
    sd = {k: v.float() for k, v in load_file(str(env["dirs"]["diffusion_models"] / "tiny-flux.safetensors")).items()}
    missing, unexpected = theirs.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    x, ctx, y, g = _inputs(b=2, h=10, w=12, seed=4)
    t = torch.tensor([0.7, 0.3])
    gen = torch.Generator().manual_seed(5)
    refs = [torch.randn(1, 16, 6, 9, generator=gen), torch.randn(2, 16, 8, 4, generator=gen)]
    L = ctx.shape[1] + 5 * 6 + 3 * 5 + 4 * 2
    mask = torch.randn(2, L, L, generator=gen)
    for method in ("offset", "index", "uxo"):
        with torch.no_grad():
            want = theirs(x, t, ctx, y=y, guidance=g, ref_latents=[r.expand(2, -1, -1, -1) for r in refs],
                          ref_latents_method=method, attention_mask=mask)
        got = model.model.diffusion_model(x, t, ctx, y=y, guidance=g, ref_latents=refs, ref_latents_method=method,
                                          attention_mask=mask)
        rel = ((got - want).norm() / want.norm()).item()
        assert rel < 1e-4, f"{method}: relative L2 error vs ComfyUI's Flux {rel:.2e}"


def _one_step(model, x, ctx, y, g, t=0.6):
    to = model.model_options["transformer_options"]
    return model.model.apply_model(x, torch.full((x.shape[0],), t), c_crossattn=ctx, y=y, guidance=g, transformer_options=to)


def test_lora_chaining(env):
    base = _load(env)
    lora = _node("SVDQuantLoraLoader")
    (a,) = lora.load_lora(base, "a.safetensors", 0.8)
    (ab,) = lora.load_lora(a, "b.safetensors", -0.6)
    x, ctx, y, g = _inputs()
    out_base = _one_step(base, x, ctx, y, g)
    out_a = _one_step(a, x, ctx, y, g)
    out_ab = _one_step(ab, x, ctx, y, g)
    assert not torch.allclose(out_a, out_base) and not torch.allclose(out_ab, out_a)
    # The list rides with each clone: the base model is LoRA-free again, a is a again.
    assert torch.equal(_one_step(base, x, ctx, y, g), out_base)
    assert torch.equal(_one_step(a, x, ctx, y, g), out_a)
    model_proxy = _mod("model_proxy")
    d = env["dirs"]
    assert model_proxy.loras_of(ab) == [{"path": str(d["loras"] / "a.safetensors"), "strength": 0.8},
                                        {"path": str(d["loras"] / "b.safetensors"), "strength": -0.6}]
    # Same as asking the sidecar directly for that stack.
    sm = model_proxy.sidecar_model_of(ab)
    s = torch.full((1,), 0.6)
    v = _direct(env, sm.model_id, loras=model_proxy.loras_of(ab))(x, s, ctx, y, g)
    assert torch.equal(out_ab, x - v * 0.6)
    # Strength 0 returns the input model unchanged.
    (z,) = lora.load_lora(base, "a.safetensors", 0.0)
    assert z is base


def test_sidecar_errors_surface_with_its_message(env):
    SidecarError = _mod("channel").SidecarError
    # A corrupt checkpoint: the sidecar's parser error names the file.
    with pytest.raises(SidecarError) as e:
        _node("SVDQuantModelLoader").load("diffusion_models/broken.safetensors", "16-bit", "cpu")
    assert "broken.safetensors" in str(e.value)
    # A forward with a wrong latent channel count: the sidecar's shape check, verbatim.
    model = _load(env)
    x, ctx, y, g = _inputs()
    with pytest.raises(SidecarError) as e:
        model.model.diffusion_model(x[:, :8], torch.tensor([0.5]), ctx, y=y, guidance=g)
    assert e.value.code == "bad_tensor" and "x" in str(e.value) and "16" in str(e.value)
    # A missing LoRA file.
    (bad,) = _node("SVDQuantLoraLoader").load_lora(model, "a.safetensors", 1.0)
    os.rename(env["dirs"]["loras"] / "a.safetensors", env["dirs"]["loras"] / "a.moved")
    try:
        with pytest.raises(SidecarError) as e:
            _one_step(bad, x, ctx, y, g)
        assert "a.safetensors" in str(e.value)
    finally:
        os.rename(env["dirs"]["loras"] / "a.moved", env["dirs"]["loras"] / "a.safetensors")
    # The connection is still usable afterwards.
    assert torch.isfinite(_one_step(model, x, ctx, y, g)).all()


def test_interrupt_cancels_request_and_channel_survives(env):
    import comfy.model_management as mm
    model = _load(env)
    x, ctx, y, g = _inputs(b=2, h=16, w=16)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _one_step(model, x, ctx, y, g)
    finally:
        mm.interrupt_current_processing(False)
    assert torch.isfinite(_one_step(model, x, ctx, y, g)).all()


def test_reconnects_after_sidecar_restart(env):
    side = env["sidecar"]
    model = _load(env)
    x, ctx, y, g = _inputs()
    before = _one_step(model, x, ctx, y, g)
    starts = side.starts
    side.proc.kill()
    side.proc.wait()
    after = _one_step(model, x, ctx, y, g)  # restarts the sidecar, loads the model again
    assert side.starts == starts + 1
    assert torch.equal(before, after)


def test_on_demand_quantization_reports_progress(env):
    import comfy.utils
    model_proxy = _mod("model_proxy")
    SidecarError = _mod("channel").SidecarError
    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.PROGRESS_BAR_HOOK = lambda v, total, preview, node_id=None, **k: seen.append((v, total))
    try:
        try:
            model = _load(env, precision="int4")
        except SidecarError as e:
            if e.code == "unsupported":
                pytest.skip(f"sidecar cannot quantize yet: {e}")
            raise
    finally:
        comfy.utils.PROGRESS_BAR_HOOK = old
    sm = model_proxy.sidecar_model_of(model)
    assert sm.info.get("precision") == "int4"
    assert seen and seen[-1][0] == seen[-1][1]
    x, ctx, y, g = _inputs()
    assert torch.isfinite(_one_step(model, x, ctx, y, g)).all()


def test_quantize_node_writes_checkpoint_and_returns_model(env):
    SidecarError = _mod("channel").SidecarError
    _n, ctx, y, _g = _inputs(b=2, t_len=5)
    cond = [[ctx, {"pooled_output": y, "guidance": 3.5}]]
    try:
        model, path = _node("SVDQuantQuantize").quantize("tiny-flux.safetensors", "int4", 8, "conditioning", 2, 0,
                                                         "tiny-int4.safetensors", True, "cpu", conditioning=cond)
    except SidecarError as e:
        if e.code == "unsupported":
            pytest.skip(f"sidecar cannot quantize yet: {e}")
        raise
    assert os.path.isfile(path) and path.startswith(str(env["dirs"]["svdquant"]))
    x, ctx1, y1, g = _inputs()
    assert torch.isfinite(_one_step(model, x, ctx1, y1, g)).all()


def test_long_conditioning_goes_by_content_hash_and_survives_eviction(env):
    """Text longer than 512 tokens; the context is uploaded once and sent as {ref} after that; when
    the sidecar evicts it, the wrapper falls back to sending it inline. Outputs equal direct calls."""
    model = _load(env)
    sm = _mod("model_proxy").sidecar_model_of(model)
    x, ctx, y, g = _inputs(b=2, t_len=600)
    v = _direct(env, sm.model_id)
    want = x - v(x, torch.full((2,), 0.6), ctx, y, g) * 0.6
    sm._sent_hashes.clear()
    first = _one_step(model, x, ctx, y, g)
    assert len(sm._sent_hashes) == 1
    (h,) = sm._sent_hashes
    second = _one_step(model, x, ctx, y, g)
    assert torch.equal(first, want) and torch.equal(second, want)
    res, _ = env["channel"].request("drop_tensor", {"hash": h})
    assert res["dropped"] is True
    assert torch.equal(_one_step(model, x, ctx, y, g), want)
