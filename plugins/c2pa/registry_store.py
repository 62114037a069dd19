"""The registry's storage interface: what sign and verify may ask of any backend, and where the
registry is (``SDMARK_REGISTRY``: a SQLite file, the embedded default, or ``postgresql://...``
for a registry that many machines share).

Every backend keeps the same schema (:data:`sdmark.plugins.c2pa.registry.SCHEMA_VERSION`), the
same versioned migrations (run by writers only), and read-only lookups that never create or
migrate anything. Nothing here imports a database driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from sdmark.plugins.c2pa.registry import Entry

DATABASE_SCHEMES = ("postgresql", "postgres")


def insert_sql(columns: tuple[str, ...] | list[str], mark: str) -> str:
    """The one INSERT of a registry row, with the driver's placeholder ``mark`` (``?``, ``%s``)."""
    return f"INSERT INTO manifests ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"


def lookup_sql(columns: tuple[str, ...] | list[str], payload: str, scheme: str | None,
               mark: str) -> tuple[str, list[str]]:
    """The one lookup query (rows under ``payload``, and ``scheme`` when given, newest first) and its arguments."""
    query = f"SELECT {', '.join(columns)} FROM manifests WHERE payload = {mark}"
    args = [payload]
    if scheme is not None:
        query += f" AND scheme = {mark}"
        args.append(scheme)
    return query + " ORDER BY id DESC", args


class RegistryStore(Protocol):
    """A manifest registry backend."""

    def add(self, entry: "Entry") -> None:
        """Store one signed manifest (creating or migrating the schema first if needed)."""

    def lookup(self, payload: str, scheme: str | None = None) -> list["Entry"]:
        """Rows stored under ``payload`` (and ``scheme``), newest first; read-only."""

    def schema_version(self) -> int:
        """The stored schema version (0 when nothing was ever stored)."""

    def __len__(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DatabaseURL:
    """A database registry's connection URL; ``str()`` hides the password (reports print it)."""

    url: str

    def __str__(self) -> str:
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


def is_database_url(text: str) -> bool:
    return text.split("://", 1)[0].lower() in DATABASE_SCHEMES and "://" in text


def parse_location(text: str) -> Path | DatabaseURL:
    """``postgresql://...`` as a :class:`DatabaseURL`, anything else as a SQLite file path."""
    return DatabaseURL(text.strip()) if is_database_url(text.strip()) else Path(text).expanduser()


def open_store(location: Path | DatabaseURL) -> RegistryStore:
    """The backend for ``location``; connections open on first use."""
    if isinstance(location, DatabaseURL):
        from sdmark.plugins.c2pa.registry_postgres import PostgresRegistry

        return PostgresRegistry(location)
    from sdmark.plugins.c2pa.registry import Registry

    return Registry(location)
