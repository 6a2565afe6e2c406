"""Where the sidecar is: a configured URL, or an `svdq serve` child process started on demand.

With SVDQ_SIDECAR_URL (and SVDQ_SIDECAR_TOKEN) set we attach to that server and never start one.
Otherwise we start `node <repo>/bin/svdq.mjs serve` on a free loopback port with a fresh token
written to a private temp file, wait until its health endpoint answers, and stop it at exit.
If the child dies, the next `ensure()` starts a new one (the channel calls it when reconnecting).
"""
import atexit
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEALTH_PATH = "/v1/health"
START_TIMEOUT_S = float(os.environ.get("SVDQ_SIDECAR_START_TIMEOUT", "60"))


def _die_with_parent():
    """Linux: the child gets SIGTERM when ComfyUI dies, even without atexit (kill -9, crash)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass  # other platforms: atexit still stops it on a normal exit


class SidecarUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    # Bind to port 0 so the kernel picks a free port; a tiny race with other processes is
    # acceptable because a failed start is reported with the sidecar's own log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str, token: str | None, timeout: float = 2.0) -> dict | None:
    req = urllib.request.Request(url.rstrip("/") + HEALTH_PATH)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            try:
                return json.loads(body) if body else {}
            except ValueError:
                return {}
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Sidecar:
    """One sidecar endpoint: `url` (http://host:port) and `token`; `ensure()` makes it reachable."""

    def __init__(self, url: str | None = None, token: str | None = None, node: str | None = None,
                 extra_args: list[str] | None = None, model_dirs=None):
        self._lock = threading.RLock()
        self.external = url is not None
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.node = node or os.environ.get("SVDQ_NODE", "node")
        self.extra_args = list(extra_args or [])
        # The server only opens files inside its --models folders: a list, or a callable giving
        # the folders at start time (ComfyUI's model folders can change while it runs).
        self.model_dirs = model_dirs
        self.proc: subprocess.Popen | None = None
        self._tmpdir: str | None = None
        self.log_path: str | None = None
        self.starts = 0  # how many child processes we have started (tests read it)

    # -- lifecycle -------------------------------------------------------------------------
    def ensure(self) -> "Sidecar":
        with self._lock:
            if self.external:
                if _health(self.url, self.token) is None:
                    raise SidecarUnavailable(
                        f"svdquant sidecar at {self.url} does not answer {HEALTH_PATH} "
                        "(check SVDQ_SIDECAR_URL, or unset it to let the nodes start one)")
                return self
            if self.proc is not None and self.proc.poll() is None:
                return self
            self._start()
            return self

    def _start(self):
        script = os.path.join(REPO_ROOT, "bin", "svdq.mjs")
        if not os.path.isfile(script):
            raise SidecarUnavailable(f"svdquant: {script} is missing; is the repository complete?")
        if shutil.which(self.node) is None and not os.path.isfile(self.node):
            raise SidecarUnavailable(f"svdquant: Node.js executable '{self.node}' not found (install Node >= 20 or set SVDQ_NODE)")
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="svdq-sidecar-")
        token = secrets.token_urlsafe(32)
        token_file = os.path.join(self._tmpdir, "token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        port = _free_port()
        self.log_path = os.path.join(self._tmpdir, f"sidecar-{self.starts}.log")
        log = open(self.log_path, "wb")
        dirs = self.model_dirs() if callable(self.model_dirs) else (self.model_dirs or [])
        cmd = [self.node, script, "serve", "--host", "127.0.0.1", "--port", str(port), "--token-file", token_file]
        for d in dict.fromkeys(os.path.abspath(d) for d in dirs):  # ordered, no duplicates
            os.makedirs(d, exist_ok=True)
            cmd += ["--models", d]
        cmd += self.extra_args
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        log.close()
        self.starts += 1
        self.url, self.token = f"http://127.0.0.1:{port}", token
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SidecarUnavailable(
                    f"svdquant sidecar exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            if _health(self.url, self.token, timeout=1.0) is not None:
                return
            time.sleep(0.1)
        self.stop()
        raise SidecarUnavailable(f"svdquant sidecar did not answer {HEALTH_PATH} within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")

    def alive(self) -> bool:
        if self.external:
            return _health(self.url, self.token) is not None
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        with self._lock:
            p, self.proc = self.proc, None
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
            if self._tmpdir and os.path.isdir(self._tmpdir):
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    # -- URLs --------------------------------------------------------------------------------
    def ws_url(self, path: str) -> str:
        base = self.url
        if base.startswith("https://"):
            return "wss://" + base[len("https://"):] + path
        if base.startswith("http://"):
            return "ws://" + base[len("http://"):] + path
        return base + path


_default: Sidecar | None = None
_default_lock = threading.Lock()


def comfy_model_dirs() -> list[str]:
    """ComfyUI's folders the nodes take files from: svdquant (first: relative paths resolve there),
    diffusion_models, loras."""
    import folder_paths
    out = []
    for name in ("svdquant", "diffusion_models", "loras"):
        try:
            out += folder_paths.get_folder_paths(name)
        except KeyError:
            pass
    return out


def default_sidecar() -> Sidecar:
    """The process-wide sidecar: from SVDQ_SIDECAR_URL/SVDQ_SIDECAR_TOKEN, else a managed child."""
    global _default
    with _default_lock:
        if _default is None:
            url = os.environ.get("SVDQ_SIDECAR_URL") or None
            _default = Sidecar(url=url, token=os.environ.get("SVDQ_SIDECAR_TOKEN") or None,
                               model_dirs=comfy_model_dirs)
            atexit.register(_default.stop)
        return _default
