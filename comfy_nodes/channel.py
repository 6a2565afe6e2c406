"""Synchronous client for the sidecar's WebSocket channel (/v1/channel, msgpack frames).

ComfyUI calls the model from its sampler thread, which already runs an asyncio loop, so this
client is deliberately blocking (websocket-client) and never touches asyncio.

Frames follow docs/PROTOCOL.md: requests {id, op, args, tensors}; replies carry the same id and
are progress frames, a result, or an error with the sidecar's message. While waiting we poll
ComfyUI's interrupt flag: on cancel we send a cancel for the request, wait briefly for the
sidecar to acknowledge, and raise ComfyUI's InterruptProcessingException. A dropped socket
raises ConnectionLost; the next request reconnects (restarting a managed sidecar if it died).
"""
import itertools
import select
import threading
import time

import msgpack
import websocket

from . import tensors as tcodec
from .sidecar_process import Sidecar, default_sidecar

CHANNEL_PATH = "/v1/channel"
POLL_S = 0.05          # how often we look at ComfyUI's interrupt flag while waiting
CANCEL_GRACE_S = 10.0  # how long we wait for the sidecar to confirm a cancel



def _encode(v):
    """A tensor, a {ref} map or a list of them (e.g. ref_latents) in wire form."""
    if isinstance(v, (list, tuple)):
        return [_encode(t) for t in v]
    return v if isinstance(v, dict) else tcodec.encode(v)

class SidecarError(RuntimeError):
    """An error the sidecar reported; str() is the sidecar's own message."""

    def __init__(self, message: str, code: str | None = None, op: str | None = None, arg: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.op = op
        self.arg = arg


class ConnectionLost(ConnectionError):
    pass


def _comfy_mm():
    import comfy.model_management as mm  # imported lazily: the channel also works outside ComfyUI
    return mm


class Channel:
    def __init__(self, sidecar: Sidecar | None = None, connect_timeout: float = 10.0):
        self.sidecar = sidecar or default_sidecar()
        self.connect_timeout = connect_timeout
        self._ws: websocket.WebSocket | None = None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        # Bumped on every new connection: model handles compare it to know when the sidecar may
        # have lost their state (a restart) and must be told about the model again.
        self.generation = 0
        self.server_instance = None

    # -- connection ----------------------------------------------------------------------------
    def _connect(self):
        self.sidecar.ensure()
        headers = []
        if self.sidecar.token:
            headers.append(f"Authorization: Bearer {self.sidecar.token}")
        try:
            ws = websocket.create_connection(self.sidecar.ws_url(CHANNEL_PATH), header=headers,
                                             timeout=self.connect_timeout, enable_multithread=True)
        except (OSError, websocket.WebSocketException) as e:
            raise ConnectionLost(f"svdquant: cannot open {self.sidecar.ws_url(CHANNEL_PATH)}: {e}") from e
        ws.settimeout(None)
        self._ws = ws
        self.generation += 1

    def ensure_connected(self):
        with self._lock:
            if self._ws is None:
                self._connect()

    def close(self):
        with self._lock:
            if self._ws is not None:
                try:
                    self._ws.close()
                except Exception:
                    pass
                self._ws = None

    def _drop(self, why: str):
        self.close()
        raise ConnectionLost(f"svdquant: connection to the sidecar lost ({why})")

    # -- frames ----------------------------------------------------------------------------------
    def _send(self, frame: dict):
        try:
            self._ws.send_binary(msgpack.packb(frame, use_bin_type=True))
        except (OSError, websocket.WebSocketException) as e:
            self._drop(f"send: {e}")

    def _recv(self, wait: float | None) -> dict | None:
        """One decoded frame, or None when nothing arrived within `wait` seconds."""
        sock = self._ws.sock
        if wait is not None and sock is not None:
            try:
                ready, _, _ = select.select([sock], [], [], wait)
            except (OSError, ValueError) as e:
                self._drop(f"select: {e}")
            if not ready:
                return None
        try:
            opcode, data = self._ws.recv_data()
        except (OSError, websocket.WebSocketException) as e:
            self._drop(f"recv: {e}")
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            reason = data[2:].decode("utf-8", "replace") if len(data) > 2 else ""
            self.close()
            if code == 1009:  # frame over the sidecar's size limit: retrying cannot help
                raise SidecarError(f"svdquant: request too large for the sidecar ({reason or 'close 1009'}); "
                                   "raise its --max-frame-mb or use a smaller batch/resolution", "too_large")
            raise ConnectionLost(f"svdquant: the sidecar closed the connection (code {code}{': ' + reason if reason else ''})")
        if opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT):
            return None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            import json
            return json.loads(data)
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    # -- requests ------------------------------------------------------------------------------------
    def request(self, op: str, args: dict | None = None, tensors: dict | None = None, progress=None,
                interruptible: bool = True):
        """Send one request and wait for its result.

        Returns (result: dict, tensors: dict[str, torch.Tensor]). `progress(done, total, stage)`
        is called for progress frames; if it raises (ComfyUI's progress hook raises on cancel),
        the request is cancelled on the sidecar and the exception propagates.
        """
        with self._lock:
            if self._ws is None:
                self._connect()
            rid = next(self._ids)
            frame = {"id": rid, "op": op, "args": args or {}}
            if tensors:
                frame["tensors"] = {k: _encode(v) for k, v in tensors.items()}
            self._send(frame)
            try:
                while True:
                    if interruptible:
                        _comfy_mm().throw_exception_if_processing_interrupted()
                    msg = self._recv(POLL_S)
                    if msg is None:
                        continue
                    kind = _kind(msg)
                    if msg.get("id") is None and kind == "error":
                        # The sidecar could not decode a frame of ours: nothing else will answer it.
                        err = msg.get("error") or {}
                        raise SidecarError(str(err.get("message", "bad frame")), err.get("code"), op)
                    if msg.get("id") != rid:
                        continue
                    if kind == "progress":
                        if progress is not None:
                            p = msg.get("progress") or {}
                            progress(int(p.get("done", 0)), int(p.get("total", 0)), str(p.get("stage", "")))
                        continue
                    if kind == "error":
                        err = msg.get("error") or {}
                        if isinstance(err, str):
                            err = {"message": err}
                        raise SidecarError(str(err.get("message", "unknown sidecar error")), err.get("code"), op, err.get("arg"))
                    result = msg.get("result") or {}
                    out = {k: tcodec.decode(v) for k, v in (msg.get("tensors") or {}).items()}
                    return result, out
            except (SidecarError, ConnectionLost):
                raise
            except BaseException:
                # Interrupt (or any failure in our own callback): stop the sidecar's work first.
                self._cancel(rid)
                raise

    def _cancel(self, rid: int):
        if self._ws is None:
            return
        try:
            self._send({"id": next(self._ids), "op": "cancel", "args": {"target": rid}})
            deadline = time.monotonic() + CANCEL_GRACE_S
            while time.monotonic() < deadline:
                msg = self._recv(min(POLL_S * 4, max(0.0, deadline - time.monotonic())))
                if msg is not None and msg.get("id") == rid and _kind(msg) in ("error", "result"):
                    return
            self.close()  # the sidecar did not confirm: start fresh next time
        except ConnectionLost:
            pass


def _kind(msg: dict) -> str:
    t = msg.get("type")
    if t in ("progress", "error", "result"):
        return t
    if "progress" in msg and "result" not in msg:
        return "progress"
    if msg.get("error") is not None or msg.get("ok") is False:
        return "error"
    return "result"


_default_channel: Channel | None = None
_default_lock = threading.Lock()


def default_channel() -> Channel:
    global _default_channel
    with _default_lock:
        if _default_channel is None:
            _default_channel = Channel(default_sidecar())
        return _default_channel
