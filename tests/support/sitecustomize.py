"""Loaded by subprocesses of network-free tests: outbound connections are logged and refused."""

import os
import socket

_LOG = os.environ.get("MARSEVAL_NETLOG")
_connect = socket.socket.connect


def _guarded(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        with open(_LOG, "a") as log:
            log.write(f"{address}\n")
        raise OSError(f"network access attempted during a network-free test: {address}")
    return _connect(self, address)


if _LOG:
    socket.socket.connect = _guarded
