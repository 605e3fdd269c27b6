"""The unit tier's rule holds: a test under tests/unit cannot start a process or a server."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def test_a_unit_test_cannot_start_a_process_or_a_server():
    with pytest.raises(AssertionError, match="move it to tests/integration"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with socket.socket() as server, pytest.raises(AssertionError, match="tests/integration"):
        server.bind(("127.0.0.1", 0))
        server.listen()
