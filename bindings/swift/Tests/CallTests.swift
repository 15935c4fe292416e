// A real encrypted call between two phones over loopback QUIC, through the Swift bindings
// alone: incoming call with identity and trust, answer, audio from a WAV both ways (recorded
// at each end and checked), SAS, DTMF, call data, hold and resume, a listener that throws,
// hang-up, and one misuse.
import Foundation
import XCTest

#if canImport(Viska)
    import Viska
#endif

let timeout: TimeInterval = 20

func waitUntil(_ what: String, _ pred: () -> Bool) {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if pred() { return }
        Thread.sleep(forTimeInterval: 0.01)
    }
    XCTFail("timed out waiting for \(what)")
}

/// The OS name of the current thread (Linux), to check where callbacks run.
func osThreadName() -> String {
    let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "?"
    return name.trimmingCharacters(in: .whitespacesAndNewlines)
}

struct ListenerThrew: Error {}

/// Keeps every event. Runs on the phone's dispatcher thread: records and returns.
final class Recorder: PhoneListener, CallListener, @unchecked Sendable {
    private let lock = NSLock()
    private var _events: [CallEvent] = []
    private var _incoming: [(Call, CallerInfo)] = []
    private var _threads: Set<String> = []
    let throwOnStats: Bool

    init(throwOnStats: Bool = false) { self.throwOnStats = throwOnStats }

    func onEvent(event: PhoneEvent) throws {
        lock.lock(); defer { lock.unlock() }
        _threads.insert(osThreadName())
        if case let .incomingCall(call, caller) = event { _incoming.append((call, caller)) }
    }

    func onEvent(callId: String, event: CallEvent) throws {
        lock.lock()
        _threads.insert(osThreadName())
        _events.append(event)
        lock.unlock()
        if throwOnStats, case .stats = event { throw ListenerThrew() }
    }

    var events: [CallEvent] { lock.lock(); defer { lock.unlock() }; return _events }
    var incoming: [(Call, CallerInfo)] { lock.lock(); defer { lock.unlock() }; return _incoming }
    var threads: Set<String> { lock.lock(); defer { lock.unlock() }; return _threads }

    var dtmf: String {
        events.compactMap { if case let .dtmf(_, digit, _) = $0 { return digit } else { return nil } }.joined()
    }
    var data: [Data] {
        events.compactMap { if case let .data(_, data) = $0 { return data } else { return nil } }
    }
    var holds: [Bool] {
        events.compactMap { if case let .peerHold(_, onHold) = $0 { return onHold } else { return nil } }
    }
    var keysReadySas: [String] {
        events.compactMap { if case let .keysReady(sas, _) = $0 { return sas } else { return nil } }
    }
}

/// Sample count and RMS of a 16-bit PCM WAV (its data chunk found by walking the chunks).
func wavRms(_ path: String) -> (Int, Double) {
    guard let bytes = FileManager.default.contents(atPath: path) else { return (0, 0) }
    let b = [UInt8](bytes)
    func u32(_ i: Int) -> Int { Int(b[i]) | Int(b[i + 1]) << 8 | Int(b[i + 2]) << 16 | Int(b[i + 3]) << 24 }
    var pos = 12
    while pos + 8 <= b.count {
        let id = String(decoding: b[pos..<pos + 4], as: UTF8.self)
        let len = u32(pos + 4)
        if id == "data" {
            let n = min(len, b.count - pos - 8) / 2
            var sum = 0.0
            for i in 0..<n {
                let s = Double(Int16(bitPattern: UInt16(b[pos + 8 + 2 * i]) | UInt16(b[pos + 9 + 2 * i]) << 8))
                sum += s * s
            }
            return (n, n == 0 ? 0 : (sum / Double(n)).squareRoot())
        }
        pos += 8 + len + (len & 1)
    }
    return (0, 0)
}

final class CallTests: XCTestCase {
    static let allTests = [
        ("testARealCall", testARealCall),
        ("testMinimalExample", testMinimalExample),
        ("testKeyStore", testKeyStore),
    ]

    func testARealCall() throws {
        let speech = ProcessInfo.processInfo.environment["VISKA_SPEECH"] ?? "speech.wav"
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viska-swift-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let callerHeard = dir.appendingPathComponent("caller-heard.wav").path
        let calleeHeard = dir.appendingPathComponent("callee-heard.wav").path

        let callerId = Identity.generate()
        let calleeId = Identity.generate()
        XCTAssertEqual(try Identity.fromSecret(secret: callerId.secretBytes()).public(), callerId.public())

        let calleeEvents = Recorder(throwOnStats: true)
        let callerEvents = Recorder()
        do {
            let callee = try Phone(settings: PhoneSettings(
                name: "sw-callee", identity: calleeId,
                audio: .files(input: speech, loopInput: true, output: calleeHeard), realtime: false))
            let caller = try Phone(settings: PhoneSettings(
                name: "sw-caller", identity: callerId,
                audio: .files(input: speech, loopInput: true, output: callerHeard), realtime: false))
            callee.setListener(listener: calleeEvents)
            caller.setListener(listener: callerEvents)
            let addr = try callee.listen(addr: "127.0.0.1:0")

            let out = try caller.call(addr: addr)
            out.setListener(listener: callerEvents)
            waitUntil("the incoming call") { !calleeEvents.incoming.isEmpty }
            let (call, info) = calleeEvents.incoming[0]
            XCTAssertEqual(info.identity.publicKey, callerId.public().publicKey)
            XCTAssertEqual(info.trust, .unverified)
            call.setListener(listener: calleeEvents)
            XCTAssertEqual(call.state(), .ringing)
            try call.answer()

            waitUntil("both ends active") {
                if case .active = out.state(), case .active = call.state() { return true }
                return false
            }
            let sas = out.sas()
            XCTAssertNotNil(sas)
            XCTAssertEqual(sas, call.sas())
            waitUntil("keys-ready events") { !callerEvents.keysReadySas.isEmpty && !calleeEvents.keysReadySas.isEmpty }
            XCTAssertEqual(callerEvents.keysReadySas.first, sas)
            XCTAssertEqual(calleeEvents.keysReadySas.first, sas)
            XCTAssertEqual(out.id(), call.id())

            waitUntil("audio both ways") { out.stats().packetsReceived > 100 && call.stats().packetsReceived > 100 }

            try out.sendDtmf(digits: "7#0")
            try out.sendData(data: Data("crm:lead=7".utf8))
            waitUntil("DTMF") { calleeEvents.dtmf.count == 3 }
            XCTAssertEqual(calleeEvents.dtmf, "7#0")
            waitUntil("call data") { !calleeEvents.data.isEmpty }
            XCTAssertEqual(calleeEvents.data.first, Data("crm:lead=7".utf8))

            try out.hold()
            waitUntil("peer hold") { calleeEvents.holds.contains(true) }
            try out.resume()
            waitUntil("peer resume") { calleeEvents.holds.last == false }

            waitUntil("a listener failure") { callee.listenerFailures() > 0 }
            if case .active = call.state() {} else { XCTFail("the call did not survive a throwing listener") }

            try out.hangup()
            XCTAssertTrue(out.waitEnded(timeoutMs: 10_000))
            XCTAssertTrue(call.waitEnded(timeoutMs: 10_000))
            guard case let .ended(reason) = call.state(), case let .hangup(by, _) = reason else {
                return XCTFail("the callee's call is not ended by a hang-up: \(call.state())")
            }
            XCTAssertEqual(by, .remote)

            XCTAssertThrowsError(try call.answer()) { error in
                XCTAssertEqual(error as? ViskaError, .CallEnded)
            }
            XCTAssertEqual(calleeEvents.threads, ["vk-sw-callee-ev"])
            XCTAssertEqual(callerEvents.threads, ["vk-sw-caller-ev"])
            XCTAssertTrue(caller.shutdown(timeoutMs: 10_000))
            XCTAssertTrue(callee.shutdown(timeoutMs: 10_000))
        }
        for path in [callerHeard, calleeHeard] {
            let (n, rms) = wavRms(path)
            XCTAssertGreaterThan(n, 48_000, "\(path) holds more than a second")
            XCTAssertGreaterThan(rms, 100, "\(path) is not silent")
        }
    }

    /// The key store: a wrong passphrase refused, trust on first use then verified in a
    /// second call, a backup restored into a fresh store, a tampered one refused, and the key
    /// changed (a weak passphrase refused, the old keys refused afterwards, everything kept).
    func testKeyStore() throws {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("viska-sw-store-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let pass = "amber walrus sings 1931 softly"
        let alicePath = dir.appendingPathComponent("alice.db").path
        let aliceStore = try KeyStore.open(path: alicePath, passphrase: pass)
        XCTAssertThrowsError(try KeyStore.open(path: alicePath, passphrase: pass + "!")) { error in
            XCTAssertEqual(error as? ViskaError, .WrongKey)
        }
        let bobStore = try KeyStore.openWithKey(
            path: dir.appendingPathComponent("bob.db").path, key: Data(repeating: 3, count: 32))
        final class Answerer: PhoneListener, @unchecked Sendable {
            let lock = NSLock()
            var calls: [Call] = []
            func onEvent(event: PhoneEvent) throws {
                if case .incomingCall(let call, _) = event {
                    try call.answer()
                    lock.lock(); calls.append(call); lock.unlock()
                }
            }
            func count() -> Int { lock.lock(); defer { lock.unlock() }; return calls.count }
            func at(_ i: Int) -> Call { lock.lock(); defer { lock.unlock() }; return calls[i] }
        }
        let answerer = Answerer()
        let alice = try Phone(settings: PhoneSettings(
            name: "sw-alice", identity: try aliceStore.identity(), realtime: false, store: aliceStore))
        let bob = try Phone(settings: PhoneSettings(
            name: "sw-bob", identity: try bobStore.identity(), realtime: false, store: bobStore))
        bob.setListener(listener: answerer)
        let addr = try bob.listen(addr: "127.0.0.1:0")
        for round in 1...2 {
            let call = try alice.callContact(handle: "bob", addr: addr)
            waitUntil("call \(round) active") {
                if case .active = call.state(), answerer.count() == round { return true }
                return false
            }
            XCTAssertEqual(call.info().trust, round == 1 ? .unverified : .verified)
            if round == 1 {
                try call.markVerified()
                waitUntil("bob verified in the store") {
                    (try? aliceStore.contact(handle: "bob"))??.verified == true
                }
            }
            try call.hangup()
            waitUntil("call \(round) ended") {
                if case .ended = call.state(), case .ended = answerer.at(round - 1).state() { return true }
                return false
            }
        }
        XCTAssertTrue(alice.shutdown(timeoutMs: 10_000))
        XCTAssertTrue(bob.shutdown(timeoutMs: 10_000))
        let backup = try aliceStore.exportBackup(passphrase: pass)
        let fresh = try KeyStore.openWithKey(
            path: dir.appendingPathComponent("fresh.db").path, key: Data(repeating: 7, count: 32))
        var tampered = backup
        tampered[tampered.count / 2] ^= 1
        XCTAssertThrowsError(try fresh.importBackup(backup: tampered, passphrase: pass)) { error in
            guard case .BadBackup = error as? ViskaError else {
                return XCTFail("expected BadBackup, got \(error)")
            }
        }
        try fresh.importBackup(backup: backup, passphrase: pass)
        XCTAssertEqual(try fresh.identity().public(), try aliceStore.identity().public())
        XCTAssertEqual(try fresh.contacts(), try aliceStore.contacts())

        XCTAssertThrowsError(try aliceStore.changeKey(newPassphrase: "password1234")) { error in
            guard case .WeakPassphrase = error as? ViskaError else {
                return XCTFail("expected WeakPassphrase, got \(error)")
            }
        }
        let platformKey = Data((0..<32).map { UInt8($0 * 3 + 1) })
        try aliceStore.changeKeyWithKey(newKey: platformKey)
        XCTAssertEqual(try aliceStore.contacts(), try fresh.contacts(), "the store in hand reads on")
        let newPass = "copper lantern 4410 hums low"
        try aliceStore.changeKey(newPassphrase: newPass)
        XCTAssertThrowsError(try KeyStore.open(path: alicePath, passphrase: pass)) { error in
            XCTAssertEqual(error as? ViskaError, .WrongKey)
        }
        XCTAssertThrowsError(try KeyStore.openWithKey(path: alicePath, key: platformKey)) { error in
            XCTAssertEqual(error as? ViskaError, .WrongKey)
        }
        let reopened = try KeyStore.open(path: alicePath, passphrase: newPass)
        XCTAssertEqual(try reopened.identity().public(), try fresh.identity().public())
        XCTAssertEqual(try reopened.contacts(), try fresh.contacts())
    }

    func testMinimalExample() throws {
        try minimalExample()
    }
}
