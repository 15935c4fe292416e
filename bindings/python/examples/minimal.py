"""Minimal Viska call in Python: two phones on loopback, an encrypted call, the SAS, hang-up."""

import queue
import time

import viska


class Incoming(viska.PhoneListener):
    """Answers every incoming call (on the phone's dispatcher thread: never block here)."""

    def __init__(self):
        self.calls = queue.Queue()

    def on_event(self, event):
        if isinstance(event, viska.PhoneEvent.INCOMING_CALL):
            print("incoming call from", event.caller.identity.fingerprint, event.caller.trust)
            event.call.answer()
            self.calls.put(event.call)


alice = viska.Phone(viska.PhoneSettings(name="alice", identity=viska.Identity.generate()))
bob = viska.Phone(viska.PhoneSettings(name="bob", identity=viska.Identity.generate()))
listener = Incoming()
bob.set_listener(listener)
address = bob.listen("127.0.0.1:0")

call = alice.call(address)
answered = listener.calls.get(timeout=20)
# An application follows CallEvent.STATE_CHANGED with a CallListener; a script may poll.
deadline = time.monotonic() + 20
while not isinstance(call.state(), viska.CallState.ACTIVE) and time.monotonic() < deadline:
    time.sleep(0.01)
print("compare aloud:", call.sas(), "==", answered.sas())
assert call.sas() == answered.sas()
call.hangup()
call.wait_ended(10_000)
alice.shutdown(10_000)
bob.shutdown(10_000)
