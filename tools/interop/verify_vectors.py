#!/usr/bin/env python3
"""Recompute every handshake test vector of docs/PROTOCOL.md §10.1 from its inputs alone.

An independent implementation of CCP-2's handshake (§4) and transport (§5), written from the
document and nothing else, on off-the-shelf libraries: `noiseprotocol` (Noise rev 34 handshake
state), `kyber-py` (ML-KEM-768, FIPS 203), `cryptography` (X25519, ChaCha20-Poly1305,
AES-256-GCM) and hashlib (BLAKE2s). Nothing here is shared with the Rust implementation.

For every block "```text vector NAME" it takes only the inputs (static and ephemeral private
keys, indices, ML-KEM randomness, timestamp, transport plaintext, suite byte), plays both sides
of the handshake and recomputes every other field of the block: the static public keys, the
prologue, the three packets (mac1 and the zero mac2 included), the handshake hash, both
transport keys, the first datagram and the first stream record. It also

  * recomputes mac1 over the document's own Initiation and checks that its mac2 is zero;
  * plays the handshake a second time with each side reading the *document's* packets, so a
    document packet that a conforming peer would reject is reported even if ours differ;
  * decrypts the document's stream record and datagram on the responder side;
  * for hybrid suites, rewrites the Initiation's suite byte to the classic suite (recomputing
    mac1, which anyone can) and checks that the responder's Noise decryption of message 1 fails,
    and that the same holds for every other suite value.

Prints one line per vector and one per mismatching field; exits 1 on any mismatch.

Usage: python3 tools/interop/verify_vectors.py docs/PROTOCOL.md
"""

import hashlib
import re
import sys
import warnings

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from kyber_py.ml_kem import ML_KEM_768
from noise.connection import Keypair, NoiseConnection

# Fixed ephemerals are what test vectors are made of; noiseprotocol warns about them.
warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set")

# ---------------------------------------------------------------------------------------------
# Constants, all from the document.

PROLOGUE_LABEL = b"CommuCat CCP-2"                    # §4.1
PROLOGUE_LABEL_HEX = "436f6d6d75436174204343502d32"   # §4.1, as printed there
MAC1_LABEL = b"mac1----"                              # §4.3
TYPE_INITIATION, TYPE_RESPONSE, TYPE_FINISH, TYPE_DATA = 1, 2, 3, 5   # §4.2, §5.3
PAYLOAD_VERSION = 0x01                                # §4.4
EK_LEN, CT_LEN, KEM_SECRET_LEN = 1184, 1088, 32       # ML-KEM-768, §4.4/§4.5
DHLEN, TAGLEN = 32, 16

INPUTS = {
    "suite", "initiator_static_private", "responder_static_private", "initiator_index",
    "responder_index", "initiator_ephemeral_private", "responder_ephemeral_private",
    "initiator_kem_seed", "responder_kem_m", "timestamp_ms", "transport_plaintext",
}


def HASH(data: bytes) -> bytes:
    """§1: BLAKE2s-256."""
    return hashlib.blake2s(data).digest()


def MAC(key: bytes, data: bytes) -> bytes:
    """§1: keyed BLAKE2s, 16-byte output, key as the BLAKE2s key parameter."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def suite_name(suite: int) -> str:
    """§4.1, from the bit table (checked against the name table and the vector's title)."""
    ik, aes, hybrid = suite & 1, suite & 2, suite & 4
    pattern = "IK" if ik else "XK"
    if hybrid:
        pattern += "psk2" if ik else "psk3"
    return f"Noise_{pattern}_25519_{'AESGCM' if aes else 'ChaChaPoly'}_BLAKE2s"


def prologue_of(suite: int) -> bytes:
    return PROLOGUE_LABEL + bytes([suite])


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def aead(suite: int, key: bytes):
    return AESGCM(key) if suite & 2 else ChaCha20Poly1305(key)


def transport_nonce(suite: int, n: int) -> bytes:
    """§5.1: 32 zero bits, then n as a little-endian (ChaChaPoly) or big-endian (AESGCM) u64."""
    return bytes(4) + n.to_bytes(8, "big" if suite & 2 else "little")


def ek_modulus_check(ek: bytes) -> bool:
    """FIPS 203 §7.2: every 12-bit coefficient of ek[0:1152] is below q = 3329."""
    if len(ek) != EK_LEN:
        return False
    for i in range(0, 1152, 3):
        b0, b1, b2 = ek[i], ek[i + 1], ek[i + 2]
        if (b0 | (b1 & 0x0F) << 8) >= 3329 or (b1 >> 4 | b2 << 4) >= 3329:
            return False
    return True


class Dropped(Exception):
    """A receiver would silently drop the packet (§4.2, §4.4)."""


# ---------------------------------------------------------------------------------------------
# The two sides of the handshake.

PSK_PLACEHOLDER = b"\xa5" * 32   # noiseprotocol wants a PSK at start; replaced before use


def noise(suite: int, initiator: bool, static_private: bytes, ephemeral_private: bytes,
          remote_static_public: bytes = None) -> NoiseConnection:
    conn = NoiseConnection.from_name(suite_name(suite).encode())
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_prologue(prologue_of(suite))
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral_private)
    if remote_static_public is not None:   # the responder's static key is the pre-message
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static_public)
    if suite & 4:
        conn.set_psks(psk=PSK_PLACEHOLDER)
    conn.start_handshake()
    return conn


def set_psk(conn: NoiseConnection, psk: bytes) -> None:
    """Sets the PSK of a started handshake; noiseprotocol pops it at the `psk` token."""
    assert len(psk) == KEM_SECRET_LEN
    assert conn.noise_protocol.psks == [PSK_PLACEHOLDER], "PSK set twice or already consumed"
    conn.noise_protocol.psks = [psk]


def check_header(packet: bytes, ptype: int, suite: int):
    if len(packet) < 8 or packet[0] != ptype or packet[1] != suite or packet[2:4] != b"\0\0":
        raise Dropped(f"bad header for type {ptype}")


def parse_payload(payload: bytes, sender: bytes, tail_len: int) -> bytes:
    """§4.4: version, then the sender's index (== the header's), then `tail_len` bytes."""
    if len(payload) != 5 + tail_len:
        raise Dropped(f"payload length {len(payload)}, expected {5 + tail_len}")
    if payload[0] != PAYLOAD_VERSION or payload[1:5] != sender:
        raise Dropped("payload version or index mismatch")
    return payload[5:]


def handshake(v: dict, doc_packets: dict = None) -> dict:
    """Plays both sides from the inputs of `v`. If `doc_packets` is given, each side reads the
    document's packet instead of the one its peer just wrote. Returns every output."""
    out = {}
    suite = v["suite"][0]
    ik, hybrid = bool(suite & 1), bool(suite & 4)
    i_idx, r_idx = v["initiator_index"], v["responder_index"]
    assert len(i_idx) == 4 and len(r_idx) == 4 and len(v["timestamp_ms"]) == 8

    out["prologue"] = prologue_of(suite)
    out["initiator_static_public"] = i_pub = x25519_public(v["initiator_static_private"])
    out["responder_static_public"] = r_pub = x25519_public(v["responder_static_private"])
    # The initiator knows the responder's public key out of band (§3).
    ini = noise(suite, True, v["initiator_static_private"], v["initiator_ephemeral_private"], r_pub)
    res = noise(suite, False, v["responder_static_private"], v["responder_ephemeral_private"])

    def received(name: str, ours: bytes) -> bytes:
        return doc_packets[name] if doc_packets is not None else ours

    # ---- Initiation (initiator) ------------------------------------------------------------
    payload1 = bytes([PAYLOAD_VERSION]) + i_idx + v["timestamp_ms"]
    if hybrid:
        seed = v["initiator_kem_seed"]
        assert len(seed) == 64
        ek, dk = ML_KEM_768._keygen_internal(seed[:32], seed[32:])   # d || z, §4.5
        payload1 += ek
    body = bytes([TYPE_INITIATION, suite, 0, 0]) + i_idx + bytes(ini.write_message(payload1))
    mac1 = MAC(HASH(MAC1_LABEL + r_pub), body)
    out["initiation"] = body + mac1 + bytes(16)    # mac2 = 0: no cookie

    # ---- Initiation (responder) ------------------------------------------------------------
    pkt = received("initiation", out["initiation"])
    check_header(pkt, TYPE_INITIATION, suite)
    if MAC(HASH(MAC1_LABEL + r_pub), pkt[:-32]) != pkt[-32:-16]:
        raise Dropped("initiation mac1 does not verify")
    tail = parse_payload(bytes(res.read_message(pkt[8:-32])), pkt[4:8],
                         EK_LEN + 8 if hybrid else 8)
    if tail[:8] != v["timestamp_ms"]:
        raise Dropped("timestamp differs")
    if ik and res.noise_protocol.handshake_state.rs.public_bytes != i_pub:
        raise Dropped("IK: the responder learnt another initiator static key")

    # ---- Response (responder) --------------------------------------------------------------
    payload2 = bytes([PAYLOAD_VERSION]) + r_idx
    clear_ct = b""
    if hybrid:
        r_ek = tail[8:]
        if not ek_modulus_check(r_ek):
            raise Dropped("ML-KEM encapsulation key fails the modulus check")
        r_secret, ct = ML_KEM_768._encaps_internal(r_ek, v["responder_kem_m"])  # (K, c)
        set_psk(res, r_secret)
        if ik:
            clear_ct = ct           # IKpsk2: in the clear between header and Noise message
        else:
            payload2 += ct          # XKpsk3: inside the Response payload
    out["response"] = (bytes([TYPE_RESPONSE, suite, 0, 0]) + r_idx + i_idx + clear_ct
                       + bytes(res.write_message(payload2)))

    # ---- Response (initiator) --------------------------------------------------------------
    pkt = received("response", out["response"])
    check_header(pkt, TYPE_RESPONSE, suite)
    if len(pkt) < 12 or pkt[8:12] != i_idx:
        raise Dropped("response receiver index")
    noise2 = pkt[12:]
    if hybrid and ik:
        i_secret = ML_KEM_768.decaps(dk, noise2[:CT_LEN])
        set_psk(ini, i_secret)
        noise2 = noise2[CT_LEN:]
    tail = parse_payload(bytes(ini.read_message(noise2)), pkt[4:8],
                         CT_LEN if hybrid and not ik else 0)
    if hybrid and not ik:
        i_secret = ML_KEM_768.decaps(dk, tail)
        set_psk(ini, i_secret)      # before writing message 3, whose `psk` token mixes it in
    if hybrid and i_secret != r_secret:
        raise Dropped("ML-KEM secrets differ")
    r_idx_seen = pkt[4:8]

    # ---- Finish (XK) -----------------------------------------------------------------------
    if not ik:
        out["finish"] = (bytes([TYPE_FINISH, suite, 0, 0]) + i_idx + r_idx_seen
                         + bytes(ini.write_message(bytes([PAYLOAD_VERSION]) + i_idx)))
        pkt = received("finish", out["finish"])
        check_header(pkt, TYPE_FINISH, suite)
        if pkt[4:8] != i_idx or pkt[8:12] != r_idx:   # §4.7: pending handshake lookup
            raise Dropped("finish indices")
        state = res.noise_protocol.handshake_state   # gone after Split()
        parse_payload(bytes(res.read_message(pkt[12:])), pkt[4:8], 0)
        if state.rs.public_bytes != i_pub:
            raise Dropped("XK: the responder learnt another initiator static key")

    assert ini.handshake_finished and res.handshake_finished
    out["handshake_hash"] = ini.get_handshake_hash()
    if res.get_handshake_hash() != out["handshake_hash"]:
        raise Dropped("the two sides' handshake hashes differ")
    # Split(): the first key is initiator -> responder (§4.1).
    k_i2r = ini.noise_protocol.cipher_state_encrypt.k
    k_r2i = ini.noise_protocol.cipher_state_decrypt.k
    if (res.noise_protocol.cipher_state_decrypt.k, res.noise_protocol.cipher_state_encrypt.k) != (
            k_i2r, k_r2i):
        raise Dropped("the two sides' transport keys differ")
    out["key_initiator_to_responder"], out["key_responder_to_initiator"] = k_i2r, k_r2i

    # ---- Transport: first datagram (§5.3) and first stream record (§5.2) --------------------
    pt = v["transport_plaintext"]
    header = bytes([TYPE_DATA, 0, 0, 0]) + r_idx + (0).to_bytes(8, "big")   # epoch 0, counter 0
    out["datagram_initiator_to_responder"] = header + aead(suite, k_i2r).encrypt(
        transport_nonce(suite, 0), pt, header)
    sealed = aead(suite, k_i2r).encrypt(transport_nonce(suite, 0), pt, b"")
    out["record_initiator_to_responder"] = len(sealed).to_bytes(2, "big") + sealed
    # A record is exactly a Noise transport message (§5.2): the library must agree.
    if bytes(ini.encrypt(pt)) != sealed:
        raise Dropped("record differs from noiseprotocol's own transport message")

    # The responder opens the (document's) record and datagram.
    rec = received("record_initiator_to_responder", out["record_initiator_to_responder"])
    if int.from_bytes(rec[:2], "big") != len(rec) - 2 or bytes(res.decrypt(bytes(rec[2:]))) != pt:
        raise Dropped("responder cannot open the record")
    dg = received("datagram_initiator_to_responder", out["datagram_initiator_to_responder"])
    if dg[:16] != header or aead(suite, res.noise_protocol.cipher_state_decrypt.k).decrypt(
            transport_nonce(suite, int.from_bytes(dg[8:16], "big")), dg[16:], dg[:16]) != pt:
        raise Dropped("responder cannot open the datagram")
    return out


def responder_reads(v: dict, suite: int, initiation: bytes) -> str:
    """What a responder configured for `suite` does with `initiation` (its suite byte rewritten,
    mac1 recomputed): 'accepted', 'decryption failed', or another error."""
    pkt = bytearray(initiation)
    pkt[1] = suite
    r_pub = x25519_public(v["responder_static_private"])
    # mac1 covers the suite byte, but its key is public: an attacker recomputes it.
    pkt[-32:-16] = MAC(HASH(MAC1_LABEL + r_pub), bytes(pkt[:-32]))
    res = noise(suite, False, v["responder_static_private"], v["responder_ephemeral_private"])
    try:
        res.read_message(bytes(pkt[8:-32]))   # Noise only: no length or payload checks
    except InvalidTag:
        return "decryption failed"
    except Exception as error:   # anything else would not show the suite binding
        return f"other error: {error!r}"
    return "accepted"


# ---------------------------------------------------------------------------------------------


def parse_vectors(doc: str) -> list:
    vectors = []
    for m in re.finditer(r"^```text vector (\S+)\n(.*?)^```", doc, re.S | re.M):
        fields = {}
        for line in m.group(2).splitlines():
            if line.strip():
                key, value = (s.strip() for s in line.split("=", 1))
                fields[key] = bytes.fromhex(value)
        vectors.append((m.group(1), fields))
    return vectors


def parse_suite_table(doc: str) -> dict:
    return {int(b, 16): name for b, name in re.findall(r"^\| `([0-9a-f]{2})` \| `(Noise_\S+)` \|",
                                                       doc, re.M)}


def window(b: bytes, at: int) -> str:
    """Hex of `b`, or for long values 24 bytes around offset `at`."""
    if len(b) <= 36:
        return b.hex()
    lo = max(0, at - 8)
    return f"[{lo}..{lo + 24}] {b[lo:lo + 24].hex()} (of {len(b)} bytes)"


def first_diff(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_vector(title: str, v: dict, table: dict) -> list:
    """Returns a list of problems (empty: the vector reproduces)."""
    problems = []
    suite = v["suite"][0]
    if suite_name(suite) != title or table.get(suite) != title:
        problems.append(f"name: bit table gives {suite_name(suite)}, §4.1 table gives "
                        f"{table.get(suite)}, block says {title}")
    if PROLOGUE_LABEL.hex() != PROLOGUE_LABEL_HEX:
        problems.append("prologue label: ASCII and hex of §4.1 disagree")

    try:
        ours = handshake(v)
    except Exception as error:
        return problems + [f"handshake from the inputs failed: {error!r}"]
    for field in sorted(set(v) - INPUTS):
        if field not in ours:
            problems.append(f"{field}: not recomputed (unknown field)")
        elif ours[field] != v[field]:
            at = first_diff(ours[field], v[field])
            problems.append(f"{field}: MISMATCH at byte {at}\n"
                            f"      document {window(v[field], at)}\n"
                            f"      computed {window(ours[field], at)}")
    for field in sorted(set(ours) - set(v)):
        problems.append(f"{field}: missing from the document")

    # mac1 of the document's own Initiation, and its zero mac2.
    init = v.get("initiation", b"")
    if MAC(HASH(MAC1_LABEL + v.get("responder_static_public", b"")), init[:-32]) != init[-32:-16]:
        problems.append("mac1: the document's Initiation does not carry a valid mac1")
    if init[-16:] != bytes(16):
        problems.append("mac2: the document's Initiation has a non-zero mac2")

    # The document's packets, read by conforming peers.
    try:
        handshake(v, doc_packets=v)
    except Exception as error:
        problems.append(f"document packets: a conforming peer drops them: {error!r}")

    if suite & 4:
        if responder_reads(v, suite, init) != "accepted":
            problems.append("downgrade control: the unmodified initiation is not accepted")
        verdict = responder_reads(v, suite & ~4, init)
        if verdict != "decryption failed":
            problems.append(f"downgrade {suite:02x} -> {suite & ~4:02x}: {verdict}, expected the "
                            f"responder's Noise decryption of message 1 to fail")
    for other in range(8):
        verdict = responder_reads(v, other, init) if other != suite else None
        if verdict not in (None, "decryption failed"):
            problems.append(f"suite rewrite {suite:02x} -> {other:02x}: {verdict}")
    return problems


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/PROTOCOL.md"
    doc = open(path, encoding="utf-8").read()
    vectors, table = parse_vectors(doc), parse_suite_table(doc)
    failed = 0
    if sorted(v["suite"][0] for _, v in vectors) != list(range(8)):
        print(f"FAIL  expected one vector per suite 00..07, found "
              f"{[v['suite'].hex() for _, v in vectors]}")
        failed += 1
    for title, v in vectors:
        problems = check_vector(title, v, table)
        extra = ", downgrade to classic fails to decrypt" if v["suite"][0] & 4 else ""
        if problems:
            failed += 1
            print(f"FAIL  {title}")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"PASS  {title}: {len(set(v) - INPUTS)} outputs reproduced, mac1 ok, mac2 zero, "
                  f"document packets accepted{extra}")
    print("all vectors pass" if not failed else f"{failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
