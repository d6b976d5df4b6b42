"""Optional HMAC signatures on index manifests, so that write access to the store is not enough to
publish what readers serve.

Threat: someone who can write to the bucket (a leaked pipeline credential, a compromised worker)
but does not hold the signing key. Checksums alone do not stop them: they can write a version
folder whose manifest lists the sha256 of their own files and move CURRENT to it (CURRENT records
the manifest's sha256, which they can also compute). With $GLASSFINDER_INDEX_SIGNING_KEY set,
publishers write `manifest.json.hmac` beside each manifest (HMAC-SHA256 of the manifest's exact
bytes, which name the version and list every file's sha256), and readers holding the same key
refuse a version whose signature is missing or wrong.

Not covered: a writer without the key can still delete versions, or move CURRENT back to an
older version that was validly signed (a replay); anyone holding the key can publish anything.
Without the key set, signatures are neither written nor checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from glassfinder import settings
from glassfinder.errors import IndexSignatureError

KEY_ENV = settings.INDEX_SIGNING_KEY_ENV
SIGNATURE_SUFFIX = ".hmac"
#: Shortest key accepted: an HMAC key is only as strong as it is long (16 bytes = 128 bits).
MIN_KEY_BYTES = 16


def signing_key(environ: dict[str, str] | None = None) -> bytes | None:
    """The key from $GLASSFINDER_INDEX_SIGNING_KEY (None when unset); a short key is an error."""
    raw = settings.env(KEY_ENV, environ)
    if not raw:
        return None
    key = raw.encode()
    if len(key) < MIN_KEY_BYTES:
        raise IndexSignatureError(
            f"{KEY_ENV} must be at least {MIN_KEY_BYTES} bytes long, got {len(key)}: use e.g. "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return key


def key_id(key: bytes) -> str:
    """A short, non-secret name of a key, so a mismatch says which key signed."""
    return hashlib.sha256(b"glassfinder-key-id:" + key).hexdigest()[:12]


def sign(manifest_bytes: bytes, key: bytes) -> bytes:
    """The signature file's bytes for a manifest."""
    mac = hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()
    return json.dumps({"alg": "HMAC-SHA256", "key_id": key_id(key), "mac": mac}, sort_keys=True).encode()


def verify(manifest_bytes: bytes, signature: bytes | None, key: bytes, *, where: str) -> None:
    """Raise IndexSignatureError unless `signature` is this key's HMAC of `manifest_bytes`."""
    if signature is None:
        raise IndexSignatureError(
            f"{where} is not signed, but readers hold a signing key ({KEY_ENV}, key id {key_id(key)}): "
            "refusing a version published without the key"
        )
    try:
        body = json.loads(signature)
        mac, signed_by = str(body["mac"]), str(body.get("key_id", "?"))
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexSignatureError(f"{where}: signature file is not a signature ({exc})") from exc
    expected = hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, expected):
        raise IndexSignatureError(
            f"{where}: HMAC does not match (signed with key id {signed_by}, readers hold key id "
            f"{key_id(key)}); refusing a manifest edited or signed without the key"
        )
