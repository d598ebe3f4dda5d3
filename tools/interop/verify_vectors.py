#!/usr/bin/env python3
"""Recompute every handshake test vector of docs/PROTOCOL.md §10.1 from its inputs alone.

This is an independent implementation of CCP-2's handshake layer (§4) and transport (§5),
written from the document with off-the-shelf libraries: `noiseprotocol` for Noise, `kyber-py`
for ML-KEM-768 (FIPS 203), `cryptography` for the AEADs and hashlib for BLAKE2s. It shares no
code with the Rust implementation. For each vector it rebuilds every packet, the handshake hash,
the transport keys, the first datagram and the first stream record, and compares them with the
document; it also checks that rewriting a hybrid initiation's suite byte breaks the handshake.

Usage: python3 tools/interop/verify_vectors.py docs/PROTOCOL.md   (exit 1 on any mismatch)
"""

import hashlib
import re
import struct
import sys
import warnings

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from kyber_py.ml_kem import ML_KEM_768
from noise.connection import Keypair, NoiseConnection

# Fixed ephemeral keys are the point of test vectors; the library warns about them.
warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set")

NAMES = {
    0: "Noise_XK_25519_ChaChaPoly_BLAKE2s",
    1: "Noise_IK_25519_ChaChaPoly_BLAKE2s",
    2: "Noise_XK_25519_AESGCM_BLAKE2s",
    3: "Noise_IK_25519_AESGCM_BLAKE2s",
    4: "Noise_XKpsk3_25519_ChaChaPoly_BLAKE2s",
    5: "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
    6: "Noise_XKpsk3_25519_AESGCM_BLAKE2s",
    7: "Noise_IKpsk2_25519_AESGCM_BLAKE2s",
}


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hash_(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def parse(doc: str) -> dict:
    vectors = {}
    for match in re.finditer(r"```text vector (\S+)\n(.*?)```", doc, re.S):
        fields = {}
        for line in match.group(2).strip().splitlines():
            name, value = line.split(" = ")
            fields[name] = bytes.fromhex(value)
        vectors[match.group(1)] = fields
    return vectors


def connection(name: str, initiator: bool, static_private: bytes, ephemeral: bytes,
               prologue: bytes, remote_static: bytes = None) -> NoiseConnection:
    conn = NoiseConnection.from_name(name.encode())
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    if remote_static is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    conn.set_prologue(prologue)
    if "psk" in name:
        # The real PSK (the ML-KEM secret) is set just before the message that mixes it in.
        conn.set_psks(psk=bytes(32))
    conn.start_handshake()
    return conn


def set_psk(conn: NoiseConnection, psk: bytes) -> None:
    conn.noise_protocol.psks = [psk]


def aead(suite: int, key: bytes):
    return AESGCM(key) if suite & 2 else ChaCha20Poly1305(key)


def nonce(suite: int, counter: int) -> bytes:
    # §5.1: four zero bytes, then the counter: big-endian for AESGCM, little-endian for ChaChaPoly.
    return bytes(4) + (struct.pack(">Q", counter) if suite & 2 else struct.pack("<Q", counter))


def run(v: dict) -> dict:
    """Runs both sides from the inputs of vector `v`; returns every output field."""
    out = {}
    suite = v["suite"][0]
    name = NAMES[suite]
    ik, hybrid = bool(suite & 1), bool(suite & 4)
    prologue = b"CommuCat CCP-2" + bytes([suite])
    out["prologue"] = prologue
    i_index, r_index = v["initiator_index"], v["responder_index"]
    r_pub = v["responder_static_public"]

    initiator = connection(name, True, v["initiator_static_private"],
                           v["initiator_ephemeral_private"], prologue, r_pub)
    responder = connection(name, False, v["responder_static_private"],
                           v["responder_ephemeral_private"], prologue)

    # Message 1: Initiation (§4.2, §4.4).
    payload = b"\x01" + i_index + v["timestamp_ms"]
    if hybrid:
        seed = v["initiator_kem_seed"]
        ek, dk = ML_KEM_768._keygen_internal(seed[:32], seed[32:])
        payload += ek
    header = bytes([0x01, suite, 0, 0]) + i_index
    body = header + initiator.write_message(payload)
    mac1 = mac(hash_(b"mac1----" + r_pub), body)
    initiation = body + mac1 + bytes(16)
    out["initiation"] = initiation

    # The responder reads it.
    read = responder.read_message(initiation[8:-32])
    assert read[:5] == b"\x01" + i_index, "initiation payload prefix"
    assert mac(hash_(b"mac1----" + r_pub), initiation[:-32]) == initiation[-32:-16]

    # Message 2: Response.
    r_payload = b"\x01" + r_index
    clear_ct = b""
    if hybrid:
        # FIPS 203 Encaps_internal returns (K, c): the shared secret first.
        secret, ct = ML_KEM_768._encaps_internal(read[13:], v["responder_kem_m"])
        set_psk(responder, secret)
        if ik:
            clear_ct = ct
        else:
            r_payload += ct
    r_header = bytes([0x02, suite, 0, 0]) + r_index + i_index
    response = r_header + clear_ct + responder.write_message(r_payload)
    out["response"] = response

    # The initiator reads it.
    noise2 = response[12:]
    if hybrid and ik:
        set_psk(initiator, ML_KEM_768.decaps(dk, noise2[:1088]))
        noise2 = noise2[1088:]
    read2 = initiator.read_message(noise2)
    assert read2[:5] == b"\x01" + r_index, "response payload prefix"
    if hybrid and not ik:
        set_psk(initiator, ML_KEM_768.decaps(dk, read2[5:]))

    # Message 3: Finish (XK).
    if not ik:
        f_header = bytes([0x03, suite, 0, 0]) + i_index + r_index
        finish = f_header + initiator.write_message(b"\x01" + i_index)
        out["finish"] = finish
        assert responder.read_message(finish[12:]) == b"\x01" + i_index

    assert initiator.handshake_finished and responder.handshake_finished
    h = initiator.get_handshake_hash()
    assert h == responder.get_handshake_hash()
    out["handshake_hash"] = h
    # Split(): the initiator's encrypting cipher state holds the initiator-to-responder key.
    k_i2r = initiator.noise_protocol.cipher_state_encrypt.k
    k_r2i = initiator.noise_protocol.cipher_state_decrypt.k
    out["key_initiator_to_responder"] = k_i2r
    out["key_responder_to_initiator"] = k_r2i

    # §5.3: the first datagram, counter 0, epoch 0, header as associated data.
    plaintext = v["transport_plaintext"]
    d_header = bytes([0x05, 0, 0, 0]) + r_index + struct.pack(">Q", 0)
    out["datagram_initiator_to_responder"] = d_header + aead(suite, k_i2r).encrypt(
        nonce(suite, 0), plaintext, d_header)
    # §5.2: the first stream record, nonce 0, empty associated data — and it must equal what
    # the Noise library's own transport produces.
    sealed = aead(suite, k_i2r).encrypt(nonce(suite, 0), plaintext, b"")
    assert initiator.encrypt(plaintext) == sealed, "record differs from a Noise transport message"
    out["record_initiator_to_responder"] = struct.pack(">H", len(sealed)) + sealed
    return out


def downgrade_fails(v: dict) -> bool:
    """A hybrid initiation with its suite byte rewritten to classic (mac1 recomputed) must not
    decrypt at a classic responder."""
    suite = v["suite"][0]
    classic = suite & ~4
    packet = bytearray(v["initiation"])
    packet[1] = classic
    responder = connection(NAMES[classic], False, v["responder_static_private"],
                           v["responder_ephemeral_private"], b"CommuCat CCP-2" + bytes([classic]))
    try:
        responder.read_message(bytes(packet[8:-32]))
    except Exception:  # the library raises on a failed decryption
        return True
    return False


def main() -> int:
    doc = open(sys.argv[1] if len(sys.argv) > 1 else "docs/PROTOCOL.md", encoding="utf-8").read()
    vectors = parse(doc)
    failures = 0
    if len(vectors) != 8:
        print(f"expected 8 handshake vectors, found {len(vectors)}")
        failures += 1
    for name, v in vectors.items():
        try:
            outputs = run(v)
        except Exception as error:  # report and go on to the next vector
            print(f"FAIL {name}: {error!r}")
            failures += 1
            continue
        bad = [f for f, value in outputs.items() if v.get(f) != value]
        missing = [f for f in v if f.endswith(("initiation", "response", "finish")) and f not in outputs]
        if v["suite"][0] & 4 and not downgrade_fails(v):
            bad.append("downgrade to classic was accepted")
        if bad or missing:
            failures += 1
            print(f"FAIL {name}: mismatched {bad} missing {missing}")
        else:
            print(f"ok   {name}: {len(outputs)} outputs reproduced")
    print(f"{len(vectors) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
