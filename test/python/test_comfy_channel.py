"""Sidecar lifecycle and channel failures that need no built sidecar: clear errors, never hangs."""
import os
import socket
import threading

import pytest

from conftest_comfy import setup_comfy

setup_comfy()

from comfy_nodes import channel as chmod, sidecar_process as sp  # noqa: E402


def test_external_url_that_does_not_answer_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    side = sp.Sidecar(url=f"http://127.0.0.1:{port}", token="t" * 20)
    with pytest.raises(sp.SidecarUnavailable, match=rf"127.0.0.1:{port} does not answer /v1/health"):
        side.ensure()


def test_missing_node_executable_is_a_clear_error():
    side = sp.Sidecar(node="/nonexistent/node-binary")
    if not os.path.isfile(os.path.join(sp.REPO_ROOT, "bin", "svdq.mjs")):
        with pytest.raises(sp.SidecarUnavailable, match="svdq.mjs is missing"):
            side.ensure()
    else:
        with pytest.raises(sp.SidecarUnavailable, match="Node.js executable '/nonexistent/node-binary' not found"):
            side.ensure()


def test_sidecar_that_exits_at_start_reports_its_log(tmp_path):
    # A "node" that prints a message and exits 3 stands for a sidecar failing at start-up.
    fake = tmp_path / "node"
    fake.write_text("#!/bin/sh\necho 'boom: cannot bind' >&2\nexit 3\n")
    fake.chmod(0o755)
    side = sp.Sidecar(node=str(fake), model_dirs=[str(tmp_path / "m")])
    if not os.path.isfile(os.path.join(sp.REPO_ROOT, "bin", "svdq.mjs")):
        pytest.skip("bin/svdq.mjs not in the tree yet")
    with pytest.raises(sp.SidecarUnavailable, match=r"exited with code 3 while starting:\n.*boom: cannot bind"):
        side.ensure()
    side.stop()


def test_channel_to_a_server_that_drops_the_connection_raises_connection_lost():
    # A TCP server that accepts and immediately closes: the WebSocket handshake fails.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        for _ in range(4):
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.recv(4096)
            c.close()
    th = threading.Thread(target=serve, daemon=True)
    th.start()

    class Up(sp.Sidecar):
        def ensure(self):
            return self
    ch = chmod.Channel(Up(url=f"http://127.0.0.1:{port}", token="x" * 20), connect_timeout=5)
    with pytest.raises(chmod.ConnectionLost, match="cannot open ws://127.0.0.1"):
        ch.request("ping")
    srv.close()
