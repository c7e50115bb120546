"""Following a server-sent-events response as it passes, without changing a byte.

The commit point of a streamed call is its first content: until then nothing the
caller could act on has arrived, so a failure (a cut, an in-band error event such
as Anthropic's ``overloaded_error``) can be retried on another node unseen. After
it, a retry would duplicate what the caller already has; the stream must then
reach its final event (``data: [DONE]``, ``message_stop``, ``response.completed``),
or the caller gets an error rather than a silently shortened answer.

Formats: OpenAI chat completions, the OpenAI Responses API and Anthropic Messages.
A stream in a format we do not recognise is passed through with no judgement.
"""

from __future__ import annotations

import json
from typing import Any

# Anthropic event names that carry content; message_start, content_block_start and
# ping carry none.
_ANTHROPIC_CONTENT = frozenset({b"content_block_delta", b"message_delta"})
_ANTHROPIC_EVENTS = frozenset(
    {b"message_start", b"content_block_start", b"content_block_delta", b"content_block_stop", b"message_delta", b"ping"}
)
_FINAL_EVENTS = frozenset({b"message_stop", b"response.completed", b"response.incomplete", b"response.failed"})
_CHAT_CONTENT_FIELDS = ("content", "tool_calls", "function_call", "refusal", "reasoning_content", "reasoning")


class EventSplitter:
    """Cuts a body into its events (blocks ended by a blank line), in time linear in its size.

    Each byte is searched for the end of its event once: what is held of an unfinished event
    is not searched again when the next chunk comes (the old way, joining and splitting all
    of it on every chunk, took 8 s of CPU for one 16 MB event read in 16 KiB chunks). Line
    ends are made ``\n`` (a ``\r\n`` split between two chunks included)."""

    __slots__ = ("_buffer", "_carry", "scanned")

    def __init__(self) -> None:
        self._buffer = bytearray()  # the unfinished event
        self._carry = b""  # a chunk's last "\r", until the next chunk tells whether "\n" follows
        self.scanned = 0  # bytes searched, for the tests (linear time is checked by counting)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events this chunk completes, in order."""
        if self._carry:
            chunk, self._carry = self._carry + chunk, b""
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._carry = chunk[:-1], b"\r"
            chunk = chunk.replace(b"\r\n", b"\n")
        buffer = self._buffer
        if not buffer:  # the usual case, a chunk that starts an event: split as it is, no copy first
            self.scanned += len(chunk)
            events = chunk.split(b"\n\n")
            rest = events.pop()
            if rest:
                buffer += rest
            return events
        start = len(buffer) - 1  # the "\n\n" may straddle the old end: one byte back
        buffer += chunk
        self.scanned += len(buffer) - start
        end = buffer.find(b"\n\n", start)
        if end < 0:
            return []
        events, begin = [], 0
        while end >= 0:
            events.append(bytes(buffer[begin:end]))
            begin = end + 2
            end = buffer.find(b"\n\n", begin)
        del buffer[:begin]  # what is left came with this chunk: moving it is linear too
        return events

    def held(self) -> int:
        """Bytes of the unfinished event held."""
        return len(self._buffer) + len(self._carry)


class StreamWatch:
    """Fed each chunk of the body in order; says when the stream committed or failed."""

    __slots__ = ("_splitter", "committed", "ended", "error", "events", "known_format")

    def __init__(self) -> None:
        self._splitter = EventSplitter()
        self.committed = False  # first content seen (or a clean, empty end)
        self.ended = False  # the format's final event seen
        self.error: str | None = None  # an in-band error event before the commit point
        self.known_format = False
        self.events = 0

    def feed(self, chunk: bytes) -> None:
        for block in self._splitter.feed(chunk):
            if block.strip():
                self.events += 1
                self._event(block)

    @property
    def scanned(self) -> int:
        """Bytes searched for the end of an event (see ``EventSplitter``)."""
        return self._splitter.scanned

    def truncated(self) -> bool:
        """At the end of the body: did a stream we understand stop before its final event?"""
        return self.known_format and not self.ended and self.error is None

    def _event(self, block: bytes) -> None:
        name = b""
        data_lines = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data_lines:
            return  # a comment (": keep-alive") or a name alone: no event is dispatched, per the SSE rules
        data = b"\n".join(data_lines)
        if data == b"[DONE]":
            self.known_format = self.ended = True
            self.committed = True
            return
        if name in _FINAL_EVENTS:
            self.known_format = self.ended = True
            if name == b"response.failed" and not self.committed:
                self.error = "response.failed event"
            self.committed = True
            return
        if name == b"error":
            self.known_format = True
            if not self.committed:
                self.error = _error_message(data)
            return
        if self.committed:
            return  # after the commit point only the final event matters: no JSON parsing
        if name in _ANTHROPIC_EVENTS:
            self.known_format = True
            self.committed = name in _ANTHROPIC_CONTENT
            return
        if name.endswith(b".delta"):
            self.known_format = self.committed = True  # Responses API content delta
            return
        if name.startswith(b"response."):
            self.known_format = True
            return
        self._chat_chunk(data)

    def _chat_chunk(self, data: bytes) -> None:
        try:
            chunk: Any = json.loads(data)
        except ValueError:
            self.committed = True  # not JSON: not ours to judge; hand it over
            return
        except RecursionError:  # nested too deeply to read: the SDK could not read it either
            self.error = "an event nested too deeply to read"
            return
        if not isinstance(chunk, dict):
            self.committed = True
            return
        if isinstance(chunk.get("error"), dict):  # gateways' in-band error in a chat stream
            self.known_format = True
            self.error = _error_message(data)
            return
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            self.committed = True
            return
        self.known_format = True
        if not choices:
            self.committed = "usage" in chunk  # the include_usage chunk comes after content
            return
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if choice.get("finish_reason") or (
                isinstance(delta, dict) and any(delta.get(field) for field in _CHAT_CONTENT_FIELDS)
            ):
                self.committed = True
                return


def _error_message(data: bytes) -> str:
    try:
        document = json.loads(data)
    except ValueError:
        return data[:200].decode("utf-8", "replace")
    except RecursionError:
        return "an error event nested too deeply to read"
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or "error"
        return f"{kind}: {error.get('message', '')}".strip()
    return "error event"
