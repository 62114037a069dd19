"""The manifest registry: every signed manifest, keyed by the watermark payload it soft-binds.

When a platform strips an image's metadata (or someone screenshots it), the C2PA manifest is
gone but the invisible watermark is still in the pixels; ``verify`` decodes the payload and looks
the manifest up here. SQLite, one file, safe for several sdmark processes writing at once.

A row is an index, never evidence: ``verify`` checks each row against the signed manifest it
carries (the payload must be the manifest's signed soft binding) and compares content with the
fingerprint *inside* that manifest. The ``pdq``/``thumbnail``/``signer`` columns are there for
searching and listing, and are never trusted over the manifest.

Schema versions (``PRAGMA user_version``), migrated in place when a writer opens the file:

- 1 (user_version 0): payload, scheme, manifest_label, manifest, format, title, file_sha256, created.
- 2: adds ``pdq`` (hex PDQ hash of the content), ``thumbnail`` (small greyscale PNG, optional),
  ``signer`` (the signing certificate's common name) and ``signer_sha256`` (its SHA-256 fingerprint).

Lookups open the file read-only (``mode=ro``, then ``immutable=1`` for a file on read-only media),
so verify works on a registry it may not write and never creates or migrates one. A registry file
that sdmark creates is mode 0600 (it holds prompts and paths), in a folder created 0700.

All SQL lives in this module, behind :class:`Registry` (``add``, ``lookup``, ``__len__``, ``close``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sdmark.core.errors import SdmarkError
from sdmark.plugins.c2pa.registry_store import insert_sql, lookup_sql

if TYPE_CHECKING:
    from sdmark.plugins.c2pa.registry_store import DatabaseURL, RegistryStore

SCHEMA_VERSION = 2
_CREATE_V1 = """
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
_V1_TO_V2 = """
ALTER TABLE manifests ADD COLUMN pdq TEXT;
ALTER TABLE manifests ADD COLUMN thumbnail BLOB;
ALTER TABLE manifests ADD COLUMN signer TEXT;
ALTER TABLE manifests ADD COLUMN signer_sha256 TEXT;
"""
_V1_COLUMNS = ("payload", "scheme", "manifest_label", "manifest", "format", "title", "file_sha256", "created")
_V2_COLUMNS = _V1_COLUMNS + ("pdq", "thumbnail", "signer", "signer_sha256")


@dataclass(frozen=True)
class Entry:
    """One signed image: the manifest store bytes (JUMBF) and what identifies them.

    ``pdq``, ``thumbnail`` and ``signer*`` are copies for search and display (schema v2; ``None``
    in rows written before it); the signed manifest is the only authority on any of them.
    """

    payload: str
    scheme: str
    manifest_label: str
    manifest: bytes
    format: str
    title: str | None = None
    file_sha256: str | None = None
    created: str = ""
    pdq: str | None = None
    thumbnail: bytes | None = None
    signer: str | None = None
    signer_sha256: str | None = None


READ_TIMEOUT = 2.0
"""Seconds a lookup waits for a writer's lock before the registry is reported unreadable."""


def _locked(exc: Exception) -> bool:
    """Whether an SQLite error says another connection holds a lock (busy), not that the file cannot be opened."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def open_registry(path: "Path | DatabaseURL") -> "RegistryStore":
    """A :class:`Registry` for ``path``. Connections are opened lazily and kept per object; the
    caller keeps the object for a run (opening and closing SQLite in WAL mode costs more than an insert).
    A ``postgresql://`` location (:class:`~sdmark.plugins.c2pa.registry_store.DatabaseURL`) opens the
    shared PostgreSQL registry instead (:mod:`sdmark.plugins.c2pa.registry_postgres`)."""
    from sdmark.plugins.c2pa.registry_store import open_store

    return open_store(path)


class Registry:
    """A registry file. Several processes may write to it at once (SQLite locking, WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # -- connections --------------------------------------------------------------------------

    def _forked(self) -> None:
        """A connection must not cross a fork: a child process opens its own."""
        if self._pid != os.getpid():
            self._writer = self._reader = None
            self._pid = os.getpid()

    def _connect_writer(self) -> sqlite3.Connection:
        self._forked()
        if self._writer is not None:
            return self._writer
        try:
            _create_private(self.path)
            connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL survives a crash of sdmark; only a power cut can lose the last few
            # entries. FULL would fsync on every image (~10 ms each here).
            connection.execute("PRAGMA synchronous=NORMAL")
            _migrate(connection)
        except (OSError, sqlite3.Error) as exc:
            raise SdmarkError(f"manifest registry {self.path}: cannot open for writing ({_reason(exc)})") from None
        self._writer = connection
        return connection

    def _connect_reader(self) -> sqlite3.Connection | None:
        """A read-only connection, or ``None`` when there is no registry file (nothing registered)."""
        self._forked()
        if self._reader is not None:
            return self._reader
        if not self.path.exists():
            return None
        uri = "file:" + quote(str(self.path.resolve()))
        last: Exception | None = None
        # mode=ro still needs the -shm file of a WAL database to be writable; immutable=1 reads a
        # file on read-only media (no locking: safe only because nobody can be writing it then).
        # A registry that is locked is being written: it is never read without locking (a half-
        # written transaction would be read as if committed), and a reader waits only briefly.
        for query in ("?mode=ro", "?immutable=1"):
            try:
                connection = sqlite3.connect(uri + query, uri=True, timeout=READ_TIMEOUT, check_same_thread=False)
                connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:
                if _locked(exc):
                    raise SdmarkError(f"manifest registry {self.path}: locked by a writer for over "
                                      f"{READ_TIMEOUT:g} s; not read ({_reason(exc)})") from None
                last = exc
                continue
            self._reader = connection
            return connection
        raise SdmarkError(f"manifest registry {self.path}: cannot open for reading ({_reason(last)})")

    def close(self) -> None:
        with self._lock:
            for connection in (self._writer, self._reader):
                if connection is not None:
                    connection.close()
            self._writer = self._reader = None

    # -- the interface -------------------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        """Store a signed manifest under its watermark payload (creating or migrating the file)."""
        created = entry.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        values = (entry.payload, entry.scheme, entry.manifest_label, entry.manifest, entry.format, entry.title,
                  entry.file_sha256, created, entry.pdq, entry.thumbnail, entry.signer, entry.signer_sha256)
        try:
            with self._lock, self._connect_writer() as db:
                db.execute(insert_sql(_V2_COLUMNS, "?"), values)
        except sqlite3.Error as exc:
            raise SdmarkError(f"manifest registry {self.path}: cannot store the manifest ({_reason(exc)})") from None

    def lookup(self, payload: str, scheme: str | None = None) -> list[Entry]:
        """Manifests stored under ``payload`` (and ``scheme`` when given), newest first. Read-only."""
        try:
            with self._lock:
                db = self._connect_reader()
                if db is None:
                    return []
                columns = _columns(db)
                rows = db.execute(*lookup_sql(columns, payload, scheme, "?")).fetchall()
        except sqlite3.Error as exc:
            raise SdmarkError(f"manifest registry {self.path}: cannot read ({_reason(exc)})") from None
        return [Entry(**dict(zip(columns, row))) for row in rows]

    def schema_version(self) -> int:
        """The file's schema version (0 when there is no file yet)."""
        with self._lock:
            db = self._connect_reader()
            if db is None:
                return 0
            return _version(db)

    def __len__(self) -> int:
        with self._lock:
            db = self._connect_reader()
            if db is None:
                return 0
            try:
                return db.execute("SELECT COUNT(*) FROM manifests").fetchone()[0]
            except sqlite3.Error as exc:
                raise SdmarkError(f"manifest registry {self.path}: cannot read ({_reason(exc)})") from None


def _create_private(path: Path) -> None:
    """Create the folder (0700) and an empty file (0600) if they do not exist; existing ones are kept as they are."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _version(db: sqlite3.Connection) -> int:
    """The schema version: ``user_version``, where 0 with a ``manifests`` table is the unversioned v1."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version:
        return int(version)
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'manifests'").fetchone()
    return 1 if exists else 0


def _columns(db: sqlite3.Connection) -> tuple[str, ...]:
    """The columns a lookup reads: v1 files (read-only, not migrated) lack the v2 ones."""
    version = _version(db)
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than this sdmark understands ({SCHEMA_VERSION})")
    return _V2_COLUMNS if version >= 2 else _V1_COLUMNS


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the file to :data:`SCHEMA_VERSION` in one transaction (several writers may race here)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _version(db)
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this sdmark understands ({SCHEMA_VERSION})")
        if version == 0:
            for statement in _CREATE_V1.split(";"):
                if statement.strip():
                    db.execute(statement)
            version = 1
        if version == 1:
            for statement in _V1_TO_V2.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
