"""What one call's agent says, read by one stream at a time: the ingress that holds the call's socket.

The edge's socket to the ingress can be lost mid-call; the edge then reconnects with ``resume``, and
Serve's proxy may route that to another ingress replica. So the agent's outputs are not tied to the
reader that started them:

- each reader has a token; :meth:`WireOutbox.open` makes it *the* reader, and an older one's
  :meth:`read` ends at its next item (it never takes an item meant for the newer one);
- :meth:`pause`: the reader lost its socket; items wait here until a resume opens a new reader;
- :meth:`give_back`: the items a reader took but could not send (its socket broke under it) come back,
  and a new reader gets them first, in the order they were taken;
- a resumed reader does not get stale speech: audio and ``play``/``stop_playback`` controls said while
  nobody listened are dropped (the caller never heard them; the rest, such as a summary, a transfer or
  a hang-up, is still owed to the edge).

One asyncio loop (the actor's) owns an outbox; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Literal

__all__ = ["SPEECH_CONTROLS", "WireItem", "WireOutbox", "is_speech", "reader_token"]

WireItem = tuple[Literal["json", "audio"], Any]
SPEECH_CONTROLS = ('{"type":"play"', '{"type":"stop_playback"')


def reader_token() -> str:
    """A new reader's token: the wall-clock time it was issued (ns), then a random part. Readers are
    the ingress sockets of one call, a reconnect or more apart, so the time orders them."""
    return f"{time.time_ns()}-{uuid.uuid4().hex[:12]}"


def _issued(token: str) -> int:
    stamp, _, _ = token.partition("-")
    return int(stamp) if stamp.isdigit() else 0


def is_speech(item: tuple[str, Any]) -> bool:
    """Audio, or a control about playing it: worthless once the moment it was meant for has passed."""
    kind, payload = item
    return kind == "audio" or str(payload).startswith(SPEECH_CONTROLS)


class WireOutbox:
    """The queue of wire items between an agent and the ingress reading it (see the module docstring)."""

    def __init__(self) -> None:
        self._items: deque[WireItem | None] = deque()  # None: the end of the call's outputs
        self._returned: deque[WireItem] = deque()  # given back by a reader, sent first
        self._wake = asyncio.Event()
        self.reader: str | None = None  # the token of the stream reading now (None: nobody)
        self.last_reader: str | None = None
        self._lost: set[str] = set()  # tokens paused: their sockets are gone for good
        self.ended = False

    def put(self, item: WireItem | None) -> None:
        """Queue an item (None: the end; readers stop there)."""
        self._items.append(item)
        self._wake.set()

    def open(self, token: str, resumed: bool = False) -> None:
        """``token``'s stream becomes the reader (an older one ends); ``resumed``: drop stale speech.

        Requests from different sockets (and replicas) can reach the actor in any order, so tokens
        carry the time they were issued (:func:`reader_token`): the stream of a token older than the
        newest opened reads nothing, and a token paused before its stream started opens paused."""
        if resumed:
            self._returned = deque(i for i in self._returned if not is_speech(i))
            self._items = deque(i for i in self._items if i is None or not is_speech(i))
        if self.last_reader is not None and _issued(token) < _issued(self.last_reader):
            return  # a stream older than the newest one (requests overtook each other): it reads nothing
        self.reader = None if token in self._lost else token
        self.last_reader = token
        self._wake.set()

    def pause(self, token: str) -> bool:
        """``token``'s socket is gone: nobody reads until the next :meth:`open` of another token.
        False when ``token`` was not the reader (another took over, or it has not started yet)."""
        self._lost.add(token)
        if self.reader != token:
            return False
        self.reader = None
        self._wake.set()
        return True

    def give_back(self, item: WireItem) -> None:
        """An item a reader took and could not send; the next reader gets it first (speech dropped)."""
        if not is_speech(item):
            self._returned.append(item)
            self._wake.set()

    def unclaimed_since(self, token: str) -> bool:
        """Nobody reads, and nobody has since ``token``'s reader paused."""
        return self.reader is None and self.last_reader == token

    def undelivered(self) -> list[WireItem]:
        """What is owed to the edge and still here (for the log when no resume comes)."""
        return [*self._returned, *(i for i in self._items if i is not None and not is_speech(i))]

    async def read(self, token: str) -> AsyncIterator[WireItem]:
        """The items, for as long as ``token`` is the reader and the outputs have not ended."""
        while True:
            while self.reader == token and not self._returned and not self._items:
                self._wake.clear()
                await self._wake.wait()
            if self.reader != token:
                return
            if self._returned:
                yield self._returned.popleft()
                continue
            item = self._items.popleft()
            if item is None:
                self.ended = True
                return
            yield item

    def get_nowait(self) -> WireItem | None:
        """The next item without a reader (tests and in-process hosts); IndexError when empty."""
        return self._returned.popleft() if self._returned else self._items.popleft()
