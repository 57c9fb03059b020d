"""Local TCP ports for the processes tlt starts itself (trainer rendezvous, the dev control
plane, local pods and the local operator)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, chosen by the OS (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
