"""The manifest registry: every signed manifest, keyed by the watermark payload it soft-binds.

When a platform strips an image's metadata (or someone screenshots it), the C2PA manifest is
gone but the invisible watermark is still in the pixels; ``verify`` decodes the payload and looks
the manifest up here. SQLite, one file, safe for several sdmark processes writing at once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sdmark.core.errors import SdmarkError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    id INTEGER PRIMARY KEY,
    payload TEXT NOT NULL,
    scheme TEXT NOT NULL,
    manifest_label TEXT NOT NULL,
    manifest BLOB NOT NULL,
    format TEXT NOT NULL,
    title TEXT,
    file_sha256 TEXT,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS manifests_payload ON manifests (payload);
"""


@dataclass(frozen=True)
class Entry:
    """One signed image: the manifest store bytes (JUMBF) and what identifies them."""

    payload: str
    scheme: str
    manifest_label: str
    manifest: bytes
    format: str
    title: str | None = None
    file_sha256: str | None = None
    created: str = ""


_open: dict[tuple[int, Path], "Registry"] = {}


def open_registry(path: Path) -> "Registry":
    """The process's :class:`Registry` for ``path``: one connection kept open per process, because
    opening and closing SQLite in WAL mode (a checkpoint on close) costs more than the insert."""
    key = (os.getpid(), Path(path))
    if key not in _open:
        _open[key] = Registry(path)
    return _open[key]


class Registry:
    """A registry file. Several processes may write to it at once (SQLite locking, WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL survives a crash of sdmark; only a power cut can lose the last few
            # entries. FULL would fsync on every image (~10 ms each here).
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise SdmarkError(f"manifest registry {self.path}: cannot open ({exc})") from None
        self._connection = connection
        return connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def add(self, entry: Entry) -> None:
        """Store a signed manifest under its watermark payload."""
        created = entry.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            with self._lock, self._connect() as db:
                db.execute(
                    "INSERT INTO manifests (payload, scheme, manifest_label, manifest, format, title, file_sha256, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.payload, entry.scheme, entry.manifest_label, entry.manifest, entry.format, entry.title,
                     entry.file_sha256, created),
                )
        except sqlite3.Error as exc:
            raise SdmarkError(f"manifest registry {self.path}: cannot store the manifest ({exc})") from None

    def lookup(self, payload: str, scheme: str | None = None) -> list[Entry]:
        """Manifests stored under ``payload`` (and ``scheme`` when given), newest first."""
        if not self.path.exists():
            return []
        query = "SELECT payload, scheme, manifest_label, manifest, format, title, file_sha256, created FROM manifests WHERE payload = ?"
        args: list[str] = [payload]
        if scheme is not None:
            query += " AND scheme = ?"
            args.append(scheme)
        try:
            with self._lock:
                rows = self._connect().execute(query + " ORDER BY id DESC", args).fetchall()
        except sqlite3.Error as exc:
            raise SdmarkError(f"manifest registry {self.path}: cannot read ({exc})") from None
        return [Entry(*row) for row in rows]

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM manifests").fetchone()[0]
