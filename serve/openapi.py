"""The OpenAPI document of ``sdmark serve`` and the /docs page that shows it without any external asset.

The report schema is the one ``sdmark verify --json`` prints (DESIGN.md §4): the fields every report
has are required, and ``additionalProperties`` stays open because plugins add their own parts.
"""

from __future__ import annotations

from typing import Any

from sdmark import __version__
from sdmark.serve.settings import ServeSettings

ERROR = {"type": "object", "required": ["error", "status"], "properties": {
    "error": {"type": "string", "description": "What was wrong, in one sentence"},
    "status": {"type": "integer", "description": "The HTTP status code, repeated"}}}

DETECTION = {"type": "object", "required": ["scheme", "p_value", "payload"], "additionalProperties": True, "properties": {
    "scheme": {"type": "string", "description": "The scheme that read the mark (see /v1/schemes)"},
    "p_value": {"type": "number", "description": "Chance that an unmarked image reads this well"},
    "band": {"type": "string", "enum": ["none", "partial", "likely", "very likely"]},
    "payload": {"type": ["string", "null"], "description": "The decoded payload, when the scheme carries one"},
    "key": {"description": "Which key the scheme used (public default or private), when the scheme reports it"}}}

REPORT = {
    "type": "object", "additionalProperties": True,
    "required": ["path", "watermarked", "detections", "error"],
    "description": "One line of `sdmark verify --json`. Over HTTP `path` is the uploaded file's name (display only).",
    "properties": {
        "path": {"type": "string"},
        "watermarked": {"type": ["boolean", "null"], "description": "null when the image could not be checked"},
        "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"},
                       "description": "Schemes that read something above band none, strongest first"},
        "error": {"type": ["string", "null"]},
        "checked": {"type": "array", "items": {"type": "string"}, "description": "The schemes that ran"},
        "content_credentials": {"type": "object", "additionalProperties": True,
                                "description": "Embedded C2PA manifest (valid / untrusted / tampered / invalid) or the "
                                               "manifest recovered from the registry through the watermark; see "
                                               "docs/content-credentials.md"},
        "xmp_digital_source_type": {"type": ["string", "null"]},
        "parameters": {"type": ["string", "null"], "description": "The A1111 parameters text in the file"},
    },
}


def _upload_body(description: str) -> dict[str, Any]:
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary", "description": description}}}}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {400: "Malformed multipart body", 401: "Missing or wrong bearer token", 404: "Marking is off on this server",
             408: "The upload took longer than the timeout, or fell below the minimum rate after its grace",
             413: "Upload over the size limit (refused while streaming)", 415: "Not an image (judged by content)",
             422: "Decompression bomb, unreadable image, or no field `file`", 503: "Saturated; retry after Retry-After seconds",
             504: "The per-request timeout passed"}
    return {str(code): {"description": words[code], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for code in codes}


def openapi_document(settings: ServeSettings) -> dict[str, Any]:
    """The OpenAPI 3.1 description of this server's API (limits as configured)."""
    limit_mb = settings.max_upload_bytes / (1024 * 1024)
    verify = {
        "summary": "Verify one image", "operationId": "verify",
        "description": f"The same JSON object `sdmark verify --json` prints for the image. At most {limit_mb:.0f} MB; "
                       "the upload is deleted when the request ends.",
        "requestBody": _upload_body("The image (PNG, JPEG, WebP, TIFF, BMP or GIF)"),
        "responses": {"200": {"description": "The verify report",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VerifyReport"}}}},
                      **_errors(400, 408, 413, 415, 422, 503, 504)},
    }
    mark = {
        "summary": "Mark one image (needs the operator's token)", "operationId": "mark",
        "description": f"Runs the chain `{settings.mark_chain}` on the upload and returns the written image "
                       "(watermarked, with its record, signed when the server has an identity).",
        "security": [{"bearer": []}],
        "parameters": [{"name": "format", "in": "query", "schema": {"type": "string", "enum": ["png", "jpeg", "webp"],
                                                                      "default": "png"}}],
        "requestBody": _upload_body("The image to mark"),
        "responses": {"200": {"description": "The marked image",
                              "content": {f"image/{f}": {"schema": {"type": "string", "format": "binary"}}
                                          for f in ("png", "jpeg", "webp")}},
                      **_errors(400, 401, 404, 408, 413, 415, 422, 503, 504)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sdmark", "version": __version__,
                 "description": "Is this image marked, and by whom? Invisible watermarks and Content Credentials, checked locally."},
        "paths": {
            "/v1/verify": {"post": verify},
            "/v1/mark": {"post": mark},
            "/v1/schemes": {"get": {"summary": "The watermark schemes verify knows", "operationId": "schemes",
                                    "responses": {"200": {"description": "Schemes, and whether this server checks each",
                                                          "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/healthz": {"get": {"summary": "Liveness and load", "operationId": "healthz",
                                 "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "responses": {"200": {"description": "Text exposition format", "content": {"text/plain": {}}}}}},
            "/": {"get": {"summary": "The web page", "operationId": "page",
                          "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}},
                  "post": {"summary": "The report as HTML (the page's form, with or without JavaScript)", "operationId": "pageReport",
                           "requestBody": _upload_body("One or more images (repeat the field)"),
                           "responses": {"200": {"description": "HTML reports", "content": {"text/html": {}}}}}},
        },
        "components": {
            "schemas": {"VerifyReport": REPORT, "Detection": DETECTION, "Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def docs_page(document: dict[str, Any]) -> str:
    """A self-contained HTML rendering of ``document`` (no script, no CDN): each operation with its
    request, responses and the schemas, and a link to the raw /openapi.json."""
    from sdmark.serve.page import _environment

    return _environment().get_template("docs.html").render(doc=document)
