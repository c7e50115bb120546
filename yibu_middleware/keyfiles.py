"""Gateway keys read from files (``api_key_file``, ``api_keys_file``), read again when they change.

A Kubernetes secret or a Vault agent's file is rotated by replacing it (Kubernetes swaps a
symlink, ``..data``, to a new folder): the path stays, what it points at changes. So the
file is looked at again (one ``stat``) when a call starts and ``CHECK_EVERY`` has passed
since the last look; when its inode, size or modification time changed, it is read again
and its keys replace the old ones in the default pool. No thread: a process that makes no
call reads nothing. A call already sent keeps the key it was sent with.

A file caught half-written, emptied or unreadable keeps the keys last read in use, with
one warning (per kind of problem) saying why: taking every key away mid-rotation would
fail every call, while the old key usually still works for the rotation's grace period.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .core.keys import GatewayKey, KeyRing, parse_key_line

log = logging.getLogger("yibu_middleware")

# Seconds between two looks at a key file: a rotated file is in use within this (plus the time
# to the next call), and the look costs one stat per this many seconds, not per call.
CHECK_EVERY = 0.25
# A key file is a few keys; a larger one is a mistake (a mounted folder, a log file).
MAX_KEY_FILE_BYTES = 1024 * 1024


def read_key_file(path: Path, setting: str) -> list[GatewayKey]:
    """The keys of a file, one a line (``key`` or ``key weight``); ValueError naming the file and
    the line (never a key) when it cannot be read or holds no key."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{setting} {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{setting} {path} is larger than 1 MiB: not a key file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{setting} {path} holds a non-ASCII byte at offset {exc.start}; a key is printable ASCII"
        ) from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = parse_key_line(line, f"{setting} {path} line {number}")
        if key is not None:
            keys.append(key)
    if not keys:
        raise ValueError(f"{setting} {path} holds no key")
    if setting == "api_key_file" and len(keys) > 1:
        raise ValueError(f"{setting} {path} holds {len(keys)} keys; use api_keys_file for a file of several keys")
    return keys


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        found = os.stat(path)  # follows a symlink: a swapped ..data link changes the inode
    except OSError:
        return None
    return (found.st_ino, found.st_dev, found.st_size, found.st_mtime_ns)


class KeyFiles:
    """The key files of a runtime, and the keys the default pool holds besides them."""

    __slots__ = ("_fixed", "_lock", "_next_look", "_problems", "_read", "_ring", "_signatures", "files", "on_keys")

    def __init__(
        self,
        files: Sequence[tuple[str, Path]],
        fixed: Sequence[GatewayKey],
        ring: KeyRing,
        on_keys: Callable[[Sequence[GatewayKey]], None],
    ) -> None:
        """``files``: (setting, path); ``fixed``: the keys of ``api_key`` and ``api_keys``;
        ``on_keys``: told of every key read (the redaction's known values)."""
        self.files = tuple(files)
        self._fixed = tuple(fixed)
        self._ring = ring
        self.on_keys = on_keys
        self._signatures = {path: _signature(path) for _, path in self.files}
        self._read: dict[Path, list[GatewayKey]] = {}
        for setting, path in self.files:
            self._read[path] = read_key_file(path, setting)
            on_keys(self._read[path])
        self._problems: set[str] = set()
        self._lock = threading.Lock()
        self._next_look = time.monotonic() + CHECK_EVERY

    def default_keys(self) -> list[GatewayKey]:
        keys = [*self._fixed]
        seen = {key.value for key in keys}
        for _, path in self.files:
            for key in self._read.get(path, ()):
                if key.value not in seen:
                    seen.add(key.value)
                    keys.append(key)
        return keys

    def check(self) -> None:
        """Called as each call starts: a look at the files when ``CHECK_EVERY`` has passed."""
        if time.monotonic() < self._next_look:
            return
        if not self._lock.acquire(blocking=False):
            return  # another call is looking right now
        try:
            self._next_look = time.monotonic() + CHECK_EVERY
            changed = False
            for setting, path in self.files:
                signature = _signature(path)
                if signature == self._signatures.get(path):
                    continue
                try:
                    keys = read_key_file(path, setting)
                except ValueError as exc:
                    self._warn(str(exc))
                    continue  # looked at again next time: a rotation may be half done
                self._signatures[path] = signature
                self.on_keys(keys)
                if keys != self._read.get(path):
                    self._read[path] = keys
                    changed = True
            if changed:
                self._ring.replace_default(self.default_keys())
                log.info(
                    "yibu-middleware: gateway key file changed: %d key(s) now in the default pool",
                    len(self.default_keys()),
                )
        finally:
            self._lock.release()

    def _warn(self, problem: str) -> None:
        if problem not in self._problems:
            self._problems.add(problem)
            log.warning("yibu-middleware: %s; the keys read before stay in use until it holds a key again", problem)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
