"""What the hub tests share: the planted token the test server accepts, and small helpers.

The fixtures that start the server (``hub_server``, session-wide) and point tuneforge at it (``hub_env``) live in
conftest.py and use these; test modules import the constants from here, so there is one token per session.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import select
import socket
import subprocess
import sys
import uuid
from pathlib import Path

SERVER_SCRIPT = Path(__file__).with_name("hub_server.py")
# The write token the server accepts; also the "planted" secret that must never leak.
TOKEN = "hf_PlantedTuneforgeSecret" + secrets.token_hex(12)
LFS_THRESHOLD = 64 * 1024  # files this size or larger go through the server's LFS flow
QUICK = 10.0  # seconds: an unreachable hub must fail faster than this


@dataclasses.dataclass
class HubServer:
    endpoint: str
    log_path: Path
    data_dir: Path


def start_server(root: Path):
    """Start tests/hub_server.py under ``root``; returns (process, HubServer) or raises RuntimeError."""
    token_file = root / "tokens.txt"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    log_path = root / "server.log"
    cmd = [
        sys.executable, str(SERVER_SCRIPT),
        "--data-dir", str(root / "data"),
        "--port", "0",
        "--token-file", str(token_file),
        "--lfs-threshold", str(LFS_THRESHOLD),
        "--max-lifetime", "900",
        "--parent-pid", str(os.getpid()),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        proc.wait(timeout=5)
        proc.stdout.close()
        raise RuntimeError(f"hub test server did not start: {log_path.read_text()[-2000:]}")
    info = json.loads(line)
    return proc, HubServer(endpoint=info["endpoint"], log_path=log_path, data_dir=root / "data")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    proc.stdout.close()


def closed_port_endpoint() -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # never listened: connections are refused at once
    return f"http://127.0.0.1:{port}"


def unique_repo(prefix: str, namespace: str | None = "tf-org") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return f"{namespace}/{name}" if namespace else name
