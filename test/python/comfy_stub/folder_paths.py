"""Stand-in for ComfyUI's folder_paths: named model folders with extension filters."""
import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

base_path = os.environ.get("COMFY_STUB_BASE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base"))
models_dir = os.path.join(base_path, "models")

folder_names_and_paths = {
    "diffusion_models": ([os.path.join(models_dir, "unet"), os.path.join(models_dir, "diffusion_models")], supported_pt_extensions),
    "loras": ([os.path.join(models_dir, "loras")], supported_pt_extensions),
}


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name):
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name):
    paths, exts = folder_names_and_paths[folder_name]
    out = set()
    for root in paths:
        if not os.path.isdir(root):
            continue
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for f in files:
                if len(exts) == 0 or os.path.splitext(f)[1].lower() in exts:
                    out.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def get_full_path(folder_name, filename):
    for root in folder_names_and_paths[folder_name][0]:
        p = os.path.join(root, os.path.normpath(filename))
        if os.path.isfile(p):
            return p
    return None


def get_full_path_or_raise(folder_name, filename):
    p = get_full_path(folder_name, filename)
    if p is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return p
