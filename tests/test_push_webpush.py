"""Web Push payload encryption (RFC 8291), VAPID (RFC 8292) and RFC 8030 headers: jmaple.push.webpush."""

from __future__ import annotations

import base64
import logging
import os
import stat
import struct
import threading

import http_ece
import orjson
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jmaple.push.webpush import (
    CONTENT_HEADERS, MAX_PAYLOAD_SIZE, VAPID_CACHE_SIZE, PayloadTooLargeError, VapidKey, decode_key, encrypt,
    make_topic, origin, push_headers, validate_contact, validate_keys,
)


def unb64(text: str) -> bytes:
    """Decode the RFC's base64url, which it wraps with whitespace."""
    text = "".join(text.split())
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes, *, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if pad else text.rstrip("=")


def private_key_from_raw(raw: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


def raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


# RFC 8291 §5 and Appendix A.
RFC_PLAINTEXT = b"When I grow up, I want to be a watermelon"
RFC_AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
RFC_UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
RFC_UA_PUBLIC = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
RFC_AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
RFC_AS_PUBLIC = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
RFC_SALT = "DGv6ra1nlYgDCS1FRnbzlw"
RFC_HEADER = """DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z
   9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml mlMoZIIgDll6e3vCYLocInmYWAmS6Tlz
   AC8wEqKK6PBru3jl7A8"""
RFC_CIPHERTEXT = """8pfeW0KbunFT06SuDKoJH9Ql87S1QUrd
   irN6GcG7sFz1y1sqLgVi1VhjVkHsUoEs bI_0LpXMuGvnzQ"""
RFC_MESSAGE = """DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml
   mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT
   pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"""


def receive(body: bytes, ua_private: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """A user agent's side of RFC 8291 §3.4, written independently with cryptography's HKDF."""
    salt = body[:16]
    rs, idlen = struct.unpack("!IB", body[16:21])
    assert idlen == 65, "keyid must be the sender's uncompressed public key (RFC 8291 §4)"
    as_public, record = body[21:86], body[86:]
    assert as_public[0] == 0x04
    assert 18 <= rs and len(record) <= rs, "exactly one record (RFC 8291 §4)"
    ecdh_secret = ua_private.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                                                              as_public))
    key_info = b"WebPush: info\x00" + raw_public(ua_private) + as_public
    ikm = HKDF(hashes.SHA256(), 32, salt=auth_secret, info=key_info).derive(ecdh_secret)
    cek = HKDF(hashes.SHA256(), 16, salt=salt, info=b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt=salt, info=b"Content-Encoding: nonce\x00").derive(ikm)
    padded = AESGCM(cek).decrypt(nonce, record, None)
    unpadded = padded.rstrip(b"\x00")
    assert unpadded[-1:] == b"\x02", "the last record's delimiter is 0x02 (RFC 8188 §2)"
    return unpadded[:-1]


def new_subscription() -> tuple[ec.EllipticCurvePrivateKey, str, bytes, str]:
    """A user agent's key pair and auth secret, as PushSubscription `keys` carry them."""
    ua_private = ec.generate_private_key(ec.SECP256R1())
    auth_secret = os.urandom(16)
    return ua_private, b64(raw_public(ua_private)), auth_secret, b64(auth_secret)


# --- RFC 8291 encryption -------------------------------------------------------------------------------


def test_rfc8291_example_is_reproduced_byte_for_byte():
    """RFC 8291 §5 / Appendix A: the given keys, salt and plaintext give exactly the given message."""
    assert unb64("V2hlbiBJIGdyb3cgdXAsIEkgd2FudCB0byBiZSBhIHdhdGVybWVsb24") == RFC_PLAINTEXT
    sender = private_key_from_raw(unb64(RFC_AS_PRIVATE))
    assert raw_public(sender) == unb64(RFC_AS_PUBLIC)

    body = encrypt(RFC_PLAINTEXT, RFC_UA_PUBLIC, RFC_AUTH, sender_private_key=sender, salt=unb64(RFC_SALT))

    assert body[:86] == unb64(RFC_HEADER)
    assert body[86:] == unb64(RFC_CIPHERTEXT)
    assert body == unb64(RFC_MESSAGE)
    # 86 + 41 + 1 + 16 octets; the example request's "Content-Length: 145" is one too many.
    assert len(body) == 144


def test_rfc8291_example_decrypts_with_the_receivers_private_key():
    """The test's receiver and http_ece both read the RFC's message, so they can judge ours."""
    ua_private = private_key_from_raw(unb64(RFC_UA_PRIVATE))
    assert raw_public(ua_private) == unb64(RFC_UA_PUBLIC)
    assert receive(unb64(RFC_MESSAGE), ua_private, unb64(RFC_AUTH)) == RFC_PLAINTEXT
    assert http_ece.decrypt(unb64(RFC_MESSAGE), private_key=ua_private, auth_secret=unb64(RFC_AUTH)) \
        == RFC_PLAINTEXT


@pytest.mark.parametrize("payload", [
    b"",
    b'{"@type":"StateChange","changed":{"a1":{"Email":"42","Mailbox":"7"}}}',
    bytes(range(256)) * 15,
    b"\x00" * 100,                       # trailing zeros must survive the padding scheme
    os.urandom(MAX_PAYLOAD_SIZE),
])
def test_round_trip_with_random_keys(payload):
    """RFC 8291 §3: what we encrypt, the subscriber decrypts with its private key and auth secret."""
    ua_private, p256dh, auth_secret, auth = new_subscription()
    body = encrypt(payload, p256dh, auth)
    assert receive(body, ua_private, auth_secret) == payload
    assert http_ece.decrypt(body, private_key=ua_private, auth_secret=auth_secret) == payload
    assert len(body) == 86 + len(payload) + 1 + 16
    assert struct.unpack("!IB", body[16:21]) == (4096, 65)


def test_each_message_has_a_fresh_salt_and_sender_key():
    """RFC 8291 §2: a new ECDH key pair and a random salt per message."""
    _, p256dh, _, auth = new_subscription()
    first, second = encrypt(b"same", p256dh, auth), encrypt(b"same", p256dh, auth)
    assert first[:16] != second[:16]
    assert first[21:86] != second[21:86]
    assert first[86:] != second[86:]


def test_a_tampered_message_does_not_decrypt():
    ua_private, p256dh, auth_secret, auth = new_subscription()
    body = bytearray(encrypt(b"hello", p256dh, auth))
    body[-1] ^= 1
    with pytest.raises(Exception):
        receive(bytes(body), ua_private, auth_secret)
    _, _, other_secret, _ = new_subscription()
    with pytest.raises(Exception):
        receive(encrypt(b"hello", p256dh, auth), ua_private, other_secret)


def test_keys_padded_unpadded_or_standard_base64_give_the_same_message():
    """RFC 8620 §7.2 keys are base64url; padding and the standard alphabet are accepted as well."""
    ua_private, _, auth_secret, _ = new_subscription()
    sender, salt = ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
    public = raw_public(ua_private)
    spellings = [
        (b64(public), b64(auth_secret)),
        (b64(public, pad=True), b64(auth_secret, pad=True)),
        (base64.b64encode(public).decode(), base64.b64encode(auth_secret).decode()),
        (base64.b64encode(public).decode().rstrip("="), base64.b64encode(auth_secret).decode().rstrip("=")),
    ]
    bodies = {encrypt(b"x", p, a, sender_private_key=sender, salt=salt) for p, a in spellings}
    assert len(bodies) == 1
    assert receive(bodies.pop(), ua_private, auth_secret) == b"x"


def test_payload_limit_is_one_record_within_4096_octets():
    """RFC 8291 §4: one record; with rs 4096 and an 86-octet header, at most 3993 octets of payload."""
    _, p256dh, _, auth = new_subscription()
    assert MAX_PAYLOAD_SIZE == 3993
    assert len(encrypt(b"a" * 3993, p256dh, auth)) == 4096
    with pytest.raises(PayloadTooLargeError, match="3994 octets"):
        encrypt(b"a" * 3994, p256dh, auth)
    with pytest.raises(ValueError):     # PayloadTooLargeError is a ValueError
        encrypt(b"a" * 100_000, p256dh, auth)


def test_a_smaller_record_size_is_written_to_the_header_and_enforced():
    """RFC 8188 §2: the record (payload, delimiter, tag) must fit in rs."""
    ua_private, p256dh, auth_secret, auth = new_subscription()
    body = encrypt(b"b" * 83, p256dh, auth, record_size=100)
    assert struct.unpack("!I", body[16:20]) == (100,)
    assert http_ece.decrypt(body, private_key=ua_private, auth_secret=auth_secret) == b"b" * 83
    with pytest.raises(PayloadTooLargeError):
        encrypt(b"b" * 84, p256dh, auth, record_size=100)


@pytest.mark.parametrize("record_size", [17, 0, -1, 4097, 2**32, True, 4096.0, "4096"])
def test_invalid_record_sizes_are_refused(record_size):
    _, p256dh, _, auth = new_subscription()
    with pytest.raises(ValueError, match="record_size"):
        encrypt(b"", p256dh, auth, record_size=record_size)


@pytest.mark.parametrize("salt", [b"", b"x" * 15, b"x" * 17, "0123456789abcdef"])
def test_invalid_salts_are_refused(salt):
    _, p256dh, _, auth = new_subscription()
    with pytest.raises(ValueError, match="salt"):
        encrypt(b"", p256dh, auth, salt=salt)


def test_sender_key_must_be_p256():
    _, p256dh, _, auth = new_subscription()
    with pytest.raises(ValueError, match="P-256"):
        encrypt(b"", p256dh, auth, sender_private_key=ec.generate_private_key(ec.SECP384R1()))


def test_payload_must_be_bytes():
    _, p256dh, _, auth = new_subscription()
    with pytest.raises(TypeError):
        encrypt("text", p256dh, auth)


# --- keys ------------------------------------------------------------------------------------------------


def test_decode_key_accepts_base64url_with_or_without_padding():
    assert decode_key("BTBZMqHH6r4Tts7J_aSIgg") == unb64(RFC_AUTH)
    assert decode_key("BTBZMqHH6r4Tts7J_aSIgg==") == unb64(RFC_AUTH)
    assert decode_key("BTBZMqHH6r4Tts7J/aSIgg") == unb64(RFC_AUTH)
    assert decode_key("") == b""


@pytest.mark.parametrize("value", [
    "BTBZMqHH6r4Tts7J_aSIgg=",          # padding that does not complete a quantum
    "BTBZMqHH6r4Tts7J_aSIgg===",
    "BTBZ=MqHH6r4Tts7J_aSIgg",          # padding inside
    "BTBZMqHH6r4Tts7J_aSIg",            # impossible length (4n + 1 characters)
    "BTBZMqHH 6r4Tts7J_aSIgg",
    "BTBZMqHH6r4Tts7J_aSIgg\n",
    "BTBZMqHH6r4Tts7J!aSIgg",
    "BTBZMqHH6r4Tts7J_aSIg+",           # both alphabets at once
    "BTBZMqHH6r4Tts7J_aSIgé",
    "BTBZMqHH6r4Tts7J_aSIg\x00",
    "A" * 100_000,
    None, 16, b"BTBZMqHH6r4Tts7J_aSIgg", ["x"],
])
def test_decode_key_refuses_anything_else_with_value_error(value):
    with pytest.raises(ValueError):
        decode_key(value)


def test_validate_keys_returns_the_decoded_keys():
    assert validate_keys(RFC_UA_PUBLIC, RFC_AUTH) == (unb64(RFC_UA_PUBLIC), unb64(RFC_AUTH))


def _off_curve_point() -> bytes:
    point = bytearray(unb64(RFC_UA_PUBLIC))
    point[-1] ^= 1
    return bytes(point)


@pytest.mark.parametrize(("p256dh", "why"), [
    (b64(unb64(RFC_UA_PUBLIC)[:64]), "65 octets"),                        # truncated
    (b64(unb64(RFC_UA_PUBLIC) + b"\x00"), "65 octets"),                   # too long
    (b64(b"\x05" + unb64(RFC_UA_PUBLIC)[1:]), "uncompressed"),            # wrong prefix
    (b64(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)), "uncompressed"),
    (b64(_off_curve_point()), "not a point on the P-256 curve"),
    (b64(b"\x04" + b"\x00" * 64), "not a point on the P-256 curve"),
    (b64(b"\x04" + b"\xff" * 64), "not a point on the P-256 curve"),
    (b64(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)), "65 octets"),
    ("not base64!", "base64url"),
    ("", "65 octets"),
    (None, "string"),
])
def test_bad_p256dh_is_a_value_error_naming_p256dh(p256dh, why):
    with pytest.raises(ValueError, match=r"^p256dh: .*" + why):
        validate_keys(p256dh, RFC_AUTH)
    with pytest.raises(ValueError, match=r"^p256dh: "):
        encrypt(b"x", p256dh, RFC_AUTH)


@pytest.mark.parametrize(("auth", "why"), [
    (b64(b"x" * 15), "16 octets, got 15"),
    (b64(b"x" * 17), "16 octets, got 17"),
    (b64(b"x" * 32), "16 octets, got 32"),
    ("", "16 octets, got 0"),
    ("BTBZMqHH6r4Tts7J_aSI%g", "base64url"),
    (123, "string"),
])
def test_bad_auth_is_a_value_error_naming_auth(auth, why):
    with pytest.raises(ValueError, match=r"^auth: .*" + why):
        validate_keys(RFC_UA_PUBLIC, auth)
    with pytest.raises(ValueError, match=r"^auth: "):
        encrypt(b"x", RFC_UA_PUBLIC, auth)


# --- VAPID -----------------------------------------------------------------------------------------------

NOW = 1_700_000_000.25
CONTACT = "mailto:postmaster@example.org"


def verify_vapid(authorization: str) -> tuple[dict, dict, str]:
    """Check a `vapid t=..., k=...` header as a push service would (RFC 8292 §3); return header, claims, k."""
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid"
    fields = dict(part.strip().split("=", 1) for part in params.split(","))
    assert set(fields) == {"t", "k"}
    token, k = fields["t"], fields["k"]
    assert "=" not in token and "=" not in k
    public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(k))
    header_b64, claims_b64, signature_b64 = token.split(".")
    signature = unb64(signature_b64)
    assert len(signature) == 64, "ES256 signatures are r || s (RFC 7518 §3.4)"
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public_key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    return orjson.loads(unb64(header_b64)), orjson.loads(unb64(claims_b64)), k


def test_the_verifier_accepts_rfc8292s_own_example():
    """RFC 8292 §2.4: the example header verifies with the test's verifier, and a forgery does not."""
    example = ("vapid t=eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5uZXQiLCJleHAiO"
               "jE0NTM1MjM3NjgsInN1YiI6Im1haWx0bzpwdXNoQGV4YW1wbGUuY29tIn0.i3CYb7t4xfxCDquptFOepC9GAu_HLGkMlMuCGSK2"
               "rpiUfnK9ojFwDXb1JrErtmysazNjjvW2L9OkSSHzvoD1oA, "
               "k=BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs")
    header, claims, _ = verify_vapid(example)
    assert header == {"typ": "JWT", "alg": "ES256"}
    assert claims == {"aud": "https://push.example.net", "exp": 1453523768, "sub": "mailto:push@example.com"}
    with pytest.raises(InvalidSignature):
        verify_vapid(example.replace("eyJhdWQiOiJodHRwczovL3B1c2g", "eyJhdWQiOiJodHRwczovL3B1c2i"))


def test_vapid_header_verifies_and_carries_the_right_claims():
    """RFC 8292 §2, §3: ES256 JWT; aud = the push URL's origin, exp = now + lifetime, sub = contact."""
    key = VapidKey.generate()
    headers = key.headers("https://fcm.googleapis.com/fcm/send/abc:def?x=1#frag", CONTACT, NOW)
    assert list(headers) == ["Authorization"]
    header, claims, k = verify_vapid(headers["Authorization"])
    assert header == {"typ": "JWT", "alg": "ES256"}
    assert claims == {"aud": "https://fcm.googleapis.com", "exp": 1_700_000_000 + 12 * 3600, "sub": CONTACT}
    assert k == key.application_server_key
    assert unb64(k) == key.public_key_bytes and len(key.public_key_bytes) == 65
    assert headers["Authorization"].startswith("vapid t=ey")
    assert ", k=" in headers["Authorization"]


def test_vapid_signatures_from_another_key_do_not_verify():
    key, other = VapidKey.generate(), VapidKey.generate()
    forged = key.headers("https://push.example.net/x", CONTACT, NOW)["Authorization"].replace(
        key.application_server_key, other.application_server_key)
    with pytest.raises(InvalidSignature):
        verify_vapid(forged)


def test_application_server_key_is_unpadded_base64url_of_the_uncompressed_point():
    """RFC 9749 applicationServerKey, as a browser's PushManager.subscribe() takes it."""
    key = VapidKey.generate()
    assert len(key.application_server_key) == 87
    assert set(key.application_server_key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert unb64(key.application_server_key) == raw_public(key.private_key)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://push.example.net/p/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV", "https://push.example.net"),
    ("https://Push.Example.NET:443/p", "https://push.example.net"),
    ("HTTPS://push.example.net", "https://push.example.net"),
    ("https://push.example.net:8443/p?q#f", "https://push.example.net:8443"),
    ("https://user:secret@push.example.net/p", "https://push.example.net"),
    ("https://[2001:db8::1]:8443/p", "https://[2001:db8::1]:8443"),
    ("https://192.0.2.7/p", "https://192.0.2.7"),
    ("http://127.0.0.1:8080/p", "http://127.0.0.1:8080"),
    ("http://localhost:80/p", "http://localhost"),
])
def test_audience_is_the_origin_of_the_push_url(url, expected):
    """RFC 8292 §2: aud is the origin (RFC 6454) of the push resource URL, without path or default port."""
    assert origin(url) == expected
    _, claims, _ = verify_vapid(VapidKey.generate().headers(url, CONTACT, NOW)["Authorization"])
    assert claims["aud"] == expected


@pytest.mark.parametrize("url", [
    "ftp://push.example.net/p", "push.example.net/p", "https:///p", "https://", "", "mailto:a@b",
    "https://push.example.net:99999/p", "https://push.example.net:port/p",
])
def test_urls_without_an_http_origin_are_refused(url):
    with pytest.raises(ValueError):
        VapidKey.generate().headers(url, CONTACT, NOW)


@pytest.mark.parametrize("lifetime", [1, 3600, 24 * 3600])
def test_exp_is_now_plus_lifetime_up_to_24_hours(lifetime):
    _, claims, _ = verify_vapid(VapidKey.generate().headers("https://p.example", CONTACT, NOW, lifetime)[
        "Authorization"])
    assert claims["exp"] == int(NOW) + lifetime
    assert claims["exp"] - NOW <= 24 * 3600


@pytest.mark.parametrize("lifetime", [24 * 3600 + 1, 7 * 24 * 3600, 0, -5, 3600.0, True])
def test_lifetimes_over_24_hours_or_not_positive_are_refused(lifetime):
    """RFC 8292 §2: exp MUST NOT be more than 24 hours from the time of the request."""
    with pytest.raises(ValueError, match="lifetime"):
        VapidKey.generate().headers("https://p.example", CONTACT, NOW, lifetime)


@pytest.mark.parametrize("contact", [
    "mailto:push@example.com", "https://example.com/contact", "mailto:a+b@example.com?subject=push",
])
def test_contacts_may_be_mailto_or_https(contact):
    assert validate_contact(contact) == contact
    _, claims, _ = verify_vapid(VapidKey.generate().headers("https://p.example", contact, NOW)["Authorization"])
    assert claims["sub"] == contact


@pytest.mark.parametrize("contact", [
    "", "push@example.com", "mailto:", "mailto:nobody", "http://example.com", "https://", "ftp://example.com",
    "mailto:a b@example.com", "mailto:a@example.com\r\nX-Injected: 1", "mailto:ü@example.com", None,
])
def test_other_contacts_are_refused(contact):
    """RFC 8292 §2.1: a mailto: or https: URI; nothing that could break the header either."""
    with pytest.raises(ValueError, match="contact"):
        validate_contact(contact)
    with pytest.raises(ValueError, match="contact"):
        VapidKey.generate().headers("https://p.example", contact, NOW)


def test_tokens_are_reused_per_audience_until_shortly_before_expiry():
    """One signature per push service origin per token lifetime, not one per message.

    ECDSA signatures are randomised, so an identical token means it was not signed again.
    """
    key = VapidKey.generate()
    url_a, url_a2, url_b = "https://a.example/1", "https://a.example/2", "https://b.example/1"
    first = key.headers(url_a, CONTACT, NOW)
    assert key.headers(url_a2, CONTACT, NOW + 3600) == first
    assert key.headers(url_a, CONTACT, NOW + 12 * 3600 - 601) == first
    other_origin = key.headers(url_b, CONTACT, NOW)
    assert other_origin != first
    assert verify_vapid(other_origin["Authorization"])[1]["aud"] == "https://b.example"
    assert key.headers(url_a, "mailto:other@example.org", NOW) != first
    assert key.headers(url_a, CONTACT, NOW, 3600) != first

    later = NOW + 12 * 3600 - 599       # under 10 minutes left: sign again
    renewed = key.headers(url_a, CONTACT, later)
    assert renewed != first
    assert verify_vapid(renewed["Authorization"])[1]["exp"] == int(later) + 12 * 3600
    assert key.headers(url_a, CONTACT, later + 1) == renewed


def test_a_cached_token_never_has_exp_more_than_24_hours_ahead():
    """If the clock goes back, a token cached earlier could lie too far in the future: sign a new one."""
    key = VapidKey.generate()
    first = key.headers("https://a.example/1", CONTACT, NOW, 24 * 3600)
    earlier = key.headers("https://a.example/1", CONTACT, NOW - 3600, 24 * 3600)
    assert earlier != first
    assert verify_vapid(earlier["Authorization"])[1]["exp"] == int(NOW) - 3600 + 24 * 3600


def test_token_cache_is_bounded():
    """Subscribers choose push URLs, so the number of audiences is theirs to inflate: the least used go."""
    key = VapidKey.generate()

    def url(n: int) -> str:
        return f"https://p{n}.example/x"

    tokens = [key.headers(url(n), CONTACT, NOW) for n in range(VAPID_CACHE_SIZE)]   # the cache is full
    assert key.headers(url(0), CONTACT, NOW) == tokens[0]      # a hit: p0 is now the most recently used
    key.headers(url(VAPID_CACHE_SIZE), CONTACT, NOW)           # evicts p1
    assert key.headers(url(0), CONTACT, NOW) == tokens[0]
    assert key.headers(url(1), CONTACT, NOW) != tokens[1]      # signed again


def test_load_or_create_writes_a_0600_pem_and_reuses_it(tmp_path):
    path = tmp_path / "vapid.pem"
    created = VapidKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    assert content.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert os.listdir(tmp_path) == ["vapid.pem"]      # no temporary file left behind

    loaded = VapidKey.load_or_create(path)
    assert loaded.application_server_key == created.application_server_key
    assert path.read_bytes() == content
    verify_vapid(loaded.headers("https://p.example", CONTACT, NOW)["Authorization"])
    _, _, k = verify_vapid(created.headers("https://p.example", CONTACT, NOW)["Authorization"])
    assert k == loaded.application_server_key


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_load_or_create_is_mode_0600_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        VapidKey.load_or_create(tmp_path / "vapid.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "vapid.pem").stat().st_mode) == 0o600


def test_processes_starting_at_once_agree_on_one_key(tmp_path):
    """Several jmapled processes may share a data directory: exactly one key wins and all use it."""
    path = tmp_path / "vapid.pem"
    barrier, keys = threading.Barrier(8), []

    def start() -> None:
        barrier.wait()
        keys.append(VapidKey.load_or_create(path).application_server_key)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert VapidKey.load_or_create(path).application_server_key == keys[0]
    assert os.listdir(tmp_path) == ["vapid.pem"]


def test_an_existing_sec1_key_is_accepted(tmp_path):
    """A key made with `openssl ecparam -genkey` (SEC 1 PEM) works as well as our PKCS#8."""
    private = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "vapid.pem"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    path.chmod(0o600)
    assert VapidKey.load_or_create(path).public_key_bytes == raw_public(private)


@pytest.mark.parametrize("content", [
    b"", b"garbage",
    ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"password")),
    ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
])
def test_a_file_holding_something_else_is_an_error_naming_it_and_kept(tmp_path, content):
    path = tmp_path / "vapid.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="vapid.pem"):
        VapidKey.load_or_create(path)
    assert path.read_bytes() == content


def test_a_key_readable_by_others_is_used_with_a_warning(tmp_path, caplog):
    path = tmp_path / "vapid.pem"
    created = VapidKey.load_or_create(path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="jmaple.push.webpush"):
        assert VapidKey.load_or_create(path).application_server_key == created.application_server_key
    assert "0600" in caplog.text


def test_a_missing_directory_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        VapidKey.load_or_create(tmp_path / "missing" / "vapid.pem")


def test_vapid_key_must_be_p256():
    with pytest.raises(ValueError, match="P-256"):
        VapidKey(ec.generate_private_key(ec.SECP384R1()))


# --- RFC 8030 headers ------------------------------------------------------------------------------------


def test_push_headers_for_a_valid_message():
    """RFC 8030 §5.2-5.4."""
    assert push_headers(86400, "high", "abc-_09") == {"TTL": "86400", "Urgency": "high", "Topic": "abc-_09"}
    assert push_headers(0, "very-low", None) == {"TTL": "0", "Urgency": "very-low"}
    assert push_headers(60) == {"TTL": "60", "Urgency": "normal"}
    assert push_headers(2**31, "low", "A" * 32)["TTL"] == "2147483648"


@pytest.mark.parametrize("urgency", ["", "urgent", "High", "NORMAL", "very_low", "verylow", "high ", None, 1])
def test_urgency_outside_the_four_values_is_refused(urgency):
    """RFC 8030 §5.3: very-low, low, normal or high."""
    with pytest.raises(ValueError, match="Urgency"):
        push_headers(60, urgency, None)


@pytest.mark.parametrize("ttl", [-1, 2**31 + 1, 10**30, 1.5, "60", None, True])
def test_ttl_outside_its_range_is_refused(ttl):
    """RFC 8030 §5.2: a non-negative integer, at most 2^31 as far as recipients are concerned."""
    with pytest.raises(ValueError, match="TTL"):
        push_headers(ttl, "normal", None)


@pytest.mark.parametrize("topic", ["", "A" * 33, "a+b", "a/b", "a=b", "a b", "a.b", "ünï", "abc\r\nX: y", 5])
def test_topic_beyond_32_base64url_characters_is_refused(topic):
    """RFC 8030 §5.4: at most 32 characters of the URL and filename safe base64 alphabet."""
    with pytest.raises(ValueError, match="Topic"):
        push_headers(60, "normal", topic)


def test_make_topic_derives_a_valid_stable_topic():
    topic = make_topic("sub-1")
    assert len(topic) == 32
    assert push_headers(60, "normal", topic)["Topic"] == topic
    assert make_topic("sub-1") == topic
    assert make_topic("sub-2") != topic
    assert make_topic("sub-1", "EmailDelivery") != topic
    assert make_topic("ab", "c") != make_topic("a", "bc")
    assert "sub" not in make_topic("sub-1")
    assert len(make_topic("x" * 10_000 + "é")) == 32


def test_content_headers_name_aes128gcm_only():
    """RFC 8291 §4: exactly one Content-Encoding value, aes128gcm."""
    assert dict(CONTENT_HEADERS) == {"Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream"}
    with pytest.raises(TypeError):
        CONTENT_HEADERS["Content-Encoding"] = "gzip"
