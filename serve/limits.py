"""Request limits that hold before any work: the streaming body cap, the pace an upload must keep,
and the gates that bound how many requests receive and how many wait for the CPU."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Multipart boundaries and part headers around a file of exactly the maximum size.
FRAMING_ALLOWANCE = 64 * 1024


class BodyTooLarge(Exception):
    """The request body went past the limit (raised from ``receive`` while it streams in)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload larger than the {limit / (1024 * 1024):.0f} MB limit")
        self.limit = limit


class BodyLimit:
    """ASGI middleware: a declared ``Content-Length`` over the limit is refused before reading;
    otherwise the bytes are counted as they arrive and :class:`BodyTooLarge` is raised the moment
    they pass it, so no more than the limit is ever read or buffered."""

    def __init__(self, app: ASGIApp, limit: int, on_reject: Callable[[Scope, BodyTooLarge], ASGIApp]) -> None:
        self.app = app
        self.limit = limit
        self.body_limit = limit + FRAMING_ALLOWANCE
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.body_limit:
            await self.on_reject(scope, BodyTooLarge(self.limit))(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.body_limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await self.on_reject(scope, exc)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class UploadTooSlow(Exception):
    """The body did not arrive whole within the timeout, or fell behind the minimum rate."""


class PacedReceive:
    """An ASGI ``receive`` that bounds how long a body may take: each chunk must come before the
    deadline, which is the overall ``timeout_s`` or, sooner, ``grace_s`` plus the time the bytes seen
    so far buy at ``min_rate`` bytes per second. An idle connection is thus dropped after
    ``grace_s``, and one that trickles a byte now and then soon after, without holding a CPU place;
    raises :class:`UploadTooSlow`."""

    def __init__(self, receive: Callable[[], Awaitable[Any]], *, timeout_s: float, min_rate: float, grace_s: float) -> None:
        self.receive = receive
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.grace_s = grace_s
        self.started = time.monotonic()
        self.seen = 0

    def deadline(self) -> float:
        paced = self.grace_s + self.seen / self.min_rate if self.min_rate > 0 else math.inf
        return self.started + min(self.timeout_s, paced)

    def reason(self) -> str:
        if self.min_rate > 0 and self.grace_s + self.seen / self.min_rate < self.timeout_s:
            return (f"the upload fell below {self.min_rate / 1024:g} KiB/s ({self.seen} bytes in "
                    f"{time.monotonic() - self.started:.1f} s)")
        return f"the upload took longer than {self.timeout_s:g} s"

    async def __call__(self) -> Message:
        remaining = self.deadline() - time.monotonic()
        if remaining <= 0:
            raise UploadTooSlow(self.reason())
        try:
            message = await asyncio.wait_for(self.receive(), timeout=remaining)
        except asyncio.TimeoutError:
            raise UploadTooSlow(self.reason()) from None
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
        return message


class Gate:
    """At most ``running + waiting`` holders at once; the next one is turned away (503 with
    Retry-After) instead of queueing without bound. The engine has two: one for requests whose
    body is arriving, one for CPU work, whose place is given back when the work itself ends, not
    when its request gives up, so abandoned work still counts against the capacity it uses."""

    def __init__(self, running: int, waiting: int) -> None:
        self.capacity = running + waiting
        self._held = 0
        self._lock = threading.Lock()  # released from worker threads' done callbacks

    def try_enter(self) -> bool:
        with self._lock:
            if self._held >= self.capacity:
                return False
            self._held += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._held = max(0, self._held - 1)

    @property
    def held(self) -> int:
        return self._held

    @property
    def full(self) -> bool:
        return self._held >= self.capacity
