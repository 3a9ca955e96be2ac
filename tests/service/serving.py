"""A real uvicorn process of the service for tests that talk to it over HTTP (not a TestClient)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, log_path: Path, deadline_s: float = 60.0) -> None:
    """Poll /readyz until 200; a bound on start-up, not a speed assert."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"uvicorn exited during start-up:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"uvicorn was not ready within {deadline_s} s:\n{log_path.read_text(errors='replace')}")


@contextmanager
def uvicorn_server(settings_env: dict[str, str], log_path: Path):
    """Start `uvicorn service.app:create_app` with only these R4T_ settings; yield its base URL; stop it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("R4T_")}
    env |= {"R4T_ONNX_THREADS": "1", "HF_HUB_OFFLINE": "1"} | settings_env  # one thread: a small CI box
    cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
           "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, proc, log_path)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
