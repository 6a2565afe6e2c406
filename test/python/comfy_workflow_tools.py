"""Example workflows for the SVDQuant nodes: one description per graph, written out in ComfyUI's
UI format (workflows/*.json, shown as templates) and API format (workflows/api/*.json), plus a PIL
rendering of a graph for the docs.

    python3 test/python/comfy_workflow_tools.py write            # workflows/*.json, workflows/api/*.json
    python3 test/python/comfy_workflow_tools.py render           # docs/workflow.png
    python3 test/python/comfy_workflow_tools.py dump-stock OUT   # stock-node catalogue (run inside ComfyUI's Python, see COMFYUI.md)
"""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Widget order per node type as the ComfyUI frontend stores widgets_values (inputs that are widgets,
# required then optional; a seed INT is followed by its "control_after_generate" value).
T5 = "t5xxl_fp16.safetensors"
CLIP_L = "clip_l.safetensors"
VAE = "ae.safetensors"
PROMPT = "a red fox sitting in fresh snow at sunrise, detailed fur, soft light"


def _t2i_tail(g, model_ref, latent_size=1024, positive_text=PROMPT, seed=42, clip=None):
    """CLIP -> prompt -> guidance -> KSampler -> VAE decode -> save; returns nothing, extends g."""
    if clip is None:
        g.append(("clip", "DualCLIPLoader", {"clip_name1": T5, "clip_name2": CLIP_L, "type": "flux", "device": "default"}, "Load text encoders (T5-XXL + CLIP-L)"))
        clip = ("clip", 0)
    g += [
        ("positive", "CLIPTextEncode", {"text": positive_text, "clip": clip}, "Prompt"),
        ("guidance", "FluxGuidance", {"conditioning": ("positive", 0), "guidance": 3.5}, None),
        ("negative", "ConditioningZeroOut", {"conditioning": ("positive", 0)}, None),
        ("latent", "EmptySD3LatentImage", {"width": latent_size, "height": latent_size, "batch_size": 1}, None),
        ("sampler", "KSampler", {"model": model_ref, "seed": seed, "steps": 20, "cfg": 1.0, "sampler_name": "euler",
                                 "scheduler": "simple", "positive": ("guidance", 0), "negative": ("negative", 0),
                                 "latent_image": ("latent", 0), "denoise": 1.0}, None),
        ("vae", "VAELoader", {"vae_name": VAE}, None),
        ("decode", "VAEDecode", {"samples": ("sampler", 0), "vae": ("vae", 0)}, None),
        ("save", "SaveImage", {"images": ("decode", 0), "filename_prefix": "svdquant"}, None),
    ]


def workflows():
    """name -> list of (key, class_type, inputs, title); link inputs are (key, output_index)."""
    out = {}
    g = [("loader", "SVDQuantModelLoader", {"ckpt_name": "svdquant/svdq-int4_r32-flux.1-dev.safetensors", "precision": "auto", "device": "auto"}, "SVDQuant Model Loader (4-bit FLUX)")]
    _t2i_tail(g, ("loader", 0))
    out["svdquant_flux_text_to_image"] = g

    g = [
        ("loader", "SVDQuantModelLoader", {"ckpt_name": "svdquant/svdq-int4_r32-flux.1-dev.safetensors", "precision": "auto", "device": "auto"}, None),
        ("lora1", "SVDQuantLoraLoader", {"model": ("loader", 0), "lora_name": "flux-style.safetensors", "strength": 0.8}, "LoRA 1"),
        ("lora2", "SVDQuantLoraLoader", {"model": ("lora1", 0), "lora_name": "flux-detail.safetensors", "strength": 0.5}, "LoRA 2"),
    ]
    _t2i_tail(g, ("lora2", 0))
    out["svdquant_flux_lora_stack"] = g

    g = [
        ("clip", "DualCLIPLoader", {"clip_name1": T5, "clip_name2": CLIP_L, "type": "flux", "device": "default"}, "Load text encoders (T5-XXL + CLIP-L)"),
        ("calib_prompts", "CLIPTextEncode", {"text": "a portrait photo of an old fisherman; a city street at night in the rain; a bowl of fruit on a wooden table, studio light", "clip": ("clip", 0)}, "Calibration prompts"),
        ("quantize", "SVDQuantQuantize", {"source": "flux1-dev.safetensors", "precision": "int4", "rank": 32, "calibration": "conditioning",
                                          "calib_samples": 32, "seed": 0, "output_name": "svdq-int4_r32-flux1-dev.safetensors",
                                          "overwrite": False, "device": "auto", "conditioning": ("calib_prompts", 0)}, "SVDQuant Quantize (on demand)"),
    ]
    _t2i_tail(g, ("quantize", 0), clip=("clip", 0))
    out["svdquant_flux_quantize_on_demand"] = g
    return out


def to_api(graph):
    ids = {key: str(i + 1) for i, (key, *_rest) in enumerate(graph)}
    api = {}
    for key, cls, inputs, title in graph:
        ins = {}
        for name, v in inputs.items():
            ins[name] = [ids[v[0]], v[1]] if isinstance(v, tuple) else v
        api[ids[key]] = {"class_type": cls, "inputs": ins, "_meta": {"title": title or cls}}
    return api


def _node_specs():
    """Input/output specs for every node type the workflows use: ours live, stock from the catalogue."""
    sys.path.insert(0, REPO)
    from comfy_nodes import NODE_CLASS_MAPPINGS
    cat = load_stock_catalogue()
    specs = {}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        specs[name] = spec_of(cls)
    for name, s in cat["specs"].items():
        specs.setdefault(name, s)
    return specs


def spec_of(cls):
    """{"inputs": {"required": {name: {type, control_after_generate?, choices?}}, "optional": ...}, "outputs": [...]}."""
    it = cls.INPUT_TYPES()
    out = {}
    for sect in ("required", "optional"):
        d = {}
        for name, v in (it.get(sect) or {}).items():
            t = v[0]
            opts = v[1] if len(v) > 1 and isinstance(v[1], dict) else {}
            if isinstance(t, (list, tuple)):
                d[name] = {"type": "COMBO"}
            else:
                d[name] = {"type": str(t)}
                if t == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    d[name]["control_after_generate"] = True
        out[sect] = d
    return {"inputs": out, "outputs": [str(x) for x in cls.RETURN_TYPES],
            "output_names": [str(x) for x in getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)]}


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def to_ui(graph, specs=None):
    """ComfyUI frontend (litegraph) workflow: nodes with typed slots, links and widgets_values."""
    specs = specs or _node_specs()
    ids = {key: i + 1 for i, (key, *_rest) in enumerate(graph)}
    nodes, links = [], []
    out_links = {}  # (node_id, slot) -> [link ids]
    col = {}
    x_of = {}
    for key, cls, inputs, _title in graph:  # column = longest path from a source
        deps = [v[0] for v in inputs.values() if isinstance(v, tuple)]
        col[key] = 1 + max((col[d] for d in deps), default=-1)
    rows = {}
    for order, (key, cls, inputs, title) in enumerate(graph):
        s = specs[cls]
        nid = ids[key]
        c = col[key]
        r = rows.get(c, 0)
        rows[c] = r + 1
        x_of[key] = (40 + 360 * c, 60 + 230 * r)
        ui_inputs, widgets = [], []
        allin = {**s["inputs"]["required"], **s["inputs"]["optional"]}
        for name, meta in allin.items():
            v = inputs.get(name)
            if isinstance(v, tuple):
                lid = len(links) + 1
                src = ids[v[0]]
                stype = specs[graph[src - 1][1]]["outputs"][v[1]]
                links.append([lid, src, v[1], nid, len(ui_inputs), stype])
                out_links.setdefault((src, v[1]), []).append(lid)
                entry = {"name": name, "type": meta["type"], "link": lid}
                if meta["type"] in WIDGET_TYPES:
                    entry["widget"] = {"name": name}
                ui_inputs.append(entry)
            elif meta["type"] in WIDGET_TYPES:
                widgets.append(v)
                if meta.get("control_after_generate"):
                    widgets.append("fixed")
            elif name in s["inputs"]["required"]:
                raise ValueError(f"{key}: required input {name} not connected")
        node = {"id": nid, "type": cls, "pos": list(x_of[key]), "size": [320, 60 + 26 * (len(widgets) + len(ui_inputs))],
                "flags": {}, "order": order, "mode": 0, "inputs": ui_inputs, "outputs": [],
                "properties": {"Node name for S&R": cls}, "widgets_values": widgets}
        if title:
            node["title"] = title
        nodes.append(node)
    for node in nodes:
        s = specs[node["type"]]
        for slot, (t, n) in enumerate(zip(s["outputs"], s.get("output_names", s["outputs"]))):
            node["outputs"].append({"name": n, "type": t, "links": out_links.get((node["id"], slot), []), "slot_index": slot})
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def load_stock_catalogue():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfy_stock_nodes.json")) as f:
        return json.load(f)


def write_all():
    specs = _node_specs()
    os.makedirs(os.path.join(REPO, "workflows", "api"), exist_ok=True)
    for name, g in workflows().items():
        with open(os.path.join(REPO, "workflows", f"{name}.json"), "w") as f:
            json.dump(to_ui(g, specs), f, indent=2)
            f.write("\n")
        with open(os.path.join(REPO, "workflows", "api", f"{name}.json"), "w") as f:
            json.dump(to_api(g), f, indent=2)
            f.write("\n")


def render_png(ui, path):
    """Draw a UI-format workflow the way the ComfyUI canvas lays it out: boxes, typed slots, links."""
    from PIL import Image, ImageDraw, ImageFont
    colors = {"MODEL": (180, 160, 255), "CLIP": (255, 210, 60), "CONDITIONING": (255, 160, 100), "LATENT": (255, 150, 200),
              "VAE": (255, 100, 100), "IMAGE": (100, 180, 255)}
    W = max(n["pos"][0] + n["size"][0] for n in ui["nodes"]) + 40
    H = max(n["pos"][1] + n["size"][1] for n in ui["nodes"]) + 60
    img = Image.new("RGB", (W, H), (32, 32, 36))
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 13)
        bold = ImageFont.truetype("DejaVuSans-Bold.ttf", 14)
    except OSError:
        font = bold = ImageFont.load_default()
    byid = {n["id"]: n for n in ui["nodes"]}

    def out_xy(n, slot):
        return n["pos"][0] + n["size"][0], n["pos"][1] + 40 + 22 * slot

    def in_xy(n, slot):
        return n["pos"][0], n["pos"][1] + 40 + 22 * slot

    for n in ui["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        ours = n["type"].startswith("SVDQuant")
        d.rounded_rectangle([x, y, x + w, y + h], 8, fill=(53, 53, 58), outline=(120, 200, 140) if ours else (80, 80, 88), width=2 if ours else 1)
        d.rounded_rectangle([x, y, x + w, y + 26], 8, fill=(40, 90, 60) if ours else (70, 70, 78))
        d.text((x + 10, y + 5), n.get("title", n["type"]), fill=(240, 240, 240), font=bold)
        for i, inp in enumerate(n["inputs"]):
            px, py = in_xy(n, i)
            d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colors.get(inp["type"], (200, 200, 200)))
            d.text((px + 10, py - 8), inp["name"], fill=(200, 200, 200), font=font)
        for i, o in enumerate(n["outputs"]):
            px, py = out_xy(n, i)
            d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colors.get(o["type"], (200, 200, 200)))
            tw = d.textlength(o["name"], font=font)
            d.text((px - 10 - tw, py - 8), o["name"], fill=(200, 200, 200), font=font)
        wy = y + 40 + 22 * max(len(n["inputs"]), len(n["outputs"]))
        for v in n["widgets_values"]:
            s = str(v)
            s = s if len(s) < 44 else s[:41] + "..."
            d.rounded_rectangle([x + 8, wy - 9, x + w - 8, wy + 9], 6, fill=(34, 34, 38))
            d.text((x + 14, wy - 8), s, fill=(220, 220, 220), font=font)
            wy += 22
    for lid, src, sslot, dst, dslot, t in ui["links"]:
        (x0, y0), (x1, y1) = out_xy(byid[src], sslot), in_xy(byid[dst], dslot)
        pts = []
        for k in range(41):  # cubic bezier like the canvas
            u = k / 40
            cx0, cx1 = x0 + 80, x1 - 80
            bx = (1 - u) ** 3 * x0 + 3 * (1 - u) ** 2 * u * cx0 + 3 * (1 - u) * u ** 2 * cx1 + u ** 3 * x1
            by = (1 - u) ** 3 * y0 + 3 * (1 - u) ** 2 * u * y0 + 3 * (1 - u) * u ** 2 * y1 + u ** 3 * y1
            pts.append((bx, by))
        d.line(pts, fill=colors.get(t, (200, 200, 200)), width=3)
    d.text((20, H - 30), "SVDQuant 4-bit FLUX in ComfyUI (green: svdquant-comfy nodes; the rest are stock nodes)", fill=(180, 180, 180), font=font)
    img.save(path)


def _comfy_commit():
    import subprocess
    import folder_paths  # ComfyUI's; its directory is the checkout
    root = os.path.dirname(os.path.abspath(folder_paths.__file__))
    r = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def dump_stock(path):
    """Run inside a ComfyUI Python (after nodes.init_extra_nodes) to refresh comfy_stock_nodes.json."""
    import nodes  # ComfyUI's
    used = sorted({cls for g in workflows().values() for _k, cls, _i, _t in g if not cls.startswith("SVDQuant")})
    cat = {"comfyui_commit": _comfy_commit(), "note": "Stock ComfyUI node names and the specs of the stock nodes the example workflows use; "
                   "regenerate with `comfy_workflow_tools.py dump-stock` inside ComfyUI.",
           "names": sorted(nodes.NODE_CLASS_MAPPINGS), "specs": {n: spec_of(nodes.NODE_CLASS_MAPPINGS[n]) for n in used}}
    with open(path, "w") as f:
        json.dump(cat, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "write"
    if cmd == "write":
        write_all()
    elif cmd == "render":
        with open(os.path.join(REPO, "workflows", "svdquant_flux_lora_stack.json")) as f:
            ui = json.load(f)
        os.makedirs(os.path.join(REPO, "docs"), exist_ok=True)
        render_png(ui, os.path.join(REPO, "docs", "workflow.png"))
    elif cmd == "dump-stock":
        dump_stock(sys.argv[2])
    else:
        raise SystemExit(__doc__)
