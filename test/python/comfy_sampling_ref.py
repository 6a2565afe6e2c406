"""Sampling loops for the ComfyUI-node tests: through a MODEL (ComfyUI's KSampler or a plain Euler
loop over model_base.apply_model) and a reference loop that calls a velocity function directly."""
import torch


def simple_flux_sigmas(steps, shift=1.15):
    """FLUX-shifted sigmas from 1 to 0 (what the stand-in's ModelSamplingFlux gives)."""
    import math
    t = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    s = [math.exp(shift) / (math.exp(shift) + (1 / float(v) - 1)) for v in t]
    return torch.tensor(s + [0.0], dtype=torch.float32)


def euler_through_model(patcher, noise, latent_in, sigmas, context, y, guidance):
    """k-diffusion's Euler (no churn) over patcher.model.apply_model, as ComfyUI's KSampler runs it."""
    m = patcher.model
    b = noise.shape[0]
    x = sigmas[0] * noise + (1.0 - sigmas[0]) * latent_in
    to = patcher.model_options.get("transformer_options", {})
    for i in range(len(sigmas) - 1):
        s = sigmas[i].expand(b)
        den = m.apply_model(x, s, c_crossattn=context, y=y, guidance=guidance, transformer_options=to)
        d = (x - den) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def euler_direct(velocity, noise, latent_in, sigmas):
    """The same loop with the transformer called directly: velocity(x, t) -> v; den = x - v*sigma."""
    b = noise.shape[0]
    x = sigmas[0] * noise + (1.0 - sigmas[0]) * latent_in
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        v = velocity(x, s.expand(b).float()).float()
        den = x - v * s
        d = (x - den) / s
        x = x + d * (sigmas[i + 1] - s)
    return x


def comfy_ksampler(patcher, seed, steps, context, y, guidance, latent_hw, cfg=1.0, negative_context=None):
    """ComfyUI's own KSampler path (nodes.common_ksampler) on a zero latent; returns the output latent."""
    import nodes
    h, w = latent_hw
    pos = [[context, {"pooled_output": y, "guidance": guidance}]]
    nctx = negative_context if negative_context is not None else torch.zeros_like(context)
    neg = [[nctx, {"pooled_output": torch.zeros_like(y), "guidance": guidance}]]
    latent = {"samples": torch.zeros((context.shape[0], 16, h, w))}
    (out,) = nodes.common_ksampler(patcher, seed, steps, cfg, "euler", "simple", pos, neg, latent)
    return out["samples"]


def comfy_reference(patcher, velocity, seed, steps, batch, latent_hw):
    """What common_ksampler computes for cfg=1, with the transformer replaced by `velocity`."""
    import comfy.sample
    import comfy.samplers
    h, w = latent_hw
    ms = patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", steps).float()
    latent = torch.zeros((batch, 16, h, w))
    noise = comfy.sample.prepare_noise(latent, seed)
    lat_in = patcher.model.process_latent_in(latent)
    x = euler_direct(velocity, noise, lat_in, sigmas)
    return patcher.model.process_latent_out(x)
