"""The manifest registry in PostgreSQL (``SDMARK_REGISTRY=postgresql://USER@HOST/DB``; psycopg 3).

For deployments where many machines sign and verify at once (SQLite's file locking is not safe
on a network file system). The same schema as the SQLite file, column for column, with the
same versions: ``sdmark_schema`` holds the version, and a writer migrates under a transaction-
level advisory lock, so writers starting together migrate once. Each ``add`` is one autocommit
``INSERT``: a row is either stored whole or not at all, and concurrent writers never block one
another. Lookups run on a separate read-only session (``default_transaction_read_only``), so
verify can use a role that may only ``SELECT``, and never create or migrate anything.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sdmark.core.errors import SdmarkError
from sdmark.plugins.c2pa.registry import _V1_COLUMNS, _V2_COLUMNS, SCHEMA_VERSION, Entry
from sdmark.plugins.c2pa.registry_store import DatabaseURL, insert_sql, lookup_sql

CONNECT_TIMEOUT_S = 10
# pg_advisory_xact_lock key: "sdmark" in ASCII, so unrelated applications' locks do not collide.
_MIGRATION_LOCK = 0x73646D61726B
# Migration N takes the schema from version N-1 to N (version 1 is the original table).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE manifests (
            id BIGSERIAL PRIMARY KEY,
            payload TEXT NOT NULL,
            scheme TEXT NOT NULL,
            manifest_label TEXT NOT NULL,
            manifest BYTEA NOT NULL,
            format TEXT NOT NULL,
            title TEXT,
            file_sha256 TEXT,
            created TEXT NOT NULL
        )""",
        "CREATE INDEX manifests_payload ON manifests (payload)",
    ),
    2: (
        "ALTER TABLE manifests ADD COLUMN pdq TEXT, ADD COLUMN thumbnail BYTEA, ADD COLUMN signer TEXT,"
        " ADD COLUMN signer_sha256 TEXT",
    ),
}
assert max(_MIGRATIONS) == SCHEMA_VERSION, "the PostgreSQL migrations must reach the SQLite schema version"


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise SdmarkError(f"a postgresql:// registry needs psycopg 3 (pip install 'sdmark[postgres]'): {exc}") from None
    return psycopg


class PostgresRegistry:
    """A registry in a PostgreSQL database; one writer and one reader session per process."""

    def __init__(self, location: DatabaseURL | str, *, migrate_to: int = SCHEMA_VERSION) -> None:
        self.location = location if isinstance(location, DatabaseURL) else DatabaseURL(location)
        self.migrate_to = migrate_to
        self._writer: Any = None
        self._reader: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return str(self.location)

    # -- sessions ------------------------------------------------------------------------------

    def _connect(self, *, read_only: bool) -> Any:
        psycopg = _psycopg()
        if self._pid != os.getpid():  # a session must not cross a fork
            self._writer = self._reader = None
            self._pid = os.getpid()
        current = self._reader if read_only else self._writer
        if current is not None and not current.closed:
            return current
        options = "-c default_transaction_read_only=on" if read_only else ""
        try:
            connection = psycopg.connect(self.location.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                         options=options, application_name="sdmark")
            if not read_only:
                self._migrate(connection)
        except psycopg.Error as exc:
            what = "reading" if read_only else "writing"
            raise SdmarkError(f"manifest registry {self.location}: cannot open for {what} ({_reason(exc)})") from None
        if read_only:
            self._reader = connection
        else:
            self._writer = connection
        return connection

    def _migrate(self, connection: Any) -> None:
        """Bring the database to ``migrate_to`` in one transaction, once however many writers race."""
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            connection.execute("CREATE TABLE IF NOT EXISTS sdmark_schema (version INTEGER NOT NULL)")
            row = connection.execute("SELECT version FROM sdmark_schema").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise SdmarkError(f"manifest registry {self.location}: schema version {version} is newer than "
                                  f"this sdmark understands ({SCHEMA_VERSION})")
            for step in range(version + 1, self.migrate_to + 1):
                for statement in _MIGRATIONS[step]:
                    connection.execute(statement)
            if row is None:
                connection.execute("INSERT INTO sdmark_schema (version) VALUES (%s)", (max(version, self.migrate_to),))
            elif self.migrate_to > version:
                connection.execute("UPDATE sdmark_schema SET version = %s", (self.migrate_to,))

    def _read_version(self, connection: Any) -> int:
        exists = connection.execute("SELECT to_regclass('sdmark_schema') IS NOT NULL").fetchone()[0]
        if not exists:
            return 0
        row = connection.execute("SELECT version FROM sdmark_schema").fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        with self._lock:
            for connection in (self._writer, self._reader):
                if connection is not None and not connection.closed:
                    connection.close()
            self._writer = self._reader = None

    # -- the interface -------------------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        """Store a signed manifest under its watermark payload (creating or migrating the schema)."""
        from datetime import datetime, timezone

        psycopg = _psycopg()
        created = entry.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        values = (entry.payload, entry.scheme, entry.manifest_label, entry.manifest, entry.format, entry.title,
                  entry.file_sha256, created, entry.pdq, entry.thumbnail, entry.signer, entry.signer_sha256)
        # A registry held at an older version (tests of the migrations) stores that version's columns.
        columns = _V2_COLUMNS if self.migrate_to >= 2 else _V1_COLUMNS
        try:
            with self._lock:
                self._connect(read_only=False).execute(insert_sql(columns, "%s"), values[:len(columns)])
        except psycopg.Error as exc:
            raise SdmarkError(f"manifest registry {self.location}: cannot store the manifest ({_reason(exc)})") from None

    def lookup(self, payload: str, scheme: str | None = None) -> list[Entry]:
        """Manifests stored under ``payload`` (and ``scheme`` when given), newest first. Read-only."""
        psycopg = _psycopg()
        try:
            with self._lock:
                db = self._connect(read_only=True)
                version = self._read_version(db)
                if version == 0:
                    return []
                if version > SCHEMA_VERSION:
                    raise SdmarkError(f"manifest registry {self.location}: schema version {version} is newer than "
                                      f"this sdmark understands ({SCHEMA_VERSION})")
                columns = _V2_COLUMNS if version >= 2 else _V1_COLUMNS
                rows = db.execute(*lookup_sql(columns, payload, scheme, "%s")).fetchall()
        except psycopg.Error as exc:
            raise SdmarkError(f"manifest registry {self.location}: cannot read ({_reason(exc)})") from None
        return [_entry(columns, row) for row in rows]

    def schema_version(self) -> int:
        with self._lock:
            return self._read_version(self._connect(read_only=True))

    def __len__(self) -> int:
        psycopg = _psycopg()
        try:
            with self._lock:
                db = self._connect(read_only=True)
                if self._read_version(db) == 0:
                    return 0
                return db.execute("SELECT COUNT(*) FROM manifests").fetchone()[0]
        except psycopg.Error as exc:
            raise SdmarkError(f"manifest registry {self.location}: cannot read ({_reason(exc)})") from None


def _entry(columns: tuple[str, ...], row: Any) -> Entry:
    """A row as an :class:`Entry` (psycopg gives BYTEA columns as memoryview)."""
    values: dict[str, Any] = {name: bytes(value) if isinstance(value, memoryview) else value
                              for name, value in zip(columns, row)}
    return Entry(**values)


def _reason(exc: BaseException) -> str:
    """The server's message without the connection string (which may hold a password)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or str(exc).splitlines()[0]
