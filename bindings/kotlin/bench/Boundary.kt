// The cost of the Kotlin boundary, measured through a real call (docs/performance.md): the
// caller sends N call-data messages as fast as the call takes them, the callee's Kotlin
// CallListener counts them. Prints one JSON line.
package org.viska.bench

import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import java.util.concurrent.atomic.AtomicLong
import org.viska.*

class Counter(n: Int) : PhoneListener, CallListener {
    val data = AtomicInteger()
    val last = AtomicLong()
    val done = CountDownLatch(n)

    override fun onEvent(event: PhoneEvent) {
        if (event is PhoneEvent.IncomingCall) {
            event.call.setListener(this)
            event.call.answer()
        }
    }

    override fun onEvent(callId: String, event: CallEvent) {
        if (event is CallEvent.Data) {
            data.incrementAndGet()
            last.set(System.nanoTime())
            done.countDown()
        }
    }
}

fun main(args: Array<String>) {
    val n = args.firstOrNull()?.toInt() ?: 20_000
    val counter = Counter(n)
    Phone(PhoneSettings(name = "kb-callee", identity = Identity.generate(), realtime = false)).use { callee ->
    Phone(PhoneSettings(name = "kb-caller", identity = Identity.generate(), realtime = false)).use { caller ->
        callee.setListener(counter)
        val call = caller.call(callee.listen("127.0.0.1:0"))
        val end = System.currentTimeMillis() + 20_000
        while (call.state() !is CallState.Active && System.currentTimeMillis() < end) Thread.sleep(10)
        val payload = ByteArray(32) { 'x'.code.toByte() }
        val start = System.nanoTime()
        repeat(n) { call.sendData(payload) }
        val sent = (System.nanoTime() - start) / 1e9
        val complete = counter.done.await(120, TimeUnit.SECONDS)
        val span = (counter.last.get() - start) / 1e9
        call.hangup()
        call.waitEnded(10_000u)
        val rate = if (span > 0) Math.round(counter.data.get() / span) else 0
        println("""{"what":"kotlin_data_events","n":$n,"received":${counter.data.get()},"complete":$complete,""" +
            """"send_seconds":${"%.3f".format(sent)},"deliver_seconds":${"%.3f".format(span)},"events_per_second":$rate}""")
    }
    }
}
