"""Dense LoRA updates of a diffusers/PEFT LoRA file, mapped to BFL names by tools/flux_torch's own
diffusers -> BFL weight converter (an implementation independent of sidecar/formats).

  python3 lora_delta_via_flux_torch.py LORA.safetensors OUT.safetensors
Each diffusers module's update (alpha/r)·B·A (alpha from lora_adapter_metadata) is treated as that
module's weight; zero biases and norm scales fill the keys the converter also expects.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, ROOT)
from tools.flux_torch.model import diffusers_to_bfl  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
sd = load_file(src)
with safe_open(src, "pt") as f:
    meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
alpha = meta.get("transformer.lora_alpha", meta.get("lora_alpha"))
weights = {}
for k in sd:
    if not k.endswith(".lora_A.weight"):
        continue
    mod = k[: -len(".lora_A.weight")].removeprefix("transformer.")
    a = sd[k].double()
    b = sd[k.replace("lora_A", "lora_B")].double()
    scale = (alpha / a.shape[0]) if alpha is not None else 1.0
    weights[f"{mod}.weight"] = scale * (b @ a)
    weights[f"{mod}.bias"] = torch.zeros(b.shape[0], dtype=torch.float64)
for k in list(weights):
    for blk, norms in (("transformer_blocks.", ("attn.norm_q", "attn.norm_k", "attn.norm_added_q", "attn.norm_added_k")),
                       ("single_transformer_blocks.", ("attn.norm_q", "attn.norm_k"))):
        if k.startswith(blk):
            i = k.split(".")[1]
            for n in norms:
                weights[f"{blk}{i}.{n}.weight"] = torch.zeros(1, dtype=torch.float64)
out = {k[: -len(".weight")]: v.float().contiguous() for k, v in diffusers_to_bfl(weights).items()
       if k.endswith(".weight") and v.dim() == 2}
save_file(out, dst)
