"""A 3-party group call through a real relay (the viska-relay binary) and the Python
bindings alone: create, add, accept, everyone hears everyone, one verification code, leave."""

import os
import subprocess
import threading
import time

import pytest

import viska

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SPEECH = os.path.join(ROOT, "examples", "phone", "assets", "speech.wav")


def db_key_file(binary, tmp_path):
    """A new database key for the test's relay (owner-only, outside its data directory)."""
    path = str(tmp_path / "relay-db-key")
    subprocess.run([binary, "db", "generate-key", path], check=True, capture_output=True)
    return path


@pytest.fixture
def relay(tmp_path):
    binary = os.environ.get("VISKA_RELAY")
    if not binary:
        pytest.fail("VISKA_RELAY must name the viska-relay binary (scripts/test-bindings sets it)")
    key = db_key_file(binary, tmp_path)
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1:0", "--data-dir", str(tmp_path / "relay"),
                             "--db-key-file", key],
                            stdout=subprocess.PIPE, text=True)
    fingerprint = address = None
    for line in proc.stdout:
        if line.startswith("fingerprint "):
            fingerprint = line.split()[1]
        elif line.startswith("listening on "):
            address = line.split()[2]
            break
    assert fingerprint and address, "the relay did not print its fingerprint and address"
    yield address, fingerprint
    proc.terminate()
    proc.wait(timeout=10)


class Accepting(viska.GroupListener):
    """Accepts every call it is added to (as a user tapping "join" would) and keeps events."""

    def __init__(self):
        self.phone = None
        self.events = []
        self.lock = threading.Lock()

    def on_event(self, event):
        with self.lock:
            self.events.append(event)
        if isinstance(event, viska.GroupEvent.JOINED) and self.phone is not None:
            self.phone.accept(event.call)

    def of(self, kind):
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


def test_three_party_call(relay):
    address, fingerprint = relay
    ids = [viska.Identity.generate() for _ in range(3)]
    phones, listeners = [], []
    for identity in ids:
        phone = viska.GroupPhone.connect(viska.GroupSettings(
            relay=address, relay_fingerprint=fingerprint, identity=identity,
            audio=viska.AudioSetup.FILES(input=SPEECH, loop_input=True, output=None)))
        listener = Accepting()
        listener.phone = phone
        phone.set_listener(listener)
        phones.append(phone)
        listeners.append(listener)
    alice, bob, carol = phones

    call = alice.create_call()
    alice.add(call, ids[1].public().public_key)
    alice.add(call, ids[2].public().public_key)

    # Every member hears the two others, all under the group's epoch.
    for phone in phones:
        assert phone.wait_heard(call, 3, 30_000), "a member did not hear the two others"
    infos = [phone.info(call) for phone in phones]
    codes = {info.verification_code for info in infos}
    assert len(codes) == 1 and None not in codes, "the members show different verification codes"
    for info in infos:
        keys = sorted(p.identity.public_key for p in info.participants)
        assert keys == sorted(i.public().public_key for i in ids)
        assert info.accepted and not info.ended
        assert info.unverified == 2  # nobody has verified the other two
    for listener in listeners:
        assert listener.of(viska.GroupEvent.EPOCH), "no epoch event"

    # Carol leaves: the two others see her go and go on hearing each other.
    carol.leave(call)
    for phone, listener in ((alice, listeners[0]), (bob, listeners[1])):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not listener.of(viska.GroupEvent.PARTICIPANT_LEFT):
            time.sleep(0.01)
        left = listener.of(viska.GroupEvent.PARTICIPANT_LEFT)
        assert left and left[0].identity.public_key == ids[2].public().public_key
        assert phone.wait_heard(call, 2, 30_000)

    with pytest.raises(viska.ViskaError.InvalidArgument):
        alice.add("not a call id", ids[1].public().public_key)
    for phone in phones:
        phone.shutdown()
    with pytest.raises(viska.ViskaError.Closed):
        alice.create_call()


def totp(secret_b32, at=None):
    """RFC 6238 (SHA-1, 30 s, 6 digits), written here from the RFC."""
    import base64, hashlib, hmac, struct
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    step = int((time.time() if at is None else at) // 30)
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000)


def test_a_relay_with_accounts_admits_a_device_after_its_login(tmp_path):
    binary = os.environ.get("VISKA_RELAY")
    if not binary:
        pytest.fail("VISKA_RELAY must name the viska-relay binary (scripts/test-bindings sets it)")
    data = str(tmp_path / "relay")
    key = db_key_file(binary, tmp_path)
    password = "harbour lantern 4471 quietly"
    subprocess.run([binary, "--data-dir", data, "--db-key-file", key, "user", "add", "agent7",
                    "--role", "agent"],
                   input=password + "\n", text=True, check=True, capture_output=True)
    enrolled = subprocess.run([binary, "--data-dir", data, "--db-key-file", key, "user",
                               "totp-enroll", "agent7"],
                              text=True, check=True, capture_output=True).stdout
    secret = next(line.split()[1] for line in enrolled.splitlines() if line.startswith("secret "))
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1:0", "--data-dir", data,
                             "--db-key-file", key, "--require-accounts"],
                            stdout=subprocess.PIPE, text=True)
    try:
        fingerprint = address = None
        for line in proc.stdout:
            if line.startswith("fingerprint "):
                fingerprint = line.split()[1]
            elif line.startswith("listening on "):
                address = line.split()[2]
                break
        identity = viska.Identity.generate()
        settings = lambda login: viska.GroupSettings(
            relay=address, relay_fingerprint=fingerprint, identity=identity, login=login)
        with pytest.raises(viska.ViskaError.LoginRequired):
            viska.GroupPhone.connect(settings(None))
        with pytest.raises(viska.ViskaError.LoginFailed):
            viska.GroupPhone.connect(settings(viska.RelayLogin(
                account="agent7", password=password + "x", code=totp(secret))))
        phone = viska.GroupPhone.connect(settings(viska.RelayLogin(
            account="agent7", password=password, code=totp(secret))))
        phone.shutdown()
        # Registered now: the device's key alone is enough.
        again = viska.GroupPhone.connect(settings(None))
        again.shutdown()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_group_phone_with_a_store_records_its_calls(relay, tmp_path):
    address, fingerprint = relay
    store = viska.KeyStore.open_with_key(str(tmp_path / "g.db"), os.urandom(32))
    phone = viska.GroupPhone.connect(viska.GroupSettings(
        relay=address, relay_fingerprint=fingerprint, identity=store.identity(), store=store))
    call = phone.create_call()
    key = "viska.group.call." + call
    deadline = time.monotonic() + 20
    while store.setting(key) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # The creator took its own call: recorded as accepted, with the call's route, for a
    # restart to resume (its MLS state is in the same store).
    state, _, route = store.setting(key).partition(":")
    assert state == "accepted" and route.isdigit(), store.setting(key)
    phone.leave(call)
    deadline = time.monotonic() + 20
    while store.setting(key) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.setting(key) is None, "leaving forgets the call"
    phone.shutdown()
