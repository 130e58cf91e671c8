"""``sqlog serve``: the Kafka wire protocol over a sqlog file, for any Kafka client.

Inside an asyncio app::

    import sqlog
    from sqlog.server import Server

    log = sqlog.open("app.db")
    server = Server(log, "127.0.0.1", 9092)
    host, port = await server.start()
    ...                      # clients use bootstrap.servers=f"{host}:{port}"
    await server.close()     # the log stays open

Or blocking, as the CLI does: ``sqlog.server.serve("app.db", port=9092)``.
Beyond loopback, clients log in over TLS (``Server(log, "0.0.0.0", 9093, sasl=True,
tls_cert=..., tls_key=...)``) as users stored in the log (`add_user`); see `auth`.
Needs the ``kafka`` extra (``pip install 'sqlog[kafka]'``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any, TextIO

from .. import open as open_log
from .auth import is_loopback, tls_context
from .broker import VERSIONS, Server
from .users import UnknownUserError, User, add_user, list_users, remove_user

__all__ = ["Server", "UnknownUserError", "User", "VERSIONS", "add_user", "is_loopback", "list_users", "remove_user",
           "run", "serve", "tls_context"]


async def run(path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 9092, *,
              out: TextIO | None = None, stop: asyncio.Event | None = None, **options: Any) -> None:
    """Serve the log at ``path`` until ``stop`` is set or SIGINT/SIGTERM arrives; prints
    ``listening on HOST:PORT`` to ``out`` (stdout) once clients can connect."""
    log = open_log(path)
    try:
        server = Server(log, host, port, **options)
        bound_host, bound_port = await server.start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        print(f"listening on {bound_host}:{bound_port}", file=out or sys.stdout, flush=True)
        try:
            await stop.wait()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await server.close()
    finally:
        log.close()


def serve(path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 9092, **options: Any) -> None:
    """Blocking `run`: what ``sqlog --db PATH serve`` does."""
    asyncio.run(run(path, host, port, **options))
