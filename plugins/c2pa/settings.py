"""Where the Content Credentials plugin finds its keys, its registry and its trust anchors.

Everything is read from the environment when needed (never at import), so a test or a
deployment can point each piece elsewhere. Nothing here imports ``c2pa``.

==========================  ====================================================================
variable                    meaning
==========================  ====================================================================
``SDMARK_KEYS_DIR``         folder of the local identity made by ``sdmark keys init``
                            (default ``$XDG_CONFIG_HOME/sdmark/keys``, i.e. ``~/.config/sdmark/keys``)
``SDMARK_SIGN``             ``off`` turns signing off (no message)
``SDMARK_SIGN_CERT``        PEM certificate chain (signer first) of a deployment's own identity
``SDMARK_SIGN_KEY``         its PEM private key (with ``SDMARK_SIGN_CERT``)
``SDMARK_SIGN_COMMAND``     instead of a key file: a command that reads the bytes to sign on stdin
                            and writes the signature on stdout (HSM, KMS, ``openssl pkeyutl`` ...)
``SDMARK_SIGN_CALLBACK``    instead of a key file: ``package.module:function`` taking bytes and
                            returning the signature (a KMS client in Python)
``SDMARK_SIGN_ALG``         ``es256`` ``es384`` ``es512`` ``ps256`` ``ps384`` ``ps512`` ``ed25519``
                            (default: from the certificate's key)
``SDMARK_TSA_URL``          RFC 3161 time-stamp authority (keeps signatures valid after the
                            certificate expires; needs the network)
``SDMARK_REGISTRY``         SQLite file of signed manifests keyed by watermark payload
                            (default ``$XDG_DATA_HOME/sdmark/registry.sqlite``), or a shared
                            ``postgresql://USER@HOST/DB`` database; ``off`` disables it
``SDMARK_TRUST_ANCHORS``    PEM files of CAs whose signatures ``verify`` calls trusted, separated
                            by ``os.pathsep`` (``:`` on Unix); ``sdmark verify --trust`` adds to them
==========================  ====================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sdmark.core.errors import SdmarkError

if TYPE_CHECKING:
    from sdmark.plugins.c2pa.registry_store import DatabaseURL

CA_CERT = "ca.pem"
SIGNER_CHAIN = "signer-chain.pem"
SIGNER_KEY = "signer.key"
ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
_OFF = {"0", "off", "false", "no", "none"}


class SigningConfigError(SdmarkError):
    """The signing identity is configured but unusable (missing file, bad key, wrong algorithm)."""


@dataclass(frozen=True)
class SigningConfig:
    """How to sign: a certificate chain plus exactly one of a key file, a command or a callback.

    ``source`` says where the configuration came from (shown by ``sdmark keys show``).
    """

    cert_chain: Path
    key: Path | None = None
    command: str | None = None
    callback: str | Callable[[bytes], bytes] | None = None
    alg: str | None = None
    tsa_url: str | None = None
    source: str = "api"

    def fingerprint(self) -> tuple:
        """Identifies this configuration and the files' versions, so a changed key is picked up."""
        stamps: list[tuple[str, int | None, int | None] | None] = []
        for path in (self.cert_chain, self.key):
            try:
                stat = path.stat() if path else None
                stamps.append((str(path), stat.st_mtime_ns, stat.st_size) if stat else None)
            except OSError:
                stamps.append((str(path), None, None))
        callback = self.callback if isinstance(self.callback, str) or self.callback is None else id(self.callback)
        return (*stamps, self.command, callback, self.alg, self.tsa_url)


_api_config: SigningConfig | None = None
_ADDED_ANCHORS = "SDMARK_TRUST_ANCHORS_ADDED"


def _xdg(variable: str, fallback: str) -> Path:
    base = os.environ.get(variable)
    return Path(base) if base else Path.home() / fallback


def keys_dir() -> Path:
    """The folder of the local signing identity (``SDMARK_KEYS_DIR`` or the user config dir)."""
    override = os.environ.get("SDMARK_KEYS_DIR")
    return Path(override).expanduser() if override else _xdg("XDG_CONFIG_HOME", ".config") / "sdmark" / "keys"


def registry_path() -> "Path | DatabaseURL | None":
    """The SQLite registry file, a ``postgresql://`` database, or ``None`` when ``SDMARK_REGISTRY=off``."""
    from sdmark.plugins.c2pa.registry_store import parse_location

    override = os.environ.get("SDMARK_REGISTRY")
    if override is not None and override.strip().lower() in _OFF | {""}:
        return None
    if override:
        return parse_location(override)
    return _xdg("XDG_DATA_HOME", ".local/share") / "sdmark" / "registry.sqlite"


def set_signing_config(config: SigningConfig | None) -> None:
    """Library use: sign with ``config`` in this process (``None`` returns to the environment)."""
    global _api_config
    _api_config = config


def signing_disabled() -> bool:
    return os.environ.get("SDMARK_SIGN", "").strip().lower() in _OFF


def signing_config() -> SigningConfig | None:
    """The identity to sign with, or ``None`` when there is none (images are then written unsigned).

    Order: :func:`set_signing_config`, then ``SDMARK_SIGN_CERT`` with a key, command or callback,
    then the local identity in :func:`keys_dir`. Raises :class:`SigningConfigError` when a
    configuration is given but incomplete.
    """
    if signing_disabled():
        return None
    if _api_config is not None:
        return _api_config
    env = os.environ
    alg = env.get("SDMARK_SIGN_ALG") or None
    if alg and alg.lower() not in ALGORITHMS:
        raise SigningConfigError(f"SDMARK_SIGN_ALG={alg!r} is not one of {', '.join(ALGORITHMS)}")
    tsa = env.get("SDMARK_TSA_URL") or None
    cert = env.get("SDMARK_SIGN_CERT")
    ways = {name: env.get(f"SDMARK_SIGN_{name.upper()}") for name in ("key", "command", "callback")}
    given = {name: value for name, value in ways.items() if value}
    if cert or given:
        if not cert:
            raise SigningConfigError(f"SDMARK_SIGN_{next(iter(given)).upper()} needs SDMARK_SIGN_CERT (the PEM certificate chain)")
        if len(given) != 1:
            raise SigningConfigError(
                "SDMARK_SIGN_CERT needs exactly one of SDMARK_SIGN_KEY, SDMARK_SIGN_COMMAND or SDMARK_SIGN_CALLBACK"
                + (f" (got {', '.join('SDMARK_SIGN_' + n.upper() for n in given)})" if given else "")
            )
        return SigningConfig(
            cert_chain=Path(cert).expanduser(),
            key=Path(given["key"]).expanduser() if "key" in given else None,
            command=given.get("command"),
            callback=given.get("callback"),
            alg=alg.lower() if alg else None,
            tsa_url=tsa,
            source="environment",
        )
    folder = keys_dir()
    chain, key = folder / SIGNER_CHAIN, folder / SIGNER_KEY
    if chain.is_file() and key.is_file():
        return SigningConfig(cert_chain=chain, key=key, alg=alg.lower() if alg else None, tsa_url=tsa, source=f"local identity in {folder}")
    return None


def set_trust_anchors(paths: Iterable[Path | str] | None) -> None:
    """Add PEM files of trusted CAs for this process and the workers it starts (``sdmark verify
    --trust``); ``None`` clears them. They add to ``SDMARK_TRUST_ANCHORS``.

    Raises :class:`SdmarkError` naming a file that cannot be read or holds no certificate.
    """
    if paths is None:
        os.environ.pop(_ADDED_ANCHORS, None)
        return
    checked = [Path(p).expanduser().resolve() for p in paths]
    for path in checked:
        read_anchor(path)
    # Kept in the environment, not a global, so that worker processes (verify --jobs spawns them)
    # see the same anchors.
    os.environ[_ADDED_ANCHORS] = os.pathsep.join(str(p) for p in checked)


def trust_anchors_option(ctx: Any, param: Any, value: tuple[Path, ...]) -> None:
    """click callback for ``sdmark verify --trust``: a bad file is a usage error before any work."""
    if not value:
        return
    import click

    try:
        set_trust_anchors(value)
    except SdmarkError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def trust_anchor_paths() -> list[Path]:
    """Anchors from ``SDMARK_TRUST_ANCHORS`` and :func:`set_trust_anchors`, without duplicates."""
    seen: list[Path] = []
    for variable in ("SDMARK_TRUST_ANCHORS", _ADDED_ANCHORS):
        for text in os.environ.get(variable, "").split(os.pathsep):
            path = Path(text.strip()).expanduser()
            if text.strip() and path not in seen:
                seen.append(path)
    return seen


def read_anchor(path: Path) -> str:
    """The PEM text of one trust-anchor file; raises :class:`SdmarkError` when it is not one."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise SdmarkError(f"trust anchor {path}: cannot read ({exc.strerror or exc})") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise SdmarkError(f"trust anchor {path}: no PEM certificate in it")
    return text
