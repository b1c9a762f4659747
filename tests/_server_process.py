"""Starting a real server process in a test: a free port, waiting until ``/v2/health/ready`` answers 200, and
stopping it the way Kubernetes does (SIGTERM, then a kill after a grace period)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, base: str, log: Path, timeout: float = 120.0) -> None:
    """Poll ``base``'s readiness until 200; fail with the server's log if it exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not become ready:\n" + log.read_text()[-3000:]
        time.sleep(0.3)


def stop(proc: subprocess.Popen, timeout: float = 40.0) -> None:
    """SIGTERM, wait up to ``timeout`` s for the graceful exit, else kill."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
