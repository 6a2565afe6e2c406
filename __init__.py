"""ComfyUI entry point: ComfyUI imports <custom_nodes>/<this repo>/__init__.py; the nodes live in comfy_nodes/."""
from .comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
