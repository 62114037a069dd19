"""The shared registry in a real PostgreSQL server (Debian's postgresql package, started here in a
temp folder on a free port): the same schema, migrations, read-only lookups and content checks as
the SQLite file, and 2 Ray workers plus 2 plain processes signing into it at once."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from PIL import Image

psycopg = pytest.importorskip("psycopg")

from sdmark.core.errors import SdmarkError  # noqa: E402
from sdmark.plugins.c2pa.registry import SCHEMA_VERSION, Entry, Registry  # noqa: E402
from sdmark.plugins.c2pa.registry_postgres import PostgresRegistry  # noqa: E402
from sdmark.plugins.c2pa.registry_store import DatabaseURL, open_store, parse_location  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of our own; initdb refuses root, so as root it runs as the package's
    ``postgres`` user. Yields the URL of its ``postgres`` database; stopped and removed afterwards."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql package)")
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="sdmark-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}{done.stderr}"

    run(str(bin_dir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "sdmark", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    run(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-o", options, "-w", "start")
    try:
        yield f"postgresql://sdmark@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database(postgres_server) -> str:
    """A fresh database for one test; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _entry(payload: str, label: str, **extra) -> Entry:
    return Entry(payload=payload, scheme="sdmark", manifest_label=label, manifest=b"\x00jumb" + label.encode(),
                 format="image/png", title=f"{label}.png", file_sha256="ab" * 32, **extra)


def test_location_parsing_and_password_redaction():
    assert parse_location("~/r.sqlite") == Path("~/r.sqlite").expanduser()
    url = parse_location("postgresql://signer:s3cret@db.example:5433/sdmark")
    assert isinstance(url, DatabaseURL) and url.url.endswith("@db.example:5433/sdmark")
    assert str(url) == "postgresql://signer:***@db.example:5433/sdmark" and "s3cret" not in str(PostgresRegistry(url))
    assert isinstance(open_store(Path("x.sqlite")), Registry)


def test_same_rows_and_lookups_as_sqlite(database, tmp_path):
    pg, lite = open_store(DatabaseURL(database)), open_store(tmp_path / "registry.sqlite")
    assert pg.lookup("00ff") == [] and len(pg) == 0 and pg.schema_version() == 0  # read-only: nothing created
    with psycopg.connect(database) as check:
        assert check.execute("SELECT to_regclass('manifests')").fetchone()[0] is None
    rows = [_entry("00ff", "urn:a", pdq="f0" * 32, thumbnail=b"\x89PNG", signer="CN", signer_sha256="cd" * 32),
            _entry("00ff", "urn:b"), _entry("0abc", "urn:c", created="2026-01-01T00:00:00+00:00")]
    for store in (pg, lite):
        for row in rows:
            store.add(row)
    assert pg.schema_version() == lite.schema_version() == SCHEMA_VERSION
    assert len(pg) == len(lite) == 3
    for payload, scheme in (("00ff", None), ("00ff", "sdmark"), ("00ff", "other"), ("0abc", None), ("dead", None)):
        found = pg.lookup(payload, scheme)
        assert [_no_time(e) for e in found] == [_no_time(e) for e in lite.lookup(payload, scheme)]
    assert [e.manifest_label for e in pg.lookup("00ff")] == ["urn:b", "urn:a"]  # newest first
    assert pg.lookup("00ff")[1].thumbnail == b"\x89PNG" and pg.lookup("0abc")[0].created.startswith("2026-01-01")
    pg.close()
    lite.close()


def _no_time(entry: Entry) -> Entry:
    from dataclasses import replace

    return replace(entry, created="")


def test_versioned_migration_and_read_only_lookups(database):
    old = PostgresRegistry(database, migrate_to=1)
    old.add(Entry(payload="0001", scheme="sdmark", manifest_label="urn:v1", manifest=b"m", format="image/png"))
    assert old.schema_version() == 1
    old.close()
    reader = PostgresRegistry(database)
    [v1] = reader.lookup("0001")  # a v1 database is read as it is, not migrated by a reader
    assert v1.manifest_label == "urn:v1" and v1.pdq is None and reader.schema_version() == 1
    writer = PostgresRegistry(database)
    writer.add(_entry("0002", "urn:v2", pdq="aa" * 32))
    assert reader.schema_version() == SCHEMA_VERSION and len(reader) == 2
    assert reader.lookup("0001")[0].manifest_label == "urn:v1" and reader.lookup("0002")[0].pdq == "aa" * 32
    # The lookup session cannot write, whatever the role may do.
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        reader._connect(read_only=True).execute("DELETE FROM manifests")
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute("UPDATE sdmark_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SdmarkError, match="newer than this sdmark understands"):
        PostgresRegistry(database).lookup("0001")
    with pytest.raises(SdmarkError, match="newer than this sdmark understands"):
        PostgresRegistry(database).add(_entry("0003", "urn:v3"))
    for store in (reader, writer):
        store.close()


def test_unreachable_server_is_a_clear_error_without_the_password():
    store = PostgresRegistry(f"postgresql://u:hunter2@127.0.0.1:{_free_port()}/none?connect_timeout=2")
    with pytest.raises(SdmarkError, match="cannot open for reading") as raised:
        store.lookup("00")
    assert "hunter2" not in str(raised.value)


def test_two_ray_workers_and_two_processes_sign_into_one_registry(
        cli_runner, ray_cluster, database, photos, tmp_path, monkeypatch):
    """No row lost or doubled while 4 writers sign at once; every image recovers through its mark."""
    monkeypatch.setenv("SDMARK_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("SDMARK_REGISTRY", database)
    runner, cli = cli_runner
    assert runner.invoke(cli, ["keys", "init", "--name", "Shared Registry", "--org", "sdmark tests"]).exit_code == 0
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera"]
    sources = {}
    for source, count in (("ray", 4), ("proc0", 1), ("proc1", 1)):
        folder = tmp_path / source
        folder.mkdir()
        for index in range(count):
            photo = photos[names[(index + len(sources)) % len(names)]].resize((256, 256))
            photo.rotate(7 * index + 3 * len(sources)).save(folder / f"{source}-{index}.png")
        sources[source] = folder
    command = ["process", "--chain", "watermark", "--no-safety", "--json", "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    plain = [subprocess.Popen([sys.executable, "-m", "sdmark.cli", *command, str(sources[name]), "-o",
                               str(tmp_path / f"out-{name}")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("proc0", "proc1")]
    on_ray = runner.invoke(cli, [*command, str(sources["ray"]), "-o", str(tmp_path / "out-ray"), "--executor", "ray",
                                 "-j", "2"])
    outputs = [(p.communicate(timeout=300), p.returncode) for p in plain]
    assert on_ray.exit_code == 0, on_ray.output
    assert all(code == 0 for _, code in outputs), outputs
    lines = [json.loads(line) for line in on_ray.stdout.splitlines() if line.startswith("{")]
    lines += [json.loads(line) for (out, _), _ in outputs for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 6 and all(line["status"] == "written" for line in lines)

    with psycopg.connect(database) as check:
        rows = check.execute("SELECT payload, manifest_label, title FROM manifests").fetchall()
    written = sorted(Path(line["path"]).name for line in lines)
    assert sorted(title for _, _, title in rows) == written  # one row per signed image: none lost, none doubled
    assert len({label for _, label, _ in rows}) == len({payload for payload, _, _ in rows}) == 6

    stripped = []
    for line in lines:
        target = tmp_path / "uploaded" / Path(line["path"]).name
        target.parent.mkdir(exist_ok=True)
        Image.open(line["path"]).convert("RGB").save(target)  # what a platform keeps: the pixels
        stripped.append(target)
    verified = runner.invoke(cli, ["verify", *map(str, stripped), "--json", "--scheme", "sdmark"])
    reports = [json.loads(line) for line in verified.stdout.splitlines()]
    assert len(reports) == 6
    for report in reports:
        credentials = report["content_credentials"]
        assert credentials["present"] is False and credentials["recovered_from_registry"] is True, credentials
        assert credentials["recovery"]["verdict"] == "matched"
        assert credentials["registry_entry"]["title"] == Path(report["path"]).name
        assert credentials["recovery"]["registry"] == str(DatabaseURL(database))


def test_a_recovery_session_survives_its_database_connection_being_dropped(database):
    """A verify run keeps one registry session (``sdmark serve``: for the life of the worker); a
    connection the server ended (restart, failover, idle timeout) is replaced at once, not
    reported as a broken registry for the next minute."""
    from sdmark.plugins.c2pa.verify import RecoverySession

    writer = PostgresRegistry(database)
    writer.add(_entry("ab", "urn:c2pa:one"))
    writer.close()
    session = RecoverySession(parse_location(database))
    try:
        assert [e.manifest_label for e in session.lookup("ab")] == ["urn:c2pa:one"]
        with psycopg.connect(database, autocommit=True) as admin:
            ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'sdmark' AND pid <> pg_backend_pid()").fetchall()
        assert ended and all(row[0] for row in ended)
        assert [e.manifest_label for e in session.lookup("ab")] == ["urn:c2pa:one"]
    finally:
        session.close()
