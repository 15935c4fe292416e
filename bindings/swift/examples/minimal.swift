// Minimal Viska call in Swift: two phones on loopback, an encrypted call, the SAS, hang-up.
import Foundation

#if canImport(Viska)
    import Viska
#endif

/// Answers every incoming call. Called on the phone's dispatcher thread: never block here.
final class Answerer: PhoneListener, @unchecked Sendable {
    private let lock = NSLock()
    private var calls: [Call] = []

    func onEvent(event: PhoneEvent) throws {
        if case let .incomingCall(call, caller) = event {
            print("incoming call from \(caller.identity.fingerprint) (\(caller.trust))")
            try call.answer()
            lock.lock(); calls.append(call); lock.unlock()
        }
    }

    var answered: Call? { lock.lock(); defer { lock.unlock() }; return calls.first }
}

func minimalExample() throws {
    let alice = try Phone(settings: PhoneSettings(name: "alice", identity: Identity.generate()))
    let bob = try Phone(settings: PhoneSettings(name: "bob", identity: Identity.generate()))
    let answerer = Answerer()
    bob.setListener(listener: answerer)
    let address = try bob.listen(addr: "127.0.0.1:0")
    let call = try alice.call(addr: address)
    let end = Date().addingTimeInterval(20)
    while Date() < end {
        if case .active = call.state(), answerer.answered != nil { break }
        Thread.sleep(forTimeInterval: 0.01)
    }
    print("compare aloud: \(call.sas() ?? "-") == \(answerer.answered?.sas() ?? "-")")
    guard let sas = call.sas(), sas == answerer.answered?.sas() else {
        throw NSError(domain: "viska-example", code: 1)
    }
    try call.hangup()
    _ = call.waitEnded(timeoutMs: 10_000)
    _ = alice.shutdown(timeoutMs: 10_000)
    _ = bob.shutdown(timeoutMs: 10_000)
}
