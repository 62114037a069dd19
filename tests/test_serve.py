"""``sdmark serve``: the API through Starlette's test client, a real server in a subprocess, and the
page in a real browser (Playwright driving Debian's Chromium)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import pytest
from PIL import Image

from playwright import sync_api as playwright  # the test extra; scripts/setup.sh installs it and chromium
from starlette.testclient import TestClient  # the serve extra

from sdmark.serve.app import create_app
from sdmark.serve.settings import ServeSettings
from sdmark.serve.work import without_server_paths

TOKEN = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos, isolate_c2pa):
    """A marked and signed image, a stripped copy of it (credentials only through the registry), an
    unmarked photo; keys, registry and trust anchor in a private folder for this module."""
    from click.testing import CliRunner

    from sdmark.cli.main import get_cli
    from sdmark.plugins.c2pa import set_signing_config, set_trust_anchors

    folder = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as patch:
        isolate_c2pa(patch, folder)
        runner, cli = CliRunner(), get_cli()
        result = runner.invoke(cli, ["keys", "init", "--name", "Serve Test Signer", "--org", "sdmark tests"])
        assert result.exit_code == 0, result.output
        photos["astronaut"].save(folder / "astronaut.png")
        result = runner.invoke(cli, ["process", str(folder / "astronaut.png"), "--chain", "watermark", "--no-safety",
                                     "-o", str(folder / "out"), "--json"])
        assert result.exit_code == 0, result.output
        line = json.loads(result.stdout.splitlines()[0])
        marked = Path(line["path"])
        stripped = folder / "platform-copy.jpg"
        Image.open(marked).convert("RGB").save(stripped, quality=90)
        unmarked = folder / "coffee.png"
        photos["coffee"].save(unmarked)
        patch.setenv("SDMARK_TRUST_ANCHORS", str(folder / "keys" / "ca.pem"))
        yield {"folder": folder, "marked": marked, "stripped": stripped, "unmarked": unmarked,
               "payload": line["record"]["stages"][0]["result"]["payload"], "cli": (runner, cli)}
        set_signing_config(None)
        set_trust_anchors(None)


@pytest.fixture(scope="module")
def client(images):
    # Marking without the safety stage is the operator's explicit choice here (NudeNet is tested elsewhere).
    with TestClient(create_app(ServeSettings(token=TOKEN, max_upload_bytes=2 * 1024 * 1024, mark_no_safety=True))) as test_client:
        yield test_client


def upload(client, path: Path, name: str | None = None, url: str = "/v1/verify", **kwargs):
    return client.post(url, files={"file": (name or path.name, path.read_bytes(), "application/octet-stream")}, **kwargs)


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width x height`` pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def server_temp_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("sdmark-serve-")}


# -- the API ----------------------------------------------------------------------------------


def test_verify_returns_exactly_what_verify_json_prints(client, images):
    runner, cli = images["cli"]
    for key in ("marked", "stripped", "unmarked"):
        result = runner.invoke(cli, ["verify", "--json", str(images[key])])
        expected = json.loads(result.stdout.splitlines()[0])
        response = upload(client, images[key])
        assert response.status_code == 200, response.text
        expected["path"] = images[key].name  # over HTTP the path is the uploaded file's name
        assert response.json() == without_server_paths(expected)
        # No server path in a response: the registry and anchors by file name only (attack review F5).
        assert str(images["folder"]) not in response.text
    marked = upload(client, images["marked"]).json()
    assert marked["watermarked"] is True and marked["detections"][0]["payload"] == images["payload"]
    assert marked["content_credentials"]["status"] == "valid"
    assert upload(client, images["stripped"]).json()["content_credentials"]["recovered_from_registry"] is True
    assert upload(client, images["unmarked"]).json()["watermarked"] is False


def test_a_broken_registry_is_reported_without_the_servers_paths_or_database_address(images, tmp_path, monkeypatch):
    """F5 of the attack review: registry errors quoted the server's own paths, and a database
    registry was named by its URL (user, host, port) in ``recovery.registry`` and the errors."""
    secret_folder = tmp_path / "srv-private-sdmark-state"
    secret_folder.mkdir()
    garbage = secret_folder / "registry.sqlite"
    garbage.write_bytes(b"not a database" * 100)
    for location, hidden in ((str(garbage), [str(secret_folder)]),
                             ("postgresql://sdmark_reader:hunter2@127.0.0.1:9/provenance", ["sdmark_reader", "hunter2",
                                                                                            "127.0.0.1", "postgresql://"])):
        monkeypatch.setenv("SDMARK_REGISTRY", location)
        with TestClient(create_app(ServeSettings())) as served:
            response = upload(served, images["stripped"])
        credentials = response.json()["content_credentials"]
        assert credentials["registry_error"] and credentials["recovered_from_registry"] is False, credentials
        for text in hidden:
            assert text not in response.text, (text, credentials)
    # Marking with a signing identity that has gone missing: the error says so, not where it was.
    monkeypatch.setenv("SDMARK_SIGN_CERT", str(secret_folder / "signer-chain.pem"))
    monkeypatch.setenv("SDMARK_SIGN_KEY", str(secret_folder / "signer.key"))
    with TestClient(create_app(ServeSettings(token=TOKEN, mark_no_safety=True))) as served:
        response = upload(served, images["unmarked"], url="/v1/mark", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 422 and "signer-chain.pem" in response.json()["error"], response.text
    assert str(secret_folder) not in response.text


def test_client_file_names_are_only_shown_never_used_as_paths(client, images):
    before = server_temp_dirs()
    report = upload(client, images["unmarked"], name="../../../../tmp/evil.png").json()
    assert report["path"] == "evil.png" and not Path("/tmp/evil.png").exists()
    assert upload(client, images["unmarked"], name="..\\..\\windows\\evil.png").json()["path"] == "evil.png"
    assert "sdmark-serve-" not in json.dumps(report)  # the private temp path never reaches the answer
    assert server_temp_dirs() <= before  # the upload's private folder is gone when the request ends


def test_uploads_are_kept_and_logged_only_when_the_operator_opts_in(images, tmp_path, caplog):
    import hashlib
    import logging

    data = images["unmarked"].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with caplog.at_level(logging.INFO, logger="sdmark.serve"):
        with TestClient(create_app(ServeSettings())) as plain:
            assert upload(plain, images["unmarked"]).status_code == 200
        assert digest not in caplog.text
        with TestClient(create_app(ServeSettings(store_dir=tmp_path / "kept", log_images=True))) as keeping:
            assert upload(keeping, images["unmarked"], name="holiday.png").status_code == 200
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [f"{digest}.png"]
    assert (tmp_path / "kept" / f"{digest}.png").read_bytes() == data
    # Other people's images: readable by the server's user only (F8 of the attack review).
    assert (tmp_path / "kept").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "kept" / f"{digest}.png").stat().st_mode & 0o777 == 0o600
    assert digest in caplog.text and "'holiday.png'" in caplog.text


def test_schemes_health_and_openapi(client):
    schemes = client.get("/v1/schemes").json()["schemes"]
    assert {"sdmark", "sdxl"} <= {s["name"] for s in schemes}
    assert all(s["checked"] != s["costly"] for s in schemes)
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["mark"] is True and "sdmark" in health["schemes"]
    document = client.get("/openapi.json").json()
    routes = {route.path for route in client.app.routes if route.path != "/static"}
    assert set(document["paths"]) == routes - {"/openapi.json", "/docs"}
    assert set(document["components"]["schemas"]["VerifyReport"]["required"]) == {"path", "watermarked", "detections", "error"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/v1/verify" in docs.text and "VerifyReport" in docs.text


def _external_references(html: str) -> list[str]:
    return [url for url in re.findall(r'(?:src|href|action)="([^"]*)"', html)
            if not (url.startswith("/") and not url.startswith("//")) and not url.startswith(("#", "data:image/"))]


def test_page_and_docs_load_nothing_from_elsewhere(client, images):
    for path in ("/", "/docs"):
        response = client.get(path)
        assert _external_references(response.text) == []
        assert "default-src 'none'" in response.headers["content-security-policy"]
    report = client.post("/", files=[("file", ("m.png", images["marked"].read_bytes()))])
    assert _external_references(report.text) == []


def test_plain_form_post_gives_the_report_as_html(client, images):
    response = client.post("/", files=[("file", ("marked.png", images["marked"].read_bytes())),
                                       ("file", ("copy.jpg", images["stripped"].read_bytes())),
                                       ("file", ("coffee.png", images["unmarked"].read_bytes()))])
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert html.count('<article class="report') == 3
    assert "Watermark found" in html and images["payload"] in html and "No watermark found" in html
    assert "Serve Test Signer" in html and "Recovered from the registry" in html
    assert "<td>watermark</td>" in html  # the sdmark record's stages
    # The stripped copy matched: its registered thumbnail (from the signed manifest) sits beside the upload.
    assert 'alt="Thumbnail of the registered image, from its signed manifest"' in html
    assert "The report has no registered thumbnail" not in html


def test_mark_needs_the_token_and_returns_a_marked_image(client, images):
    assert upload(client, images["unmarked"], url="/v1/mark").status_code == 401
    wrong = upload(client, images["unmarked"], url="/v1/mark", headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert upload(client, images["unmarked"], url="/v1/mark", headers={"Authorization": TOKEN}).status_code == 401
    marked = upload(client, images["unmarked"], url="/v1/mark?format=webp", headers={"Authorization": f"Bearer {TOKEN}"})
    assert marked.status_code == 200, marked.text
    assert marked.headers["content-type"] == "image/webp" and marked.headers["x-sdmark-stages"] == "watermark"
    check = client.post("/v1/verify", files={"file": ("marked.webp", marked.content)}).json()
    assert check["watermarked"] is True and check["content_credentials"]["status"] == "valid"


def _open_on(path: Path) -> set[str]:
    """This process's open descriptors on ``path`` (or its -wal/-shm companions)."""
    target = str(path.resolve())
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(target):
                found.add(fd)
    return found


def test_mark_loads_the_safety_model_once_per_process_and_closes_what_it_kept_at_shutdown(images, monkeypatch, tmp_path):
    """The mark chain's safety stage loaded NudeNet's ONNX session for every request (0.4 s each);
    it is now the engine's, shared by concurrent requests, and the registry writer the requests
    shared is closed when the server shuts down (not left to the garbage collector)."""
    import gc

    from sdmark.plugins.safety.nudenet_backend import NudeNetBackend

    loads = []
    real_init = NudeNetBackend.__init__
    monkeypatch.setattr(NudeNetBackend, "__init__", lambda self, *a, **k: loads.append(1) or real_init(self, *a, **k))
    # A registry of its own: SQLite defers closing a file that another connection of the process
    # holds locks on (the module's other servers use the shared one).
    registry = tmp_path / "registry.sqlite"
    monkeypatch.setenv("SDMARK_REGISTRY", str(registry))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    gc.disable()  # nothing is closed by the collector behind the test's back
    try:
        with TestClient(create_app(ServeSettings(token=TOKEN, threads=2))) as served:
            answers: list = []
            threads = [threading.Thread(target=lambda: answers.append(upload(served, images["unmarked"], url="/v1/mark",
                                                                              headers=auth))) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            answers.append(upload(served, images["unmarked"], url="/v1/mark", headers=auth))
            assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
            assert {a.headers["x-sdmark-stages"] for a in answers} == {"safety,watermark"}
            assert len(loads) == 1
            assert _open_on(registry)  # the writer the requests share stays open between them
        assert _open_on(registry) == set()
    finally:
        gc.enable()


def test_the_mark_chain_gets_safety_first_unless_turned_off_explicitly():
    from sdmark.core.errors import SdmarkError
    from sdmark.serve.work import _mark_chain

    assert _mark_chain(ServeSettings(token=TOKEN)) == "safety watermark"
    assert _mark_chain(ServeSettings(token=TOKEN, mark_no_safety=True)) == "watermark"
    with pytest.raises(SdmarkError, match="mark-no-safety"):
        _mark_chain(ServeSettings(token=TOKEN, mark_chain="safety watermark", mark_no_safety=True))


def test_mark_is_off_without_a_token(images):
    with TestClient(create_app(ServeSettings())) as plain:
        response = upload(plain, images["unmarked"], url="/v1/mark", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 404 and "off" in response.json()["error"]


# -- hostile and broken uploads ----------------------------------------------------------------


def test_decompression_bomb_is_422_json(client):
    response = client.post("/v1/verify", files={"file": ("bomb.png", png_bomb(40_000, 40_000))})
    assert response.status_code == 422
    assert "decompression bomb" in response.json()["error"] and response.json()["status"] == 422


def test_text_named_png_is_refused_by_content(client):
    response = client.post("/v1/verify", files={"file": ("photo.png", b"just some text, not an image\n", "image/png")})
    assert response.status_code == 415 and "not an image" in response.json()["error"]
    assert client.post("/v1/verify", content=b"{}", headers={"content-type": "application/json"}).status_code == 415


def test_truncated_image_is_422_with_the_report(client, images):
    data = images["unmarked"].read_bytes()
    response = client.post("/v1/verify", files={"file": ("cut.png", data[: len(data) // 3])})
    assert response.status_code == 422
    assert response.json()["watermarked"] is None and "cut.png" in response.json()["error"]


def test_malformed_multipart_and_missing_field(client, images):
    bad = client.post("/v1/verify", content=b"--zz\r\nbroken header line\r\n\r\nx\r\n--zz--\r\n",
                      headers={"content-type": "multipart/form-data; boundary=zz"})
    assert bad.status_code == 400 and "malformed multipart" in bad.json()["error"]
    no_boundary = client.post("/v1/verify", content=b"abc", headers={"content-type": "multipart/form-data"})
    assert no_boundary.status_code == 400
    missing = client.post("/v1/verify", files={"picture": ("a.png", images["unmarked"].read_bytes())})
    assert missing.status_code == 422 and "'file'" in missing.json()["error"]


def test_oversized_body_is_413(client):
    big = b"\0" * (3 * 1024 * 1024)
    response = client.post("/v1/verify", files={"file": ("big.png", big)})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    # Without Content-Length (chunked), the limit holds while the body streams in.
    chunks = iter([b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"]
                  + [b"\0" * 65536] * 64)
    streamed = client.post("/v1/verify", content=chunks, headers={"content-type": "multipart/form-data; boundary=zz"})
    assert streamed.status_code == 413
    page = client.post("/", files=[("file", ("big.png", big))])
    assert page.status_code == 413 and "limit" in page.text and page.headers["content-type"].startswith("text/html")


def test_saturated_server_answers_503_with_retry_after(images):
    with TestClient(create_app(ServeSettings(threads=1, queue=0, retry_after_s=3))) as busy:
        gate = busy.app.state.engine.gate
        assert gate.try_enter()  # the one place is taken, as by a verification in progress
        try:
            response = upload(busy, images["unmarked"])
        finally:
            gate.leave()
        assert response.status_code == 503 and response.headers["retry-after"] == "3"
        assert upload(busy, images["unmarked"]).status_code == 200


def test_shutdown_closes_what_requests_share_only_after_the_work_still_running_ends():
    """A request that timed out (504) leaves its job running in the pool; shutting the server down
    must not close the runtime's resources (registry writer, SDK contexts, safety model) under it."""
    import asyncio

    from sdmark.serve.work import Engine, WorkTimeout

    class Kept:
        closed = False

        def close(self) -> None:
            self.closed = True

    engine = Engine(ServeSettings(timeout_s=0.05))
    started, release, seen = threading.Event(), threading.Event(), []

    def job() -> None:
        kept = engine.runtime.resource("test.kept", Kept)
        started.set()
        release.wait(10)
        seen.append(kept.closed)  # what the job would use now: a closed connection, a freed context

    ticket = engine.admit()
    assert ticket is not None
    with pytest.raises(WorkTimeout):
        asyncio.run(engine.run(ticket, job))
    assert started.wait(10)
    threading.Timer(0.3, release.set).start()
    engine.close()
    engine.pool.shutdown(wait=True)
    assert seen == [False]


def test_per_request_timeout_is_504(images):
    with TestClient(create_app(ServeSettings(timeout_s=0.001))) as slow:
        response = upload(slow, images["marked"])
        assert response.status_code == 504 and "longer than" in response.json()["error"]


def test_a_trickled_upload_is_408_within_the_timeout(images):
    """Driven through the ASGI interface: the body's first bytes arrive, the rest never does."""
    import asyncio

    async def trickle(app) -> list[dict]:
        head = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n\r\n\x89PNG'
        chunks = [{"type": "http.request", "body": head, "more_body": True}]
        sent: list[dict] = []

        async def receive() -> dict:
            if chunks:
                return chunks.pop()
            await asyncio.sleep(30)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/verify", "raw_path": b"/v1/verify", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"multipart/form-data; boundary=zz"), (b"host", b"test")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
        return sent

    with TestClient(create_app(ServeSettings(timeout_s=0.5))) as slow:
        started = time.monotonic()
        sent = asyncio.run(trickle(slow.app))
        assert sent[0]["status"] == 408 and time.monotonic() - started < 5
        assert slow.app.state.engine.gate.held == 0  # its admission place was given back


def test_metrics_count_requests_verdicts_and_rejections(client, images):
    upload(client, images["unmarked"])
    client.post("/v1/verify", files={"file": ("bomb.png", png_bomb(40_000, 40_000))})
    text = client.get("/metrics").text
    assert re.search(r'sdmark_serve_requests_total\{method="POST",route="/v1/verify",status="200"\} [1-9]', text)
    assert re.search(r'sdmark_serve_verdicts_total\{verdict="unmarked"\} [1-9]', text)
    assert re.search(r'sdmark_serve_rejections_total\{reason="bomb"\} [1-9]', text)
    assert 'sdmark_serve_request_seconds_bucket{le="0.5",route="/v1/verify"}' in text


def test_the_page_says_a_record_from_credentials_that_are_not_valid_and_trusted_is_unverified():
    """Anyone can sign an image with their own certificate: the record of an untrusted or tampered
    manifest is shown as that manifest's claim, not as the image's provenance."""
    from sdmark.serve import page

    record = {"kind": "generated", "generation": {"prompt": "a quiet harbour", "model": "some/model"}, "stages": []}

    def shown(status: str, trusted: bool) -> str:
        report = {"path": "x.png", "watermarked": False, "detections": [],
                  "content_credentials": {"present": True, "status": status, "trusted": trusted, "record": record}}
        return page.render_reports([page.view(report)])

    for status in ("untrusted", "tampered", "invalid"):
        html = shown(status, False)
        assert "a quiet harbour" in html and "not verified" in html
    assert "not verified" not in shown("valid", True)


def test_page_renders_unknown_and_missing_fields_without_breaking():
    from sdmark.serve import page

    tiny = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgAB4iG8MwAAAABJRU5ErkJggg=="
    reports = [
        {"path": "new.png", "watermarked": True, "detections": [{"scheme": "future", "band": "likely", "payload": "ab",
                                                                "key": "private", "novel": {"depth": [1, 2]}}],
         "content_credentials": {"recovered_from_registry": True, "status": "valid", "content_match": "different-content",
                                 "registered_thumbnail": tiny, "signer": "a string, not an object"}},
        {"path": "evil.png", "watermarked": False, "detections": None,
         "content_credentials": {"recovered_from_registry": True, "thumbnail": "javascript:alert(1)",
                                 "actions": ["odd", {"action": "<script>x</script>"}]}},
        {"path": "copied.png", "watermarked": True, "detections": [{"scheme": "sdmark", "band": "very likely", "payload": "cd"}],
         "content_credentials": {"present": False, "status": "absent", "recovery": {
             "verdict": "different-content", "payload": "cd", "key": "public", "reason": "registered for another image",
             "candidates": [{"verdict": "different-content", "content": {"distance": 0.48}}],
             "matched": {"signer": {"common_name": "Registered Signer"}, "signature": "valid", "trusted": True,
                         "thumbnail": {"width": 2, "height": 1, "grey_zlib_b64": base64.b64encode(zlib.compress(b"\0\xff")).decode()}}}}},
        {"path": "broken.png", "watermarked": None, "error": "cannot decode"},
        {},
    ]
    html = page.render_reports([page.view(r) for r in reports])
    assert "different-content" in html and "novel" in html and "private" in html and f'src="{tiny}"' in html
    assert 'src="javascript:' not in html and "<script>x" not in html and "&lt;script&gt;x" in html
    assert "DIFFERENT CONTENT" in html and "Registered Signer" in html and "0.48" in html
    assert html.count('<img src="data:image/png;base64,') == 2  # the data URI and the signed grey thumbnail
    assert "Could not check this image" in html and html.count("<article") == 5


# -- a real server, and the page in a real browser ----------------------------------------------


@contextlib.contextmanager
def running_server(*options: str):
    """``sdmark serve --port 0 OPTIONS`` in a subprocess on 127.0.0.1, up and warm; yields its base URL."""
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT.parent)), SDMARK_SERVE_TOKEN="")
    process = subprocess.Popen([sys.executable, "-m", "sdmark.cli", "serve", "--port", "0", *options],
                               env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = None
    try:
        deadline = time.monotonic() + 60
        lines = []
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url, "".join(lines)
        while time.monotonic() < deadline:  # the engine warms up before the server accepts
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


@pytest.fixture(scope="module")
def server(images):
    """``sdmark serve --port 0 --workers 2`` in a subprocess on 127.0.0.1; yields its base URL."""
    with running_server("--workers", "2", "--max-upload-mb", "2") as url:
        yield url


def _health(url: str) -> dict:
    with urllib.request.urlopen(url + "/healthz", timeout=30) as answer:
        return json.loads(answer.read())


def _post_file(url: str, data: bytes, name: str) -> tuple[int, dict]:
    boundary = "sdmarktestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_real_server_verifies_and_refuses_a_stream_past_the_limit(server, images):
    status, report = _post_file(server + "/v1/verify", images["marked"].read_bytes(), "marked.png")
    assert status == 200 and report["detections"][0]["payload"] == images["payload"]
    assert _post_file(server + "/v1/verify", png_bomb(40_000, 40_000), "bomb.png")[0] == 422
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        received = bytearray()

        def read_answer() -> None:  # concurrently, so the answer is read before the server's reset can drop it
            try:
                while b"\r\n\r\n" not in received and (chunk := conn.recv(65536)):
                    received.extend(chunk)
            except OSError:
                pass

        reader = threading.Thread(target=read_answer)
        reader.start()
        conn.sendall(b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=zz\r\n\r\n")
        head = b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
        conn.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
        sent, chunk = 0, b"\0" * 65536
        try:
            while sent < 64 * 1024 * 1024:  # 64 MB offered against the 2 MB limit
                conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except OSError:  # the server answered and closed before taking it all
            pass
        reader.join(timeout=30)
        answer = bytes(received).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert sent < 64 * 1024 * 1024
    for _ in range(4):  # spread over both workers; /metrics adds them up
        assert _post_file(server + "/v1/verify", images["unmarked"].read_bytes(), "plain.png")[0] == 200
    with urllib.request.urlopen(server + "/metrics", timeout=30) as answer:
        text = answer.read().decode()
    unmarked = re.search(r'sdmark_serve_verdicts_total\{verdict="unmarked"\} ([0-9.]+)', text)
    assert unmarked and float(unmarked.group(1)) >= 4, text[:2000]
    assert re.search(r'sdmark_serve_rejections_total\{reason="too_large"\} [1-9]', text)


def test_stalled_uploads_hold_no_cpu_place_and_are_dropped_after_the_grace(images):
    """Review finding F7: 33 connections that start an upload and stop used to fill the 1 + 32
    admission places until the 60 s timeout, denying everyone. Bodies now arrive before a CPU
    place is taken; an idle one is answered 408 after the grace, a trickling one once it falls
    below the minimum rate."""
    grace = 6.0
    with running_server("--threads", "1", "--queue", "32", "--upload-grace", str(grace), "--min-upload-rate", "16") as url:
        host, port = url.removeprefix("http://").split(":")
        head = (b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
                b"Content-Length: 100000\r\n\r\n--zz\r\nContent-Disposition: form-data; name=\"file\"; "
                b"filename=\"slow.png\"\r\n\r\n\x89PNG")
        stalled = []
        try:
            opened = time.monotonic()
            for _ in range(40):
                conn = socket.create_connection((host, int(port)), timeout=30)
                conn.sendall(head)
                stalled.append(conn)
            deadline = time.monotonic() + 15
            while _health(url).get("receiving") != 40 and time.monotonic() < deadline:
                time.sleep(0.1)
            health = _health(url)
            assert health.get("receiving") == 40 and health["busy"] == 0, health
            status, report = _post_file(url + "/v1/verify", images["marked"].read_bytes(), "marked.png")
            assert status == 200 and report["detections"][0]["payload"] == images["payload"]
            assert time.monotonic() - opened < grace, "inconclusive: the stalled uploads had already been dropped"
            trickler = stalled[0]
            answers = []
            for conn in stalled[1:]:
                received = b""
                while b"\r\n\r\n" not in received and (chunk := conn.recv(65536)):
                    received += chunk
                answers.append(received.decode("latin-1"))
            assert all(answer.startswith("HTTP/1.1 408") for answer in answers), answers[:3]
            waited = time.monotonic() - opened
            assert waited < grace + 10, waited  # the grace, not the 60 s timeout
            trickler.settimeout(0.4)  # the first one sends a byte now and then: below 16 KiB/s
            received = b""
            for _ in range(100):
                try:
                    trickler.sendall(b"\0")
                    received += trickler.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if b"\r\n\r\n" in received:
                    break
            assert received.startswith(b"HTTP/1.1 408") and b"KiB/s" in received, received[:300]
            assert _health(url)["receiving"] == 0
        finally:
            for conn in stalled:
                conn.close()


def report_for(page, name: str):
    return page.locator("article.report").filter(has=page.locator("h2", has_text=name))


def test_browser_shows_payload_signer_and_no_watermark(server, images, tmp_path):
    assert Path(CHROMIUM).exists(), "scripts/setup.sh installs Debian's chromium"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(server + "/")
            page.keyboard.press("Tab")
            page.keyboard.press("Tab")
            page.keyboard.press("Tab")
            page.keyboard.press("Tab")
            focused = page.evaluate("document.activeElement && document.activeElement.id")
            assert focused == "file", "the file input is reachable by keyboard"
            assert page.get_by_label(re.compile("Images to check")).count() == 1
            page.set_input_files("#file", [str(images["marked"]), str(images["stripped"]), str(images["unmarked"])])
            # (the page's CSP forbids eval, so wait with locators rather than wait_for_function)
            playwright.expect(page.locator("article.report:not(.checking)")).to_have_count(3, timeout=30000)
            marked = report_for(page, images["marked"].name)
            assert "Watermark found" in marked.locator(".verdict").inner_text()
            assert images["payload"] in marked.inner_text() and "Serve Test Signer" in marked.locator(".signer").inner_text()
            copy = report_for(page, images["stripped"].name)
            assert "Recovered from the registry" in copy.inner_text()
            registered = copy.get_by_alt_text("Thumbnail of the registered image, from its signed manifest")
            assert registered.count() == 1 and registered.evaluate("img => img.naturalWidth") > 0
            plain = report_for(page, images["unmarked"].name)
            assert "No watermark found" in plain.locator(".verdict").inner_text()
            shot = Path(os.environ.get("SDMARK_SERVE_SCREENSHOT") or tmp_path / "serve.png")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert all(url.startswith((server, "data:")) for url in requested), requested

            # Without JavaScript the form posts and the server answers with the whole page.
            context = browser.new_context(java_script_enabled=False)
            nojs = context.new_page()
            nojs.goto(server + "/")
            nojs.set_input_files("#file", [str(images["unmarked"])])
            nojs.click("button[type=submit]")
            nojs.wait_for_selector("article.report")
            assert "No watermark found" in nojs.locator("article.report .verdict").inner_text()
            context.close()
        finally:
            browser.close()


def test_time_limits_must_be_finite_numbers():
    """NaN passes a ``<= 0`` check: a timeout or upload grace of NaN must be refused, not run without limits."""
    from sdmark.core.errors import SdmarkError

    for name in ("TIMEOUT_S", "UPLOAD_GRACE_S"):
        for raw in ("nan", "inf"):
            with pytest.raises(SdmarkError, match="limits must be"):
                ServeSettings.from_env({f"SDMARK_SERVE_{name}": raw})
