#!/usr/bin/env python3
"""Second implementation of the Viska direct handshake v1, written from docs/protocol-handshake.md.

It writes the known-answer vectors the Rust tests check (identity.json, direct_handshake.json).
Randomness is replaced by fixed byte strings so that every output is reproducible.

Requires the `cryptography` package (Ed25519 and X25519 only; hashing, HMAC and HKDF are done
here with the standard library). Run:  python3 reference.py  (writes next to this file).
"""

import hashlib
import hmac
import json
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAGIC = b"VSKH"
SUITE_IDS = {"chacha20poly1305_sha256": 0xF001, "aes128gcm_sha256": 0x0004}
NK = {0xF001: 32, 0x0004: 16}


def lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def ed25519_public(secret: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def ed25519_sign(secret: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(secret).sign(message)


def x25519_public(secret: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def x25519(secret: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


# --- identities (section 2) ---


def fingerprint(public: bytes) -> bytes:
    return sha256(lp(b"viska identity fingerprint v1") + lp(public))


def fingerprint_display(fp: bytes) -> str:
    hexed = fp.hex()
    return " ".join(hexed[i : i + 4] for i in range(0, 64, 4))


def safety_half(public: bytes) -> str:
    h = sha256(lp(b"viska safety number v1") + lp(public))
    for _ in range(4096):
        h = sha256(h + public)
    return "".join(
        "%05d" % (int.from_bytes(h[5 * i : 5 * i + 5], "big") % 100000) for i in range(6)
    )


def safety_number(a: bytes, b: bytes) -> str:
    return "".join(sorted([safety_half(a), safety_half(b)]))


# --- handshake (section 3) ---


def offer(versions, suites) -> bytes:
    out = bytes([len(versions)]) + b"".join(v.to_bytes(2, "big") for v in versions)
    return out + bytes([len(suites)]) + b"".join(s.to_bytes(2, "big") for s in suites)


def run_handshake(case):
    i_secret = bytes.fromhex(case["initiator_identity_secret"])
    r_secret = bytes.fromhex(case["responder_identity_secret"])
    i_random = bytes.fromhex(case["initiator_random"])
    r_random = bytes.fromhex(case["responder_random"])
    eph_i_secret, nonce, sas_nonce = i_random[:32], i_random[32:64], i_random[64:96]
    eph_r_secret = r_random[:32]
    cert_i = bytes.fromhex(case["initiator_cert_sha256"])
    cert_r = bytes.fromhex(case["responder_cert_sha256"])
    i_suites, r_suites = case["initiator_suites"], case["responder_suites"]

    pk_i, pk_r = ed25519_public(i_secret), ed25519_public(r_secret)
    the_offer = offer([1], i_suites)
    commitment = sha256(lp(b"viska direct v1 sas commitment") + lp(sas_nonce))
    msg1 = MAGIC + b"\x01" + the_offer + x25519_public(eph_i_secret) + pk_i + nonce + commitment

    suite = next(s for s in i_suites if s in r_suites)
    msg2_body = (
        MAGIC
        + b"\x02"
        + (1).to_bytes(2, "big")
        + suite.to_bytes(2, "big")
        + the_offer
        + x25519_public(eph_r_secret)
        + pk_r
    )
    th = sha256(
        lp(b"viska direct v1 transcript") + lp(msg1) + lp(msg2_body) + lp(cert_i) + lp(cert_r)
    )
    ss = x25519(eph_r_secret, x25519_public(eph_i_secret))
    assert ss == x25519(eph_i_secret, x25519_public(eph_r_secret))
    prk = hkdf_extract(th, ss)
    nk = NK[suite]

    def expand(label: str, length: int) -> bytes:
        return hkdf_expand(prk, label.encode(), length)

    sig_r = ed25519_sign(r_secret, lp(b"viska direct v1 responder signature") + lp(th))
    mac_r = hmac.new(expand("viska direct v1 confirm responder", 32), th, hashlib.sha256).digest()
    msg2 = msg2_body + sig_r + mac_r
    sig_i = ed25519_sign(i_secret, lp(b"viska direct v1 initiator signature") + lp(th))
    mac_i = hmac.new(expand("viska direct v1 confirm initiator", 32), th, hashlib.sha256).digest()
    msg3 = MAGIC + b"\x03" + sas_nonce + sig_i + mac_i
    sas = int.from_bytes(hkdf_expand(prk, b"viska direct v1 sas" + sas_nonce, 8), "big") % 1000000

    return {
        "msg1": msg1.hex(),
        "msg2": msg2.hex(),
        "msg3": msg3.hex(),
        "transcript_hash": th.hex(),
        "suite": suite,
        "initiator_media_key": expand("viska direct v1 media initiator", nk).hex(),
        "responder_media_key": expand("viska direct v1 media responder", nk).hex(),
        "initiator_control_key": expand("viska direct v1 control initiator", nk).hex(),
        "responder_control_key": expand("viska direct v1 control responder", nk).hex(),
        "sas": sas,
        "sas_display": "%03d %03d" % (sas // 1000, sas % 1000),
    }


def filled(byte: int, length: int = 32) -> str:
    return bytes([byte]) * length


def main():
    here = os.path.dirname(os.path.abspath(__file__))

    # RFC 8032 section 7.1, tests 1 and 2.
    rfc_secrets = [
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    ]
    identities = []
    for secret_hex in rfc_secrets:
        public = ed25519_public(bytes.fromhex(secret_hex))
        fp = fingerprint(public)
        identities.append(
            {
                "secret": secret_hex,
                "public": public.hex(),
                "fingerprint": fp.hex(),
                "fingerprint_display": fingerprint_display(fp),
                "signature_of_empty_message": ed25519_sign(bytes.fromhex(secret_hex), b"").hex(),
            }
        )
    pub_a, pub_b = (bytes.fromhex(i["public"]) for i in identities)
    digits = safety_number(pub_a, pub_b)
    identity_vectors = {
        "identities": identities,
        "safety_number": {
            "a": pub_a.hex(),
            "b": pub_b.hex(),
            "half_a": safety_half(pub_a),
            "half_b": safety_half(pub_b),
            "digits": digits,
            "display": " ".join(digits[i : i + 5] for i in range(0, 60, 5)),
        },
    }
    with open(os.path.join(here, "identity.json"), "w") as out:
        json.dump(identity_vectors, out, indent=2)
        out.write("\n")

    cases = []
    for name, i_suites, r_suites, seed in [
        ("chacha", [0xF001, 0x0004], [0xF001, 0x0004], 0x10),
        ("aes_by_initiator_preference", [0x0004, 0xF001], [0xF001, 0x0004], 0x20),
    ]:
        case = {
            "name": name,
            "initiator_identity_secret": rfc_secrets[0],
            "responder_identity_secret": rfc_secrets[1],
            "initiator_random": (filled(seed + 1) + filled(seed + 2) + filled(seed + 3)).hex(),
            "responder_random": filled(seed + 4).hex(),
            "initiator_cert_sha256": filled(0xC1).hex(),
            "responder_cert_sha256": filled(0xC2).hex(),
            "initiator_suites": i_suites,
            "responder_suites": r_suites,
        }
        case["expected"] = run_handshake(case)
        cases.append(case)
    with open(os.path.join(here, "direct_handshake.json"), "w") as out:
        json.dump({"cases": cases}, out, indent=2)
        out.write("\n")


if __name__ == "__main__":
    main()
