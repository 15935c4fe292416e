"""A real encrypted call between two phones over loopback QUIC, through the Python bindings
alone: incoming call with identity and trust, answer, audio both ways (app-fed PCM on the
caller, WAV files on the callee), SAS, DTMF, call data, hold and resume, a listener that
throws, hang-up, and one misuse."""

import array
import os
import threading
import time
import wave

import pytest

import viska

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SPEECH = os.path.join(ROOT, "examples", "phone", "assets", "speech.wav")
TIMEOUT = 20.0


def wait_until(what, pred, timeout=TIMEOUT):
    """Polls `pred` until it holds; fails the test with `what` when it never does."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


class Recorder(viska.CallListener, viska.PhoneListener):
    """Keeps every event; answers nothing itself."""

    def __init__(self, throw_on_stats=False):
        self.events = []
        self.incoming = []
        self.threads = set()
        self.throw_on_stats = throw_on_stats
        self.lock = threading.Lock()

    def on_event(self, *args):
        event = args[-1]
        with self.lock:
            self.threads.add(os_thread_name())
            if isinstance(event, viska.PhoneEvent.INCOMING_CALL):
                self.incoming.append(event)
            else:
                self.events.append(event)
        if self.throw_on_stats and isinstance(event, viska.CallEvent.STATS):
            raise RuntimeError("a listener that throws must not break the call")

    def of(self, kind):
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


def os_thread_name():
    """The operating system's name of the current thread (Linux)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()


def speech_samples():
    with wave.open(SPEECH) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        rate = w.getframerate()
        samples = array.array("h", w.readframes(w.getnframes()))
    return rate, samples


def rms(samples):
    if not samples:
        return 0.0
    return (sum(s * s for s in samples) / len(samples)) ** 0.5


def test_a_real_call_through_the_bindings(tmp_path):
    rate, speech = speech_samples()
    heard_path = str(tmp_path / "callee-heard.wav")

    callee_id = viska.Identity.generate()
    caller_id = viska.Identity.generate()
    # The secret survives a round trip (the app keeps it in its keychain).
    assert viska.Identity.from_secret(caller_id.secret_bytes()).public() == caller_id.public()

    callee = viska.Phone(viska.PhoneSettings(
        name="py-callee", identity=callee_id, realtime=False,
        audio=viska.AudioSetup.FILES(input=SPEECH, loop_input=True, output=heard_path)))
    caller = viska.Phone(viska.PhoneSettings(
        name="py-caller", identity=caller_id, realtime=False,
        audio=viska.AudioSetup.APP(capture_rate=rate, capture_channels=1,
                                   playback_rate=48000, playback_channels=1)))
    callee_events = Recorder(throw_on_stats=True)
    caller_events = Recorder()
    callee.set_listener(callee_events)
    caller.set_listener(caller_events)
    addr = callee.listen("127.0.0.1:0")

    out = caller.call(addr)
    out.set_listener(caller_events)

    # The callee's incoming-call event names the caller's identity, unverified.
    wait_until("the incoming call", lambda: callee_events.incoming)
    incoming = callee_events.incoming[0]
    assert incoming.caller.identity.public_key == caller_id.public().public_key
    assert incoming.caller.identity.fingerprint == caller_id.public().fingerprint
    assert incoming.caller.trust == viska.Trust.UNVERIFIED
    call = incoming.call
    call.set_listener(callee_events)
    assert isinstance(call.state(), viska.CallState.RINGING)
    call.answer()

    wait_until("both ends active", lambda: isinstance(out.state(), viska.CallState.ACTIVE)
               and isinstance(call.state(), viska.CallState.ACTIVE))
    # The SAS is the same at both ends, and in both KeysReady events.
    assert out.sas() is not None and out.sas() == call.sas()
    wait_until("keys-ready events", lambda: caller_events.of(viska.CallEvent.KEYS_READY)
               and callee_events.of(viska.CallEvent.KEYS_READY))
    assert caller_events.of(viska.CallEvent.KEYS_READY)[0].sas == out.sas()
    assert callee_events.of(viska.CallEvent.KEYS_READY)[0].sas == out.sas()
    assert out.id() == call.id()
    assert out.info().peer.public_key == callee_id.public().public_key

    # App-fed PCM from the caller (in 20 ms pieces, as an audio thread would), while the
    # callee's WAV plays to the caller, who pulls what it hears.
    piece = rate // 50
    heard = array.array("h")
    for start in range(0, min(len(speech), rate * 4), piece):
        caller.push_audio(list(speech[start:start + piece]))
        heard.extend(caller.pull_audio(960))
        time.sleep(0.02)
    assert rms(heard[len(heard) // 2:]) > 100, "the caller heard nothing of the callee's WAV"

    # DTMF and call data arrive.
    out.send_dtmf("159#")
    out.send_data(b"crm:ticket=4711")
    wait_until("DTMF", lambda: len(callee_events.of(viska.CallEvent.DTMF)) == 4)
    assert "".join(e.digit for e in callee_events.of(viska.CallEvent.DTMF)) == "159#"
    wait_until("call data", lambda: callee_events.of(viska.CallEvent.DATA))
    assert callee_events.of(viska.CallEvent.DATA)[0].data == b"crm:ticket=4711"
    with pytest.raises(viska.ViskaError.InvalidArgument):
        out.send_dtmf("12x")

    # Hold and resume are seen by the peer.
    out.hold()
    wait_until("peer hold", lambda: any(e.on_hold for e in callee_events.of(viska.CallEvent.PEER_HOLD)))
    out.resume()
    wait_until("peer resume", lambda: callee_events.of(viska.CallEvent.PEER_HOLD)[-1].on_hold is False)

    # The callee's listener throws on every statistics event; the call goes on regardless.
    wait_until("a listener failure", lambda: callee.listener_failures() > 0)
    assert isinstance(call.state(), viska.CallState.ACTIVE)

    # Hang-up ends both.
    out.hangup()
    assert out.wait_ended(10_000) and call.wait_ended(10_000)
    end = call.state()
    assert isinstance(end, viska.CallState.ENDED)
    assert isinstance(end.reason, viska.EndReason.HANGUP) and end.reason.by == viska.Side.REMOTE

    # Misuse: answering an ended call raises the library's error.
    with pytest.raises(viska.ViskaError.CallEnded):
        call.answer()

    # Callbacks arrive on the phones' dispatcher threads, not on the caller's.
    assert callee_events.threads == {"vk-py-callee-ev"}
    assert caller_events.threads == {"vk-py-caller-ev"}

    assert caller.shutdown(10_000) and callee.shutdown(10_000)

    # What the callee recorded is speech, not silence.
    with wave.open(heard_path) as w:
        recorded = array.array("h", w.readframes(w.getnframes()))
    assert len(recorded) > 48000, "the callee's recording is shorter than a second"
    assert rms(recorded) > 100, "the callee heard nothing of the caller's app-fed audio"


def test_calling_verified_peer_and_rejecting():
    a_id, b_id = viska.Identity.generate(), viska.Identity.generate()
    b = viska.Phone(viska.PhoneSettings(name="py-b", identity=b_id, realtime=False,
                                        verified_peers=[a_id.public().public_key]))
    a = viska.Phone(viska.PhoneSettings(name="py-a", identity=a_id, realtime=False))
    rec = Recorder()
    b.set_listener(rec)
    addr = b.listen("127.0.0.1:0")
    out = a.call_expecting(addr, b_id.public().public_key)
    wait_until("the incoming call", lambda: rec.incoming)
    assert rec.incoming[0].caller.trust == viska.Trust.VERIFIED
    rec.incoming[0].call.reject()
    assert out.wait_ended(10_000)
    state = out.state()
    assert isinstance(state.reason, viska.EndReason.REJECTED) and state.reason.by == viska.Side.REMOTE
    assert out.info().trust == viska.Trust.VERIFIED
    with pytest.raises(viska.ViskaError.InvalidArgument):
        a.call("not an address")
    with pytest.raises(viska.ViskaError.InvalidArgument):
        viska.Identity.from_secret(b"short")
    a.shutdown(10_000)
    b.shutdown(10_000)
