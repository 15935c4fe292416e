//! Jitter buffer scenarios on a virtual clock: a sender with a speech-like on/off pattern, a
//! seeded impairment model (loss, bursts, reordering, jitter, stalls, clock drift, DTX) and a
//! receiver that pops once per period and adapts its delay the way `Playout` does (drop or
//! insert only at quiet frames). Payloads carry their own sequence number so every played
//! packet is checked against the playout position.

use std::time::{Duration, Instant};

use viska_media::jitter::{
    DelayAdjustment, JitterBuffer, JitterConfig, JitterError, Next, PushMeta, PushOutcome,
};

const FRAME_US: u64 = 20_000;

/// SplitMix64: a small seeded generator, enough for an impairment model.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug)]
enum Loss {
    None,
    Random(f64),
    /// Gilbert model: probability to enter the bad state, probability to stay in it.
    Bursts {
        enter: f64,
        stay: f64,
    },
}

#[derive(Clone, Debug)]
struct Network {
    latency_ms: f64,
    jitter_ms: f64,
    loss: Loss,
    reorder: f64,
    reorder_extra_ms: f64,
    /// A stall from `start_s` for `ms`: everything sent meanwhile arrives at its end.
    stall: Option<(f64, f64)>,
    /// Sender clock error: positive means the sender's frames are shorter (it runs fast).
    drift_ppm: f64,
    /// The sender transmits nothing in quiet frames and marks the first packet after.
    dtx: bool,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            latency_ms: 30.0,
            jitter_ms: 0.0,
            loss: Loss::None,
            reorder: 0.0,
            reorder_extra_ms: 0.0,
            stall: None,
            drift_ppm: 0.0,
            dtx: false,
        }
    }
}

/// Speech-like pattern: 1.2 s of talk, 0.6 s of pause.
fn loud(seq: u64) -> bool {
    seq % 90 < 60
}

struct Packet {
    arrival_us: u64,
    seq: u64,
    marker: bool,
}

struct Traffic {
    packets: Vec<Packet>,
    lost: Vec<u64>,
    dtx: Vec<u64>,
}

fn generate(network: &Network, frames: u64, seed: u64) -> Traffic {
    let mut rng = Rng(seed);
    let mut packets = Vec::new();
    let mut lost = Vec::new();
    let mut dtx = Vec::new();
    let mut bad = false;
    let mut previous_silent = false;
    for seq in 0..frames {
        if network.dtx && !loud(seq) {
            dtx.push(seq);
            previous_silent = true;
            continue;
        }
        let marker = network.dtx && previous_silent;
        previous_silent = false;
        let send_us = seq as f64 * FRAME_US as f64 * (1.0 - network.drift_ppm * 1e-6);
        let dropped = match network.loss {
            Loss::None => false,
            Loss::Random(p) => rng.unit() < p,
            Loss::Bursts { enter, stay } => {
                bad = if bad {
                    rng.unit() < stay
                } else {
                    rng.unit() < enter
                };
                bad
            }
        };
        let mut delay_ms = network.latency_ms + rng.unit() * network.jitter_ms;
        if rng.unit() < network.reorder {
            delay_ms += network.reorder_extra_ms;
        }
        let mut arrival = send_us + delay_ms * 1000.0;
        if let Some((start_s, ms)) = network.stall {
            let (start, end) = (start_s * 1e6, start_s * 1e6 + ms * 1000.0);
            if send_us >= start && send_us < end {
                // Delivered in a burst when the stall ends, in order, 0.1 ms apart.
                arrival =
                    arrival.max(end + network.latency_ms * 1000.0 + (send_us - start) / 200.0);
            }
        }
        if dropped {
            lost.push(seq);
            continue;
        }
        packets.push(Packet {
            arrival_us: arrival as u64,
            seq,
            marker,
        });
    }
    packets.sort_by_key(|packet| packet.arrival_us);
    Traffic { packets, lost, dtx }
}

fn payload(seq: u64) -> [u8; 40] {
    let mut bytes = [0u8; 40];
    bytes[0] = u8::from(loud(seq));
    bytes[1..9].copy_from_slice(&seq.to_le_bytes());
    bytes
}

fn payload_seq(bytes: &[u8]) -> u64 {
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[1..9]);
    u64::from_le_bytes(seq)
}

#[derive(Default, Debug)]
struct Trace {
    played: Vec<u64>,
    fec: u64,
    conceal: u64,
    gap: u64,
    waits: u64,
    inserted: u64,
    dropped: u64,
    skipped_to_talkspurt: u64,
    empty: u64,
    max_len: usize,
    /// (time in seconds, current delay ms, target delay ms) once per second.
    delays: Vec<(f64, f64, f64)>,
    outcomes: Vec<PushOutcome>,
}

impl Trace {
    fn delay_at(&self, seconds: f64) -> (f64, f64) {
        let sample = self
            .delays
            .iter()
            .min_by(|a, b| (a.0 - seconds).abs().total_cmp(&(b.0 - seconds).abs()))
            .expect("delay samples");
        (sample.1, sample.2)
    }

    fn max_current_between(&self, from_s: f64, to_s: f64) -> f64 {
        self.delays
            .iter()
            .filter(|d| d.0 >= from_s && d.0 <= to_s)
            .map(|d| d.1)
            .fold(0.0, f64::max)
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs the receiver: pops once per period starting at `phase_us`, adapting like `Playout`.
fn run(
    config: JitterConfig,
    traffic: &Traffic,
    periods: u64,
    phase_us: u64,
) -> (JitterBuffer, Trace) {
    let epoch = Instant::now();
    let at = |us: u64| epoch + Duration::from_micros(us);
    let mut buffer = JitterBuffer::new(config).expect("valid config");
    let mut trace = Trace::default();
    let mut next_packet = traffic.packets.iter().peekable();
    let mut last_quiet = true;
    for period in 0..periods {
        let now_us = phase_us + period * FRAME_US;
        while let Some(packet) = next_packet.next_if(|p| p.arrival_us <= now_us) {
            let outcome = buffer.push(
                at(packet.arrival_us),
                packet.seq,
                &payload(packet.seq),
                PushMeta {
                    marker: packet.marker,
                    ..PushMeta::default()
                },
            );
            trace.outcomes.push(outcome);
            trace.max_len = trace.max_len.max(buffer.len());
            assert!(buffer.len() <= buffer.config().capacity_frames);
        }
        let now = at(now_us);
        if period % 50 == 0 {
            trace.delays.push((
                now_us as f64 / 1e6,
                ms(buffer.current_delay(now)),
                ms(buffer.target_delay(now)),
            ));
        }
        let adjustment = buffer.delay_adjustment(now);
        if adjustment == DelayAdjustment::Grow && last_quiet {
            trace.inserted += 1;
        } else {
            let expected = buffer.next_seq();
            match buffer.pop(now) {
                Next::Packet(bytes) => {
                    let seq = payload_seq(bytes);
                    last_quiet = bytes[0] == 0;
                    // A packet plays at its own position; only silence before a talkspurt
                    // start may be skipped to reach it.
                    assert!(seq >= expected, "played out of position");
                    assert_eq!(seq + 1, buffer.next_seq());
                    if seq > expected {
                        trace.skipped_to_talkspurt += 1;
                    }
                    trace.played.push(seq);
                    let drop = matches!(adjustment, DelayAdjustment::Shrink { urgent } if urgent || last_quiet);
                    if drop && buffer.head_ready() {
                        let expected = buffer.next_seq();
                        if let Next::Packet(bytes) = buffer.pop(now) {
                            let seq = payload_seq(bytes);
                            assert_eq!(seq, expected);
                            last_quiet = bytes[0] == 0;
                            trace.played.push(seq);
                            trace.dropped += 1;
                        }
                    }
                }
                Next::RecoverFec { next } => {
                    assert_eq!(payload_seq(next), expected + 1);
                    trace.fec += 1;
                }
                Next::Conceal => trace.conceal += 1,
                Next::Gap => trace.gap += 1,
                Next::Wait => trace.waits += 1,
                Next::Empty => trace.empty += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    (buffer, trace)
}

/// The default settings with playout starting one frame after the first packet, for the
/// scenarios that count pops from the start.
fn quick_start() -> JitterConfig {
    JitterConfig {
        start_delay: Duration::from_millis(20),
        ..JitterConfig::default()
    }
}

fn strictly_increasing(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|pair| pair[0] < pair[1])
}

#[test]
fn clean_network_plays_every_frame() {
    let frames = 3_000;
    let traffic = generate(&Network::default(), frames, 1);
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 7_000);
    let stats = buffer.stats();
    assert_eq!(stats.lost, 0);
    assert_eq!(stats.late, 0);
    assert_eq!(trace.conceal + trace.fec + trace.gap + trace.waits, 0);
    assert!(strictly_increasing(&trace.played));
    // Everything but the frames still in flight at the end was played, start delay excepted.
    assert!(
        trace.played.len() as u64 >= frames - 5,
        "{}",
        trace.played.len()
    );
    // The delay stays at the floor: within a frame above min_delay.
    let (current, target) = trace.delay_at(50.0);
    assert_eq!(target, 20.0);
    assert!((20.0..40.0).contains(&current), "{current}");
}

#[test]
fn random_loss_is_counted_exactly() {
    let frames = 5_000;
    let network = Network {
        loss: Loss::Random(0.05),
        ..Network::default()
    };
    let traffic = generate(&network, frames, 2);
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 7_000);
    let stats = buffer.stats();
    let injected = traffic
        .lost
        .iter()
        .filter(|&&seq| seq < buffer.next_seq())
        .count() as u64;
    assert!(injected > 150, "{injected}");
    assert_eq!(stats.lost + stats.unsettled_gaps, injected);
    assert_eq!(trace.fec + trace.conceal + stats.lost_in_gaps, stats.lost);
    assert!(
        trace.fec > trace.conceal,
        "isolated losses are mostly FEC-recoverable"
    );
    assert_eq!(stats.late, 0);
    assert!(strictly_increasing(&trace.played));
}

#[test]
fn burst_loss_is_counted_and_delay_stays_bounded() {
    let frames = 5_000;
    let network = Network {
        loss: Loss::Bursts {
            enter: 0.02,
            stay: 0.7,
        },
        ..Network::default()
    };
    let traffic = generate(&network, frames, 3);
    let config = JitterConfig::default();
    let max_delay = ms(config.max_delay);
    let config_start = config.start_delay;
    let (buffer, trace) = run(config, &traffic, frames, 7_000);
    let stats = buffer.stats();
    let injected = traffic
        .lost
        .iter()
        .filter(|&&seq| seq < buffer.next_seq())
        .count() as u64;
    assert!(injected > 100, "{injected}");
    assert_eq!(stats.lost + stats.unsettled_gaps, injected);
    assert_eq!(trace.fec + trace.conceal + stats.lost_in_gaps, stats.lost);
    // Packets that never come are concealed at once: a loss burst is no stall, so the buffer
    // does not wait for it and the delay never grows past where playout started.
    assert_eq!(trace.waits, 0);
    assert!(trace.max_current_between(0.0, 100.0) <= ms(config_start) + 20.0);
    assert!(trace.max_current_between(0.0, 100.0) <= max_delay);
}

#[test]
fn reordering_within_the_delay_loses_nothing() {
    let frames = 3_000;
    let network = Network {
        jitter_ms: 10.0,
        reorder: 0.1,
        reorder_extra_ms: 30.0,
        ..Network::default()
    };
    let traffic = generate(&network, frames, 4);
    let config = JitterConfig {
        min_delay: Duration::from_millis(60),
        start_delay: Duration::from_millis(60),
        ..JitterConfig::default()
    };
    let (buffer, trace) = run(config, &traffic, frames, 3_000);
    let stats = buffer.stats();
    assert_eq!(stats.late, 0);
    assert_eq!(stats.lost, 0);
    assert_eq!(trace.conceal + trace.fec + trace.gap, 0);
    assert!(strictly_increasing(&trace.played));
    assert!(trace.played.len() as u64 + trace.dropped >= frames - 10);
}

#[test]
fn jitter_raises_target_to_cover_it() {
    let frames = 3_000;
    let network = Network {
        jitter_ms: 60.0,
        ..Network::default()
    };
    let traffic = generate(&network, frames, 5);
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 7_000);
    let stats = buffer.stats();
    let (_, target) = trace.delay_at(40.0);
    assert!((45.0..=90.0).contains(&target), "target {target}");
    // Once adapted, almost nothing is late: only during the first seconds.
    assert!(stats.late < 30, "late {}", stats.late);
    assert!(stats.jitter > Duration::from_millis(5));
}

#[test]
fn a_spike_raises_the_target_at_once_and_it_decays_later() {
    let frames = 2_500; // 50 s
    let network = Network {
        jitter_ms: 4.0,
        stall: Some((10.0, 300.0)),
        ..Network::default()
    };
    let traffic = generate(&network, frames, 6);
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 7_000);
    let (_, before) = trace.delay_at(9.0);
    let (_, right_after) = trace.delay_at(11.0);
    let (current_late, target_late) = trace.delay_at(45.0);
    assert!(before <= 30.0, "before {before}");
    assert!(right_after >= 200.0, "after spike {right_after}");
    assert!(target_late <= 30.0, "target 35 s later {target_late}");
    // The playout delay came back down too (drops at quiet frames).
    assert!(current_late <= target_late + 20.0, "current {current_late}");
    assert!(trace.dropped > 5);
    assert!(buffer.stats().late > 0, "the first stall is not foreseen");
}

#[test]
fn after_bursty_stalls_the_buffer_waits_instead_of_concealing() {
    let frames = 1_500;
    // Two short stalls: the first teaches the buffer the loss is bursty.
    let mut traffic = generate(
        &Network {
            stall: Some((5.0, 80.0)),
            ..Network::default()
        },
        frames,
        7,
    );
    for packet in traffic.packets.iter_mut() {
        let send_us = packet.seq * FRAME_US;
        if (20_000_000..20_080_000).contains(&send_us) {
            packet.arrival_us = packet
                .arrival_us
                .max(20_110_000 + (send_us - 20_000_000) / 200);
        }
    }
    traffic.packets.sort_by_key(|packet| packet.arrival_us);
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 7_000);
    let stats = buffer.stats();
    assert!(trace.waits > 0, "waits {}", trace.waits);
    // Everything sent in the second stall was played (waited for), none of it lost.
    for seq in 1_000..1_004 {
        assert!(trace.played.contains(&seq), "frame {seq} not played");
    }
    assert!(strictly_increasing(&trace.played));
    assert!(stats.lost <= 5, "lost {}", stats.lost);
}

fn drift_run(drift_ppm: f64) -> (JitterBuffer, Trace) {
    let frames = 60_000; // 20 minutes
    let network = Network {
        jitter_ms: 5.0,
        drift_ppm,
        ..Network::default()
    };
    let traffic = generate(&network, frames, 8);
    run(JitterConfig::default(), &traffic, frames - 100, 7_000)
}

#[test]
fn a_fast_sender_does_not_grow_the_delay() {
    let (buffer, trace) = drift_run(200.0);
    let stats = buffer.stats();
    // 200 ppm over 20 minutes is 240 ms: about 12 frames to drop.
    assert!(
        (8..=20).contains(&trace.dropped),
        "dropped {}",
        trace.dropped
    );
    assert!(
        trace.max_current_between(60.0, 1_200.0) <= 60.0,
        "{:?}",
        trace.delays
    );
    assert_eq!(stats.lost, 0);
    assert!(trace.max_len <= 5);
}

#[test]
fn a_slow_sender_does_not_starve_the_buffer() {
    let (buffer, trace) = drift_run(-200.0);
    let stats = buffer.stats();
    assert!(
        (8..=20).contains(&trace.inserted),
        "inserted {}",
        trace.inserted
    );
    assert_eq!(stats.lost, 0);
    assert_eq!(stats.late, 0);
    assert_eq!(trace.conceal + trace.fec + trace.gap, 0);
    assert!(trace.max_current_between(60.0, 1_200.0) <= 60.0);
}

#[test]
fn dtx_pauses_are_not_loss() {
    let frames = 3_000;
    let network = Network {
        dtx: true,
        jitter_ms: 5.0,
        ..Network::default()
    };
    let traffic = generate(&network, frames, 9);
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 7_000);
    let stats = buffer.stats();
    assert_eq!(stats.lost, 0);
    assert_eq!(stats.late, 0);
    assert_eq!(trace.conceal + trace.fec, 0);
    let pauses_played = traffic
        .dtx
        .iter()
        .filter(|&&seq| seq < buffer.next_seq())
        .count() as u64;
    assert!(stats.dtx_frames + stats.unsettled_gaps >= pauses_played - 30);
    assert!(stats.dtx_frames > 500);
    // Every transmitted frame was played.
    let sent_before_end = traffic
        .packets
        .iter()
        .filter(|p| p.seq < buffer.next_seq())
        .count();
    assert_eq!(trace.played.len(), sent_before_end);
}

#[test]
fn sender_restart_resynchronises() {
    let frames = 1_000;
    let mut traffic = generate(&Network::default(), frames, 10);
    // After 10 s the sender restarts its counter at 3 (new key, new stream).
    for packet in traffic.packets.iter_mut().filter(|p| p.seq >= 500) {
        packet.seq -= 497;
    }
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 7_000);
    assert!(
        trace
            .outcomes
            .contains(&PushOutcome::Resynced { dropped: 1 })
            || trace
                .outcomes
                .iter()
                .any(|o| matches!(o, PushOutcome::Resynced { .. }))
    );
    assert_eq!(buffer.stats().resyncs, 1);
    // Both streams play; the new one from its first frames on.
    assert!(trace.played.contains(&499));
    assert!(trace.played.contains(&10));
    assert!(trace.played.len() >= 990, "{}", trace.played.len());
    assert!(buffer.stats().late <= 2);
}

/// A peer on hold for two seconds sends nothing and the receiver plays nothing from its buffer
/// meanwhile; the first packet after the hold jumps past the buffer's ring. Marked as a new
/// talkspurt, the skipped frames are a pause; unmarked (an outage), they are losses.
#[test]
fn a_jump_past_the_ring_after_a_hold_is_a_pause_not_loss() {
    for marker in [true, false] {
        let epoch = Instant::now();
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let mut buffer = JitterBuffer::new(quick_start()).expect("config");
        for seq in 0..5u64 {
            let outcome = buffer.push(at(seq * 20), seq, &payload(seq), PushMeta::default());
            assert_eq!(outcome, PushOutcome::Accepted);
            let _ = buffer.pop(at(seq * 20 + 10));
        }
        let resumed = 5 + 110;
        let capacity = JitterConfig::default().capacity_frames as u64;
        assert!(
            110 > capacity,
            "the jump must pass the ring ({capacity} frames)"
        );
        let outcome = buffer.push(
            at(2_300),
            resumed,
            &payload(resumed),
            PushMeta { marker, dtx: false },
        );
        assert!(
            matches!(outcome, PushOutcome::Overflow { .. }),
            "{outcome:?}"
        );
        let stats = buffer.stats();
        if marker {
            assert_eq!(stats.lost, 0, "{stats:?}");
            assert!(stats.dtx_frames >= 100, "{stats:?}");
        } else {
            assert!(stats.lost >= 100, "{stats:?}");
        }
    }
}

/// A hold of minutes lands the first packet after it past the resync distance. Marked, it is a
/// talkspurt after a pause, not a sender restart: no resync, no loss, and the delay the
/// buffer learned from the path's jitter before the hold is kept.
#[test]
fn a_long_hold_keeps_what_the_buffer_learned() {
    let epoch = Instant::now();
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    let mut buffer = JitterBuffer::new(quick_start()).expect("config");
    // Two seconds of 0-60 ms jitter raise the target.
    let mut rng = Rng(5);
    for seq in 0..100u64 {
        let delay = (rng.unit() * 60.0) as u64;
        let _ = buffer.push(
            at(seq * 20 + delay),
            seq,
            &payload(seq),
            PushMeta::default(),
        );
        let _ = buffer.pop(at(seq * 20 + 61));
    }
    let learned = buffer.target_delay(at(2_000));
    assert!(learned >= Duration::from_millis(40), "target {learned:?}");
    // A 2-minute hold (6000 frames), nothing popped, then the marked resume.
    let resumed = 100 + 6_000;
    let outcome = buffer.push(
        at(122_000),
        resumed,
        &payload(resumed),
        PushMeta {
            marker: true,
            dtx: false,
        },
    );
    assert!(
        matches!(outcome, PushOutcome::Overflow { .. }),
        "{outcome:?}"
    );
    let stats = buffer.stats();
    assert_eq!(stats.resyncs, 0, "{stats:?}");
    let lost_before_hold = stats.lost;
    assert!(lost_before_hold <= 5, "{stats:?}");
    assert!(
        buffer.target_delay(at(122_000)) >= learned / 2,
        "target {:?} after the hold, {learned:?} before",
        buffer.target_delay(at(122_000))
    );
}

/// A buffer on a virtual clock from `epoch` that received and played frames `0..talked` on
/// time (each 20 ms, played 25 ms after it was sent), then played on alone until period
/// `until`, with nothing arriving: a pause, or a stall.
fn talked_then_silent(epoch: Instant, talked: u64, until: u64) -> JitterBuffer {
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    let mut buffer = JitterBuffer::new(quick_start()).expect("config");
    for seq in 0..talked {
        let _ = buffer.push(at(seq * 20), seq, &payload(seq), PushMeta::default());
        let _ = buffer.pop(at(seq * 20 + 25));
    }
    for tick in talked..until {
        let _ = buffer.pop(at(tick * 20 + 25));
    }
    buffer
}

/// During a long pause this end's clock ran ahead of the sender's: the marked first packet of
/// the next talkspurt arrives behind the playout position with nothing buffered. It plays,
/// with the rest of the talkspurt, instead of being refused as late.
#[test]
fn a_talkspurt_behind_the_position_after_a_pause_plays() {
    let epoch = Instant::now();
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    // A pause: this end keeps popping gaps, 520 periods where the sender's clock (slower)
    // only counted 500 frames.
    let mut buffer = talked_then_silent(epoch, 10, 530);
    let resumed = 510u64;
    assert!(buffer.next_seq() > resumed, "the position ran ahead");
    let outcome = buffer.push(
        at(530 * 20),
        resumed,
        &payload(resumed),
        PushMeta {
            marker: true,
            dtx: false,
        },
    );
    assert_eq!(outcome, PushOutcome::Accepted);
    assert_eq!(
        buffer.pop(at(530 * 20 + 5)),
        Next::Packet(&payload(resumed))
    );
    for seq in resumed + 1..resumed + 5 {
        let t = seq * 20 + 400;
        assert_eq!(
            buffer.push(at(t), seq, &payload(seq), PushMeta::default()),
            PushOutcome::Accepted
        );
    }
    let stats = buffer.stats();
    assert_eq!((stats.late, stats.lost), (0, 0), "{stats:?}");
}

/// The network (or the sender) stalls for 1.5 s while this end plays on: packets newer than
/// anything received arrive far behind the playout position. They are late, and the buffer
/// does not mistake them for a restarted stream (a flush would also drop the fresh ones).
#[test]
fn packets_held_up_by_a_stall_are_late_not_a_restart() {
    let epoch = Instant::now();
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    let mut buffer = talked_then_silent(epoch, 20, 95);
    let held_up = 20u64;
    assert!(buffer.next_seq() > held_up + 64, "past the ring");
    assert_eq!(
        buffer.push(at(1_900), held_up, &payload(held_up), PushMeta::default()),
        PushOutcome::TooLate
    );
    let stats = buffer.stats();
    assert_eq!((stats.resyncs, stats.late), (0, 1), "{stats:?}");
}

#[test]
fn a_far_jump_ahead_resynchronises() {
    let epoch = Instant::now();
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    let mut buffer = JitterBuffer::new(quick_start()).expect("config");
    let meta = PushMeta::default();
    assert_eq!(
        buffer.push(at(0), 5, &payload(5), meta),
        PushOutcome::Accepted
    );
    assert_eq!(
        buffer.push(at(1), 6, &payload(6), meta),
        PushOutcome::Accepted
    );
    let outcome = buffer.push(at(2), 10_000_000, &payload(10_000_000), meta);
    assert_eq!(outcome, PushOutcome::Resynced { dropped: 2 });
    assert_eq!(buffer.len(), 1);
    assert_eq!(buffer.pop(at(30)), Next::Packet(&payload(10_000_000)));
}

#[test]
fn memory_stays_bounded_under_a_flood() {
    let epoch = Instant::now();
    let mut buffer = JitterBuffer::new(JitterConfig::default()).expect("config");
    let capacity = buffer.config().capacity_frames;
    let mut overflows = 0;
    for seq in 0..10_000u64 {
        let now = epoch + Duration::from_micros(seq * 10);
        if let PushOutcome::Overflow { .. } =
            buffer.push(now, seq, &payload(seq), PushMeta::default())
        {
            overflows += 1;
        }
        assert!(buffer.len() <= capacity);
    }
    assert!(overflows > 0);
    let stats = buffer.stats();
    assert!(stats.overflow_dropped > 0);
    // Playback resumes from recent packets only.
    let now = epoch + Duration::from_millis(200);
    match buffer.pop(now) {
        Next::Packet(bytes) => assert!(payload_seq(bytes) > 9_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicates_and_oversized_payloads_are_refused() {
    let epoch = Instant::now();
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    let mut buffer = JitterBuffer::new(quick_start()).expect("config");
    let meta = PushMeta::default();
    assert_eq!(
        buffer.push(at(0), 1, &payload(1), meta),
        PushOutcome::Accepted
    );
    assert_eq!(
        buffer.push(at(1), 1, &payload(1), meta),
        PushOutcome::Duplicate
    );
    assert_eq!(
        buffer.push(at(2), 2, &payload(2), meta),
        PushOutcome::Accepted
    );
    assert_eq!(buffer.pop(at(25)), Next::Packet(&payload(1)));
    // A copy of a frame already played is a duplicate, a never-seen old frame is late.
    assert_eq!(
        buffer.push(at(26), 1, &payload(1), meta),
        PushOutcome::Duplicate
    );
    assert_eq!(buffer.pop(at(45)), Next::Packet(&payload(2)));
    assert_eq!(buffer.pop(at(65)), Next::Gap);
    assert_eq!(
        buffer.push(at(66), 3, &payload(3), meta),
        PushOutcome::TooLate
    );
    assert_eq!(
        buffer.push(at(67), 9, &[0u8; 1501], meta),
        PushOutcome::Oversized
    );
    assert_eq!(buffer.push(at(67), 9, &[], meta), PushOutcome::Oversized);
    let stats = buffer.stats();
    assert_eq!((stats.duplicate, stats.late, stats.oversized), (2, 1, 2));
    assert_eq!(
        stats.lost, 1,
        "the gap is settled as a loss by the late packet"
    );
}

#[test]
fn reordered_packets_before_start_play_in_order() {
    let epoch = Instant::now();
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    let mut buffer = JitterBuffer::new(quick_start()).expect("config");
    let meta = PushMeta::default();
    for (t, seq) in [(0, 12), (2, 10), (4, 11)] {
        assert_eq!(
            buffer.push(at(t), seq, &payload(seq), meta),
            PushOutcome::Accepted
        );
    }
    assert_eq!(buffer.pop(at(10)), Next::Empty, "within the start delay");
    for seq in 10..13 {
        assert_eq!(
            buffer.pop(at(30 + (seq - 10) * 20)),
            Next::Packet(&payload(seq))
        );
    }
}

#[test]
fn invalid_configs_are_refused() {
    let base = JitterConfig::default();
    let cases = [
        JitterConfig {
            frame: Duration::from_millis(1),
            ..base.clone()
        },
        JitterConfig {
            min_delay: Duration::from_millis(500),
            ..base.clone()
        },
        JitterConfig {
            max_delay: Duration::from_secs(11),
            capacity_frames: 1_000,
            ..base.clone()
        },
        JitterConfig {
            capacity_frames: 10,
            ..base.clone()
        },
        JitterConfig {
            slot_bytes: 0,
            ..base.clone()
        },
        JitterConfig {
            spike_decay: Duration::ZERO,
            ..base.clone()
        },
    ];
    for config in cases {
        assert!(JitterBuffer::new(config.clone()).is_err(), "{config:?}");
    }
    assert!(matches!(
        JitterBuffer::new(JitterConfig {
            capacity_frames: 10,
            ..base
        }),
        Err(JitterError::Capacity { min: 22, .. })
    ));
}

/// One stall teaches the buffer to wait for missing frames; loss bursts afterwards are packets
/// that never come. The first wait that ends in a loss (later packets came, the one waited for
/// did not) turns the burst rule off: later bursts are concealed at once, not waited for.
#[test]
fn a_wait_that_ends_in_a_loss_stops_waiting_for_loss_bursts() {
    let frames = 2_000;
    let stalled = generate(
        &Network {
            stall: Some((5.0, 80.0)),
            ..Network::default()
        },
        frames,
        11,
    );
    let (stall_buffer, stall_only) = run(JitterConfig::default(), &stalled, frames, 7_000);
    // The stall: what it held up came after its frames were given up.
    assert!(stall_buffer.stats().late > 0);
    // Then bursts of four lost packets, every four seconds, in speech.
    let bursts: Vec<u64> = [500, 700, 900, 1_100, 1_300, 1_500, 1_700]
        .iter()
        .flat_map(|&start| start..start + 4)
        .collect();
    let mut traffic = generate(
        &Network {
            stall: Some((5.0, 80.0)),
            ..Network::default()
        },
        frames,
        11,
    );
    traffic.packets.retain(|p| !bursts.contains(&p.seq));
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 7_000);
    // One burst may be waited for (at most `burst_wait`, five frames), and the recent loss
    // may grow the delay by one frame (see the next scenario); nothing more.
    assert!(
        trace.waits <= stall_only.waits + 5 + 1,
        "waits {} (stall alone {})",
        trace.waits,
        stall_only.waits
    );
    assert!(buffer.stats().lost >= bursts.len() as u64);
    assert!(strictly_increasing(&trace.played));
}

/// While packets are lost, the target keeps one frame more than the jitter asks for, so the
/// packet after a lost frame (whose in-band FEC rebuilds it) is in hand when the lost frame
/// is due. Here playout starts 0.1 ms after the next frame's fastest arrival and packets come
/// up to 3 ms late: without the extra frame nearly every isolated loss would be concealed.
#[test]
fn while_packets_are_lost_the_next_packet_is_in_hand_for_fec() {
    let frames = 1_500;
    let mut traffic = generate(
        &Network {
            latency_ms: 10.0,
            jitter_ms: 3.0,
            loss: Loss::Random(0.05),
            ..Network::default()
        },
        frames,
        5,
    );
    // The first packet on the fastest path, so that playout starts with a 20.1 ms delay.
    let first = traffic
        .packets
        .iter_mut()
        .min_by_key(|p| p.seq)
        .expect("packets");
    assert_eq!(first.seq, 0);
    first.arrival_us = 10_000;
    traffic.packets.sort_by_key(|packet| packet.arrival_us);
    let (buffer, trace) = run(JitterConfig::default(), &traffic, frames, 10_100);
    let stats = buffer.stats();
    let lost = stats.lost;
    assert!(lost > 50, "{stats:?}");
    assert!(buffer.is_lossy());
    // Consecutive losses (about 5 %) and the first second, before the loss is known, are
    // concealed; the rest is rebuilt from FEC.
    assert!(
        trace.fec * 10 >= lost * 8,
        "fec {} of {lost} lost (conceal {}, gaps {})",
        trace.fec,
        trace.conceal,
        trace.gap
    );
    // The delay grew by about one frame, no more.
    let (current, target) = trace.delay_at(25.0);
    assert!((20.0..=45.0).contains(&target), "target {target}");
    assert!(current <= 45.0, "current {current}");
}
