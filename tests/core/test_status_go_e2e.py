"""End to end through every core module: rebuild status-go's own A1, B1 and A3 ProtocolMessages byte for
byte (reference/status-go-facts.md §8.2), and read them back as the responder whose IK and SPK are KeyOps."""

from __future__ import annotations

from agent.core import bundle as bnd
from agent.core import wire, x3dh
from agent.core.keys import public_from_secret
from agent.core.ratchet import STATUS_GO, Header, Ratchet, KeyGen
from backends.memory import MemoryKey

from .test_wire import A1

B1 = bytes.fromhex(
    "120c626f622d6465766963652d311aa9010a210290999dbbf43034bffb1dd53eac1eb4c33a4ea1c4f48ba585cfde3830840f05551237"
    "0a0c626f622d6465766963652d3112270a21023c72addb4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b1100118"
    "012241b4d0811e364f2249b98aaf5c33368de1f517b2578d49a484e79d08a5b11e637e739bead02c2ccc4041df98644a00ce0c2b8bc7"
    "a6eb52257508e761cb63f918d500288080a8b1e39fe7cb17aa0698010a0e616c6963652d6465766963652d3112850112460a2102b21d"
    "b47a75ceee5c010f69f66d48d5a017e4e2f46b47b496ddf03498c26e1cec2221023c72addb4fdf09af94f0c94d7fe92a386a7e70cf8a"
    "1d85916386bb2535c7b1b11a3bf1d7f5c318fc081d1b1e150d38781b4c3041e59d0e3c7c81e81bc958658176d624cd354025d22a75b6"
    "46179c9c69fa3d651d511422c764707f4ea3"
)
A3 = bytes.fromhex(
    "120e616c6963652d6465766963652d311aab010a21022ed557f5ad336b31a49857e4e9664954ac33385aa20a93e2d64bfe7f08f51277"
    "12390a0e616c6963652d6465766963652d3112270a2102eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f2836866"
    "19100118012241f008982d78a848121ff2079e84bdadc8868ab4d1829d70edde7968e529ffc34f49901394293ac23799714b85cc0fc1"
    "115e22020f39462be13c6259ee1a8f585801288180a8b1e39fe7cb17aa069c010a0c626f622d6465766963652d31128b0112480a2103"
    "e7e9acacbdb43fc9fb71a8db1536c0f866caa78def49f666fa121a6f7954bb0118022221023c72addb4fdf09af94f0c94d7fe92a386a"
    "7e70cf8a1d85916386bb2535c7b1b11a3f3f802ad0ef1141eb494b5a96f3b096241d7955c31a7a6f439f0192c88408cd7a880a6dd0ca"
    "6d2dcc261d7c75ce0f23ec9a55769d81718ef9a165f841fa0ddd"
)

ALICE_IK, BOB_IK, BOB_SPK, ALICE_SPK = (MemoryKey(c.encode() * 32) for c in "023A")
ALICE_EK_SECRET = b"1" * 32


def keys(*chars: str) -> KeyGen:
    it = iter(chars)

    def gen() -> tuple[bytes, bytes]:
        s = next(it).encode() * 32
        return s, public_from_secret(s)

    return gen


def test_a1_b1_a3_rebuilt_and_read_back() -> None:
    alice_bundle = bnd.sign_bundle(ALICE_IK, {"alice-device-1": (ALICE_SPK.public_key(), 1, 1)}, 1700000000000000001)
    bob_bundle = bnd.sign_bundle(BOB_IK, {"bob-device-1": (BOB_SPK.public_key(), 1, 1)}, 1700000000000000000)
    spk_b = BOB_SPK.public_key()

    # Alice: X3DH from Bob's bundle, then the first DR message with the X3DH header
    assert bnd.verify_bundle(bob_bundle) == BOB_IK.public_key()
    sk = x3dh.initiate(ALICE_IK, BOB_IK.public_key(), spk_b, ALICE_EK_SECRET)
    alice = Ratchet.initiator(STATUS_GO, sk, spk_b, keygen=keys("4", "6", "8"))
    h, ct = alice.encrypt(b"alice message 0")
    a1 = wire.protocol_message("alice-device-1", {"bob-device-1": wire.encrypted_message(
        ct, x3dh=wire.x3dh_header(public_from_secret(ALICE_EK_SECRET), spk_b),
        dr=wire.dr_header(h.dh, h.n, h.pn, spk_b))}, bundles=[alice_bundle])
    assert wire.encode(a1) == A1

    # Bob: only KeyOps for IK and SPK; the SPK is also his first ratchet key
    msg = wire.decode_protocol_message(A1)
    entry = msg.encrypted_message["bob-device-1"]
    wire.check_entry_keys(entry)
    sender = bnd.verify_bundle(msg.bundles[0])
    assert sender == ALICE_IK.public_key()
    assert bytes(entry.X3DH_header.id) == BOB_SPK.public_key()
    sk_b = x3dh.respond(BOB_IK, BOB_SPK, sender, bytes(entry.X3DH_header.key))
    bob = Ratchet.responder(STATUS_GO, sk_b, BOB_SPK.public_key(), None, keygen=keys("5", "7"))
    dr = entry.DR_header
    assert bob.decrypt(Header(bytes(dr.key), dr.n, dr.pn), bytes(entry.payload), spk=BOB_SPK) == b"alice message 0"

    # Alice's second message, then Bob's reply B1 (DR only, id = his SPK)
    h2, ct2 = alice.encrypt(b"alice message 1")
    assert bob.decrypt(h2, ct2) == b"alice message 1"
    hb, ctb = bob.encrypt(b"bob reply 0")
    b1 = wire.protocol_message("bob-device-1", {"alice-device-1": wire.encrypted_message(
        ctb, dr=wire.dr_header(hb.dh, hb.n, hb.pn, spk_b))}, bundles=[bob_bundle])
    assert wire.encode(b1) == B1

    # Alice reads B1, confirms the session (drops the X3DH header) and sends A3
    reply = wire.decode_protocol_message(B1).encrypted_message["alice-device-1"]
    assert alice.decrypt(Header(bytes(reply.DR_header.key), reply.DR_header.n, reply.DR_header.pn),
                         bytes(reply.payload)) == b"bob reply 0"
    h3, ct3 = alice.encrypt(b"alice message 2")
    a3 = wire.protocol_message("alice-device-1", {"bob-device-1": wire.encrypted_message(
        ct3, dr=wire.dr_header(h3.dh, h3.n, h3.pn, spk_b))}, bundles=[alice_bundle])
    assert wire.encode(a3) == A3
