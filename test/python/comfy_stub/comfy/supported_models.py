"""Stand-in for comfy.supported_models Flux / FluxSchnell model configs."""
import torch
from . import latent_formats


class Flux:
    unet_config = {"image_model": "flux", "guidance_embed": True}
    sampling_settings = {}
    latent_format = latent_formats.Flux
    memory_usage_factor = 3.1
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    manual_cast_dtype = None
    custom_operations = None

    def __init__(self, unet_config):
        self.unet_config = dict(unet_config)
        self.sampling_settings = dict(self.sampling_settings)
        self.latent_format = self.latent_format()

    def set_inference_dtype(self, dtype, manual_cast_dtype):
        self.unet_config["dtype"] = dtype
        self.manual_cast_dtype = manual_cast_dtype


class FluxSchnell(Flux):
    unet_config = {"image_model": "flux", "guidance_embed": False}
    sampling_settings = {"multiplier": 1.0, "shift": 1.0}
