"""The manifest registry file: schema versions and migration, read-only lookups, file modes."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from sdmark.core.errors import SdmarkError
from sdmark.plugins.c2pa.registry import SCHEMA_VERSION, Entry, Registry

_V1 = """
CREATE TABLE manifests (
    id INTEGER PRIMARY KEY, payload TEXT NOT NULL, scheme TEXT NOT NULL, manifest_label TEXT NOT NULL,
    manifest BLOB NOT NULL, format TEXT NOT NULL, title TEXT, file_sha256 TEXT, created TEXT NOT NULL);
CREATE INDEX manifests_payload ON manifests (payload);
INSERT INTO manifests (payload, scheme, manifest_label, manifest, format, title, file_sha256, created)
    VALUES ('ab', 'sdmark', 'urn:c2pa:old', x'0102', 'image/png', 'old.png', 'f00', '2026-01-01T00:00:00+00:00');
"""


def _v1_file(path):
    with sqlite3.connect(path) as db:
        db.executescript(_V1)
    return path


def test_a_new_registry_is_private_and_versioned(tmp_path):
    path = tmp_path / "data" / "sdmark" / "registry.sqlite"
    registry = Registry(path)
    registry.add(Entry("ab", "sdmark", "urn:c2pa:1", b"one", "image/png", "a.png", pdq="00" * 32,
                       thumbnail=b"png", signer="Test Signer", signer_sha256="ee" * 32))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert registry.schema_version() == SCHEMA_VERSION == 2
    [entry] = registry.lookup("ab")
    assert (entry.pdq, entry.thumbnail, entry.signer, entry.signer_sha256) == ("00" * 32, b"png", "Test Signer", "ee" * 32)
    registry.close()


def test_lookups_newest_first_and_by_scheme(tmp_path):
    registry = Registry(tmp_path / "sub" / "registry.sqlite")
    assert registry.lookup("ab") == [] and len(registry) == 0
    registry.add(Entry("ab", "dwtDct", "urn:c2pa:1", b"one", "image/png", "a.png"))
    registry.add(Entry("ab", "dwtDctSvd", "urn:c2pa:2", b"two", "image/jpeg", "b.jpg"))
    registry.add(Entry("cd", "dwtDct", "urn:c2pa:3", b"three", "image/png"))
    assert [e.manifest for e in registry.lookup("ab")] == [b"two", b"one"]
    assert [e.manifest_label for e in registry.lookup("ab", "dwtDct")] == ["urn:c2pa:1"]
    assert registry.lookup("ef") == [] and len(registry) == 3
    assert registry.lookup("ab")[0].created  # stamped on insert


def test_lookups_create_nothing_and_never_migrate(tmp_path):
    missing = tmp_path / "nowhere" / "registry.sqlite"
    assert Registry(missing).lookup("ab") == [] and not missing.parent.exists()

    old = _v1_file(tmp_path / "old.sqlite")
    before = old.read_bytes()
    registry = Registry(old)
    [entry] = registry.lookup("ab")
    assert (entry.title, entry.manifest, entry.pdq, entry.signer) == ("old.png", b"\x01\x02", None, None)
    assert registry.schema_version() == 1 and len(registry) == 1
    registry.close()
    assert old.read_bytes() == before  # read-only: not migrated, not touched


def test_a_writer_migrates_v1_in_place_keeping_its_rows(tmp_path):
    old = _v1_file(tmp_path / "old.sqlite")
    registry = Registry(old)
    registry.add(Entry("ab", "sdmark", "urn:c2pa:new", b"new", "image/png", "new.png", pdq="11" * 32))
    assert registry.schema_version() == 2
    assert [(e.manifest_label, e.pdq) for e in registry.lookup("ab")] == [("urn:c2pa:new", "11" * 32), ("urn:c2pa:old", None)]
    registry.close()
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_a_registry_from_a_newer_sdmark_is_refused_with_its_name(tmp_path):
    path = _v1_file(tmp_path / "future.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(SdmarkError, match=r"future\.sqlite.*newer"):
        Registry(path).lookup("ab")
    with pytest.raises(SdmarkError, match=r"future\.sqlite.*newer"):
        Registry(path).add(Entry("ab", "sdmark", "urn:c2pa:x", b"x", "image/png"))


def test_an_unreadable_registry_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SdmarkError, match=r"garbage\.sqlite: cannot (open for )?read"):
        Registry(path).lookup("ab")


def test_a_locked_registry_is_reported_never_read_without_locking(tmp_path):
    """F2 of the attack review: a writer's exclusive lock stalled each lookup 30 s, then the
    reader fell back to ``immutable=1`` and read the half-written transaction as if committed."""
    path = tmp_path / "registry.sqlite"
    registry = Registry(path)
    registry.add(Entry("ab", "sdmark", "urn:c2pa:1", b"one", "image/png", "a.png"))
    registry.close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=DELETE")
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("UPDATE manifests SET title = 'half-written'")
    try:
        reader = Registry(path)
        with pytest.raises(SdmarkError, match="locked by a writer"):
            reader.lookup("ab")
        reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert [e.title for e in Registry(path).lookup("ab")] == ["a.png"]
