"""A real HTTP file server on 127.0.0.1 (aiohttp, in a thread) that misbehaves on request.

Each served path is a `Route` saying how to answer (HEAD too, with the headers GET would send): drop the connection part way, announce more bytes than
it sends, stall, ignore `Range`, or answer an error status. Every request is logged as a `Hit`, with the
body bytes actually handed to the socket, so tests can check what a client asked for and cost.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

_RANGE = re.compile(r"bytes=(\d+)-$")
_CHUNK = 4096


@dataclass
class Route:
    data: bytes
    status: int = 200  # anything but 200 is answered as that bare status
    drop_after: int | None = None  # close the connection after this many body bytes...
    drops: int = 1  # ...on this many requests, then behave
    announce_extra: int = 0  # Content-Length this much larger than the body actually sent (every time)
    stall_after: int | None = None  # after this many body bytes, go silent for stall_seconds
    stall_seconds: float = 0.0
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    headers_delay: float = 0.0  # wait this long before answering at all


@dataclass
class Hit:
    path: str
    range: str | None
    status: int
    body_bytes: int = 0
    method: str = "GET"


@dataclass
class FileServer:
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, path: str, data: bytes, **behaviour: object) -> Route:
        route = Route(data, **behaviour)  # type: ignore[arg-type]
        self.routes[path.lstrip("/")] = route
        return route

    def hits_for(self, path: str, method: str = "GET") -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path.lstrip("/") and hit.method == method]

    def bytes_served(self, path: str) -> int:
        return sum(hit.body_bytes for hit in self.hits_for(path))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.lstrip("/")
        route = self.routes.get(path)
        if route is not None and route.headers_delay:
            await asyncio.sleep(route.headers_delay)
        range_header = request.headers.get("Range")
        if route is None or route.status != 200:
            status = 404 if route is None else route.status
            self.hits.append(Hit(path, range_header, status, method=request.method))
            return web.Response(status=status)

        data, start, status = route.data, 0, 200
        match = _RANGE.match(range_header or "")
        if match and not route.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.hits.append(Hit(path, range_header, 416))
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
        hit = Hit(path, range_header, status, method=request.method)
        self.hits.append(hit)

        body = data[start:]
        response = web.StreamResponse(status=status)
        response.content_length = len(body) + route.announce_extra
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        if request.method == "HEAD":
            return response

        limit = len(body)
        dropping = route.drop_after is not None and route.drops > 0
        if dropping:
            route.drops -= 1
            limit = min(limit, route.drop_after or 0)
        sent = 0
        try:
            while sent < limit:
                if route.stall_after is not None and sent == route.stall_after:
                    await asyncio.sleep(route.stall_seconds)
                end = min(limit, sent + _CHUNK)
                if route.stall_after is not None and sent < route.stall_after < end:
                    end = route.stall_after
                hit.body_bytes += end - sent  # counted before the write: the client may see it at once
                await response.write(body[sent:end])
                sent = end
        except ConnectionError:
            return response  # the client hung up (it timed out): nothing left to do
        if dropping or route.announce_extra:
            # Cut the connection after the bytes written so far (they are flushed before closing).
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response


@contextmanager
def running_file_server() -> Iterator[FileServer]:
    """Start a FileServer on a random port in a background thread; stop it (promptly) on exit."""
    server = FileServer()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="file-server", daemon=True)
    thread.start()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", server.handle)
        app.router.add_route("HEAD", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.port = runner.addresses[0][1]
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def silent_server() -> Iterator[str]:
    """A URL whose host accepts connections (the kernel completes them) but never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
