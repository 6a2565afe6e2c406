"""One-off cross-check of this reference against Black Forest Labs' own FLUX code.

Needs a checkout of BFL's flux repository (its src/ on the path) and einops; neither is a
dependency of this project, so this is not part of the test suite.

  PYTHONPATH=/path/to/einops python3 tools/flux_torch/crosscheck_bfl.py /path/to/flux/src

BFL computes the sinusoidal time embedding in float32 even for a float64 model; that alone
costs ~2e-5 relative error at t*1000 ~ 500, so its timestep_embedding is replaced by a float64
one with the same formula (cos first). Everything else (blocks, RoPE, attention) is BFL's code.
Result on 4 random tiny models, all key formats, odd sizes: worst relative L2 error 3.1e-8
(the F32 rounding of the stored expected output).
"""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import flux.model as bfl_model  # noqa: E402
import flux.modules.layers as bfl_layers  # noqa: E402
from tools.fixtures.make_tiny_flux import make  # noqa: E402
from tools.flux_torch import model as fm  # noqa: E402

bfl_model.timestep_embedding = bfl_layers.timestep_embedding = \
    lambda t, dim, max_period=10000, time_factor=1000.0: fm.timestep_embedding(t, dim, max_period, time_factor)


def main():
    worst = 0.0
    cases = [("bfl", True, 10, 14, 128, 2, [8, 28, 28]), ("diffusers", False, 9, 11, 128, 4, [4, 14, 14]),
             ("comfy", True, 7, 5, 256, 2, None), ("diffusers", True, 12, 8, 128, 2, [16, 24, 24])]
    for i, (fmt, g, h, w, hid, heads, axes) in enumerate(cases):
        f = make(f"/tmp/crosscheck_bfl/fx{i}", fmt=fmt, guidance=g, height=h, width=w, hidden=hid,
                 heads=heads, axes=axes, seed=100 + i)
        sd = fm.to_bfl(load_file(f["model"]))
        cfg = fm.config_from_state(sd, f["axes"])
        p = bfl_model.FluxParams(
            in_channels=cfg.in_channels * 4, out_channels=cfg.out_channels * 4, vec_in_dim=cfg.vec_in_dim,
            context_in_dim=cfg.context_in_dim, hidden_size=cfg.hidden_size, mlp_ratio=cfg.mlp_ratio,
            num_heads=cfg.num_heads, depth=cfg.depth, depth_single_blocks=cfg.depth_single_blocks,
            axes_dim=cfg.axes, theta=10000, qkv_bias=True, guidance_embed=g)
        m = bfl_model.Flux(p)
        m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        m = m.double()
        inp = {k: v.double() for k, v in load_file(f["inputs"]).items()}
        tok, ids, hl, wl = fm.patchify(inp["x"])
        txt_ids = torch.zeros(tok.shape[0], inp["context"].shape[1], 3, dtype=torch.float64)
        with torch.no_grad():
            o = m(tok, ids, inp["context"], txt_ids, inp["timestep"], inp["y"], inp.get("guidance"))
        o = fm.unpatchify(o, hl, wl, h, w)
        e = load_file(f["expected"])["out"].double()
        err = float((o - e).norm() / e.norm())
        worst = max(worst, err)
        print(f"{fmt:9s} guidance={g!s:5s} {h}x{w} hidden={hid} heads={heads} axes={f['axes']}: rel L2 {err:.2e}")
    print(f"worst {worst:.2e}")
    sys.exit(0 if worst < 1e-6 else 1)


if __name__ == "__main__":
    main()
