"""``sdmark keys``: create and show the identity that signs Content Credentials."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import click

from sdmark.plugins.c2pa import settings


@click.group("keys")
def keys() -> None:
    """Manage the C2PA signing identity (Content Credentials on every written image).

    Without one, images are written unsigned. Deployments with their own certificate set
    SDMARK_SIGN_CERT with SDMARK_SIGN_KEY, SDMARK_SIGN_COMMAND or SDMARK_SIGN_CALLBACK instead
    (see docs/content-credentials.md).
    """


@keys.command("init")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the identity (default: SDMARK_KEYS_DIR or ~/.config/sdmark/keys).")
@click.option("--name", help="Signer name in the certificate (default: 'sdmark signer (USER)').")
@click.option("--org", "organization", help="Organization in the certificates.")
@click.option("--years", type=click.IntRange(1, 100), default=25, show_default=True,
              help="How long the signing certificate (and so every signature, offline) stays valid.")
@click.option("--force", is_flag=True, help="Replace an existing identity.")
def init(folder: Path | None, name: str | None, organization: str | None, years: int, force: bool) -> None:
    """Create a local CA and a signing certificate issued by it (EC P-256, ES256).

    Writes ca.pem (the trust anchor: give it to whoever verifies, `sdmark verify --trust ca.pem`),
    signer-chain.pem and signer.key (readable by you only). The CA's private key is not kept.
    """
    from sdmark.plugins.c2pa.identity import create_identity

    folder = folder or settings.keys_dir()
    name = name or f"sdmark signer ({_user()})"
    identity = create_identity(folder, name, organization or "sdmark local identity", force=force, years=years)
    click.echo(f"created a signing identity in {identity.folder}")
    click.echo(f"  signer:       {identity.chain}")
    click.echo(f"  private key:  {identity.key}  (mode 0600)")
    click.echo(f"  trust anchor: {identity.ca}  (verify with: sdmark verify --trust {identity.ca} IMAGE)")
    if folder != settings.keys_dir():
        click.echo(f"note: sdmark signs with the identity in {settings.keys_dir()}; set SDMARK_KEYS_DIR={folder} to use this one",
                   err=True)


@keys.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(as_json: bool) -> None:
    """Say which identity signs, where the registry is, and which trust anchors verify uses."""
    from sdmark.plugins.c2pa.identity import describe_certificate

    config = settings.signing_config()
    info: dict = {"signing": None, "keys_dir": str(settings.keys_dir()),
                  "registry": str(settings.registry_path()) if settings.registry_path() else None,
                  "trust_anchors": [str(p) for p in settings.trust_anchor_paths()]}
    if config is not None:
        method = "key file" if config.key else "command" if config.command else "callback"
        info["signing"] = {"source": config.source, "method": method, "cert_chain": str(config.cert_chain),
                           "certificate": describe_certificate(config.cert_chain), "tsa_url": config.tsa_url}
    if as_json:
        click.echo(json.dumps(info))
        return
    if config is None:
        state = "off (SDMARK_SIGN=off)" if settings.signing_disabled() else "no identity: images are written unsigned (run `sdmark keys init`)"
        click.echo(f"signing:       {state}")
    else:
        cert = info["signing"]["certificate"]
        click.echo(f"signing:       {cert['subject']}  ({info['signing']['method']}, {config.source})")
        click.echo(f"  issuer:      {cert['issuer']}")
        click.echo(f"  valid until: {cert['not_after']}")
    click.echo(f"keys dir:      {info['keys_dir']}")
    click.echo(f"registry:      {info['registry'] or 'off'}")
    click.echo(f"trust anchors: {', '.join(info['trust_anchors']) or 'none (set SDMARK_TRUST_ANCHORS or pass --trust to verify)'}")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "local"
