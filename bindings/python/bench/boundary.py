"""The cost of the Python boundary, measured through real calls (docs/performance.md):

  events   call-data events per second delivered to a Python CallListener: the caller sends
           N messages as fast as the call takes them, the callee's listener counts them.
  cpu      CPU seconds of a process driving one 10 s call between two phones through the
           bindings (WAV in both ways, recorded both ways), to compare with the same call run
           by `viska-phone demo` in Rust.

Usage: PYTHONPATH=<dir with viska.py and libviska_ffi.so> python3 boundary.py events|cpu [N]
Prints one JSON line.
"""

import json
import os
import resource
import sys
import tempfile
import threading
import time

import viska

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SPEECH = os.path.join(ROOT, "examples", "phone", "assets", "speech.wav")


class Counter(viska.CallListener, viska.PhoneListener):
    def __init__(self):
        self.data = 0
        self.first = None
        self.last = None
        self.incoming = []
        self.done = threading.Event()
        self.want = None

    def on_event(self, *args):
        event = args[-1]
        if isinstance(event, viska.PhoneEvent.INCOMING_CALL):
            event.call.set_listener(self)
            event.call.answer()
            self.incoming.append(event.call)
        elif isinstance(event, viska.CallEvent.DATA):
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            self.last = now
            self.data += 1
            if self.want is not None and self.data >= self.want:
                self.done.set()


def pair(audio_a=None, audio_b=None):
    callee = viska.Phone(viska.PhoneSettings(name="b-callee", identity=viska.Identity.generate(),
                                             audio=audio_b, realtime=False))
    caller = viska.Phone(viska.PhoneSettings(name="b-caller", identity=viska.Identity.generate(),
                                             audio=audio_a, realtime=False))
    counter = Counter()
    callee.set_listener(counter)
    call = caller.call(callee.listen("127.0.0.1:0"))
    end = time.monotonic() + 20
    while not isinstance(call.state(), viska.CallState.ACTIVE) and time.monotonic() < end:
        time.sleep(0.01)
    return caller, callee, call, counter


def events(n):
    caller, callee, call, counter = pair()
    counter.want = n
    payload = b"x" * 32
    start = time.perf_counter()
    for _ in range(n):
        call.send_data(payload)
    sent = time.perf_counter() - start
    ok = counter.done.wait(120)
    span = (counter.last or start) - start
    call.hangup()
    call.wait_ended(10_000)
    caller.shutdown(10_000)
    callee.shutdown(10_000)
    return {"what": "python_data_events", "n": n, "received": counter.data, "complete": ok,
            "send_seconds": round(sent, 3), "deliver_seconds": round(span, 3),
            "events_per_second": round(counter.data / span) if span > 0 else None}


def cpu(seconds=10):
    tmp = tempfile.mkdtemp()
    files = lambda name: viska.AudioSetup.FILES(input=SPEECH, loop_input=True,
                                                output=os.path.join(tmp, name))
    before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    caller, callee, call, _ = pair(files("a.wav"), files("b.wav"))
    time.sleep(seconds)
    stats = call.stats()
    call.hangup()
    call.wait_ended(10_000)
    caller.shutdown(10_000)
    callee.shutdown(10_000)
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"what": "python_call_cpu", "call_seconds": seconds,
            "wall_seconds": round(time.perf_counter() - wall, 2),
            "cpu_seconds": round(used, 3), "packets_received": stats.packets_received}


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "events"
    arg = int(sys.argv[2]) if len(sys.argv) > 2 else None
    result = events(arg or 20000) if mode == "events" else cpu(arg or 10)
    print(json.dumps(result))
