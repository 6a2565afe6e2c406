"""Train the bundled FLUX-architecture rectified-flow model on Fashion-MNIST (CPU is enough).

Objective as FLUX: x_t = (1 - t) x0 + t * noise, the model predicts v = noise - x0 (MSE),
t drawn logit-normal (sigmoid of a standard normal). Class conditioning stands in for the text
encoders: a learned table of T context tokens per class (what T5 would give) and a learned pooled
vector per class (what CLIP would give). 10% of the time the class is replaced by a learned
"unconditional" entry so classifier-free guidance is possible. The weights kept are an EMA.

Outputs (in --out, default models/flux-fmnist/):
  model.safetensors         BFL key names, BF16, metadata: config JSON, latent mapping, sampling
  conditioning.safetensors  context [10, T, Dctx], y [10, Dvec], context_uncond [1, T, Dctx],
                            y_uncond [1, Dvec] (F32)
  train_log.txt             appended progress lines

Usage: nice -n 10 python3 tools/training/train_flux_fmnist.py --steps 6000 --threads 2 --seed 0
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from tools.training.common import MODEL_DIR, flux_mu  # noqa: E402
from tools.flux_torch.model import Flux, FluxConfig
from tools.training import fmnist


class Conditioner(torch.nn.Module):
    def __init__(self, tokens: int, ctx_dim: int, vec_dim: int):
        super().__init__()
        # index 10 = unconditional
        self.context = torch.nn.Parameter(torch.randn(11, tokens, ctx_dim))
        self.y = torch.nn.Parameter(torch.randn(11, vec_dim))

    def forward(self, labels):
        return self.context[labels], self.y[labels]


def build(a) -> tuple[Flux, Conditioner]:
    cfg = FluxConfig(in_channels=fmnist.LATENT_CHANNELS, out_channels=fmnist.LATENT_CHANNELS,
                     hidden_size=a.hidden, num_heads=a.hidden // 64, depth=a.depth,
                     depth_single_blocks=a.single, context_in_dim=a.ctx_dim, vec_in_dim=a.vec_dim,
                     guidance_embed=False, axes_dim=[8, 28, 28])
    model = Flux(cfg)
    # adaLN-zero: every residual branch starts closed and the output starts at zero
    for m in model.modules():
        if m.__class__.__name__ == "Modulation":
            torch.nn.init.zeros_(m.lin.weight); torch.nn.init.zeros_(m.lin.bias)
    torch.nn.init.zeros_(model.final_layer.adaLN_modulation[1].weight)
    torch.nn.init.zeros_(model.final_layer.adaLN_modulation[1].bias)
    torch.nn.init.zeros_(model.final_layer.linear.weight)
    torch.nn.init.zeros_(model.final_layer.linear.bias)
    return model, Conditioner(a.tokens, a.ctx_dim, a.vec_dim)


def save(model: Flux, cond: Conditioner, a, extra: dict):
    from safetensors.torch import save_file
    os.makedirs(a.out, exist_ok=True)
    cfg = model.cfg
    meta = {
        "format": "flux-bfl", "config": json.dumps(cfg.to_dict()),
        "latent": "fashion-mnist 28x28 u8 -> p/127.5-1 -> pad 2 (value -1) to 32x32 -> "
                  "pixel_unshuffle(2) -> [4,16,16]; see tools/training/fmnist.py",
        "sampling": json.dumps({"mu": flux_mu(64), "steps": 20, "schedule": "flux time shift",
                                "image_tokens": 64}),
        "training": json.dumps(extra),
    }
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(a.out, "model.safetensors"), metadata=meta)
    c = cond.context.detach().float()
    y = cond.y.detach().float()
    save_file({"context": c[:10].contiguous(), "y": y[:10].contiguous(),
               "context_uncond": c[10:].contiguous(), "y_uncond": y[10:].contiguous()},
              os.path.join(a.out, "conditioning.safetensors"),
              metadata={"classes": json.dumps(fmnist.CLASSES)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--single", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--ctx-dim", type=int, default=64)
    ap.add_argument("--vec-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=0.0,
                    help="stop early (and save) after this much wall time; 0 = no limit")
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--out", default=MODEL_DIR)
    ap.add_argument("--log", default=None)
    ap.add_argument("--init-from", default=None,
                    help="warm start: a model dir written by this script (model + conditioning)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    log_path = a.log or os.path.join(a.out, "train_log.txt")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    logf = open(log_path, "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n"); logf.flush()

    xs, ys = fmnist.load("train")
    z_all = fmnist.to_latent(xs)          # [60000, 4, 16, 16]
    y_all = torch.tensor(ys)
    model, cond = build(a)
    if a.init_from:
        from safetensors.torch import load_file
        sd = load_file(os.path.join(a.init_from, "model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        c = load_file(os.path.join(a.init_from, "conditioning.safetensors"))
        with torch.no_grad():
            cond.context.copy_(torch.cat([c["context"], c["context_uncond"]]))
            cond.y.copy_(torch.cat([c["y"], c["y_uncond"]]))
    ema_model, ema_cond = copy.deepcopy(model), copy.deepcopy(cond)
    params = list(model.parameters()) + list(cond.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    log(f"start: {json.dumps(vars(a))} params={n_params}")
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        p = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    g = torch.Generator().manual_seed(a.seed)
    t0, run_loss = time.time(), 0.0
    done = 0
    for step in range(a.steps):
        idx = torch.randint(0, len(z_all), (a.batch,), generator=g)
        x0, lab = z_all[idx], y_all[idx].clone()
        lab[torch.rand(a.batch, generator=g) < a.p_uncond] = 10
        noise = torch.randn(x0.shape, generator=g)
        t = torch.sigmoid(torch.randn(a.batch, generator=g))
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        ctx, yv = cond(lab)
        v = model(xt, t, ctx, yv)
        loss = F.mse_loss(v, noise - x0)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = a.ema if a.init_from else min(a.ema, (1 + step) / (10 + step))
            for e, p in zip(list(ema_model.parameters()) + list(ema_cond.parameters()), params):
                e.mul_(d).add_(p, alpha=1 - d)
        run_loss += loss.item()
        if (step + 1) % a.log_every == 0:
            el = time.time() - t0
            log(f"step {step + 1}/{a.steps} loss {run_loss / a.log_every:.4f} lr {lr_at(step):.2e} "
                f"elapsed {el:.0f}s ({el / (step + 1):.3f}s/step)")
            run_loss = 0.0
        done = step + 1
        if a.save_every and done % a.save_every == 0:
            save(ema_model, ema_cond, a, {"steps": done, "of": a.steps, "partial": True})
        if a.max_minutes and time.time() - t0 > a.max_minutes * 60:
            log(f"time limit reached after {done} steps")
            break
    el = time.time() - t0
    save(ema_model, ema_cond, a, {"steps": done, "planned_steps": a.steps, "batch": a.batch, "seed": a.seed,
                                  "seconds": round(el), "final_loss_window": loss.item()})
    log(f"done: {done} steps in {el:.0f}s; saved EMA weights to {a.out}")


if __name__ == "__main__":
    main()
