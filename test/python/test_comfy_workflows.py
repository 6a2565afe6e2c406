"""Each example workflow is valid JSON that references only existing nodes with the right inputs.

Our nodes are checked against their live INPUT_TYPES/RETURN_TYPES; stock nodes against the
catalogue dumped from a ComfyUI checkout (test/python/comfy_stock_nodes.json), or against live
ComfyUI when COMFYUI_DIR is set.
"""
import glob
import json
import os

import pytest

from conftest_comfy import REPO, setup_comfy

MODE = setup_comfy()

import comfy_workflow_tools as wt  # noqa: E402
from comfy_nodes import NODE_CLASS_MAPPINGS as OURS  # noqa: E402

UI_FILES = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
API_FILES = sorted(glob.glob(os.path.join(REPO, "workflows", "api", "*.json")))
CAT = wt.load_stock_catalogue()


def _specs():
    specs = {n: wt.spec_of(c) for n, c in OURS.items()}
    if MODE == "comfyui":
        import asyncio
        import nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        names = set(nodes.NODE_CLASS_MAPPINGS)
        for n in CAT["specs"]:
            specs[n] = wt.spec_of(nodes.NODE_CLASS_MAPPINGS[n])
    else:
        names = set(CAT["names"])
        for n, s in CAT["specs"].items():
            specs[n] = s
    return names | set(OURS), specs


KNOWN, SPECS = _specs()


def _combo_choices(cls_name, input_name):
    cls = OURS.get(cls_name)
    if cls is None:
        return None
    for sect in ("required", "optional"):
        v = (cls.INPUT_TYPES().get(sect) or {}).get(input_name)
        if v is not None and isinstance(v[0], (list, tuple)):
            return list(v[0])
    return None


# Combos whose choices are files on the user's disk; any file name is acceptable in an example.
FILE_COMBOS = {("SVDQuantModelLoader", "ckpt_name"), ("SVDQuantLoraLoader", "lora_name"), ("SVDQuantQuantize", "source")}


def test_there_are_three_workflows_in_both_formats():
    names = {os.path.basename(p) for p in UI_FILES}
    assert names == {os.path.basename(p) for p in API_FILES}
    assert {"svdquant_flux_text_to_image.json", "svdquant_flux_lora_stack.json", "svdquant_flux_quantize_on_demand.json"} <= names


@pytest.mark.parametrize("path", API_FILES, ids=os.path.basename)
def test_api_workflow_is_valid(path):
    with open(path) as f:
        api = json.load(f)
    assert api, "empty workflow"
    for nid, node in api.items():
        cls = node["class_type"]
        assert cls in KNOWN, f"{path}: node {nid} uses unknown node type {cls}"
        spec = SPECS[cls]
        req, opt = spec["inputs"]["required"], spec["inputs"]["optional"]
        for name in req:
            assert name in node["inputs"], f"{path}: node {nid} ({cls}) lacks required input {name}"
        for name, v in node["inputs"].items():
            assert name in req or name in opt, f"{path}: node {nid} ({cls}) has unknown input {name}"
            t = (req.get(name) or opt.get(name))["type"]
            if isinstance(v, list):
                src, slot = v
                assert src in api, f"{path}: node {nid}.{name} links to missing node {src}"
                outs = SPECS[api[src]["class_type"]]["outputs"]
                assert slot < len(outs), f"{path}: node {nid}.{name} links to output {slot} of {api[src]['class_type']}"
                assert outs[slot] == t, f"{path}: node {nid}.{name} wants {t}, gets {outs[slot]}"
            else:
                assert t in wt.WIDGET_TYPES, f"{path}: node {nid}.{name} of type {t} must be linked, not a literal"
                choices = _combo_choices(cls, name)
                if choices is not None and (cls, name) not in FILE_COMBOS:
                    assert v in choices, f"{path}: node {nid}.{name}={v!r} not in {choices}"
                if t == "INT":
                    assert isinstance(v, int)
                if t == "FLOAT":
                    assert isinstance(v, (int, float))


@pytest.mark.parametrize("path", UI_FILES, ids=os.path.basename)
def test_ui_workflow_is_valid_and_matches_api(path):
    with open(path) as f:
        ui = json.load(f)
    byid = {n["id"]: n for n in ui["nodes"]}
    assert len(byid) == len(ui["nodes"]) and ui["last_node_id"] >= max(byid)
    links = {l[0]: l for l in ui["links"]}
    assert ui["last_link_id"] >= max(links)
    for lid, src, sslot, dst, dslot, t in ui["links"]:
        assert byid[src]["outputs"][sslot]["type"] == t, f"{path}: link {lid} type"
        assert lid in byid[src]["outputs"][sslot]["links"]
        assert byid[dst]["inputs"][dslot]["link"] == lid
        assert byid[dst]["inputs"][dslot]["type"] == t
    # Rebuild the API prompt from the UI graph (widgets in INPUT_TYPES order) and compare.
    rebuilt = {}
    for n in ui["nodes"]:
        cls = n["type"]
        assert cls in KNOWN, f"{path}: unknown node type {cls}"
        spec = SPECS[cls]
        allin = {**spec["inputs"]["required"], **spec["inputs"]["optional"]}
        linked = {i["name"]: i["link"] for i in n["inputs"] if i.get("link") is not None}
        vals = list(n["widgets_values"])
        inputs = {}
        for name, meta in allin.items():
            if name in linked:
                l = links[linked[name]]
                inputs[name] = [str(l[1]), l[2]]
            elif meta["type"] in wt.WIDGET_TYPES:
                assert vals, f"{path}: node {n['id']} ({cls}) has too few widgets_values"
                inputs[name] = vals.pop(0)
                if meta.get("control_after_generate"):
                    assert vals.pop(0) in ("fixed", "randomize", "increment", "decrement")
        assert not vals, f"{path}: node {n['id']} ({cls}) has extra widgets_values {vals}"
        for out in n["outputs"]:
            assert out["type"] == spec["outputs"][out["slot_index"]]
        rebuilt[str(n["id"])] = {"class_type": cls, "inputs": inputs}
    with open(os.path.join(REPO, "workflows", "api", os.path.basename(path))) as f:
        api = json.load(f)
    assert rebuilt == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def test_workflows_on_disk_are_what_the_generator_writes():
    specs = {**CAT["specs"], **{n: wt.spec_of(c) for n, c in OURS.items()}}
    for name, g in wt.workflows().items():
        with open(os.path.join(REPO, "workflows", "api", f"{name}.json")) as f:
            assert json.load(f) == wt.to_api(g), f"{name}: regenerate with comfy_workflow_tools.py write"
        with open(os.path.join(REPO, "workflows", f"{name}.json")) as f:
            assert json.load(f) == wt.to_ui(g, specs)


def test_validator_rejects_a_broken_workflow(tmp_path):
    """The checks above can fail: a renamed input and a wrong link type are caught."""
    with open(API_FILES[0]) as f:
        api = json.load(f)
    nid = next(k for k, v in api.items() if v["class_type"] == "SVDQuantModelLoader")
    api[nid]["inputs"]["checkpoint"] = api[nid]["inputs"].pop("ckpt_name")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(api))
    with pytest.raises(AssertionError, match="lacks required input ckpt_name"):
        test_api_workflow_is_valid(str(bad))
    with open(API_FILES[0]) as f:
        api = json.load(f)
    ks = next(k for k, v in api.items() if v["class_type"] == "KSampler")
    api[ks]["inputs"]["model"] = api[ks]["inputs"]["positive"]
    bad.write_text(json.dumps(api))
    with pytest.raises(AssertionError, match="wants MODEL"):
        test_api_workflow_is_valid(str(bad))


@pytest.mark.skipif(MODE != "comfyui", reason="needs a ComfyUI checkout (set COMFYUI_DIR)")
def test_comfyui_serves_the_workflows_as_templates(tmp_path):
    """ComfyUI's own template routes list and serve workflows/*.json (UI format only, not api/)."""
    import asyncio
    import folder_paths
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from app.custom_node_manager import CustomNodeManager

    (tmp_path / "svdquant-comfy").symlink_to(REPO)
    saved = folder_paths.folder_names_and_paths.get("custom_nodes")
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(tmp_path)], set())

    async def run():
        app = web.Application()
        routes = web.RouteTableDef()
        CustomNodeManager().add_routes(routes, app, [("svdquant-comfy", str(tmp_path / "svdquant-comfy"))])
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/workflow_templates")
            listing = await r.json()
            r2 = await client.get("/api/workflow_templates/svdquant-comfy/svdquant_flux_lora_stack.json")
            body = await r2.json(content_type=None)
            return listing, r2.status, body

    try:
        listing, status, body = asyncio.run(run())
    finally:
        folder_paths.folder_names_and_paths["custom_nodes"] = saved
    assert sorted(listing["svdquant-comfy"]) == ["svdquant_flux_lora_stack", "svdquant_flux_quantize_on_demand", "svdquant_flux_text_to_image"]
    assert status == 200 and any(n["type"] == "SVDQuantLoraLoader" for n in body["nodes"])


@pytest.mark.skipif(MODE != "comfyui", reason="needs a ComfyUI checkout (set COMFYUI_DIR)")
@pytest.mark.parametrize("path", API_FILES, ids=os.path.basename)
def test_comfyui_validate_prompt_accepts_api_workflow(path, tmp_path):
    """ComfyUI's own prompt validation (what POST /prompt runs) accepts each API workflow, with
    placeholder files for the model names the example uses."""
    import asyncio
    import execution
    import folder_paths
    import nodes
    from conftest_comfy import REPO as repo
    assert asyncio.run(nodes.load_custom_node(repo))
    with open(path) as f:
        api = json.load(f)
    wanted = {"diffusion_models": set(), "svdquant": set(), "loras": set(), "text_encoders": set(), "vae": set()}
    for node in api.values():
        ins = node["inputs"]
        if node["class_type"] == "SVDQuantModelLoader":
            folder, _, name = ins["ckpt_name"].partition("/")
            wanted[folder].add(name)
        elif node["class_type"] == "SVDQuantLoraLoader":
            wanted["loras"].add(ins["lora_name"])
        elif node["class_type"] == "SVDQuantQuantize":
            wanted["diffusion_models"].add(ins["source"])
        elif node["class_type"] == "DualCLIPLoader":
            wanted["text_encoders"] |= {ins["clip_name1"], ins["clip_name2"]}
        elif node["class_type"] == "VAELoader":
            wanted["vae"].add(ins["vae_name"])
    saved = {k: folder_paths.folder_names_and_paths.get(k) for k in wanted}
    try:
        for folder, names in wanted.items():
            d = tmp_path / folder
            d.mkdir()
            for n in names:
                (d / n).write_bytes(b"")
            folder_paths.folder_names_and_paths[folder] = ([str(d)], {".safetensors"})
        folder_paths.filename_list_cache.clear()
        ok, err, outputs, node_errors = asyncio.run(execution.validate_prompt("test", api, None))
    finally:
        for k, v in saved.items():
            if v is not None:
                folder_paths.folder_names_and_paths[k] = v
        folder_paths.filename_list_cache.clear()
    assert ok, f"{err} {node_errors}"
    assert outputs
