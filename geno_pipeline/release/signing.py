"""Offline signatures of a release with the OpenSSF model-signing format (`pip install -e '.[sign]'`).

The signature is the `model_signing` library's own: a Sigstore bundle holding a DSSE envelope over an in-toto
statement that lists every file's sha256, signed with a local elliptic-curve key. ECDSA signatures differ on every
run, so the signature never goes inside the deterministic release directory: by default it lies beside it
(`artifacts/release.sig`), and the release stays byte-identical whether or not it was signed.

Signing and verifying are the library's; this module checks the inputs first (so a bad key gets one clear message)
and, when the library rejects a signature, says why: the wrong key, a signature made for another release, or files
changed after signing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geno_pipeline.checksums import sha256_file
from geno_pipeline.errors import ConfigError, VerifyError
from geno_pipeline.fsio import atomic_write_bytes

__all__ = [
    "PASSWORD_ENV",
    "SUPPORTED_CURVES",
    "SignedRelease",
    "default_signature_path",
    "key_fingerprint",
    "password_from_env",
    "sign_release",
    "signed_digests",
    "verify_signature",
]

PASSWORD_ENV = "GENO_PIPELINE_KEY_PASSWORD"
"""Environment variable holding the passphrase of an encrypted private key (never a command-line argument)."""
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
"""The curves model-signing accepts (those of Sigstore's specification)."""
_INSTALL_FIX = "install the signing extra: pip install -c requirements.lock -e '.[sign]'"


@dataclass(frozen=True)
class SignedRelease:
    """What `sign_release` wrote."""

    signature: Path
    key_fingerprint: str  # sha256 of the public key's PEM, as model-signing records it in the bundle
    files: tuple[str, ...]  # the release files the signature covers


def default_signature_path(release_dir: Path) -> Path:
    """`artifacts/release` -> `artifacts/release.sig`: beside the bundle, never inside it."""
    release_dir = Path(release_dir)
    return release_dir.parent / f"{release_dir.name}.sig"


def _model_signing() -> Any:
    try:
        import model_signing
    except ImportError as exc:
        raise ConfigError(f"signing needs the `model-signing` package, which is not importable ({exc}); fix: {_INSTALL_FIX}") from None
    return model_signing


def _pem(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found; fix: give the path of a PEM file (see docs/release.md, 'Signing a release')")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror}); fix: check the path and its permissions") from None


def _check_curve(path: Path, curve: str, what: str) -> None:
    if curve not in SUPPORTED_CURVES:
        raise ConfigError(
            f"{path}: the {what} is on curve {curve}, which model-signing does not support; "
            f"fix: use one of {', '.join(SUPPORTED_CURVES)} (e.g. openssl ecparam -name prime256v1 -genkey)"
        )


def _load_private_key(path: Path, password: str | None) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _pem(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password is not None else None)
    except TypeError:
        if password is None:
            raise ConfigError(
                f"{path}: the private key is encrypted; fix: put its passphrase in the {PASSWORD_ENV} environment variable"
            ) from None
        raise ConfigError(f"{path}: the private key is not encrypted, but {PASSWORD_ENV} is set; fix: unset {PASSWORD_ENV}") from None
    except ValueError as exc:
        hint = "or the passphrase in " + PASSWORD_ENV + " is wrong" if password is not None else "or is not a private key"
        raise ConfigError(
            f"{path}: not a PEM private key ({exc}) {hint}; fix: give the PEM private key the release is signed with"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, not an elliptic-curve private key; fix: model-signing signs with EC keys")
    _check_curve(path, key.curve.name, "private key")
    return key


def _load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _pem(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc}); fix: give the public key (openssl ec -in KEY -pubout)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, not an elliptic-curve public key; fix: give the EC public key")
    _check_curve(path, key.curve.name, "public key")
    return key


def key_fingerprint(public_key: Any) -> str:
    """sha256 of the public key's SubjectPublicKeyInfo PEM: the key hint model-signing writes into the bundle."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _check_outside(release_dir: Path, signature: Path) -> None:
    bundle, target = Path(release_dir).resolve(), Path(signature).resolve()
    if target == bundle or bundle in target.parents:
        raise ConfigError(
            f"{signature}: the signature must not lie inside the release directory {release_dir} (it would become an extra, "
            f"non-deterministic bundle file); fix: use --signature {default_signature_path(release_dir)}"
        )


def sign_release(release_dir: Path, private_key: Path, signature: Path | None = None, *, password: str | None = None) -> SignedRelease:
    """Sign the release at `release_dir` with `private_key` (PEM, EC); the bundle goes to `signature` (default: beside it).

    The release must verify first: a broken bundle is never signed. The signature is written atomically.
    Raises `ConfigError` for a bad key or path and `VerifyError` for a release that does not verify."""
    from geno_pipeline.release.verify import verify_bundle

    release_dir = Path(release_dir)
    target = Path(signature) if signature is not None else default_signature_path(release_dir)
    _check_outside(release_dir, target)
    key = _load_private_key(Path(private_key), password)
    problems = verify_bundle(release_dir)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise VerifyError(f"{release_dir}: refusing to sign a release that does not verify:\n{listed}")
    model_signing = _model_signing()
    # bytes, although model-signing 1.1.1 annotates str: it hands the value to cryptography, which needs bytes
    secret = password.encode() if password is not None else None
    config = model_signing.signing.Config().use_elliptic_key_signer(private_key=Path(private_key), password=secret)
    with tempfile.TemporaryDirectory(prefix="geno-pipeline-sign-") as scratch:  # the library writes its file non-atomically
        scratch_sig = Path(scratch) / "release.sig"
        config.sign(release_dir, scratch_sig)
        data = scratch_sig.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return SignedRelease(signature=target, key_fingerprint=key_fingerprint(key.public_key()), files=tuple(sorted(signed_digests(data))))


def signed_digests(bundle: bytes) -> dict[str, str]:
    """File name -> sha256 hex that a model-signing bundle's statement lists (read for messages; the library verifies).

    Raises `ValueError` when the bytes are not such a bundle."""
    try:
        document = json.loads(bundle)
        statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"], validate=True))
        resources = statement["predicate"]["resources"]
        return {str(r["name"]): str(r["digest"]) for r in resources if r.get("algorithm") == "sha256"}
    except (json.JSONDecodeError, UnicodeDecodeError, binascii.Error, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a model-signing bundle ({type(exc).__name__}: {exc})") from None


def _bundle_key_hint(bundle: bytes) -> str | None:
    try:
        hint = json.loads(bundle)["verificationMaterial"]["publicKey"]["hint"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return None
    return hint if isinstance(hint, str) else None


def _changed_files(release_dir: Path, signed: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(differing, missing, unsigned) file names of the release against the signed list."""
    present = {p.name for p in release_dir.iterdir() if p.is_file() or p.is_symlink()}
    differing = sorted(
        n for n in signed if n in present and not (release_dir / n).is_symlink() and sha256_file(release_dir / n) != signed[n]
    )
    missing = sorted(n for n in signed if n not in present)
    unsigned = sorted(present - set(signed))
    return differing, missing, unsigned


def verify_signature(release_dir: Path, public_key: Path, signature: Path | None = None) -> list[str]:
    """Every problem of the signature of `release_dir` (empty when model-signing verifies it with `public_key`).

    Each problem names its cause: no or unreadable signature, the wrong key, a signature made for another release, or
    files changed after signing. Raises `ConfigError` for a public key that is not a usable EC key."""
    from geno_pipeline.release.verify import verify_bundle

    release_dir = Path(release_dir)
    target = Path(signature) if signature is not None else default_signature_path(release_dir)
    key = _load_public_key(Path(public_key))
    model_signing = _model_signing()
    if not target.is_file():
        return [f"{target}: no signature; fix: sign with `geno-pipeline sign {release_dir} --private-key KEY` or pass --signature"]
    data = target.read_bytes()
    try:
        signed = signed_digests(data)
    except ValueError as exc:
        return [f"{target}: unreadable signature: {exc}"]
    hint = _bundle_key_hint(data)
    if hint is not None and hint != key_fingerprint(key):
        return [
            f"{target}: wrong key: the release was signed by the key with fingerprint {hint[:16]}..., "
            f"not by the private key of {public_key} ({key_fingerprint(key)[:16]}...)"
        ]
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)).verify(release_dir, target)
    except Exception as exc:  # the library raises ValueError, cryptography's InvalidSignature, protobuf and OS errors
        return [_signature_failure(release_dir, target, public_key, signed, exc, verify_bundle(release_dir))]
    return []


def _signature_failure(release_dir: Path, target: Path, public_key: Path, signed: dict[str, str], exc: Exception, own: list[str]) -> str:
    from cryptography.exceptions import InvalidSignature

    if isinstance(exc, InvalidSignature):
        return f"{target}: wrong key or altered signature: the signature does not verify with {public_key}"
    text = str(exc)
    if text.startswith("Key mismatch"):
        return f"{target}: wrong key: the release was not signed by the private key of {public_key}"
    if not text.startswith("Signature mismatch"):
        return f"{target}: the signature does not verify ({type(exc).__name__}: {text[:300]})"
    differing, missing, unsigned = _changed_files(release_dir, signed)
    parts = [f"{len(differing)} differ ({', '.join(differing)})"] if differing else []
    parts += [f"missing: {', '.join(missing)}"] if missing else []
    parts += [f"not signed: {', '.join(unsigned)}"] if unsigned else []
    detail = "; ".join(parts) or text[:300]
    if own:  # the release's own checksums fail too: its files were changed after it was written and signed
        return f"{target}: tampered release: files changed after signing: {detail}"
    return (
        f"{target}: this release does not match its signature: {detail}. Its own SHA256SUMS agrees with its files, so either "
        "the files and SHA256SUMS were rewritten after signing, or the signature was made for another release; a release "
        "that differs from its signature is not the signed one; fix: fetch the release and its signature again from the "
        "publisher, and do not use these files until they verify"
    )


def password_from_env() -> str | None:
    """The private key's passphrase from `PASSWORD_ENV`, or None when it is unset or empty."""
    return os.environ.get(PASSWORD_ENV) or None
