// A real encrypted call between two phones over loopback QUIC, through the Kotlin bindings
// alone: incoming call with identity and trust, answer, audio from a WAV both ways (recorded
// at each end and checked), SAS, DTMF, call data, hold and resume, a listener that throws,
// hang-up, one misuse, and `use {}` closing the phones.
package org.viska.tests

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.concurrent.CopyOnWriteArrayList
import kotlin.math.sqrt
import kotlin.system.exitProcess
import org.viska.*

const val TIMEOUT_MS = 20_000L

fun expect(condition: Boolean, what: String) {
    if (!condition) throw AssertionError(what)
}

fun waitUntil(what: String, pred: () -> Boolean) {
    val end = System.currentTimeMillis() + TIMEOUT_MS
    while (System.currentTimeMillis() < end) {
        if (pred()) return
        Thread.sleep(10)
    }
    throw AssertionError("timed out waiting for $what")
}

/** The OS name of the current thread (Linux), to check where callbacks run. */
fun osThreadName(): String = File("/proc/thread-self/comm").readText().trim()

/** Keeps every event. Runs on the phone's dispatcher thread: records and returns. */
class Recorder(private val throwOnStats: Boolean = false) : PhoneListener, CallListener {
    val events = CopyOnWriteArrayList<CallEvent>()
    val incoming = CopyOnWriteArrayList<PhoneEvent.IncomingCall>()
    val threads = java.util.concurrent.ConcurrentHashMap.newKeySet<String>()

    override fun onEvent(event: PhoneEvent) {
        threads.add(osThreadName())
        if (event is PhoneEvent.IncomingCall) incoming.add(event)
    }

    override fun onEvent(callId: String, event: CallEvent) {
        threads.add(osThreadName())
        events.add(event)
        if (throwOnStats && event is CallEvent.Stats) {
            throw IllegalStateException("a listener that throws must not break the call")
        }
    }

    inline fun <reified T : CallEvent> of(): List<T> = events.filterIsInstance<T>()
}

/** RMS of a 16-bit PCM WAV's samples (the data chunk found by walking the RIFF chunks). */
fun wavRms(path: String): Pair<Int, Double> {
    val bytes = File(path).readBytes()
    val buf = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
    var pos = 12
    while (pos + 8 <= bytes.size) {
        val id = String(bytes, pos, 4, Charsets.US_ASCII)
        val len = buf.getInt(pos + 4)
        if (id == "data") {
            val n = minOf(len, bytes.size - pos - 8) / 2
            var sum = 0.0
            for (i in 0 until n) {
                val s = buf.getShort(pos + 8 + 2 * i).toDouble()
                sum += s * s
            }
            return Pair(n, if (n == 0) 0.0 else sqrt(sum / n))
        }
        pos += 8 + len + (len and 1)
    }
    return Pair(0, 0.0)
}

fun aRealCall(speech: String, dir: File) {
    val callerHeard = File(dir, "caller-heard.wav").path
    val calleeHeard = File(dir, "callee-heard.wav").path
    val callerId = Identity.generate()
    val calleeId = Identity.generate()
    expect(Identity.fromSecret(callerId.secretBytes()).public().publicKey.contentEquals(callerId.public().publicKey), "identity round trip")

    Phone(PhoneSettings(name = "kt-callee", identity = calleeId, realtime = false,
        audio = AudioSetup.Files(input = speech, loopInput = true, output = calleeHeard))).use { callee ->
    Phone(PhoneSettings(name = "kt-caller", identity = callerId, realtime = false,
        audio = AudioSetup.Files(input = speech, loopInput = true, output = callerHeard))).use { caller ->
        val calleeEvents = Recorder(throwOnStats = true)
        val callerEvents = Recorder()
        callee.setListener(calleeEvents)
        caller.setListener(callerEvents)
        val addr = callee.listen("127.0.0.1:0")

        val out = caller.call(addr)
        out.setListener(callerEvents)
        waitUntil("the incoming call") { calleeEvents.incoming.isNotEmpty() }
        val incoming = calleeEvents.incoming[0]
        expect(incoming.caller.identity.publicKey.contentEquals(callerId.public().publicKey), "caller identity")
        expect(incoming.caller.trust == Trust.UNVERIFIED, "caller trust ${incoming.caller.trust}")
        val call = incoming.call
        call.setListener(calleeEvents)
        expect(call.state() is CallState.Ringing, "ringing")
        call.answer()

        waitUntil("both ends active") { out.state() is CallState.Active && call.state() is CallState.Active }
        val sas = out.sas()
        expect(sas != null && sas == call.sas(), "the SAS matches on both sides")
        waitUntil("keys-ready events") {
            callerEvents.of<CallEvent.KeysReady>().isNotEmpty() && calleeEvents.of<CallEvent.KeysReady>().isNotEmpty()
        }
        expect(callerEvents.of<CallEvent.KeysReady>()[0].sas == sas, "caller's KeysReady SAS")
        expect(calleeEvents.of<CallEvent.KeysReady>()[0].sas == sas, "callee's KeysReady SAS")
        expect(out.id() == call.id(), "one call id")

        // Let audio flow both ways for a while.
        waitUntil("audio both ways") { out.stats().packetsReceived > 100u && call.stats().packetsReceived > 100u }

        out.sendDtmf("42*")
        out.sendData("crm:case=99".toByteArray())
        waitUntil("DTMF") { calleeEvents.of<CallEvent.Dtmf>().size == 3 }
        expect(calleeEvents.of<CallEvent.Dtmf>().joinToString("") { it.digit } == "42*", "DTMF digits")
        waitUntil("call data") { calleeEvents.of<CallEvent.Data>().isNotEmpty() }
        expect(String(calleeEvents.of<CallEvent.Data>()[0].data) == "crm:case=99", "call data")

        call.hold()
        waitUntil("peer hold") { callerEvents.of<CallEvent.PeerHold>().any { it.onHold } }
        call.resume()
        waitUntil("peer resume") { callerEvents.of<CallEvent.PeerHold>().lastOrNull()?.onHold == false }

        waitUntil("a listener failure") { callee.listenerFailures() > 0u }
        expect(call.state() is CallState.Active, "the call survives a throwing listener")

        call.hangup()
        expect(out.waitEnded(10_000u) && call.waitEnded(10_000u), "hang-up ends both")
        val end = out.state()
        expect(end is CallState.Ended && end.reason is EndReason.Hangup &&
            (end.reason as EndReason.Hangup).by == Side.REMOTE, "caller sees the remote hang-up: $end")

        var refused = false
        try {
            call.answer()
        } catch (e: ViskaException.CallEnded) {
            refused = true
        }
        expect(refused, "answering an ended call throws ViskaException.CallEnded")
        expect(calleeEvents.threads == setOf("vk-kt-callee-ev"), "callee callbacks on ${calleeEvents.threads}")
        expect(callerEvents.threads == setOf("vk-kt-caller-ev"), "caller callbacks on ${callerEvents.threads}")
    }
    }
    // Both phones are closed (use {}), so both recordings are finished.
    for (path in listOf(callerHeard, calleeHeard)) {
        val (n, rms) = wavRms(path)
        expect(n > 48_000, "$path holds more than a second")
        expect(rms > 100.0, "$path is not silent (RMS $rms)")
    }
}

/** The key store: a wrong passphrase refused, trust on first use then verified in a second
 * call, a backup restored into a fresh store, a tampered one refused, and the key changed
 * (a weak passphrase refused, the old key refused afterwards, everything kept). */
fun keyStore(dir: File) {
    val pass = "amber walrus sings 1931 softly"
    val aliceStore = KeyStore.open(File(dir, "alice.db").path, pass)
    var wrong = false
    try {
        KeyStore.open(File(dir, "alice.db").path, pass + "!")
    } catch (e: ViskaException.WrongKey) {
        wrong = true
    }
    expect(wrong, "a wrong passphrase throws ViskaException.WrongKey")
    val bobStore = KeyStore.openWithKey(File(dir, "bob.db").path, ByteArray(32) { it.toByte() })
    val answered = CopyOnWriteArrayList<Call>()
    Phone(PhoneSettings(name = "kt-alice", identity = aliceStore.identity(), realtime = false, store = aliceStore)).use { alice ->
    Phone(PhoneSettings(name = "kt-bob", identity = bobStore.identity(), realtime = false, store = bobStore)).use { bob ->
        bob.setListener(object : PhoneListener {
            override fun onEvent(event: PhoneEvent) {
                if (event is PhoneEvent.IncomingCall) {
                    event.call.answer()
                    answered.add(event.call)
                }
            }
        })
        val addr = bob.listen("127.0.0.1:0")
        for (round in 1..2) {
            val call = alice.callContact("bob", addr)
            waitUntil("call $round active") { call.state() is CallState.Active && answered.size == round }
            val want = if (round == 1) Trust.UNVERIFIED else Trust.VERIFIED
            expect(call.info().trust == want, "call $round trust ${call.info().trust}, expected $want")
            if (round == 1) {
                call.markVerified()
                waitUntil("bob verified in the store") { aliceStore.contact("bob")?.verified == true }
            }
            call.hangup()
            waitUntil("call $round ended") { call.state() is CallState.Ended && answered[round - 1].state() is CallState.Ended }
        }
    }
    }
    val backup = aliceStore.exportBackup(pass)
    val fresh = KeyStore.openWithKey(File(dir, "fresh.db").path, ByteArray(32) { 7 })
    val tampered = backup.copyOf()
    tampered[tampered.size / 2] = (tampered[tampered.size / 2].toInt() xor 1).toByte()
    var bad = false
    try {
        fresh.importBackup(tampered, pass)
    } catch (e: ViskaException.BadBackup) {
        bad = true
    }
    expect(bad, "a tampered backup throws ViskaException.BadBackup")
    fresh.importBackup(backup, pass)
    // Records holding a ByteArray compare by reference in Kotlin: compare what they say.
    expect(fresh.identity().public().fingerprint == aliceStore.identity().public().fingerprint, "the restored identity is the same")
    val summary = { store: KeyStore -> store.contacts().map { Triple(it.handle, it.pinned.fingerprint, it.trust) } }
    expect(summary(fresh) == summary(aliceStore) && summary(fresh).single().third == Trust.VERIFIED, "the restored contacts are the same: ${summary(fresh)}")

    var weak = false
    try {
        aliceStore.changeKey("password1234")
    } catch (e: ViskaException.WeakPassphrase) {
        weak = true
    }
    expect(weak, "a weak new passphrase throws ViskaException.WeakPassphrase")
    val platformKey = ByteArray(32) { (it * 3 + 1).toByte() }
    aliceStore.changeKeyWithKey(platformKey)
    expect(summary(aliceStore) == summary(fresh), "the store in hand reads on after the key change")
    val newPass = "copper lantern 4410 hums low"
    aliceStore.changeKey(newPass)
    val aliceFingerprint = aliceStore.identity().public().fingerprint
    val before = summary(aliceStore)
    aliceStore.close()
    val alicePath = File(dir, "alice.db").path
    for ((what, open) in listOf<Pair<String, () -> KeyStore>>(
        "the first passphrase" to { KeyStore.open(alicePath, pass) },
        "the platform key" to { KeyStore.openWithKey(alicePath, platformKey) },
    )) {
        var refused = false
        try {
            open().close()
        } catch (e: ViskaException.WrongKey) {
            refused = true
        }
        expect(refused, "$what is refused after the key changes")
    }
    val reopened = KeyStore.open(alicePath, newPass)
    expect(reopened.identity().public().fingerprint == aliceFingerprint && summary(reopened) == before, "the new passphrase opens the same identity and contacts")
    listOf(reopened, bobStore, fresh).forEach { it.close() }
}

fun main() {
    val speech = System.getenv("VISKA_SPEECH") ?: "examples/phone/assets/speech.wav"
    val dir = kotlin.io.path.createTempDirectory("viska-kt").toFile()
    try {
        aRealCall(speech, dir)
        minimalExample()
        keyStore(dir)
        println("kotlin: all passed")
    } catch (e: Throwable) {
        e.printStackTrace()
        exitProcess(1)
    } finally {
        dir.deleteRecursively()
    }
    exitProcess(0)
}
