//! A call's whole media receive path (the session's stream of one participant: SFrame, jitter
//! buffer, decoder): `receive` then `play_frame`, fed by a real sender keyed by a real direct
//! handshake (two fixed identities,
//! run once per process and suite). The sender encodes frames of deterministic audio, skips
//! frame periods (hold, mute) and the network delays, reorders, corrupts, truncates, duplicates
//! or replays its datagrams, or injects arbitrary bytes; the receiver plays frames on a
//! virtual clock. At most 200 steps per input (Opus encode and decode are the cost).
//!
//! Checked after every step:
//!
//! * nothing panics;
//! * `receive` returns `Ok(index)` only for the exact bytes the sender produced for frame
//!   `index`, and only once per frame (a corrupted or truncated datagram, arbitrary bytes and
//!   a duplicate are refused); the sender's untouched datagram for a frame not yet accepted is
//!   accepted unless the SFrame replay window has moved past it (`TooOld`);
//! * every `receive` is counted exactly once: `frames_received` on success, else exactly one of
//!   `decrypt_failures`, `replays_rejected`, `malformed`;
//! * no counter of either session (nor of the playout) ever decreases; nothing but the sender's Opus packets reaches the decoder, so `decode_errors` stays 0;
//! * `play_frame` of one frame always returns `Ok` and writes every sample of the buffer; the
//!   frame index it reports was accepted by `receive`, and no frame index is reported twice.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use viska_e2ee::direct::{
    ChannelBinding, DirectHandshake, HandshakeConfig, HandshakeStep, SessionKeys,
};
use viska_e2ee::identity::IdentityKeyPair;
use viska_media::audio::SAMPLE_RATE;
use viska_media::codec::{FrameDuration, OpusConfig};
use viska_media::jitter::JitterConfig;
use viska_session::fuzzing::MediaPath as MediaSession;
use viska_session::{MAX_DATAGRAM, MediaCounters, MediaError};
use viska_sframe::{BaseKey, CipherSuite, SendKey, SframeError};

/// Most steps per input; a `Talk` frame counts two (a send and a play).
const MAX_STEPS: usize = 200;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The sender encodes a frame of audio `pcm_seed` and sends it; the network optionally
    /// flips bits of one byte and cuts the datagram short, and delivers it `delay_ms` later.
    Send {
        pcm_seed: u8,
        mutate: Option<(u16, u8)>,
        truncate: Option<u16>,
        delay_ms: u8,
    },
    /// Arbitrary bytes arrive now.
    Raw(Vec<u8>),
    /// An earlier frame arrives (again) now: the sender's untouched datagram, or the bytes as
    /// the network first delivered them.
    Replay { index: u16, as_delivered: bool },
    /// The sender lets one frame period pass without sending (hold, mute).
    Skip,
    /// The clock advances and the receiver plays one frame.
    Play { advance_ms: u8 },
    /// `frames` periods of a steady talker: each frame sent and delivered `delay_ms` (plus a
    /// step per frame, wrapping at 120 ms) later, one frame played per period.
    Talk {
        frames: u8,
        pcm_seed: u8,
        delay_ms: u8,
        delay_step_ms: i8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ten_ms_frames: bool,
    dtx: bool,
    /// Which of `CipherSuite::ALL` the call uses (modulo their number).
    suite: u8,
    ops: Vec<Op>,
}

#[path = "common/fuzz_rng.rs"]
mod fuzz_rng;
use fuzz_rng::FuzzRng;

fn handshake_config(secret: u8, suite: CipherSuite) -> HandshakeConfig {
    HandshakeConfig {
        identity: IdentityKeyPair::from_secret_bytes(&[secret; 32]).expect("32 bytes"),
        suites: vec![suite],
        binding: ChannelBinding {
            tls_exporter: [1; 32],
        },
        expected_peer: None,
    }
}

/// (caller's keys, callee's keys) of one honest direct handshake under `suite`.
fn run_handshake(suite: CipherSuite) -> (SessionKeys, SessionKeys) {
    let mut rng = FuzzRng(0x5eed);
    let (mut caller, msg1) =
        DirectHandshake::initiate(handshake_config(0xA1, suite), &mut rng).expect("initiate");
    let mut callee =
        DirectHandshake::respond(handshake_config(0xB0, suite), &mut rng).expect("respond");
    caller.bind_prologue(b"");
    callee.bind_prologue(b"");
    let Ok(HandshakeStep::Send(msg2)) = callee.handle_message(&msg1) else {
        panic!("honest message 1 refused");
    };
    let Ok(HandshakeStep::Send(msg3)) = caller.handle_message(&msg2) else {
        panic!("honest message 2 refused");
    };
    let Ok(HandshakeStep::CompleteWithReveal(callee_keys, msg4)) = callee.handle_message(&msg3)
    else {
        panic!("honest message 3 refused");
    };
    let Ok(HandshakeStep::Complete(caller_keys)) = caller.handle_message(&msg4.into_bytes()) else {
        panic!("honest message 4 refused");
    };
    assert_eq!(caller_keys.suite, suite);
    (caller_keys, callee_keys)
}

fn session_keys(suite: u8) -> &'static (SessionKeys, SessionKeys) {
    static KEYS: [OnceLock<(SessionKeys, SessionKeys)>; CipherSuite::ALL.len()] =
        [const { OnceLock::new() }; CipherSuite::ALL.len()];
    let index = usize::from(suite) % CipherSuite::ALL.len();
    KEYS[index].get_or_init(|| run_handshake(CipherSuite::ALL[index]))
}

/// The virtual clock's origin: the one clock reading of the process, shared by every input.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| Instant::now() + Duration::from_secs(1_000))
}

/// One frame of deterministic audio starting at sample `start` of the stream: silence for
/// seed 0, otherwise a tone (seeds with the top bit set add noise) whose pitch and loudness
/// the seed picks.
fn fill_pcm(seed: u8, start: u64, pcm: &mut [i16]) {
    if seed == 0 {
        pcm.fill(0);
        return;
    }
    let freq = 80.0 + f64::from(seed & 0x3f) * 45.0;
    let amplitude = f64::from(500 + u32::from(seed & 0x70) * 150);
    let mut noise = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ start;
    for (n, sample) in pcm.iter_mut().enumerate() {
        let t = (start + n as u64) as f64 / f64::from(SAMPLE_RATE);
        let mut value = amplitude * (std::f64::consts::TAU * freq * t).sin();
        if seed & 0x80 != 0 {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            value += f64::from((noise >> 52) as i16 - 2_048);
        }
        *sample = value as i16;
    }
}

/// Values a played buffer is filled with beforehand: a fixed pseudo-random pattern. Four
/// samples in a row still equal to it mean `play_frame` left them unwritten (decoded audio
/// matching 64 random bits is not a concern).
fn sentinel(len: usize) -> Vec<i16> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 48) as i16
        })
        .collect()
}

/// The counters that only ever grow, of a session and its playout.
fn monotonic(c: &MediaCounters) -> [(&'static str, u128); 25] {
    let p = &c.playout;
    [
        ("frames_sent", c.frames_sent.into()),
        ("frames_refused", c.frames_refused.into()),
        ("frames_skipped", c.frames_skipped.into()),
        ("bytes_sent", c.bytes_sent.into()),
        ("opus_bytes_sent", c.opus_bytes_sent.into()),
        ("frames_received", c.frames_received.into()),
        ("decrypt_failures", c.decrypt_failures.into()),
        ("replays_rejected", c.replays_rejected.into()),
        ("malformed", c.malformed.into()),
        ("refused_by_buffer", c.refused_by_buffer.into()),
        ("received", p.received.into()),
        ("lost", p.lost.into()),
        ("late", p.late.into()),
        ("duplicate", p.duplicate.into()),
        ("concealed", p.concealed.into()),
        ("fec_recovered", p.fec_recovered.into()),
        ("dred_recovered", p.dred_recovered.into()),
        ("dropped_for_delay", p.dropped_for_delay.into()),
        ("inserted_for_delay", p.inserted_for_delay.into()),
        ("accelerated", p.accelerated.into()),
        ("expanded", p.expanded.into()),
        ("stretch_removed", p.stretch_removed.as_nanos()),
        ("stretch_inserted", p.stretch_inserted.as_nanos()),
        ("overflow_dropped", p.overflow_dropped.into()),
        ("resyncs", p.resyncs.into()),
    ]
}

/// A datagram on its way to the receiver.
#[derive(Clone)]
struct Datagram {
    bytes: Vec<u8>,
    /// The sender's frame whose untouched datagram these bytes are.
    honest: Option<u64>,
}

struct Call {
    sender: MediaSession,
    receiver: MediaSession,
    frame: Duration,
    now: Instant,
    /// Samples of audio captured so far (the phase of the test signal).
    captured: u64,
    pcm: Vec<i16>,
    out: Vec<u8>,
    played: Vec<i16>,
    sentinel: Vec<i16>,
    /// The sender's untouched datagram of every frame it sent.
    sent: HashMap<u64, Vec<u8>>,
    /// Frame indices in the order they were sent, and the bytes first delivered for each.
    sent_order: Vec<(u64, Vec<u8>)>,
    /// Frames `receive` accepted, and the highest of them.
    accepted: HashSet<u64>,
    highest_accepted: Option<u64>,
    /// Frame indices `play_frame` reported.
    played_indices: HashSet<u64>,
    /// Datagrams in flight: (arrival, send order, datagram).
    in_flight: Vec<(Instant, usize, Datagram)>,
    sends: usize,
    sender_counters: MediaCounters,
    receiver_counters: MediaCounters,
}

impl Call {
    fn check_counters(&mut self) {
        for (old, session) in [
            (&mut self.sender_counters, &self.sender),
            (&mut self.receiver_counters, &self.receiver),
        ] {
            let new = session.counters();
            for ((name, a), (_, b)) in monotonic(old).iter().zip(&monotonic(&new)) {
                assert!(b >= a, "{name} went from {a} to {b}");
            }
            let (a, b) = (old.playout.dtx_frames, new.playout.dtx_frames);
            assert!(b >= a, "dtx_frames went from {a} to {b}");
            assert_eq!(
                new.playout.decode_errors, 0,
                "an authenticated packet failed to decode"
            );
            *old = new;
        }
        let r = &self.receiver_counters;
        assert_eq!(
            r.playout.received, r.frames_received,
            "playout saw other packets than receive accepted"
        );
    }

    /// Encodes one frame; returns its untouched datagram, or `None` when DTX sent nothing.
    fn encode(&mut self, pcm_seed: u8) -> Option<(u64, Vec<u8>)> {
        fill_pcm(pcm_seed, self.captured, &mut self.pcm);
        self.captured += self.pcm.len() as u64;
        let index = self.sender.next_frame_index();
        let sent = self
            .sender
            .send_frame(&self.pcm, &mut self.out)
            .expect("a frame encodes and protects");
        assert_eq!(self.sender.next_frame_index(), index + 1);
        let len = sent?;
        let bytes = self.out[..len].to_vec();
        assert!(
            self.sent.insert(index, bytes.clone()).is_none(),
            "frame index {index} reused"
        );
        Some((index, bytes))
    }

    fn send(
        &mut self,
        pcm_seed: u8,
        mutate: Option<(u16, u8)>,
        truncate: Option<u16>,
        delay: Duration,
    ) {
        let Some((index, mut bytes)) = self.encode(pcm_seed) else {
            self.check_counters();
            return;
        };
        if let Some((position, xor)) = mutate {
            let at = usize::from(position) % bytes.len();
            bytes[at] ^= xor;
        }
        if let Some(len) = truncate {
            bytes.truncate(usize::from(len) % (bytes.len() + 1));
        }
        let honest = (bytes == self.sent[&index]).then_some(index);
        if honest.is_none() {
            assert!(mutate.is_some_and(|(_, xor)| xor != 0) || truncate.is_some());
        }
        self.sent_order.push((index, bytes.clone()));
        self.in_flight
            .push((self.now + delay, self.sends, Datagram { bytes, honest }));
        self.sends += 1;
        self.deliver_due();
    }

    fn skip(&mut self) {
        let expected = self.sender.next_frame_index();
        self.sender.skip_frame().expect("a frame period skips");
        assert_eq!(self.sender.next_frame_index(), expected + 1);
        self.captured += self.pcm.len() as u64;
        self.check_counters();
    }

    /// Delivers, in order of arrival, every datagram in flight that has arrived by `now`.
    fn deliver_due(&mut self) {
        let now = self.now;
        self.in_flight.sort_by_key(|&(at, order, _)| (at, order));
        let due = self.in_flight.partition_point(|&(at, _, _)| at <= now);
        let arrived: Vec<_> = self.in_flight.drain(..due).collect();
        for (at, _, datagram) in arrived {
            self.receive(at, &datagram);
        }
    }

    fn receive(&mut self, at: Instant, datagram: &Datagram) {
        let before = self.receiver.counters();
        let result = self.receiver.receive(at, &datagram.bytes);
        let after = self.receiver.counters();
        let grew = |f: fn(&MediaCounters) -> u64| f(&after) - f(&before);
        let failures = [
            grew(|c| c.decrypt_failures),
            grew(|c| c.replays_rejected),
            grew(|c| c.malformed),
        ];
        match result {
            Ok(index) => {
                assert_eq!(
                    self.sent.get(&index).map(Vec::as_slice),
                    Some(datagram.bytes.as_slice()),
                    "frame {index} accepted from bytes the sender did not produce for it"
                );
                assert!(self.accepted.insert(index), "frame {index} accepted twice");
                self.highest_accepted = self.highest_accepted.max(Some(index));
                assert_eq!(grew(|c| c.frames_received), 1);
                assert_eq!(failures, [0, 0, 0]);
            }
            Err(e) => {
                if let Some(index) = datagram.honest
                    && !self.accepted.contains(&index)
                {
                    let too_old = matches!(
                        e,
                        MediaError::Sframe(SframeError::TooOld { ctr, .. }) if ctr == index
                    );
                    assert!(too_old, "the sender's frame {index} refused: {e}");
                    let highest = self.highest_accepted.expect("something newer was accepted");
                    assert!(
                        highest > index,
                        "frame {index} too old with {highest} the highest"
                    );
                }
                assert_eq!(grew(|c| c.frames_received), 0);
                assert_eq!(
                    failures.iter().sum::<u64>(),
                    1,
                    "{e} counted as {failures:?}"
                );
            }
        }
        self.check_counters();
    }

    fn play(&mut self, advance: Duration) {
        self.now += advance;
        self.deliver_due();
        let _ = self.receiver.next_frame_ready();
        self.played.copy_from_slice(&self.sentinel);
        let played = self
            .receiver
            .play_frame(self.now, &mut self.played)
            .expect("one frame plays");
        let mut unchanged_run = 0;
        for (sample, untouched) in self.played.iter().zip(&self.sentinel) {
            unchanged_run = if sample == untouched {
                unchanged_run + 1
            } else {
                0
            };
            assert!(
                unchanged_run < 4,
                "{:?}: samples left unwritten",
                played.outcome
            );
        }
        // Every reported index must have been accepted, and only once.
        if let Some(index) = played.frame_index {
            assert!(
                self.accepted.contains(&index),
                "{played:?}: frame {index} was never accepted"
            );
            assert!(
                self.played_indices.insert(index),
                "{played:?}: frame {index} played twice"
            );
        }
        self.check_counters();
    }
}

fuzz_target!(|input: Input| {
    let (caller_keys, callee_keys) = session_keys(input.suite);
    let frame = if input.ten_ms_frames {
        FrameDuration::Ms10
    } else {
        FrameDuration::Ms20
    };
    let opus = OpusConfig {
        frame,
        dtx: input.dtx,
        ..OpusConfig::default()
    };
    let jitter = JitterConfig::default();
    // The handshake runs once per process; each input's sessions get copies of its keys (the
    // fuzzer may reuse a key and counter across inputs, a real call never does).
    let session = |keys: &SessionKeys| {
        let send = SendKey::new(
            keys.media_send.key_id(),
            BaseKey::new(keys.media_send.expose_secret().to_vec()),
        );
        MediaSession::new(keys.suite, send, &keys.media_recv, &opus, &jitter)
            .expect("valid media config")
    };
    let sender = session(caller_keys);
    let receiver = session(callee_keys);
    let frame_samples = receiver.frame_samples();
    let frame_period = Duration::from_millis(u64::from(frame.millis()));
    let mut call = Call {
        sender_counters: sender.counters(),
        receiver_counters: receiver.counters(),
        sender,
        receiver,
        frame: frame_period,
        now: epoch(),
        captured: 0,
        pcm: vec![0; frame_samples],
        out: vec![0; MAX_DATAGRAM],
        played: vec![0; frame_samples],
        sentinel: sentinel(frame_samples),
        sent: HashMap::new(),
        sent_order: Vec::new(),
        accepted: HashSet::new(),
        highest_accepted: None,
        played_indices: HashSet::new(),
        in_flight: Vec::new(),
        sends: 0,
    };
    let ms = |n: u8| Duration::from_millis(u64::from(n));
    let mut steps = 0;
    for op in input.ops {
        if steps >= MAX_STEPS {
            break;
        }
        steps += 1;
        match op {
            Op::Send {
                pcm_seed,
                mutate,
                truncate,
                delay_ms,
            } => call.send(pcm_seed, mutate, truncate, ms(delay_ms)),
            Op::Raw(bytes) => {
                let honest = None;
                call.receive(call.now, &Datagram { bytes, honest });
            }
            Op::Replay {
                index,
                as_delivered,
            } => {
                let Some((frame_index, delivered)) = call
                    .sent_order
                    .get(usize::from(index) % call.sent_order.len().max(1))
                    .cloned()
                else {
                    continue;
                };
                let datagram = if as_delivered {
                    let honest = (delivered == call.sent[&frame_index]).then_some(frame_index);
                    Datagram {
                        bytes: delivered,
                        honest,
                    }
                } else {
                    Datagram {
                        bytes: call.sent[&frame_index].clone(),
                        honest: Some(frame_index),
                    }
                };
                call.receive(call.now, &datagram);
            }
            Op::Skip => call.skip(),
            Op::Play { advance_ms } => call.play(ms(advance_ms)),
            Op::Talk {
                frames,
                pcm_seed,
                delay_ms,
                delay_step_ms,
            } => {
                let mut delay = i64::from(delay_ms);
                for _ in 0..frames {
                    if steps + 2 > MAX_STEPS {
                        break;
                    }
                    steps += 2;
                    call.send(pcm_seed, None, None, Duration::from_millis(delay as u64));
                    call.play(call.frame);
                    delay = (delay + i64::from(delay_step_ms)).rem_euclid(120);
                }
            }
        }
    }
    // The network empties, then one more frame is played.
    while let Some(last) = call.in_flight.iter().map(|&(at, _, _)| at).max() {
        call.now = call.now.max(last);
        call.deliver_due();
    }
    call.play(call.frame);
});
