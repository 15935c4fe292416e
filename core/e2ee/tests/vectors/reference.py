#!/usr/bin/env python3
"""Second implementation of the Viska direct handshake v2, written from docs/protocol-handshake.md.

It writes the known-answer vectors the Rust tests check (identity.json, direct_handshake.json).
Randomness is replaced by fixed byte strings so that every output is reproducible.

Requires the `cryptography` package (Ed25519 and X25519 only; hashing, HMAC and HKDF are done
here with the standard library). Run:  python3 reference.py  (writes next to this file).
"""

import hashlib
import hmac
import json
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
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


# --- handshake (section 3), version 2 ---

VERSION = 2
TYPE_INIT, TYPE_RESPONSE, TYPE_FINISH, TYPE_REVEAL = 1, 2, 3, 4


def offer(versions, suites) -> bytes:
    out = bytes([len(versions)]) + b"".join(v.to_bytes(2, "big") for v in versions)
    return out + bytes([len(suites)]) + b"".join(s.to_bytes(2, "big") for s in suites)


def offer_len(data: bytes, at: int) -> int:
    """Length of the offer (section 3.2) that starts at data[at]."""
    n = data[at]
    m = data[at + 1 + 2 * n]
    assert 1 <= n <= 8 and 1 <= m <= 8
    return 1 + 2 * n + 1 + 2 * m


def header(msg_type: int) -> bytes:
    return MAGIC + bytes([msg_type])


def hello(min_version: int, max_version: int, features: int) -> bytes:
    """One side's part of the prologue (section 3.7): u8 min || u8 max || u32 features."""
    return bytes([min_version, max_version]) + features.to_bytes(4, "big")


def commit_initiator(sas_nonce_i: bytes) -> bytes:
    return sha256(lp(b"viska direct v2 sas commitment initiator") + lp(sas_nonce_i))


def commit_responder(sas_nonce_r: bytes) -> bytes:
    return sha256(lp(b"viska direct v2 sas commitment responder") + lp(sas_nonce_r))


def transcript_hash(prologue: bytes, msg1: bytes, msg2_body: bytes, binding: bytes) -> bytes:
    return sha256(
        lp(b"viska direct v2 transcript") + lp(prologue) + lp(msg1) + lp(msg2_body) + lp(binding)
    )


def sas_value(prk: bytes, sas_nonce_i: bytes, sas_nonce_r: bytes) -> int:
    info = b"viska direct v2 sas" + sas_nonce_i + sas_nonce_r
    assert len(info) == 19 + 32 + 32
    return int.from_bytes(hkdf_expand(prk, info, 8), "big") % 1000000


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> None:
    Ed25519PublicKey.from_public_bytes(public).verify(signature, message)  # raises if bad


def run_handshake(case):
    i_secret = bytes.fromhex(case["initiator_identity_secret"])
    r_secret = bytes.fromhex(case["responder_identity_secret"])
    i_random = bytes.fromhex(case["initiator_random"])
    r_random = bytes.fromhex(case["responder_random"])
    assert len(i_random) == 96 and len(r_random) == 64
    # Section 3.11: initiator draws eph_I, nonce, sas_nonce_I; responder eph_R, sas_nonce_R.
    eph_i_secret, nonce, sas_nonce_i = i_random[:32], i_random[32:64], i_random[64:96]
    eph_r_secret, sas_nonce_r = r_random[:32], r_random[32:64]
    prologue = bytes.fromhex(case["prologue"])
    binding = bytes.fromhex(case["binding"])
    assert len(prologue) == 12 and len(binding) == 32
    i_suites, r_suites = case["initiator_suites"], case["responder_suites"]

    pk_i, pk_r = ed25519_public(i_secret), ed25519_public(r_secret)
    eph_i, eph_r = x25519_public(eph_i_secret), x25519_public(eph_r_secret)

    # --- message 1, Init (section 3.3) ---
    the_offer = offer([VERSION], i_suites)
    commit_i = commit_initiator(sas_nonce_i)
    msg1 = header(TYPE_INIT) + the_offer + eph_i + pk_i + nonce + commit_i
    if len(the_offer) == 8:  # one version, two suites: the offsets stated in section 3.3
        assert msg1[5:13] == the_offer and msg1[13:45] == eph_i and msg1[45:77] == pk_i
        assert msg1[77:109] == nonce and msg1[109:141] == commit_i and len(msg1) == 141

    # --- responder on message 1: parse at the offsets of section 3.3 ---
    assert msg1[:4] == MAGIC and msg1[4] == TYPE_INIT
    o = 5 + offer_len(msg1, 5)
    rx_offer = msg1[5:o]
    rx_eph_i, rx_pk_i = msg1[o : o + 32], msg1[o + 32 : o + 64]
    rx_commit_i = msg1[o + 96 : o + 128]
    assert o + 128 == len(msg1)
    n = rx_offer[0]
    offered_versions = [int.from_bytes(rx_offer[1 + 2 * k : 3 + 2 * k], "big") for k in range(n)]
    m = rx_offer[1 + 2 * n]
    offered_suites = [
        int.from_bytes(rx_offer[2 + 2 * n + 2 * k : 4 + 2 * n + 2 * k], "big") for k in range(m)
    ]
    version = max(v for v in offered_versions if v == VERSION)
    suite = next(s for s in offered_suites if s in r_suites)
    ss = x25519(eph_r_secret, rx_eph_i)
    assert ss != bytes(32)

    # --- message 2, Response (section 3.4) ---
    commit_r = commit_responder(sas_nonce_r)
    msg2_body = (
        header(TYPE_RESPONSE)
        + version.to_bytes(2, "big")
        + suite.to_bytes(2, "big")
        + rx_offer
        + eph_r
        + pk_r
        + commit_r
    )
    th = transcript_hash(prologue, msg1, msg2_body, binding)
    prk = hkdf_extract(th, ss)
    nk = NK[suite]

    def expand(label: str, length: int) -> bytes:
        return hkdf_expand(prk, label.encode(), length)

    k_i = expand("viska direct v2 confirm initiator", 32)
    k_r = expand("viska direct v2 confirm responder", 32)
    sig_r = ed25519_sign(r_secret, lp(b"viska direct v2 responder signature") + lp(th))
    mac_r = hmac.new(k_r, th, hashlib.sha256).digest()
    msg2 = msg2_body + sig_r + mac_r

    # --- initiator on message 2 ---
    assert msg2[:4] == MAGIC and msg2[4] == TYPE_RESPONSE
    assert int.from_bytes(msg2[5:7], "big") in [VERSION]
    o = 9 + offer_len(msg2, 9)
    assert msg2[9:o] == the_offer  # offer_echo
    assert int.from_bytes(msg2[7:9], "big") in i_suites
    rx_eph_r, rx_pk_r, rx_commit_r = msg2[o : o + 32], msg2[o + 32 : o + 64], msg2[o + 64 : o + 96]
    assert o + 96 + 64 + 32 == len(msg2) and msg2[:-96] == msg2[: o + 96]
    th_i = transcript_hash(prologue, msg1, msg2[:-96], binding)
    assert th_i == th
    ed25519_verify(rx_pk_r, msg2[-96:-32], lp(b"viska direct v2 responder signature") + lp(th_i))
    ss_i = x25519(eph_i_secret, rx_eph_r)
    assert ss_i == ss
    assert hmac.compare_digest(hmac.new(k_r, th_i, hashlib.sha256).digest(), msg2[-32:])

    # --- message 3, Finish (section 3.5) ---
    sig_i = ed25519_sign(i_secret, lp(b"viska direct v2 initiator signature") + lp(th))
    mac_i = hmac.new(k_i, th, hashlib.sha256).digest()
    msg3 = header(TYPE_FINISH) + sas_nonce_i + sig_i + mac_i

    # --- responder on message 3 ---
    assert msg3[:4] == MAGIC and msg3[4] == TYPE_FINISH
    rx_sas_nonce_i = msg3[5:37]
    ed25519_verify(rx_pk_i, msg3[37:101], lp(b"viska direct v2 initiator signature") + lp(th))
    assert hmac.compare_digest(hmac.new(k_i, th, hashlib.sha256).digest(), msg3[101:133])
    assert commit_initiator(rx_sas_nonce_i) == rx_commit_i, "commit_I does not verify"
    sas_responder = sas_value(prk, rx_sas_nonce_i, sas_nonce_r)

    # --- message 4, Reveal (section 3.6) ---
    msg4 = header(TYPE_REVEAL) + sas_nonce_r

    # --- initiator on message 4 ---
    assert msg4[:4] == MAGIC and msg4[4] == TYPE_REVEAL
    rx_sas_nonce_r = msg4[5:37]
    assert commit_responder(rx_sas_nonce_r) == rx_commit_r, "commit_R does not verify"
    sas = sas_value(prk, sas_nonce_i, rx_sas_nonce_r)
    assert sas == sas_responder

    # Self-check: the responder's nonce enters the SAS (a different sas_nonce_R, other SAS).
    assert sas_value(prk, sas_nonce_i, bytes(b ^ 0x01 for b in sas_nonce_r)) != sas
    assert sas_value(prk, sas_nonce_i, bytes(32)) != sas
    # ... and so does the initiator's.
    assert sas_value(prk, bytes(b ^ 0x01 for b in sas_nonce_i), sas_nonce_r) != sas

    return {
        "msg1": msg1.hex(),
        "msg2": msg2.hex(),
        "msg3": msg3.hex(),
        "msg4": msg4.hex(),
        "transcript_hash": th.hex(),
        "suite": suite,
        "initiator_media_key": expand("viska direct v2 media initiator", nk).hex(),
        "responder_media_key": expand("viska direct v2 media responder", nk).hex(),
        "initiator_control_key": expand("viska direct v2 control initiator", nk).hex(),
        "responder_control_key": expand("viska direct v2 control responder", nk).hex(),
        "sas": sas,
        "sas_display": "%03d %03d" % (sas // 1000, sas % 1000),
    }


def filled(byte: int, length: int = 32) -> bytes:
    return bytes([byte]) * length


# Message lengths with one version and two suites (sections 3.3 to 3.6): 141, 209, 133 and 37
# bytes (message 2: 5 + 2 + 2 + 8 + 32 + 32 + 32 + 64 + 32).
MSG1_LEN, MSG2_LEN, MSG3_LEN, MSG4_LEN = 141, 209, 133, 37


def check_lengths(expected) -> None:
    msg1, msg2, msg3, msg4 = (bytes.fromhex(expected[k]) for k in ("msg1", "msg2", "msg3", "msg4"))
    assert len(msg1) == MSG1_LEN, len(msg1)
    assert len(msg2) == MSG2_LEN, len(msg2)
    assert len(msg3) == MSG3_LEN, len(msg3)
    assert len(msg4) == MSG4_LEN, len(msg4)


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
    for name, i_suites, r_suites, seed, hello_i, hello_r, binding_byte in [
        ("chacha", [0xF001, 0x0004], [0xF001, 0x0004], 0x10, (1, 1, 0), (1, 1, 0), 0xE5),
        (
            "aes_by_initiator_preference",
            [0x0004, 0xF001],
            [0xF001, 0x0004],
            0x20,
            (1, 1, 0x00000102),
            (1, 1, 0x00000002),
            0xE6,
        ),
    ]:
        case = {
            "name": name,
            "initiator_identity_secret": rfc_secrets[0],
            "responder_identity_secret": rfc_secrets[1],
            "initiator_random": (filled(seed + 1) + filled(seed + 2) + filled(seed + 3)).hex(),
            "responder_random": (filled(seed + 4) + filled(seed + 5)).hex(),
            "prologue": (hello(*hello_i) + hello(*hello_r)).hex(),
            "binding": filled(binding_byte).hex(),
            "initiator_suites": i_suites,
            "responder_suites": r_suites,
        }
        case["expected"] = run_handshake(case)
        check_lengths(case["expected"])
        cases.append(case)
    with open(os.path.join(here, "direct_handshake.json"), "w") as out:
        json.dump({"cases": cases}, out, indent=2)
        out.write("\n")


if __name__ == "__main__":
    main()
