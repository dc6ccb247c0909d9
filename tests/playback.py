"""A fake SMTP peer for property tests: plays back given bytes, then closes, resets or stalls."""

from __future__ import annotations

import asyncio
import socket
import struct


class Playback:
    """Serve one script to every connection on ``address``:``port``.

    ``chunks`` are written one by one with a yield to the loop between them, so a reply
    can arrive split at any boundary. ``ending`` is "close", "reset" or "stall".
    The server reads and discards whatever the client sends.
    """

    def __init__(self, address: str, port: int = 0) -> None:
        self.address = address
        self.port = port
        self.chunks: list[bytes] = []
        self.ending = "close"
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.ensure_future(self._play(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _play(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drain = asyncio.ensure_future(self._discard(reader))
        try:
            for chunk in self.chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0)
            if self.ending == "stall":
                await asyncio.sleep(3600)
            elif self.ending == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            drain.cancel()
            writer.close()

    @staticmethod
    async def _discard(reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
