"""Release signing with OpenSSF model-signing: sign/verify, wrong key, tampering, another release's signature, the
upstream CLI both ways, bad keys, and a release that stays byte-identical whether or not it was signed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("model_signing", reason="the `sign` extra is not installed (pip install -e '.[sign]')")

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from geno_pipeline.errors import ConfigError, VerifyError
from geno_pipeline.release.signing import (
    PASSWORD_ENV,
    default_signature_path,
    sign_release,
    signed_digests,
    verify_signature,
)
from tests.conftest import copy_project, run_main

REPO = Path(__file__).resolve().parent.parent
BUNDLE_FILES = (
    "MODEL_CARD.md", "SHA256SUMS", "heldout.png", "loss.png", "metadata.json", "metrics.json", "model.safetensors", "provenance.intoto.json"
)  # fmt: skip
MODEL_SIGNING = shutil.which("model_signing") or str(Path(sys.executable).parent / "model_signing")


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geno_pipeline", *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}
    )


def _tree(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def write_key(directory: Path, name: str, key: object, password: bytes | None = None) -> tuple[Path, Path]:
    """PEM private and public key files, as `openssl ecparam -genkey` / `openssl ec -pubout` would write them."""
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private = directory / f"{name}.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))  # type: ignore[attr-defined]
    public = directory / f"{name}.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    )
    return private, public


@pytest.fixture(scope="module")
def releases(tiny_released: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny releases (train.seed 5, the session's tiny run, and 6) and two P-256 key pairs."""
    from geno_pipeline.cli import main

    base = tmp_path_factory.mktemp("signing")
    roots = {"a": base / "a" / "release"}
    shutil.copytree(tiny_released / "artifacts" / "release", roots["a"])
    other = copy_project(tiny_released, base / "b", without_release=True)
    params = yaml.safe_load((other / "params.yaml").read_text())
    assert params["train"]["seed"] == 5
    params["train"]["seed"] = 6
    (other / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["preflight"], ["train", "--no-progress"], ["release"]):
        assert main([*args, "--root", str(other)]) == 0, args
    roots["b"] = other / "artifacts" / "release"
    keys = base / "keys"
    keys.mkdir()
    for name in ("alice", "mallory"):
        private, public = write_key(keys, name, ec.generate_private_key(ec.SECP256R1()))
        roots[name], roots[f"{name}.pub"] = private, public
    return roots


@pytest.fixture()
def signed(releases: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of release a, signed by alice beside it (release.sig)."""
    bundle = tmp_path / "release"
    shutil.copytree(releases["a"], bundle)
    proc = run_main("sign", str(bundle), "--private-key", str(releases["alice"]))  # in this process: the tests verify it
    assert proc.returncode == 0, proc.stderr
    return bundle


@pytest.mark.slow
def test_sign_then_verify_succeeds_and_leaves_the_release_byte_identical(releases: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "release"
    shutil.copytree(releases["a"], bundle)
    before = _tree(bundle)
    proc = cli("sign", str(bundle), "--private-key", str(releases["alice"]))
    assert proc.returncode == 0, proc.stderr
    assert f"sign: {bundle}: signed 8 files with key " in proc.stdout and f"wrote {tmp_path / 'release.sig'}" in proc.stdout
    assert _tree(bundle) == before  # nothing added or changed inside: same SHA256SUMS, same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release", "release.sig"]
    assert sorted(signed_digests((tmp_path / "release.sig").read_bytes())) == sorted(BUNDLE_FILES)
    proc = cli("verify", str(bundle), "--public-key", str(releases["alice.pub"]))
    assert proc.returncode == 0, proc.stderr
    assert "OK (checksums, schemas, provenance; signature" in proc.stdout
    assert verify_signature(bundle, releases["alice.pub"]) == []
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout  # coreutils still sees exactly the bundle
    plain = cli("verify", str(bundle))
    assert plain.returncode == 0 and "not checked: pass --public-key PUB" in plain.stdout


@pytest.mark.slow
def test_signing_twice_gives_different_signatures_over_the_same_files(signed: Path, releases: dict[str, Path], tmp_path: Path) -> None:
    first = (signed.parent / "release.sig").read_bytes()
    again = tmp_path / "again.sig"
    sign_release(signed, releases["alice"], again)
    assert again.read_bytes() != first  # ECDSA: why the signature lives outside the deterministic bundle
    assert signed_digests(again.read_bytes()) == signed_digests(first)
    assert verify_signature(signed, releases["alice.pub"], again) == []


@pytest.mark.slow
def test_verify_with_another_key_fails(signed: Path, releases: dict[str, Path]) -> None:
    proc = cli("verify", str(signed), "--public-key", str(releases["mallory.pub"]))
    assert proc.returncode == 7, proc.stdout
    assert "wrong key: the release was signed by the key with fingerprint" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_verify_byte_flip_in_any_bundled_file_fails(signed: Path, releases: dict[str, Path], name: str) -> None:
    path = signed / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = cli("verify", str(signed), "--public-key", str(releases["alice.pub"]))
    assert proc.returncode == 7
    assert f"tampered release: files changed after signing: 1 differ ({name})" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_verify_added_or_removed_file_fails(signed: Path, releases: dict[str, Path]) -> None:
    (signed / "extra.txt").write_text("x")
    problems = verify_signature(signed, releases["alice.pub"])
    assert len(problems) == 1 and "not signed: extra.txt" in problems[0]
    (signed / "extra.txt").unlink()
    (signed / "MODEL_CARD.md").unlink()
    problems = verify_signature(signed, releases["alice.pub"])
    assert len(problems) == 1 and "missing: MODEL_CARD.md" in problems[0]


@pytest.mark.slow
def test_verify_signature_of_another_release_fails(signed: Path, releases: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.sig"
    sign_release(releases["b"], releases["alice"], other)
    assert verify_signature(releases["b"], releases["alice.pub"], other) == []
    proc = cli("verify", str(signed), "--public-key", str(releases["alice.pub"]), "--signature", str(other))
    assert proc.returncode == 7
    assert "this release does not match its signature:" in proc.stderr and "model.safetensors" in proc.stderr
    assert "intact" not in proc.stderr and "sign this release" not in proc.stderr  # never vouch for it, never advise signing it


@pytest.mark.slow
def test_verify_altered_or_missing_signature_fails(signed: Path, releases: dict[str, Path]) -> None:
    sig = signed.parent / "release.sig"
    document = json.loads(sig.read_bytes())
    raw = bytearray(__import__("base64").b64decode(document["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 0x01
    document["dsseEnvelope"]["signatures"][0]["sig"] = __import__("base64").b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(document))
    (problem,) = verify_signature(signed, releases["alice.pub"])
    assert "wrong key or altered signature" in problem
    sig.write_text("not a bundle")
    (problem,) = verify_signature(signed, releases["alice.pub"])
    assert "unreadable signature: not a model-signing bundle" in problem
    sig.unlink()
    proc = cli("verify", str(signed), "--public-key", str(releases["alice.pub"]))
    assert proc.returncode == 7 and "release.sig: no signature; fix: sign with" in proc.stderr


@pytest.mark.slow
def test_upstream_model_signing_cli_verifies_our_signature(signed: Path, releases: dict[str, Path]) -> None:
    """A third party with only the public key and the `model_signing` CLI, without geno-pipeline."""
    args = ["verify", "key", str(signed), "--signature", str(signed.parent / "release.sig"), "--public_key"]
    proc = subprocess.run([MODEL_SIGNING, *args, str(releases["alice.pub"])], capture_output=True, text=True)
    assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run([MODEL_SIGNING, *args, str(releases["mallory.pub"])], capture_output=True, text=True)
    assert proc.returncode != 0 and "Verification failed" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_we_verify_a_signature_made_by_the_upstream_cli(releases: dict[str, Path], tmp_path: Path) -> None:
    sig = tmp_path / "upstream.sig"
    args = ["sign", "key", str(releases["a"]), "--signature", str(sig), "--private_key", str(releases["alice"])]
    proc = subprocess.run([MODEL_SIGNING, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verify_signature(releases["a"], releases["alice.pub"], sig) == []


@pytest.mark.slow
def test_sign_refuses_a_signature_inside_the_release(releases: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "release"
    shutil.copytree(releases["a"], bundle)
    proc = cli("sign", str(bundle), "--private-key", str(releases["alice"]), "--signature", str(bundle / "model.sig"))
    assert proc.returncode == 2 and "must not lie inside the release directory" in proc.stderr
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)


@pytest.mark.slow
def test_sign_refuses_a_release_that_does_not_verify(releases: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "release"
    shutil.copytree(releases["a"], bundle)
    (bundle / "metrics.json").write_text("{}\n")
    with pytest.raises(VerifyError, match="refusing to sign a release that does not verify"):
        sign_release(bundle, releases["alice"])
    assert not default_signature_path(bundle).exists()


@pytest.mark.slow
def test_bad_keys_get_one_clear_message(releases: dict[str, Path], tmp_path: Path) -> None:
    bundle = releases["a"]
    rsa_key, _ = write_key(tmp_path, "rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    k1, k1_pub = write_key(tmp_path, "k1", ec.generate_private_key(ec.SECP256K1()))
    (tmp_path / "junk.pem").write_text("not a key\n")
    out = tmp_path / "out.sig"
    cases = [
        (tmp_path / "absent.pem", "private key not found"),
        (tmp_path / "junk.pem", "not a PEM private key"),
        (rsa_key, "not an elliptic-curve private key"),
        (k1, "curve secp256k1, which model-signing does not support"),
    ]
    for key, needle in cases:
        proc = cli("sign", str(bundle), "--private-key", str(key), "--signature", str(out))
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, (key, proc.stderr)
    assert not out.exists()
    proc = cli("verify", str(bundle), "--public-key", str(k1_pub), "--signature", str(out))
    assert proc.returncode == 2 and "curve secp256k1" in proc.stderr
    proc = cli("verify", str(bundle), "--signature", str(out))
    assert proc.returncode == 2 and "--signature needs --public-key" in proc.stderr


@pytest.mark.slow
def test_encrypted_key_needs_its_passphrase_from_the_environment(releases: dict[str, Path], tmp_path: Path) -> None:
    key, public = write_key(tmp_path, "locked", ec.generate_private_key(ec.SECP384R1()), password=b"s3cret")
    out = tmp_path / "locked.sig"
    proc = cli("sign", str(releases["a"]), "--private-key", str(key), "--signature", str(out), env={PASSWORD_ENV: "wrong"})
    assert proc.returncode == 2 and "not a PEM private key" in proc.stderr and f"passphrase in {PASSWORD_ENV} is wrong" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    proc = subprocess.run([sys.executable, "-m", "geno_pipeline", "sign", str(releases["a"]), "--private-key", str(key),
                           "--signature", str(out)], capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 2 and f"the private key is encrypted; fix: put its passphrase in the {PASSWORD_ENV}" in proc.stderr
    proc = cli("sign", str(releases["a"]), "--private-key", str(key), "--signature", str(out), env={PASSWORD_ENV: "s3cret"})
    assert proc.returncode == 0, proc.stderr
    assert verify_signature(releases["a"], public, out) == []


@pytest.mark.slow
def test_missing_library_names_the_extra(releases: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "model_signing", None)
    with pytest.raises(ConfigError, match=r"pip install -c requirements.lock -e '\.\[sign\]'"):
        verify_signature(releases["a"], releases["alice.pub"])


@given(st.binary(max_size=400))
def test_signed_digests_rejects_arbitrary_bytes_with_value_error_only(data: bytes) -> None:
    try:
        digests = signed_digests(data)
    except ValueError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items())


def test_default_signature_path_is_beside_the_release() -> None:
    assert default_signature_path(Path("artifacts/release")) == Path("artifacts/release.sig")
    assert default_signature_path(Path("/x/y/bundle/")) == Path("/x/y/bundle.sig")


@pytest.mark.slow
def test_verify_a_forgery_with_rewritten_checksums_is_never_called_intact(signed: Path, releases: dict[str, Path]) -> None:
    """The model card edited after signing and SHA256SUMS rewritten to match: the bundle's own checks pass, the signed
    check fails, and the message neither vouches for the release nor advises signing it."""
    from geno_pipeline.checksums import sha256_file, write_sha256sums
    from geno_pipeline.release.verify import verify_bundle

    card = signed / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\nThis model is certified safe.\n")
    provenance = json.loads((signed / "provenance.intoto.json").read_text())
    for subject in provenance["subject"]:
        if subject["name"] == "MODEL_CARD.md":
            subject["digest"]["sha256"] = sha256_file(card)
    (signed / "provenance.intoto.json").write_text(json.dumps(provenance, indent=2))
    write_sha256sums(signed, sorted(p.name for p in signed.iterdir() if p.name != "SHA256SUMS"))
    assert verify_bundle(signed) == []  # the forgery is self-consistent
    proc = cli("verify", str(signed), "--public-key", str(releases["alice.pub"]))
    assert proc.returncode == 7
    text = " ".join(proc.stderr.split())
    assert "this release does not match its signature: 3 differ (MODEL_CARD.md, SHA256SUMS, provenance.intoto.json)" in text, text
    assert "intact" not in proc.stderr and "sign this release" not in proc.stderr
