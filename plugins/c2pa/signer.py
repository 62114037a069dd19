"""Turning a :class:`SigningConfig` into a ``c2pa.Signer``, once per process.

A ``c2pa.Signer`` wraps native memory and cannot be pickled, so signers are never stored on
objects that travel between processes: each process builds its own on first use and keeps it in
a module-level cache keyed by process id and configuration.
"""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any, Callable

from sdmark.plugins.c2pa.settings import ALGORITHMS, SigningConfig, SigningConfigError

COMMAND_TIMEOUT_S = 60
_signers: dict[tuple, Any] = {}
_callbacks: dict[int, "_Recorded"] = {}


class _Recorded:
    """Wraps a signing callback and keeps its last error: the SDK only sees "failed", we say why."""

    def __init__(self, function: Callable[[bytes], bytes]) -> None:
        self.function = function
        self.error: str | None = None

    def __call__(self, data: bytes) -> bytes:
        self.error = None
        try:
            return self.function(data)
        except Exception as exc:  # any failure of user code: recorded, then reported by the SDK
            self.error = str(exc) or type(exc).__name__
            raise


def callback_error(signer: Any) -> str | None:
    """Why the last callback or command signature of ``signer`` failed, if it did."""
    recorded = _callbacks.get(id(signer))
    return recorded.error if recorded else None


def get_signer(config: SigningConfig) -> Any:
    """The ``c2pa.Signer`` for ``config`` in this process (built on first use)."""
    key = (os.getpid(), config.fingerprint())
    signer = _signers.get(key)
    if signer is None:
        for stale in [k for k in _signers if k[0] != os.getpid()]:
            del _signers[stale]  # inherited through fork: not ours to use
        signer = _signers[key] = build_signer(config)
    return signer


def build_signer(config: SigningConfig) -> Any:
    """A new ``c2pa.Signer``; raises :class:`SigningConfigError` with the reason it cannot be made."""
    import c2pa

    chain = _read(config.cert_chain, "certificate chain")
    if b"-----BEGIN CERTIFICATE-----" not in chain:
        raise SigningConfigError(f"{config.cert_chain}: no PEM certificate in it")
    alg = (config.alg or infer_algorithm(chain, config.cert_chain)).lower()
    if alg not in ALGORITHMS:
        raise SigningConfigError(f"signing algorithm {alg!r} is not one of {', '.join(ALGORITHMS)}")
    enum = getattr(c2pa.C2paSigningAlg, alg.upper())
    try:
        if config.key is not None:
            key = _read(config.key, "private key")
            return c2pa.Signer.from_info(c2pa.C2paSignerInfo(enum, chain, key, config.tsa_url))
        sign = _Recorded(_command_callback(config.command) if config.command else _load_callback(config.callback))
        signer = c2pa.Signer.from_callback(sign, enum, chain.decode("ascii"), config.tsa_url)
        _callbacks[id(signer)] = sign
        return signer
    except c2pa.C2paError as exc:
        raise SigningConfigError(f"cannot create a C2PA signer from {config.cert_chain}: {exc}") from None


def infer_algorithm(chain: bytes, where: Path) -> str:
    """The C2PA algorithm that fits the signing certificate's key (ECDSA curve, Ed25519, RSA-PSS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = x509.load_pem_x509_certificates(chain)[0].public_key()
    except ValueError as exc:
        raise SigningConfigError(f"{where}: cannot read the certificate ({exc})") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in by_curve:
            raise SigningConfigError(f"{where}: curve {key.curve.name} is not one C2PA signs with (P-256, P-384, P-521)")
        return by_curve[key.curve.name]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPublicKey):
        return "ps256"
    raise SigningConfigError(f"{where}: unsupported key type {type(key).__name__}; set SDMARK_SIGN_ALG")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningConfigError(f"cannot read the {what} {path} ({exc.strerror or exc})") from None


def _command_callback(command: str) -> Callable[[bytes], bytes]:
    """Sign by running ``command`` with the bytes to sign on stdin; its stdout is the signature."""
    argv = shlex.split(command)
    if not argv:
        raise SigningConfigError("SDMARK_SIGN_COMMAND is empty")

    def sign(data: bytes) -> bytes:
        try:
            done = subprocess.run(argv, input=data, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"signing command {argv[0]!r} failed: {exc}") from None
        if done.returncode != 0 or not done.stdout:
            message = done.stderr.decode("utf-8", "replace").strip()[:200]
            raise RuntimeError(f"signing command {argv[0]!r} exited {done.returncode}: {message or 'no signature on stdout'}")
        return done.stdout

    return sign


def _load_callback(callback: str | Callable[[bytes], bytes] | None) -> Callable[[bytes], bytes]:
    if callable(callback):
        return callback
    module_name, _, attribute = (callback or "").partition(":")
    if not module_name or not attribute:
        raise SigningConfigError(f"signing callback {callback!r} must look like package.module:function")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise SigningConfigError(f"cannot load the signing callback {callback!r}: {exc}") from None
    if not callable(function):
        raise SigningConfigError(f"signing callback {callback!r} is not callable")
    return function
