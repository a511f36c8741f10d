"""Which requests wait for which commits (rule 5 in agent/daemon/sessions.py), with the store's commits held.

A request that wrote nothing waits only for the batches its result was built on; it must still wait for those.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.daemon.sessions import NoSession
from agent.daemon.store import Store
from backends.memory import MemoryKey
from tests.sessions.harness import Device, World, public_from, world  # noqa: F401  (fixture)

ALICE = MemoryKey(b"\x0a" * 32)
BOB = MemoryKey(b"\x0b" * 32)
CAROL = MemoryKey(b"\x0c" * 32)


class CommitGate:
    """Holds every commit of one store until opened (the fsync of a slow disk, stretched)."""

    def __init__(self, store: Store) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        inner = store._commit

        def held(batch: list[tuple[int, list[tuple[str, tuple[object, ...]]]]]) -> None:
            self.entered.set()
            assert self.open.wait(30)
            inner(batch)  # type: ignore[arg-type]

        store._commit = held  # type: ignore[method-assign]
        self.open.set()

    def close(self) -> None:
        self.open.clear()
        self.entered.clear()


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def _talking(world: World, a: Device, b: Device) -> None:
    """a and b have a confirmed session both ways (bundles known, X3DH done, first replies read)."""
    m = a.send(b, b"hi", b.mgr.our_bundle())
    b.mgr.confirm([b.mgr.decrypt(a.identity, m.message).confirm_ref])
    r = b.send(a, b"hi back")
    a.mgr.confirm([a.mgr.decrypt(b.identity, r.message).confirm_ref])


def _sending(dev: Device, peer: Device) -> tuple[int, int]:
    """(position, reservation mark) of dev's sending session with peer."""
    live = next(l for l in dev.mgr._cache.peer_sessions(peer.identity, peer.iid) if not l.rec.expired)
    return live.ratchet.sending_position()[1], live.rec.send_hwm


def test_encrypt_inside_a_reservation_waits_for_the_reservation_commit(world: World) -> None:
    """The protection: a position inside a reservation whose mark is not yet durable is not handed out before it
    is (else a kill -9 could reuse it: the old mark is all the disk knows)."""
    a, b = world.device("a", ALICE, send_reserve=4), world.device("b", BOB)
    _talking(world, a, b)
    pos, mark = _sending(a, b)
    while pos < mark:  # use up the durable reservation (these encrypts write nothing)
        a.send(b, b"x")
        pos, mark = _sending(a, b)
    gate = CommitGate(a.mgr._store)
    gate.close()
    writer, _ = _in_thread(lambda: a.send(b, b"at the mark: writes a new one"))
    assert gate.entered.wait(10)  # its batch is being committed (held)
    reader, got = _in_thread(lambda: a.send(b, b"inside the new reservation: writes nothing"))
    reader.join(0.5)
    assert reader.is_alive() and not got, "an encrypt returned a position whose reservation is not durable"
    gate.open.set()
    writer.join(10)
    reader.join(10)
    assert got and not reader.is_alive()


def test_encrypt_does_not_wait_for_another_peers_commit(world: World) -> None:
    """An encrypt inside a durable reservation answers while a decrypt from another peer is being committed."""
    a, b, c = world.device("a", ALICE), world.device("b", BOB), world.device("c", CAROL)
    _talking(world, a, b)
    _talking(world, a, c)
    incoming = b.send(a, b"from bob")
    gate = CommitGate(a.mgr._store)
    gate.close()
    decrypting, dec = _in_thread(lambda: a.mgr.decrypt(b.identity, incoming.message))
    assert gate.entered.wait(10)
    sending, enc = _in_thread(lambda: a.send(c, b"to carol"))
    sending.join(5)
    assert enc and not sending.is_alive(), "the encrypt to carol waited for bob's decrypt commit"
    assert decrypting.is_alive() and not dec  # the decrypt itself still waits for its commit
    gate.open.set()
    decrypting.join(10)
    assert dec


def test_encrypt_does_not_wait_for_a_strangers_public_message_commit(world: World) -> None:
    """A public message from a new stranger writes its bundle and the stranger list, and (past the cap) forgets
    the oldest stranger: none of that is something an encrypt to a contact is built on, so it does not wait."""
    a, c = world.device("a", ALICE, stranger_identities=1), world.device("c", CAROL)
    _talking(world, a, c)
    first, second = MemoryKey(b"\x91" * 32), MemoryKey(b"\x92" * 32)
    a.mgr.decrypt(first.public_key(), public_from(world, first, b"one"))
    gate = CommitGate(a.mgr._store)
    gate.close()
    reading, got = _in_thread(lambda: a.mgr.decrypt(second.public_key(), public_from(world, second, b"two")))
    assert gate.entered.wait(10)
    sending, enc = _in_thread(lambda: a.send(c, b"to carol"))
    sending.join(5)
    assert enc and not sending.is_alive(), "the encrypt to carol waited for a stranger's public message"
    gate.open.set()
    reading.join(10)
    assert got and a.send(first.public_key(), b"x").forward_secrecy is False  # the first stranger was forgotten


def test_bundle_from_memory_only_once_durable(world: World) -> None:
    """durable_bundle never hands out a bundle naming a prekey whose rotation is not yet on disk."""
    a = world.device("a", ALICE)
    before = a.mgr.our_bundle()
    assert a.mgr.durable_bundle() == before
    gate = CommitGate(a.mgr._store)
    gate.close()
    rotating, _ = _in_thread(a.mgr.rotate_signed_prekey)
    assert gate.entered.wait(10)
    asking, fresh = _in_thread(a.mgr.our_bundle)  # signs the new bundle, then waits for the rotation's commit
    asking.join(0.5)
    assert asking.is_alive()
    assert a.mgr.durable_bundle() is None  # neither the old (stale) nor the new (not durable) one
    gate.open.set()
    rotating.join(10)
    asking.join(10)
    assert fresh and fresh[0] != before
    assert a.mgr.durable_bundle() == fresh[0]


# --- rule 8: under run_deferred() (the server's event loop) a plaintext does not wait for its own batch -------------

def _deferred(dev: Device, fn: Callable[[], object]) -> tuple[object, int, int]:
    """(result, seq, written) of one call under ``run_deferred()``."""
    return dev.mgr.run_deferred(fn)


def test_a_deferred_decrypt_reports_its_batch_to_commit_but_not_to_wait_for(world: World) -> None:
    """A message on a known session: its plaintext needs nothing on disk (seq 0), its batch is reported for the
    caller to commit right after answering (written), and it is not durable yet."""
    a, b = world.device("a", ALICE), world.device("b", BOB)
    _talking(world, a, b)
    m = b.send(a, b"plain")
    got, seq, written = _deferred(a, lambda: a.mgr.decrypt(b.identity, m.message))
    assert getattr(got, "payload") == b"plain"
    assert seq == 0
    assert written == a.mgr._store.last_submitted() and not a.mgr.is_durable(written)


def test_what_builds_on_a_deferred_decrypt_waits_for_its_batch(world: World) -> None:
    """The protection of rule 8: the decrypt's confirm, and an encrypt on the session it touched, each need the
    decrypt's batch on disk before they leave (else a crash could undo a confirm, or a ciphertext could rest on
    state the disk does not have)."""
    a, b = world.device("a", ALICE), world.device("b", BOB)
    _talking(world, a, b)
    m = b.send(a, b"plain")
    got, _, written = _deferred(a, lambda: a.mgr.decrypt(b.identity, m.message))
    ref = getattr(got, "confirm_ref")
    _, enc_seq, _ = _deferred(a, lambda: a.send(b, b"inside the reservation: writes nothing"))
    assert enc_seq >= written, "an encrypt on the decrypted session did not wait for the decrypt's batch"
    _, conf_seq, _ = _deferred(a, lambda: a.mgr.confirm([ref]))
    assert conf_seq > written
    _, again_seq, _ = _deferred(a, lambda: a.mgr.confirm([ref]))  # already gone: by a delete not yet durable
    assert again_seq >= conf_seq, "a confirm of a key already deleted did not wait for the delete"


def test_a_deferred_decrypt_that_needs_our_prekey_waits_for_its_batch(world: World) -> None:
    """The first message of a new incoming session (X3DH with our SPK): once answered it must survive a crash,
    and a later rotation may destroy that SPK, so its batch is waited for (seq) like any other result."""
    a, c = world.device("a", ALICE), world.device("c", CAROL)
    m = c.send(a, b"first", a.mgr.our_bundle())
    got, seq, _ = _deferred(a, lambda: a.mgr.decrypt(c.identity, m.message))
    assert getattr(got, "prekey") is True
    assert seq == a.mgr._store.last_submitted() and seq > 0


def test_a_deferred_decrypt_outside_deferred_still_waits(world: World) -> None:
    """Without run_deferred() (a worker thread, a library caller) nobody would start the commit: decrypt waits."""
    a, b = world.device("a", ALICE), world.device("b", BOB)
    _talking(world, a, b)
    m = b.send(a, b"plain")
    a.mgr.decrypt(b.identity, m.message)
    assert a.mgr.is_durable(a.mgr._store.last_submitted())


def test_a_deferred_decrypt_answered_with_our_bundle_waits_for_its_batch(world: World) -> None:
    """A result carrying a reply (our bundle, here with NoSession: a device of ours we are not paired with wrote)
    is not a bare plaintext: it waits for its batch (the reply time it recorded, the bundle it was built on)."""
    a1, a2, b = world.device("a1", ALICE), world.device("a2", ALICE), world.device("b", BOB)
    a2.mgr.add_peer_bundle(b.mgr.our_bundle())
    m = a2.send(b, b"from a2").message
    def read() -> None:
        try:
            a1.mgr.decrypt(a2.identity, m)
        except NoSession as exc:
            assert exc.reply is not None
        else:
            raise AssertionError("a device we are not paired with was read")

    _, seq, _ = a1.mgr.run_deferred(read)
    assert seq == a1.mgr._store.last_submitted() and seq > 0
