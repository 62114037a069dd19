"""Reading and judging Content Credentials for ``sdmark verify``.

Two verdicts, kept apart (docs/content-credentials.md has every JSON field):

**Embedded** (``status``, also ``embedded``): the file's own manifest, hard-bound to its bytes.

``valid``      the manifest is intact and its signer chains to one of the trust anchors given
``untrusted``  the manifest is intact, but its signer is not under any anchor given (``--trust``)
``tampered``   the file (pixels or metadata the manifest covers) changed after signing
``invalid``    anything else the SDK rejects (expired or malformed certificate, bad signature)
``absent``     no manifest in the file

**Recovery** (``recovery.verdict``), for a file without valid, trusted embedded credentials whose
watermark payload is read (an untrusted, tampered or invalid manifest does not stop it): payload -> registry rows -> each row checked against the signed manifest it stores (the
payload must be that manifest's signed soft binding; the content fingerprint comes from the signed
manifest, never from a registry column) -> the image under test compared with that fingerprint.

``matched``            the registered image's content, with the distance and what likely changed
``different-content``  the payload is registered for another image: the mark was copied or forged
``inconsistent``       every row is contradicted by its own signed manifest (a poisoned registry)
``ambiguous``          several registered images carry the payload and content does not pick one
``unverifiable``       the signed manifest has no content fingerprint (signed by an older sdmark)
``not-registered``     the payload is in no row

A recovered manifest describes the image that was registered, never the one under test: it is
never reported ``valid`` for it, and whether its signer is trusted is shown beside the recovery
verdict, never alone.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sdmark.plugins.c2pa import settings
from sdmark.plugins.c2pa.fingerprint import ALG as FINGERPRINT_ALG
from sdmark.plugins.c2pa.fingerprint import Fingerprint, compare
from sdmark.plugins.c2pa.jumbf import signer_sha256, store_from_file
from sdmark.plugins.c2pa.manifest import RECORD_LABEL, SOFT_BINDING_LABEL, payload_key
from sdmark.plugins.c2pa.registry import Entry, open_registry
from sdmark.plugins.c2pa.sign import MIME_BY_SUFFIX, sniff_mime

if TYPE_CHECKING:
    from sdmark.plugins.c2pa.registry_store import DatabaseURL, RegistryStore

UNTRUSTED = "signingCredential.untrusted"
# Codes that say the asset's bytes are not the ones signed (as opposed to a problem with the signer).
HARD_BINDING_MISMATCH = {"assertion.dataHash.mismatch", "assertion.boxesHash.mismatch", "assertion.bmffHash.mismatch",
                         "assertion.collectionHash.mismatch"}
# A detection counts when its band says so (the watermark plugin's bands), or by p-value alone.
POSITIVE_BANDS = {"very likely", "likely"}
POSITIVE_P_VALUE = 1e-6
MAX_CANDIDATES = 16
"""Registry rows compared with the image for one payload; beyond that the payload cannot identify one image anyway."""
MAX_ROWS = 256
"""Registry rows whose signed manifest is checked for one payload (a bound on the time junk rows can cost)."""
AMBIGUOUS_MARGIN = 0.05
"""Two rows that both match are told apart only when one is closer by this much PDQ distance."""
REGISTRY_RETRY_S = 60.0
"""After the registry failed (locked past its busy timeout, unreadable), a session reports that error
for this long without asking again: a locked registry costs one busy wait per run (per minute in a
longer run or a server), not one per image."""
ROW_CACHE = 256
"""Registry rows whose signed manifest a session keeps read and decoded (about 30 KB each)."""
READABLE = {"image/png", "image/jpeg", "image/webp", "image/tiff", "image/gif", "image/avif", "image/heic"}
READING_CONTEXTS = 4
"""Sets of trust anchors a runtime keeps a reading context for (a process reads with one or two)."""


class ReadingContexts:
    """The SDK's reading contexts (offline, trust anchors loaded) of one runtime, by set of anchors,
    with a description of each set's anchors. Kept by the runtime (:func:`reading_contexts`) and
    closed with its other resources; safe to share between threads."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[Path, ...], tuple[Any, list[dict[str, str]]]] = {}
        self._lock = threading.Lock()

    def get(self, paths: tuple[Path, ...]) -> tuple[Any, list[dict[str, str]]]:
        with self._lock:
            found = self._contexts.get(paths)
            if found is None:
                if len(self._contexts) >= READING_CONTEXTS:
                    # Dropped, not closed: another thread may still be reading with one.
                    self._contexts.clear()
                found = self._contexts[paths] = _new_reading_context(paths)
            return found

    def close(self) -> None:
        with self._lock:
            contexts, self._contexts = list(self._contexts.values()), {}
        for context, _ in contexts:
            context.close()


def reading_contexts(runtime: Any) -> ReadingContexts:
    """``runtime``'s :class:`ReadingContexts`, kept until ``runtime.close_resources()``."""
    return runtime.resource("c2pa.reading-contexts", ReadingContexts)


def _new_reading_context(paths: tuple[Path, ...]) -> tuple[Any, list[dict[str, str]]]:
    import c2pa

    from sdmark.plugins.c2pa.identity import describe_certificate

    config: dict[str, Any] = {"verify": {"verify_trust": True, "remote_manifest_fetch": False}}
    if paths:
        config["trust"] = {"user_anchors": "".join(settings.read_anchor(p) for p in paths)}
    anchors = [{"path": str(p), "subject": describe_certificate(p)["subject"]} for p in paths]
    return c2pa.Context.from_dict(config), anchors


@contextlib.contextmanager
def reading_context(paths: tuple[Path, ...] | None = None, runtime: Any = None) -> Iterator[tuple[Any, list[dict[str, str]]]]:
    """The SDK context for reading (offline, trust anchors loaded) and a description of the anchors.

    ``paths``: the anchors (default: :func:`settings.trust_anchor_paths`). With a ``runtime``, the
    runtime's context for these anchors (made once per run); without, one made for this use and
    closed after it (a tenth of a millisecond)."""
    paths = tuple(settings.trust_anchor_paths()) if paths is None else paths
    if runtime is not None:
        yield reading_contexts(runtime).get(paths)
        return
    context, anchors = _new_reading_context(paths)
    try:
        yield context, anchors
    finally:
        context.close()


def input_credentials(path: Path, runtime: Any = None) -> dict[str, Any] | None:
    """What a ``process`` input proves about itself through its own embedded manifest: ``None``
    without one; ``{"status": ...}`` alone when it is not valid and trusted; with ``valid``, the
    manifest, its signer and what it declares (``digital_source_type``, sdmark's ``record``,
    bounded), which the processed image may then carry as proven.

    Trusted are the anchors given (``SDMARK_TRUST_ANCHORS``, ``--trust``) and this machine's own
    signing CA (``sdmark keys init``): what this machine signed, it may carry on. ``runtime``: the
    run's, whose reading context is then reused."""
    import c2pa

    from sdmark.core.metadata import source_record

    mime = sniff_mime(path)
    if mime not in READABLE:
        return None
    anchors = list(settings.trust_anchor_paths())
    own = settings.keys_dir() / "ca.pem"
    if own.is_file() and own not in anchors:
        anchors.append(own)
    with reading_context(tuple(anchors), runtime) as (context, _):
        try:
            with open(path, "rb") as stream:
                reader = c2pa.Reader.try_create(mime, stream, context=context)
                if reader is None:
                    return None
                store = json.loads(reader.json())
                reader.close()
        except (c2pa.C2paError, OSError, ValueError) as exc:
            return {"status": "invalid", "error": f"cannot read the C2PA manifest: {exc}"}
    described = describe_store(store)
    if described["status"] != "valid":
        return {"status": described["status"]}
    signer = dict(described.get("signer") or {})
    _add_certificate(signer, store_from_file(path), described.get("manifest"))
    found: dict[str, Any] = {"status": "valid", "manifest": described.get("manifest"), "signer": signer,
                             "digital_source_type": described.get("digital_source_type")}
    record = source_record({"record": _record(store)})
    if record is not None:
        found["record"] = record
    return found


class RegistryUnavailable(Exception):
    """The registry could not be asked (locked past the busy timeout, unreadable, misconfigured)."""


class RecoverySession:
    """What recovery keeps for one verify run (or one worker, or one server process): the registry,
    opened once, and the signed manifest of each registry row, read, checked and decoded once.

    A registry that fails (locked by a writer past its busy timeout, unreadable) is asked once; the
    same error is then reported for every image for :data:`REGISTRY_RETRY_S` without waiting again,
    and it is never read without locking. Safe to share between threads (``sdmark serve``).
    """

    def __init__(self, location: "Path | DatabaseURL") -> None:
        self.location = location
        self._registry: RegistryStore | None = None
        self._error: str | None = None
        self._failed_at = 0.0
        self._rows: OrderedDict[tuple[int, bytes], tuple[Any, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, payload: str) -> list[Entry]:
        """The rows stored under ``payload``; raises :class:`RegistryUnavailable`."""
        with self._lock:
            if self._error is not None and time.monotonic() - self._failed_at < REGISTRY_RETRY_S:
                raise RegistryUnavailable(self._error)
            # A connection that worked before and fails now may just be stale (a database server
            # restarted, an idle session ended): one fresh connection is tried at once. A lock is
            # not retried: that would be a second busy wait.
            attempts = 2 if self._registry is not None else 1
            for attempt in range(attempts):
                try:
                    if self._registry is None:
                        self._registry = open_registry(self.location)
                    entries = self._registry.lookup(payload)
                except Exception as exc:  # whatever the store raised: verify reports it and goes on
                    self._close_registry()
                    if attempt + 1 < attempts and "locked" not in str(exc):
                        continue
                    self._error, self._failed_at = str(exc), time.monotonic()
                    raise RegistryUnavailable(self._error) from None
                self._error = None
                return entries
            raise AssertionError("unreachable")

    def signed_row(self, manifest: bytes, context: Any) -> dict[str, Any]:
        """The row's stored manifest as :func:`read_signed_manifest` judges it, from the cache when seen before."""
        key = (id(context), hashlib.sha256(manifest).digest())
        with self._lock:
            cached = self._rows.get(key)
            if cached is not None:
                self._rows.move_to_end(key)
                return cached[1]
        found = read_signed_manifest(manifest, context)
        with self._lock:
            # The context is kept with the row so that its id cannot be reused by another context
            # (other anchors) while the row is cached.
            self._rows[key] = (context, found)
            while len(self._rows) > ROW_CACHE:
                self._rows.popitem(last=False)
        return found

    def _close_registry(self) -> None:
        if self._registry is not None:
            try:
                self._registry.close()
            finally:
                self._registry = None

    def close(self) -> None:
        with self._lock:
            self._close_registry()
            self._rows.clear()


def recovery_session(runtime: Any) -> RecoverySession | None:
    """The run's :class:`RecoverySession` for the configured registry (``None`` when it is off),
    kept by ``runtime`` until the run ends (``runtime.close_resources()``)."""
    location = settings.registry_path()
    if location is None:
        return None
    return runtime.resource(f"c2pa.recovery:{location}", lambda: RecoverySession(location))


def inspect_credentials(path: Path, detections: list[dict[str, Any]] | None = None, image: Any = None,
                        session: RecoverySession | None = None, runtime: Any = None) -> dict[str, Any]:
    """The ``content_credentials`` part of a verify report for the file at ``path``.

    ``image`` is the decoded image (needed to compare a recovered manifest's content with it).
    ``session`` is the run's registry and row cache (:func:`recovery_session`); without one, the
    registry is opened for this call and closed again, which costs a connection per image.
    ``runtime``: the run's, which keeps the SDK's reading context (else one is made for this call).
    """
    with reading_context(runtime=runtime) as (context, anchors):
        return _inspect(path, detections, image, session, context, anchors)


def _inspect(path: Path, detections: list[dict[str, Any]] | None, image: Any, session: RecoverySession | None,
             context: Any, anchors: list[dict[str, str]]) -> dict[str, Any]:
    import c2pa

    mime = sniff_mime(path)
    found: dict[str, Any] = {"present": False, "status": "absent", "recovered_from_registry": False,
                             "trust_anchors": anchors}
    if mime in READABLE:
        try:
            with open(path, "rb") as stream:
                reader = c2pa.Reader.try_create(mime, stream, context=context)
                if reader is not None:
                    store = json.loads(reader.json())
                    found.update(describe_store(store), present=True, binding="embedded", record=_record(store))
                    reader.close()
                    _add_certificate(found.get("signer"), store_from_file(path), found.get("manifest"))
        except c2pa.C2paError as exc:
            # A damaged manifest is a finding, not a crash: the image itself was readable.
            found.update(present=True, status="invalid", error=f"cannot read the C2PA manifest: {exc}")
    found["embedded"] = found["status"]
    binding = found.get("soft_binding")
    if binding and detections:
        found["soft_binding_matches_watermark"] = any(
            payload_key(d.get("payload")) == binding["payload"] for d in _positive(detections))
    # A manifest that is not valid and trusted proves nothing about the mark: anyone can sign a
    # copy-attacked image with their own certificate. The registry is asked all the same, so a
    # copied mark is still reported; only the embedded fields describe the file's own manifest.
    own_credentials = found["status"] == "valid" and bool(found.get("trusted"))
    if not own_credentials and detections:
        recovery = _recover_once(detections, image, context, mime) if session is None else \
            recover(detections, image, context, mime, session)
        if recovery is not None:
            found["recovery"] = recovery
            for key in ("registry_error", "registry_matches"):
                if key in recovery:
                    found[key] = recovery[key]
            chosen = recovery.get("matched")
            if recovery["verdict"] == "matched" and chosen and not found["present"]:
                found.update(recovered_from_registry=True, registry=recovery.get("registry"), binding="watermark",
                             registry_entry=chosen["registry_entry"], record=chosen.get("record"))
    found["summary"] = summary(found)
    return found


def _positive(detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detections that found a mark and read a payload (verify also reports weak or absent marks)."""
    found = []
    for detection in detections:
        if detection.get("payload") in (None, ""):
            continue
        band = detection.get("band")
        p_value = detection.get("p_value")
        if band in POSITIVE_BANDS or (not band and isinstance(p_value, (int, float)) and p_value <= POSITIVE_P_VALUE):
            found.append(detection)
    return found


def _recover_once(detections: list[dict[str, Any]], image: Any, context: Any, mime: str | None) -> dict[str, Any] | None:
    """:func:`recover` with a session of its own, closed at once (a caller outside a verify run)."""
    location = settings.registry_path()
    if location is None or not _positive(detections):
        return None
    session = RecoverySession(location)
    try:
        return recover(detections, image, context, mime, session)
    finally:
        session.close()


def recover(detections: list[dict[str, Any]], image: Any, context: Any, mime: str | None = None,
            session: RecoverySession | None = None) -> dict[str, Any] | None:
    """The recovery verdict for an image without valid, trusted embedded credentials, or ``None``
    when there is nothing to look up (no payload read, or no registry: ``session`` is ``None``)."""
    positive = _positive(detections)
    if session is None or not positive:
        return None
    registry_file = session.location
    try:
        lookups = [(detection, session.lookup(payload_key(detection["payload"]))) for detection in positive]
    except RegistryUnavailable as exc:  # a broken registry must not stop verify: report it for this image
        return {"verdict": None, "registry": str(registry_file), "registry_error": f"{exc}"}
    for detection, entries in lookups:
        if entries:
            return _decide(detection, entries, image, context, registry_file, mime, session)
    detection = positive[0]
    return {"verdict": "not-registered", "payload": payload_key(detection["payload"]), "scheme": detection.get("scheme"),
            "key": detection.get("key"), "registry": str(registry_file), "registry_matches": 0, "candidates": []}


def _decide(detection: dict[str, Any], entries: list[Entry], image: Any, context: Any, registry_file: "Path | DatabaseURL",
            mime: str | None, session: RecoverySession) -> dict[str, Any]:
    """Check each row, then pick: one matching row (or one clearly closest), else the reason none can be."""
    payload = payload_key(detection["payload"])
    # Rows its own signed manifest contradicts (junk, a forged label) cost one signature check and
    # do not count toward the cap on content comparisons: junk rows must not push a genuine one out.
    checked: list[dict[str, Any]] = []
    compared = 0
    for entry in entries[:MAX_ROWS]:
        if compared >= MAX_CANDIDATES:
            break
        candidate = check_row(entry, payload, detection.get("scale"), image, context, mime, session)
        checked.append(candidate)
        compared += candidate["verdict"] != "inconsistent"
    out: dict[str, Any] = {"verdict": None, "payload": payload, "scheme": detection.get("scheme"), "key": detection.get("key"),
                           "registry": str(registry_file), "registry_matches": len(entries),
                           "candidates": [_public(c) for c in checked]}
    unchecked = len(entries) - len(checked)
    if unchecked:
        out["unchecked"] = unchecked
        out["note"] = (f"{unchecked} of {len(entries)} rows were left unchecked (at most {MAX_CANDIDATES} content "
                       f"comparisons and {MAX_ROWS} rows per payload)")
    matched = sorted((c for c in checked if c["verdict"] == "matched"), key=lambda c: c["content"]["distance"])
    by_label: dict[str, dict[str, Any]] = {}
    for candidate in matched:
        by_label.setdefault(candidate["manifest"], candidate)
    matched = list(by_label.values())
    consistent = [c for c in checked if c["verdict"] != "inconsistent"]
    if matched:
        if len(matched) > 1 and matched[1]["content"]["distance"] - matched[0]["content"]["distance"] < AMBIGUOUS_MARGIN:
            out["verdict"] = "ambiguous"
            out["reason"] = f"{len(matched)} registered images match this content about equally"
        else:
            out["verdict"] = "matched"
            out["matched"] = _public(matched[0], full=True)
    elif not consistent:
        out["verdict"] = "inconsistent"
        out["reason"] = "; ".join(sorted({c["reason"] for c in checked}))
        if unchecked:
            out["reason"] += f"; {unchecked} more rows were not checked"
    elif len(consistent) == 1:
        out["verdict"] = consistent[0]["verdict"]
        out["reason"] = consistent[0].get("reason")
    else:
        out["verdict"] = "ambiguous"
        out["reason"] = f"{len(consistent)} registered images carry this payload and none matches this content"
    return out


def read_signed_manifest(manifest: bytes, context: Any) -> dict[str, Any]:
    """A registry row's stored manifest store read and its signature checked: ``store``,
    ``described`` (:func:`describe_store`), ``signer`` (with the certificate's SHA-256), ``record``
    and the signed content ``fingerprint``; or ``error`` when it cannot be read. Depends only on the
    bytes (and the trust anchors), so a session computes it once per row."""
    import c2pa

    try:
        reader = c2pa.Reader("application/c2pa", io.BytesIO(manifest), context=context)
        store = json.loads(reader.json())
        reader.close()
    except (c2pa.C2paError, ValueError) as exc:
        return {"error": f"the stored manifest cannot be read ({exc})"}
    described = describe_store(store, expect_hard_binding_mismatch=True)
    signer = described.get("signer") or {}
    _add_certificate(signer, manifest, store.get("active_manifest"))
    title = ((store.get("manifests") or {}).get(store.get("active_manifest")) or {}).get("title") or ""
    return {"store": store, "described": described, "signer": signer, "record": _record(store),
            "fingerprint": _fingerprint(store), "title": title}


def check_row(entry: Entry, payload: str, scale: Any, image: Any, context: Any, mime: str | None = None,
              session: RecoverySession | None = None) -> dict[str, Any]:
    """One registry row judged against the signed manifest it stores, then against the image.

    Nothing a row says is believed: the manifest label, the payload and the content fingerprint are
    all read from the signed manifest, whose signature is checked first (once per ``session``).
    """
    candidate: dict[str, Any] = {"verdict": "inconsistent", "manifest": entry.manifest_label,
                                 "registry_entry": _entry_summary(entry)}
    signed = session.signed_row(entry.manifest, context) if session is not None else read_signed_manifest(entry.manifest, context)
    if "error" in signed:
        candidate["reason"] = signed["error"]
        return candidate
    store, described = signed["store"], signed["described"]
    # Copies: the cached row is shared by every image of the run and must not change with one.
    signer = dict(signed["signer"])
    candidate.update(signature=described["status"], trusted=described["trusted"], signer=signer,
                     described=described, record=signed["record"])
    if store.get("active_manifest") != entry.manifest_label:
        candidate["reason"] = (f"the row names manifest {entry.manifest_label}, its stored manifest is "
                               f"{store.get('active_manifest')}")
        return candidate
    if described["status"] not in ("valid", "untrusted"):
        candidate["reason"] = f"the stored manifest's signature does not verify ({', '.join(described['failures']) or described['status']})"
        return candidate
    binding = described.get("soft_binding") or {}
    if binding.get("payload") != payload or entry.payload != payload:
        candidate["reason"] = (f"the signed soft binding names payload {binding.get('payload')}, "
                               f"not the detected {payload}")
        return candidate
    fingerprint = signed["fingerprint"]
    if fingerprint is None:
        candidate["verdict"] = "unverifiable"
        candidate["reason"] = "the signed manifest has no content fingerprint (signed by an older sdmark), so this image cannot be compared with it"
        return candidate
    if image is None:
        candidate["verdict"] = "unverifiable"
        candidate["reason"] = "no pixels to compare"
        return candidate
    comparison = compare(fingerprint, image, scale if isinstance(scale, (int, float)) else None)
    candidate["content"] = comparison.to_json()
    if comparison.matched:
        candidate["verdict"] = "matched"
        # The registered image as its signer's manifest shows it, so a person can compare the two;
        # only for a match: a forged payload must not fetch another image's thumbnail.
        candidate["thumbnail"] = fingerprint.thumbnail_json()
        signed_format = MIME_BY_SUFFIX.get(Path(signed["title"]).suffix.lower())
        if mime and signed_format and mime != signed_format:
            candidate["content"]["changes"].insert(0, f"re-encoded ({mime}, signed as {signed_format})")
    else:
        candidate["verdict"] = "different-content"
        candidate["reason"] = (f"the payload is registered for another image (content distance {comparison.distance:.2f}, "
                               f"correlation {comparison.correlation:.2f}): the mark was copied or forged onto this one")
    return candidate


def _add_certificate(signer: dict[str, Any] | None, store: bytes | None, label: str | None) -> None:
    """Add the signing certificate's SHA-256 to ``signer``: a name can be copied, a certificate cannot."""
    if signer is None or not store:
        return
    digest = signer_sha256(store, label)
    if digest:
        signer["certificate_sha256"] = digest


def _public(candidate: dict[str, Any], full: bool = False) -> dict[str, Any]:
    """A candidate as reported: the row, the signature check, the content comparison, the verdict."""
    out = {k: v for k, v in candidate.items() if k not in ("described", "record")}
    if full and candidate.get("described"):
        described = candidate["described"]
        # Deep copies: the session's cached row is shared by every report of the run.
        out.update(copy.deepcopy({k: described[k] for k in ("claim_generator", "actions", "digital_source_type",
                                                            "ingredients") if k in described}))
        out["record"] = copy.deepcopy(candidate.get("record"))
    return out


def _fingerprint(store: dict[str, Any]) -> Fingerprint | None:
    """The content fingerprint signed in the active manifest (``None`` when it has none or it is malformed)."""
    active = (store.get("manifests") or {}).get(store.get("active_manifest")) or {}
    for assertion in active.get("assertions") or []:
        data = assertion.get("data") or {}
        if assertion.get("label") == SOFT_BINDING_LABEL and data.get("alg") == FINGERPRINT_ALG:
            try:
                return Fingerprint.from_json(json.loads((data.get("alg_params") or {}).get("fingerprint") or "null"))
            except (ValueError, TypeError, AttributeError):
                return None
    return None


def _entry_summary(entry: Entry) -> dict[str, Any]:
    return {"title": entry.title, "manifest": entry.manifest_label, "signed": entry.created, "file_sha256": entry.file_sha256,
            "scheme": entry.scheme, "payload": entry.payload}


def describe_store(store: dict[str, Any], *, expect_hard_binding_mismatch: bool = False) -> dict[str, Any]:
    """Status, signer, actions, digital source type and soft binding of a manifest store (Reader JSON)."""
    manifests = store.get("manifests") or {}
    label = store.get("active_manifest")
    active = manifests.get(label) or {}
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = [f.get("code") for f in results.get("failure") or [] if f.get("code")]
    if not results and store.get("validation_status"):
        failures = [f.get("code") for f in store["validation_status"] if f.get("code")]
    if expect_hard_binding_mismatch:
        failures = [code for code in failures if code not in HARD_BINDING_MISMATCH]
    state = store.get("validation_state")
    trusted = state == "Trusted" or any(s.get("code") == "signingCredential.trusted" for s in results.get("success") or [])
    if any(code.endswith(".mismatch") for code in failures):
        status = "tampered"
    elif any(code != UNTRUSTED for code in failures):
        status = "invalid"
    elif trusted:
        status = "valid"
    else:
        status = "untrusted"
    signature = active.get("signature_info") or {}
    actions = _actions(active)
    source_type, inherited = _digital_source_type(manifests, label)
    described: dict[str, Any] = {
        "status": status,
        "trusted": trusted and status == "valid",
        "signer_trusted": trusted,
        "validation_state": state,
        "failures": failures,
        "manifest": label,
        "claim_generator": _generator(active),
        "signer": {k: v for k, v in {
            "common_name": signature.get("common_name"), "issuer": signature.get("issuer"),
            "alg": signature.get("alg"), "serial": signature.get("cert_serial_number"), "time": signature.get("time"),
        }.items() if v},
        "actions": actions,
        "digital_source_type": source_type,
        "ingredients": [{k: ing.get(k) for k in ("title", "relationship", "format") if ing.get(k)} | (
            {"manifest": ing["active_manifest"]} if ing.get("active_manifest") else {})
            for ing in active.get("ingredients") or []],
    }
    if inherited:
        described["digital_source_type_inherited"] = True
    binding = _soft_binding(active)
    if binding:
        described["soft_binding"] = binding
    return described


def _actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    actions = []
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions") or []:
                agent = action.get("softwareAgent")
                entry = {"action": action.get("action")}
                if action.get("description"):
                    entry["description"] = action["description"]
                if action.get("digitalSourceType"):
                    entry["digital_source_type"] = action["digitalSourceType"]
                if isinstance(agent, dict) and agent.get("name"):
                    entry["software_agent"] = f"{agent['name']} {agent.get('version', '')}".strip()
                elif isinstance(agent, str):
                    entry["software_agent"] = agent
                actions.append(entry)
    return actions


def _digital_source_type(manifests: dict[str, Any], label: str | None) -> tuple[str | None, bool]:
    """The digital source type declared by the active manifest, else by its parents (inherited)."""
    seen: set[str] = set()
    inherited = False
    while label and label not in seen:
        seen.add(label)
        manifest = manifests.get(label) or {}
        for action in _actions(manifest):
            if action.get("digital_source_type"):
                return action["digital_source_type"], inherited
        parents = [i.get("active_manifest") for i in manifest.get("ingredients") or []
                   if i.get("relationship") == "parentOf" and i.get("active_manifest")]
        label, inherited = (parents[0] if parents else None), True
    return None, False


def _generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict):
        return f"{info[0].get('name', '')} {info[0].get('version', '')}".strip() or None
    return manifest.get("claim_generator")


def _soft_binding(manifest: dict[str, Any]) -> dict[str, Any] | None:
    for assertion in manifest.get("assertions") or []:
        data = assertion.get("data") or {}
        if assertion.get("label") == SOFT_BINDING_LABEL and data.get("alg") != FINGERPRINT_ALG:
            params = data.get("alg_params") or {}
            return {"alg": data.get("alg"), "scheme": params.get("scheme"),
                    "payload": payload_key(params["payload"]) if params.get("payload") is not None else None}
    return None


def _record(store: dict[str, Any]) -> dict[str, Any] | None:
    """sdmark's own record from the active manifest (prompt, seed, stages), when it has one."""
    active = (store.get("manifests") or {}).get(store.get("active_manifest")) or {}
    for assertion in active.get("assertions") or []:
        if assertion.get("label") == RECORD_LABEL:
            try:
                return json.loads((assertion.get("data") or {}).get("json") or "null")
            except json.JSONDecodeError:
                return None
    return None


def summary(found: dict[str, Any]) -> str:
    """One line for the human output of ``verify``: the embedded verdict, then the recovery verdict."""
    parts = []
    if found.get("present"):
        parts.append(embedded_summary(found))
    recovery = found.get("recovery")
    if recovery is not None:
        parts.append(recovery_summary(recovery))
    elif found.get("registry_error"):
        parts.append(f"registry unreadable: {found['registry_error']}")
    return "; ".join(parts) if parts else "none"


def signer_words(signer: dict[str, Any], trusted: bool | None, signer_trusted: bool | None = None) -> str:
    """Who signed, in words that tell two identities with the same name apart. ``signer_trusted``:
    the certificate chains to an anchor although the manifest itself failed (tampered, invalid)."""
    name = signer.get("common_name") or "an unnamed signer"
    words = f"signed by {name}" + (f" (issuer {signer['issuer']})" if signer.get("issuer") else "")
    if signer.get("certificate_sha256"):
        words += f", certificate SHA-256 {signer['certificate_sha256'][:16]}..."
    elif signer.get("serial"):
        words += f", certificate serial {signer['serial']}"
    if trusted:
        return words + ", trusted"
    if signer_trusted:
        return words + " (a certificate under a trust anchor given), but the manifest fails, so nothing in it is trusted"
    return words + ", UNTRUSTED: the signer is under no trust anchor given (--trust CA.pem); anyone can make a certificate with this name"


def embedded_summary(found: dict[str, Any]) -> str:
    if found.get("error"):
        return f"embedded {found.get('status')}: {found['error']}"
    status = found.get("status") or "?"
    parts = [f"embedded {status}"]
    if status == "tampered":
        parts.append("the file changed after it was signed")
    parts.append(signer_words(found.get("signer") or {}, found.get("trusted"), found.get("signer_trusted")))
    source_type = found.get("digital_source_type")
    if source_type:
        parts.append(source_type.rsplit("/", 1)[-1])
    return ", ".join(parts[:1]) + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "")


def recovery_summary(recovery: dict[str, Any]) -> str:
    verdict = recovery.get("verdict")
    payload = recovery.get("payload")
    if recovery.get("registry_error"):
        return f"recovery impossible: registry unreadable ({recovery['registry_error']})"
    if verdict == "not-registered":
        return f"recovery: not-registered (payload {payload} is in no row of {recovery.get('registry')})"
    if verdict == "matched":
        chosen = recovery["matched"]
        content = chosen.get("content") or {}
        resolution = content.get("resolution_px")
        if content.get("local_edits_checked"):
            unchanged = (f"no change the fingerprint resolves (it compares areas of about {resolution} px; "
                         "a smaller edit can pass unseen)")
        else:
            unchanged = ("LOCAL EDITS NOT CHECKED: the signed fingerprint is the older, coarse one "
                         f"(areas of about {resolution} px), which a blurred face or drawn text can pass")
        changes = ", ".join(content.get("changes") or []) or unchanged
        title = (chosen.get("registry_entry") or {}).get("title")
        words = (f"recovery: matched the registered image {title} (content distance {content.get('distance', 0):.2f}; "
                 f"{changes}); {signer_words(chosen.get('signer') or {}, chosen.get('trusted'))}; "
                 "these credentials describe the registered image, not this file")
        if "locally edited" in (content.get("changes") or []):
            words += "; PART OF THIS COPY WAS CHANGED after signing, and the credentials do not cover the change"
        elif content.get("changes") and not content.get("local_edits_checked"):
            words += f"; {unchanged}"
        return words
    if verdict == "different-content":
        return (f"recovery: DIFFERENT-CONTENT: the watermark's payload {payload} is registered for another image; "
                "the mark was copied or forged onto this one, and those credentials do not apply to it")
    if verdict == "inconsistent":
        return f"recovery: INCONSISTENT registry: {recovery.get('reason')}; ignored"
    if recovery.get("unchecked") and verdict != "matched":
        return f"recovery: {verdict}: {recovery.get('reason')} ({recovery['note']})"
    if verdict == "ambiguous":
        return f"recovery: ambiguous: {recovery.get('reason')} (payload {payload})"
    if verdict == "unverifiable":
        return f"recovery: unverifiable: {recovery.get('reason')}"
    return f"recovery: {verdict}"


__all__ = ["inspect_credentials", "describe_store", "reading_context"]
