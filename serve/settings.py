"""What an operator configures for ``sdmark serve``.

Settings travel through ``SDMARK_SERVE_*`` environment variables because ``--workers N`` starts
N fresh processes that each build their own app; ``sdmark serve`` sets them from its options.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from sdmark.core.errors import SdmarkError

PREFIX = "SDMARK_SERVE_"


@dataclass(frozen=True)
class ServeSettings:
    """Limits and switches of one server. ``token`` enables ``POST /v1/mark``; ``store_dir`` and
    ``log_images`` are the operator's opt-ins to keep uploads or name them in the log;
    ``mark_no_safety`` the operator's explicit opt-out of the safety stage for ``/v1/mark``."""

    max_upload_bytes: int = 25 * 1024 * 1024
    max_files: int = 16  # per page upload; the API takes one file per request
    timeout_s: float = 60.0  # for an upload to arrive whole, and for its check
    threads: int = 1  # verifications at once per worker process
    queue: int = 32  # requests that may wait for a thread before 503
    # Uploads arrive before a CPU place is taken; these bound what arriving ones may hold: the number
    # receiving at once per worker (disk: each up to max_upload_bytes), and the pace a body must keep
    # after its first upload_grace_s seconds (an idle or trickling connection is dropped with 408).
    receiving: int = 64
    min_upload_rate: int = 16 * 1024  # bytes per second, averaged from the start of the body
    upload_grace_s: float = 5.0
    retry_after_s: int = 2
    token: str | None = field(default=None, repr=False)
    mark_chain: str = "watermark"  # 'safety' is added first unless mark_no_safety, as `sdmark process` does
    mark_no_safety: bool = False
    store_dir: Path | None = None
    log_images: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        """Settings from ``SDMARK_SERVE_<FIELD>`` (upper case); a bad value is an error naming it."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for spec in fields(cls):
            raw = env.get(PREFIX + spec.name.upper())
            if raw is None or raw == "":
                continue
            try:
                values[spec.name] = _parse(spec.name, raw)
            except ValueError:
                raise SdmarkError(f"{PREFIX}{spec.name.upper()}={raw!r} is not a valid value") from None
        token_file = env.get(PREFIX + "TOKEN_FILE")
        if token_file and "token" not in values:
            values["token"] = read_token_file(Path(token_file))
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that would make the server unsafe or useless."""
        # NaN passes every comparison's negation: the time limits must be finite numbers as well.
        if (self.max_upload_bytes < 1 or self.threads < 1 or self.queue < 0 or not 0 < self.timeout_s < math.inf
                or self.max_files < 1 or self.receiving < 1 or self.min_upload_rate < 0
                or not 0 < self.upload_grace_s < math.inf):
            raise SdmarkError("serve: limits must be positive (max upload, threads, timeout, max files, receiving, "
                              "upload grace; queue and minimum upload rate >= 0; the times finite)")
        if self.token is not None and len(self.token) < 16:
            raise SdmarkError("serve: the mark token must be at least 16 characters")

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` return these settings (for worker processes)."""
        env = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                env[PREFIX + spec.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return env


def _parse(name: str, raw: str) -> object:
    if name in ("max_upload_bytes", "max_files", "threads", "queue", "retry_after_s", "receiving", "min_upload_rate"):
        return int(raw)
    if name in ("timeout_s", "upload_grace_s"):
        return float(raw)
    if name in ("log_images", "mark_no_safety"):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(raw)
        return raw.lower() in ("1", "true", "yes")
    if name == "store_dir":
        return Path(raw)
    return raw


def read_token_file(path: Path) -> str:
    """The bearer token in ``path`` (first line, stripped)."""
    try:
        token = path.read_text(encoding="utf-8").strip().splitlines()
    except OSError as exc:
        raise SdmarkError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
    if not token or not token[0].strip():
        raise SdmarkError(f"{path}: the token file is empty")
    return token[0].strip()
