// Minimal Viska call in Kotlin: two phones on loopback, an encrypted call, the SAS, hang-up.
package org.viska.tests

import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import org.viska.*

fun minimalExample() {
    Phone(PhoneSettings(name = "alice", identity = Identity.generate())).use { alice ->
    Phone(PhoneSettings(name = "bob", identity = Identity.generate())).use { bob ->
        val answered = LinkedBlockingQueue<Call>()
        // Called on bob's dispatcher thread: never block in a listener.
        bob.setListener(object : PhoneListener {
            override fun onEvent(event: PhoneEvent) {
                if (event is PhoneEvent.IncomingCall) {
                    println("incoming call from ${event.caller.identity.fingerprint} (${event.caller.trust})")
                    event.call.answer()
                    answered.add(event.call)
                }
            }
        })
        val address = bob.listen("127.0.0.1:0")
        val call = alice.call(address)
        val incoming = answered.poll(20, TimeUnit.SECONDS) ?: error("no incoming call")
        val end = System.currentTimeMillis() + 20_000
        while (call.state() !is CallState.Active && System.currentTimeMillis() < end) Thread.sleep(10)
        println("compare aloud: ${call.sas()} == ${incoming.sas()}")
        check(call.sas() == incoming.sas())
        call.hangup()
        call.waitEnded(10_000u)
    }
    }
}
