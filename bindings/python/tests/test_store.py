"""The key store through the Python bindings: a real SQLCipher file, a wrong passphrase
refused, the identity kept, trust on first use, a replaced device reported as key changed
until verified, call history, and an encrypted backup restored into a fresh store."""

import os
import threading
import time

import pytest

import viska

TIMEOUT = 20.0
PASS = "amber walrus sings 1931 softly"


def wait_until(what, pred, timeout=TIMEOUT):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


class Answerer(viska.PhoneListener):
    """Answers every incoming call and keeps what the incoming-call event said."""

    def __init__(self):
        self.callers = []
        self.calls = []
        self.lock = threading.Lock()

    def on_event(self, event):
        if isinstance(event, viska.PhoneEvent.INCOMING_CALL):
            event.call.answer()
            with self.lock:
                self.callers.append(event.caller)
                self.calls.append(event.call)


def device(name, store):
    phone = viska.Phone(viska.PhoneSettings(
        name=name, identity=store.identity(), realtime=False, store=store))
    listener = Answerer()
    phone.set_listener(listener)
    addr = phone.listen("127.0.0.1:0")
    return phone, addr, listener


def active_call(phone, handle, addr, listener):
    seen = len(listener.calls)
    call = phone.call_contact(handle, addr)
    wait_until("an answered call", lambda: isinstance(call.state(), viska.CallState.ACTIVE))
    wait_until("the callee's handle", lambda: len(listener.calls) > seen)
    return call, listener.calls[-1], listener.callers[-1]


def hang_up(call, other):
    call.hangup()
    wait_until("both ends ended", lambda: isinstance(call.state(), viska.CallState.ENDED)
               and isinstance(other.state(), viska.CallState.ENDED))


def test_the_store_keeps_identity_and_trust_and_refuses_a_wrong_key(tmp_path):
    alice_path = str(tmp_path / "alice.db")
    alice_store = viska.KeyStore.open(alice_path, PASS)
    alice_id = alice_store.identity().public()
    with pytest.raises(viska.ViskaError.WrongKey):
        viska.KeyStore.open(alice_path, PASS + "!")
    with pytest.raises(viska.ViskaError.InvalidArgument):
        viska.KeyStore.open_with_key(str(tmp_path / "k.db"), b"short")
    with open(alice_path, "rb") as f:
        assert b"SQLite format 3" not in f.read()

    bob_store = viska.KeyStore.open_with_key(str(tmp_path / "bob.db"), os.urandom(32))
    alice, _, _ = device("py-alice", alice_store)
    bob, bob_addr, bob_answers = device("py-bob", bob_store)

    call, answered, caller = active_call(alice, "bob", bob_addr, bob_answers)
    assert call.info().trust == viska.Trust.UNVERIFIED
    assert caller.trust == viska.Trust.UNVERIFIED
    assert caller.identity.public_key == alice_id.public_key
    contact = alice_store.contact("bob")
    assert contact.pinned.public_key == bob_store.identity().public().public_key
    assert not contact.verified and contact.changed_to is None
    call.mark_verified()
    wait_until("verified in the store", lambda: alice_store.contact("bob").verified)
    hang_up(call, answered)

    # Bob's device is replaced: a new identity answers for "bob".
    bob.shutdown(5000)
    bob2_store = viska.KeyStore.open_with_key(str(tmp_path / "bob2.db"), os.urandom(32))
    bob2, bob2_addr, bob2_answers = device("py-bob2", bob2_store)
    for _ in range(2):
        call, answered, _ = active_call(alice, "bob", bob2_addr, bob2_answers)
        assert call.info().trust == viska.Trust.KEY_CHANGED
        hang_up(call, answered)
    contact = alice_store.contact("bob")
    assert contact.trust == viska.Trust.KEY_CHANGED
    assert contact.changed_to.public_key == bob2_store.identity().public().public_key

    wait_until("three calls in the history",
               lambda: len(alice_store.call_history(10)) == 3
               and all(e.ended_ms is not None for e in alice_store.call_history(10)))
    history = alice_store.call_history(10)
    assert [e.trust for e in history] == [
        viska.Trust.KEY_CHANGED, viska.Trust.KEY_CHANGED, viska.Trust.VERIFIED]
    assert all(e.outgoing and e.handle == "bob" and e.answered_ms is not None for e in history)

    # Backup and restore into a fresh store; a weak passphrase and a tampered backup refused.
    with pytest.raises(viska.ViskaError.WeakPassphrase):
        alice_store.export_backup("password1234")
    backup = alice_store.export_backup(PASS)
    fresh = viska.KeyStore.open_with_key(str(tmp_path / "restored.db"), os.urandom(32))
    tampered = bytearray(backup)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(viska.ViskaError.BadBackup):
        fresh.import_backup(bytes(tampered), PASS)
    with pytest.raises(viska.ViskaError.BadBackup):
        fresh.import_backup(backup[:-1], PASS)
    fresh.import_backup(backup, PASS)
    assert fresh.identity().public() == alice_id
    assert fresh.contacts() == alice_store.contacts()

    for phone in (alice, bob2):
        assert phone.shutdown(5000)


def test_changing_the_key_refuses_the_old_one_and_keeps_everything(tmp_path):
    path = str(tmp_path / "k.db")
    first = os.urandom(32)
    store = viska.KeyStore.open_with_key(path, first)
    identity = store.identity().public()
    store.set_setting("display-name", "Agent Smith 7731")
    store.add_contact("dave", viska.Identity.generate().public().public_key, True)

    # A weak passphrase and a key of the wrong length change nothing.
    with pytest.raises(viska.ViskaError.WeakPassphrase):
        store.change_key("password1234")
    with pytest.raises(viska.ViskaError.InvalidArgument):
        store.change_key_with_key(b"short")
    assert store.setting("display-name") == "Agent Smith 7731"

    # Platform key -> passphrase: the store in hand goes on; the old key is refused.
    store.change_key(PASS)
    store.set_setting("after", "1")
    del store  # one connection to the file at a time
    with pytest.raises(viska.ViskaError.WrongKey):
        viska.KeyStore.open_with_key(path, first)
    again = viska.KeyStore.open(path, PASS)
    assert again.identity().public() == identity
    assert again.setting("display-name") == "Agent Smith 7731"
    assert again.setting("after") == "1"
    assert again.contact("dave").verified

    # Passphrase -> another platform key.
    second = os.urandom(32)
    again.change_key_with_key(second)
    contacts = again.contacts()
    del again
    with pytest.raises(viska.ViskaError.WrongKey):
        viska.KeyStore.open(path, PASS)
    reopened = viska.KeyStore.open_with_key(path, second)
    assert reopened.identity().public() == identity
    assert reopened.contacts() == contacts
    with open(path, "rb") as f:
        data = f.read()
    assert b"Agent Smith 7731" not in data and b"SQLite format 3" not in data
