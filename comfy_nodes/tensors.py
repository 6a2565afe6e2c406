"""torch tensors <-> the channel's tensor maps {dtype, shape, data} (raw little-endian bytes)."""
import sys

import torch

_TO_WIRE = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}
_FROM_WIRE = {v: k for k, v in _TO_WIRE.items()}
if hasattr(torch, "float8_e4m3fn"):
    _TO_WIRE[torch.float8_e4m3fn] = "F8_E4M3"
    _FROM_WIRE["F8_E4M3"] = torch.float8_e4m3fn

if sys.byteorder != "little":  # the wire is little-endian and we send memory as is
    raise ImportError("svdquant channel: big-endian hosts are not supported")


def encode(t: torch.Tensor) -> dict:
    """A contiguous CPU copy of `t` as a wire map. Unsupported dtypes are an error, not a silent cast."""
    if t.dtype not in _TO_WIRE:
        raise TypeError(f"svdquant channel: tensor dtype {t.dtype} cannot be sent (supported: {sorted(_FROM_WIRE)})")
    c = t.detach().to("cpu").contiguous()
    # numpy has no bfloat16/float8: reinterpret as same-width integers to get the bytes.
    if c.dtype == torch.bfloat16:
        raw = c.view(torch.int16).numpy().tobytes()
    elif c.dtype == _FROM_WIRE.get("F8_E4M3"):
        raw = c.view(torch.uint8).numpy().tobytes()
    else:
        raw = c.numpy().tobytes()
    return {"dtype": _TO_WIRE[c.dtype], "shape": list(c.shape), "data": raw}


def decode(m: dict) -> torch.Tensor:
    """A wire map back into a CPU tensor; a size mismatch names dtype, shape and byte counts."""
    try:
        dtype = _FROM_WIRE[m["dtype"]]
        shape = [int(s) for s in m["shape"]]
        data = m["data"]
    except KeyError as e:
        raise ValueError(f"svdquant channel: malformed tensor map (missing or unknown {e})") from None
    n = 1
    for s in shape:
        n *= s
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) != n * itemsize:
        raise ValueError(
            f"svdquant channel: tensor {m['dtype']}{shape} needs {n * itemsize} bytes, got {len(data)}")
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
