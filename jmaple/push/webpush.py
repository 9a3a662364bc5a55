"""Web Push for PushSubscription keys: RFC 8291 encryption, RFC 8292 VAPID, RFC 8030 request headers.

Pure functions and one small class: no HTTP, no SQL. The webhook delivery code builds a request from
`push_headers()`, `VapidKey.headers()`, `CONTENT_HEADERS` and `encrypt()`.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import logging
import os
import re
import secrets
import struct
import urllib.parse
from pathlib import Path
from types import MappingProxyType

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

CURVE = ec.SECP256R1()
PUBLIC_KEY_SIZE = 65             # X9.62 uncompressed P-256 point: 0x04 || x || y
AUTH_SECRET_SIZE = 16            # RFC 8291 §3.2
SALT_SIZE = 16                   # RFC 8188 §2.1
TAG_SIZE = 16                    # AEAD_AES_128_GCM expansion
HEADER_SIZE = SALT_SIZE + 4 + 1 + PUBLIC_KEY_SIZE   # 86 octets, keyid = the sender's public key
MAX_BODY_SIZE = 4096             # RFC 8030 §7.2: push services need accept no larger body
MIN_RECORD_SIZE = 18             # RFC 8188 §2.1
MAX_PAYLOAD_SIZE = MAX_BODY_SIZE - HEADER_SIZE - 1 - TAG_SIZE   # 3993 octets, RFC 8291 §4

# Headers of every encrypted push message (RFC 8291 §4: aes128gcm is the one and only coding).
CONTENT_HEADERS = MappingProxyType({
    "Content-Encoding": "aes128gcm",
    "Content-Type": "application/octet-stream",
})

URGENCIES = ("very-low", "low", "normal", "high")   # RFC 8030 §5.3, least urgent first
MAX_TTL = 2**31                  # RFC 8030 §5.2: the largest value a recipient must represent
MAX_VAPID_LIFETIME = 24 * 3600   # RFC 8292 §2: exp no more than 24 hours ahead
MAX_TOPIC_LENGTH = 32            # RFC 8030 §5.4

_KEY_TEXT = re.compile(r"[A-Za-z0-9_\-+/]*={0,2}")
_TOPIC = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_TOPIC_LENGTH}}}")
_MAX_KEY_TEXT = 1024             # far above any key; refuses huge input before decoding it
_VAPID_JWT_HEADER = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ES256"}').rstrip(b"=")
VAPID_CACHE_SIZE = 1024          # audiences (push service origins) whose token is kept


class PayloadTooLargeError(ValueError):
    """The payload does not fit in the one record a push message may have (RFC 8291 §4)."""


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2), as Web Push and JWT use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_key(value: str) -> bytes:
    """Decode a key given as base64url, padded or not; the standard alphabet is tolerated too.

    Raises ValueError for anything else (wrong type, whitespace, stray characters, bad padding).
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a base64url string, not {type(value).__name__}")
    if len(value) > _MAX_KEY_TEXT:
        raise ValueError("key is too long")
    if not _KEY_TEXT.fullmatch(value):
        raise ValueError("not base64url: only A-Z a-z 0-9 - _ and trailing = may appear")
    if ("-" in value or "_" in value) and ("+" in value or "/" in value):
        raise ValueError("not base64url: mixes the base64url and standard alphabets")
    body = value.rstrip("=")
    if len(body) % 4 == 1:
        raise ValueError("not base64url: impossible length")
    if value != body and len(value) % 4:
        raise ValueError("not base64url: wrong padding")
    # RFC 8620 §7.2 says base64url; some clients send standard base64 (btoa), and the two alphabets
    # differ only in these two characters, so accepting both is unambiguous.
    body = body.replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _load_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """An uncompressed P-256 point, checked to lie on the curve; ValueError otherwise."""
    if len(raw) != PUBLIC_KEY_SIZE or raw[0] != 0x04:
        raise ValueError(f"must be an uncompressed P-256 point ({PUBLIC_KEY_SIZE} octets starting with 0x04), "
                         f"got {len(raw)} octets")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, raw)
    except ValueError:
        raise ValueError("is not a point on the P-256 curve") from None


def validate_keys(p256dh: str, auth: str) -> tuple[bytes, bytes]:
    """Check PushSubscription keys (RFC 8620 §7.2, RFC 8291 §3) and return them decoded.

    Raises ValueError whose message starts with the name of the bad key ("p256dh: ..." or "auth: ...").
    """
    public, _, secret = _parse_keys(p256dh, auth)
    return public, secret


def _parse_keys(p256dh: str, auth: str) -> tuple[bytes, ec.EllipticCurvePublicKey, bytes]:
    try:
        public = decode_key(p256dh)
        key = _load_public_key(public)
    except ValueError as exc:
        raise ValueError(f"p256dh: {exc}") from None
    try:
        secret = decode_key(auth)
    except ValueError as exc:
        raise ValueError(f"auth: {exc}") from None
    if len(secret) != AUTH_SECRET_SIZE:
        raise ValueError(f"auth: must be {AUTH_SECRET_SIZE} octets, got {len(secret)}")
    return public, key, secret


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def encrypt(payload: bytes, p256dh: str, auth: str, *, record_size: int = 4096,
            sender_private_key: ec.EllipticCurvePrivateKey | None = None, salt: bytes | None = None) -> bytes:
    """Encrypt a push message body for one subscription (RFC 8291, aes128gcm of RFC 8188).

    The result is the 86-octet header (salt, rs, keyid = the sender's ephemeral public key) followed by
    exactly one record. `sender_private_key` and `salt` are for reproducing test vectors only; by default
    each message gets a fresh key pair and salt, as RFC 8291 §2 requires.

    Raises ValueError for bad keys (naming p256dh or auth), a bad salt or record size, and
    PayloadTooLargeError (a ValueError) when the payload exceeds one record or MAX_PAYLOAD_SIZE.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError("payload must be bytes")
    payload = bytes(payload)
    if isinstance(record_size, bool) or not isinstance(record_size, int) or \
            not MIN_RECORD_SIZE <= record_size <= MAX_BODY_SIZE:
        raise ValueError(f"record_size must be an integer from {MIN_RECORD_SIZE} to {MAX_BODY_SIZE}")
    # RFC 8291 §4: one record holding payload, the 0x02 delimiter and the tag, within rs; and the
    # whole body within what every push service accepts.
    if len(payload) + 1 + TAG_SIZE > record_size or len(payload) > MAX_PAYLOAD_SIZE:
        raise PayloadTooLargeError(
            f"payload of {len(payload)} octets does not fit in one record "
            f"(at most {min(record_size - 1 - TAG_SIZE, MAX_PAYLOAD_SIZE)} octets)")
    if salt is None:
        salt = secrets.token_bytes(SALT_SIZE)
    elif not isinstance(salt, bytes) or len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} octets")
    ua_public, ua_key, auth_secret = _parse_keys(p256dh, auth)
    if sender_private_key is None:
        sender_private_key = ec.generate_private_key(CURVE)
    elif not isinstance(sender_private_key, ec.EllipticCurvePrivateKey) or \
            not isinstance(sender_private_key.curve, ec.SECP256R1):
        raise ValueError("sender_private_key must be a P-256 private key")
    as_public = sender_private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

    # RFC 8291 §3.4, spelt out with HMAC-SHA-256 as the RFC does (each HKDF-Expand is one block).
    ecdh_secret = sender_private_key.exchange(ec.ECDH(), ua_key)
    prk_key = _hmac(auth_secret, ecdh_secret)
    key_info = b"WebPush: info\x00" + ua_public + as_public
    ikm = _hmac(prk_key, key_info + b"\x01")
    prk = _hmac(salt, ikm)
    cek = _hmac(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
    nonce = _hmac(prk, b"Content-Encoding: nonce\x00\x01")[:12]   # record 0: XOR with SEQ 0 is a no-op

    # The last (only) record ends with the delimiter 0x02 and no padding (RFC 8188 §2).
    record = AESGCM(cek).encrypt(nonce, payload + b"\x02", None)
    header = salt + struct.pack("!IB", record_size, PUBLIC_KEY_SIZE) + as_public
    return header + record


def push_headers(ttl: int, urgency: str = "normal", topic: str | None = None) -> dict[str, str]:
    """The RFC 8030 request headers TTL (§5.2), Urgency (§5.3) and Topic (§5.4); ValueError if invalid."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"TTL must be an integer from 0 to {MAX_TTL}, got {ttl!r}")
    if urgency not in URGENCIES:
        raise ValueError(f"Urgency must be one of {', '.join(URGENCIES)}, got {urgency!r}")
    headers = {"TTL": str(ttl), "Urgency": urgency}
    if topic is not None:
        if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
            raise ValueError(f"Topic must be 1 to {MAX_TOPIC_LENGTH} characters of the base64url alphabet, "
                             f"got {topic!r}")
        headers["Topic"] = topic
    return headers


def make_topic(subscription_id: str, scope: str = "") -> str:
    """A valid Topic (32 base64url characters) derived from a subscription id and an optional scope.

    Hashed, so the push service learns nothing of our ids; equal inputs give equal topics, which is
    what lets a newer message replace an undelivered older one (RFC 8030 §5.4).
    """
    digest = hashlib.sha256(b"jmaple topic\x00")
    for part in (subscription_id, scope):
        data = part.encode("utf-8")
        digest.update(struct.pack("!I", len(data)) + data)   # length prefix: ("ab","c") != ("a","bc")
    return b64url(digest.digest()[:24])


def origin(url: str) -> str:
    """The ASCII serialization of a URL's origin (RFC 6454 §6): scheme://host[:port], default port omitted.

    Raises ValueError unless the URL is http(s) with a host.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError(f"push URL must be https (or http), got {url!r}")
    host = parts.hostname
    port = parts.port       # ValueError for a port that is not a number in range
    if not host:
        raise ValueError(f"push URL has no host: {url!r}")
    # RFC 8292 §2 asks for the Unicode serialization; push services have ASCII host names, and those
    # that are IDNs compare in A-label form, like browsers' PushSubscription endpoint origins.
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"https": 443, "http": 80}[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def validate_contact(contact: str) -> str:
    """Check a VAPID `sub` contact (RFC 8292 §2.1): a mailto: or https: URI; ValueError otherwise."""
    if not isinstance(contact, str) or not contact.isascii() or not contact.isprintable() or " " in contact:
        raise ValueError(f"VAPID contact must be a mailto: or https: URI, got {contact!r}")
    if contact.startswith("mailto:") and len(contact) > len("mailto:") and "@" in contact:
        return contact
    if contact.startswith("https://") and urllib.parse.urlsplit(contact).hostname:
        return contact
    raise ValueError(f"VAPID contact must be a mailto: or https: URI, got {contact!r}")


class VapidKey:
    """The server's VAPID signing key (RFC 8292) and a cache of the tokens it signed, per audience.

    Never use it for the message encryption of RFC 8291: §3.2 of RFC 8292 requires a different key there
    (encrypt() takes a fresh one per message).
    """

    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(private_key.curve,
                                                                                     ec.SECP256R1):
            raise ValueError("a VAPID key must be a P-256 private key")
        self.private_key = private_key
        self.public_key_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.application_server_key = b64url(self.public_key_bytes)
        # (audience, contact, lifetime) -> (token, exp), least recently used first.
        self._tokens: collections.OrderedDict[tuple[str, str, int], tuple[str, int]] = collections.OrderedDict()

    @classmethod
    def generate(cls) -> VapidKey:
        """A new random key."""
        return cls(ec.generate_private_key(CURVE))

    @classmethod
    def from_pem(cls, data: bytes) -> VapidKey:
        """Load an unencrypted PEM (PKCS#8 or SEC 1) P-256 private key; ValueError if it is not one."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("a VAPID key must be a P-256 private key")
        return cls(key)

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    @classmethod
    def load_or_create(cls, path: Path) -> VapidKey:
        """The key stored at `path`, created (mode 0600) on first use and reused ever after.

        Safe when several processes start at once: the file appears complete or not at all, is never
        replaced once there, and a process that loses the race loads the winner's key. Raises ValueError
        (naming the path) if the file holds something else, OSError if it cannot be read or written.
        """
        path = Path(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        key = cls.generate()
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)
                file.write(key.to_pem())
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(tmp, path)   # unlike rename, fails if another process got there first
            except FileExistsError:
                return cls._load(path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("created VAPID key %s", path)
        return key

    @classmethod
    def _load(cls, path: Path) -> VapidKey:
        data = path.read_bytes()
        mode = path.stat().st_mode
        if mode & 0o077:
            log.warning("VAPID key %s is open to group or others (mode %o); it should be 0600", path, mode & 0o777)
        try:
            return cls.from_pem(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def _token(self, audience: str, contact: str, now: float, lifetime: int) -> str:
        """A signed VAPID JWT for `audience` (an origin), reused until shortly before it expires."""
        key = (audience, contact, lifetime)
        cached = self._tokens.get(key)
        # Reuse while more than a tenth of the lifetime (at most 10 min) is left, so a token never
        # reaches a push service just as it expires, even with some clock skew; and never one issued
        # "in the future" (the clock was set back), whose exp could then be over 24 h away.
        margin = min(lifetime // 10, 600)
        if cached is not None and cached[1] - lifetime <= now < cached[1] - margin:
            self._tokens.move_to_end(key)
            return cached[0]
        exp = int(now) + lifetime
        claims = orjson.dumps({"aud": audience, "exp": exp, "sub": contact})
        signing_input = _VAPID_JWT_HEADER + b"." + b64url(claims).encode("ascii")
        r, s = decode_dss_signature(self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        # RFC 7518 §3.4: ES256 is r || s, 32 octets each, not the DER the library returns.
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        token = signing_input.decode("ascii") + "." + b64url(signature)
        self._tokens[key] = (token, exp)
        self._tokens.move_to_end(key)
        while len(self._tokens) > VAPID_CACHE_SIZE:
            self._tokens.popitem(last=False)
        return token

    def headers(self, endpoint_url: str, contact: str, now: float, lifetime: int = 12 * 3600) -> dict[str, str]:
        """The Authorization header of RFC 8292 §3 for a push to `endpoint_url`.

        `now` is the current time (seconds since the epoch); the token expires `lifetime` seconds later.
        Raises ValueError for a URL without an http(s) origin, a bad contact, or a lifetime that is not
        between 1 second and 24 hours.
        """
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or \
                not 0 < lifetime <= MAX_VAPID_LIFETIME:
            raise ValueError(f"VAPID token lifetime must be 1 to {MAX_VAPID_LIFETIME} seconds, got {lifetime!r}")
        validate_contact(contact)
        token = self._token(origin(endpoint_url), contact, now, lifetime)
        return {"Authorization": f"vapid t={token}, k={self.application_server_key}"}
