"""Stand-in for comfy.model_base: ModelType, Flux sampling maths (CONST), Flux.apply_model."""
import math
from enum import Enum
import torch


class ModelType(Enum):
    EPS = 1
    FLOW = 6
    FLUX = 8


def _flux_time_shift(mu, sigma, t):
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


class _FluxSampling:
    """CONST prediction with ComfyUI's ModelSamplingFlux (FLUX) or DiscreteFlow (FLOW) sigma."""

    def __init__(self, model_config, model_type):
        s = model_config.sampling_settings
        self.model_type = model_type
        self.shift = s.get("shift", 1.15 if model_type == ModelType.FLUX else 1.0)
        self.multiplier = s.get("multiplier", 1.0 if model_type == ModelType.FLUX else 1000)

    def sigma(self, t):
        if self.model_type == ModelType.FLUX:
            return _flux_time_shift(self.shift, 1.0, t)
        return self.shift * t / (1 + (self.shift - 1) * t)

    def timestep(self, sigma):
        return sigma if self.model_type == ModelType.FLUX else sigma * self.multiplier

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return sigma * noise + (1.0 - sigma) * latent_image


class Flux(torch.nn.Module):
    def __init__(self, model_config, model_type=ModelType.FLUX, device=None, unet_model=None):
        super().__init__()
        self.model_config = model_config
        self.latent_format = model_config.latent_format
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = device
        self.diffusion_model = unet_model(**model_config.unet_config, device=device, operations=None)
        self.diffusion_model.eval()
        self.model_type = model_type
        self.model_sampling = _FluxSampling(model_config, model_type)
        self.memory_usage_factor = model_config.memory_usage_factor

    def get_dtype(self):
        return self.diffusion_model.dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        context = c_crossattn.to(xc.device, dtype) if c_crossattn is not None else None
        extra = {}
        for k, v in kwargs.items():
            if hasattr(v, "dtype"):
                v = v.to(xc.device) if v.dtype in (torch.int, torch.long) else v.to(xc.device, dtype)
            extra[k] = v
        out = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options, **extra)
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)
