//! Playout scenarios on a virtual clock: a sender encodes a speech-like signal (voiced tone
//! bursts with pauses) with the real Opus encoder, a seeded impairment model delays, drops,
//! reorders and stalls the packets, and the receiver pulls one frame per period.

use std::time::{Duration, Instant};

use viska_media::codec::{OpusConfig, OpusDecoder, OpusEncoder, packet_has_fec};
use viska_media::jitter::PushMeta;
use viska_media::playout::{Playout, PlayoutConfig, PlayoutError, PullOutcome};

const FRAME_US: u64 = 20_000;
const FRAME_SAMPLES: usize = 960;
/// Talkspurt pattern: 60 frames of voice, 30 of silence (1.2 s / 0.6 s).
const CYCLE: u64 = 90;
const TALK: u64 = 60;

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

/// One frame of the test signal: a voiced sound (150 Hz with harmonics and vibrato, raised
/// cosine envelope over the talkspurt) or silence.
fn speech_frame(seq: u64) -> Vec<i16> {
    let position = seq % CYCLE;
    if position >= TALK {
        return vec![0; FRAME_SAMPLES];
    }
    (0..FRAME_SAMPLES)
        .map(|i| {
            let n = seq as f64 * FRAME_SAMPLES as f64 + i as f64;
            let t = n / 48_000.0;
            let in_spurt = (position as f64 * FRAME_SAMPLES as f64 + i as f64)
                / (TALK as f64 * FRAME_SAMPLES as f64);
            let envelope = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * in_spurt).cos();
            let f0 = 150.0 + 10.0 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let phase = 2.0 * std::f64::consts::PI * f0 * t;
            let voiced = phase.sin() + 0.5 * (2.0 * phase).sin() + 0.25 * (3.0 * phase).sin();
            (9_000.0 * envelope * voiced) as i16
        })
        .collect()
}

fn rms(pcm: &[i16]) -> f64 {
    (pcm.iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / pcm.len() as f64)
        .sqrt()
}

fn opus_config(dtx: bool) -> OpusConfig {
    OpusConfig {
        dtx,
        // Plain PLC keeps the debug-build tests fast; the playout logic does not depend on it.
        decoder_complexity: 0,
        complexity: 5,
        ..OpusConfig::default()
    }
}

struct Encoded {
    seq: u64,
    payload: Vec<u8>,
}

/// Encodes `frames` frames; with DTX, the near-empty packets are not sent.
fn encode(frames: u64, dtx: bool) -> Vec<Encoded> {
    let mut encoder = OpusEncoder::new(&opus_config(dtx)).expect("encoder");
    let mut out = vec![0u8; 1500];
    let mut packets = Vec::new();
    for seq in 0..frames {
        let len = encoder
            .encode(&speech_frame(seq), &mut out)
            .expect("encode");
        if dtx && len <= 2 {
            continue;
        }
        packets.push(Encoded {
            seq,
            payload: out[..len].to_vec(),
        });
    }
    packets
}

#[derive(Clone, Debug, Default)]
struct Network {
    latency_ms: f64,
    jitter_ms: f64,
    loss: f64,
    /// Gilbert bad-state persistence (0 = independent loss).
    burst_stay: f64,
    reorder: f64,
    reorder_extra_ms: f64,
    stall: Option<(f64, f64)>,
    drift_ppm: f64,
}

struct Arrival<'a> {
    at_us: u64,
    packet: &'a Encoded,
    marker: bool,
}

fn transmit<'a>(
    packets: &'a [Encoded],
    network: &Network,
    seed: u64,
) -> (Vec<Arrival<'a>>, Vec<u64>) {
    let mut rng = Rng(seed);
    let mut arrivals = Vec::new();
    let mut lost = Vec::new();
    let mut bad = false;
    let mut previous_seq = None;
    for packet in packets {
        let marker = previous_seq.is_some_and(|previous: u64| packet.seq > previous + 1);
        previous_seq = Some(packet.seq);
        bad = if bad {
            rng.unit() < network.burst_stay
        } else {
            rng.unit() < network.loss
        };
        let send_us = packet.seq as f64 * FRAME_US as f64 * (1.0 - network.drift_ppm * 1e-6);
        let mut delay_ms = network.latency_ms + rng.unit() * network.jitter_ms;
        if rng.unit() < network.reorder {
            delay_ms += network.reorder_extra_ms;
        }
        let mut at = send_us + delay_ms * 1000.0;
        if let Some((start_s, ms)) = network.stall {
            let (start, end) = (start_s * 1e6, start_s * 1e6 + ms * 1000.0);
            if send_us >= start && send_us < end {
                at = at.max(end + network.latency_ms * 1000.0 + (send_us - start) / 200.0);
            }
        }
        if bad {
            lost.push(packet.seq);
            continue;
        }
        arrivals.push(Arrival {
            at_us: at as u64,
            packet,
            marker,
        });
    }
    arrivals.sort_by_key(|arrival| arrival.at_us);
    (arrivals, lost)
}

#[derive(Default)]
struct Run {
    outcomes: Vec<PullOutcome>,
    pcm: Vec<i16>,
    /// Sequence number at the playout position before each pull.
    positions: Vec<u64>,
    max_len: usize,
    /// (seconds, current ms, target ms) once per second.
    delays: Vec<(f64, f64, f64)>,
}

impl Run {
    fn count(&self, outcome: PullOutcome) -> u64 {
        self.outcomes.iter().filter(|&&o| o == outcome).count() as u64
    }

    fn target_at(&self, seconds: f64) -> f64 {
        self.delays
            .iter()
            .min_by(|a, b| (a.0 - seconds).abs().total_cmp(&(b.0 - seconds).abs()))
            .map(|d| d.2)
            .expect("samples")
    }
}

fn new_playout(config: PlayoutConfig) -> Playout {
    let decoder = OpusDecoder::new(&config.opus).expect("decoder");
    Playout::new(config, decoder).expect("playout")
}

fn simulate(config: PlayoutConfig, arrivals: &[Arrival<'_>], periods: u64) -> (Playout, Run) {
    let epoch = Instant::now();
    let at = |us: u64| epoch + Duration::from_micros(us);
    let mut playout = new_playout(config);
    let mut run = Run::default();
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let mut pending = arrivals.iter().peekable();
    for period in 0..periods {
        let now_us = 7_000 + period * FRAME_US;
        while let Some(arrival) = pending.next_if(|a| a.at_us <= now_us) {
            playout.push(
                at(arrival.at_us),
                arrival.packet.seq,
                &arrival.packet.payload,
                PushMeta {
                    marker: arrival.marker,
                    ..PushMeta::default()
                },
            );
            run.max_len = run.max_len.max(playout.buffer().len());
        }
        run.positions.push(playout.buffer().next_seq());
        let outcome = playout.pull(at(now_us), &mut frame).expect("pull");
        run.outcomes.push(outcome);
        run.pcm.extend_from_slice(&frame);
        if period % 50 == 0 {
            let stats = playout.stats();
            run.delays.push((
                now_us as f64 / 1e6,
                stats.current_delay.as_secs_f64() * 1e3,
                stats.target_delay.as_secs_f64() * 1e3,
            ));
        }
    }
    (playout, run)
}

/// Decodes every packet in order: what a perfect network would play.
fn reference_decode(packets: &[Encoded]) -> Vec<i16> {
    let mut decoder = OpusDecoder::new(&opus_config(false)).expect("decoder");
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let mut pcm = Vec::new();
    for packet in packets {
        decoder.decode(&packet.payload, &mut frame).expect("decode");
        pcm.extend_from_slice(&frame);
    }
    pcm
}

fn default_config() -> PlayoutConfig {
    PlayoutConfig {
        opus: opus_config(false),
        ..PlayoutConfig::default()
    }
}

/// Playout starting 80 ms after the first packet (a generous start, as for a path known to
/// be jittery) instead of the default one frame.
fn generous_start_config() -> PlayoutConfig {
    let mut config = default_config();
    config.jitter.start_delay = Duration::from_millis(80);
    config
}

/// The source frame and the four before it are quiet: `seq` lies in a pause.
fn in_pause(seq: u64) -> bool {
    (seq.saturating_sub(4)..=seq).all(|s| rms(&speech_frame(s)) < 600.0)
}

#[test]
fn clean_network_decodes_every_packet_bit_exactly() {
    let packets = encode(500, false);
    let network = Network {
        latency_ms: 40.0,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 1);
    // Playout one frame after the first packet: the delay is at the target from the start, so
    // nothing is dropped and the output is the reference bit for bit.
    let (playout, run) = simulate(default_config(), &arrivals, 500);
    let stats = playout.stats();
    assert_eq!(
        (stats.lost, stats.concealed, stats.fec_recovered),
        (0, 0, 0)
    );
    assert_eq!((stats.dropped_for_delay, stats.inserted_for_delay), (0, 0));
    let silent = run.count(PullOutcome::Silence) as usize;
    assert!(silent <= 4, "start took {silent} frames");
    assert!(
        run.outcomes[silent..]
            .iter()
            .all(|&o| o == PullOutcome::Decoded)
    );
    // The output is exactly the in-order decode, delayed by the start.
    let reference = reference_decode(&packets);
    let played = &run.pcm[silent * FRAME_SAMPLES..];
    assert_eq!(played, &reference[..played.len()]);
    assert!(rms(played) > 1_000.0, "the signal came through");
}

fn check_loss_accounting(network: Network, seed: u64) -> (Playout, Run) {
    let frames = 1_500;
    let packets = encode(frames, false);
    let (arrivals, lost) = transmit(&packets, &network, seed);
    let (playout, run) = simulate(default_config(), &arrivals, frames);
    let stats = playout.stats();
    let buffer = playout.buffer().stats();
    let injected = lost
        .iter()
        .filter(|&&seq| seq < playout.buffer().next_seq())
        .count() as u64;
    assert!(injected >= 30, "injected {injected}");
    assert_eq!(stats.lost + buffer.unsettled_gaps, injected);
    assert_eq!(stats.concealed + stats.fec_recovered, stats.lost);
    assert_eq!(
        run.count(PullOutcome::Concealed)
            + run.count(PullOutcome::FecRecovered)
            + buffer.lost_in_gaps,
        stats.lost
    );
    assert_eq!(stats.late, 0);
    (playout, run)
}

#[test]
fn random_loss_is_concealed_or_recovered_frame_for_frame() {
    let (playout, _) = check_loss_accounting(
        Network {
            latency_ms: 30.0,
            loss: 0.05,
            ..Network::default()
        },
        2,
    );
    let stats = playout.stats();
    eprintln!("5% random loss: {stats:?}");
    assert!(stats.fec_recovered > stats.concealed, "{stats:?}");
}

#[test]
fn burst_loss_is_concealed_or_recovered_frame_for_frame() {
    check_loss_accounting(
        Network {
            latency_ms: 30.0,
            loss: 0.02,
            burst_stay: 0.7,
            ..Network::default()
        },
        3,
    );
}

#[test]
fn reordering_within_the_delay_loses_nothing() {
    let frames = 1_000;
    let packets = encode(frames, false);
    let network = Network {
        latency_ms: 30.0,
        jitter_ms: 10.0,
        reorder: 0.1,
        reorder_extra_ms: 30.0,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 4);
    assert!(
        arrivals
            .windows(2)
            .filter(|w| w[0].packet.seq > w[1].packet.seq)
            .count()
            > 20
    );
    let mut config = default_config();
    config.jitter.min_delay = Duration::from_millis(60);
    config.jitter.start_delay = Duration::from_millis(60);
    let (playout, run) = simulate(config, &arrivals, frames);
    let stats = playout.stats();
    assert_eq!((stats.lost, stats.late, stats.concealed), (0, 0, 0));
    assert_eq!(run.count(PullOutcome::Gap), 0);
    assert_eq!((stats.dropped_for_delay, stats.inserted_for_delay), (0, 0));
    let silent = run.count(PullOutcome::Silence) as usize;
    let reference = reference_decode(&packets);
    let played = &run.pcm[silent * FRAME_SAMPLES..];
    assert_eq!(
        played,
        &reference[..played.len()],
        "played in order, bit-exact"
    );
}

/// The frames a drop discarded or an insertion went next to were quiet in the source.
fn adaptations_were_quiet(run: &Run) {
    for (index, outcome) in run.outcomes.iter().enumerate() {
        let seq = run.positions[index];
        match outcome {
            PullOutcome::Dropped => {
                assert!(rms(&speech_frame(seq)) < 600.0, "dropped loud frame {seq}");
            }
            PullOutcome::Inserted => {
                let before = seq.saturating_sub(1);
                let quiet = rms(&speech_frame(before)) < 600.0;
                // Inserting mid-speech is allowed only while the stream is stalled.
                let stalled = index > 0
                    && matches!(
                        run.outcomes[index - 1],
                        PullOutcome::Inserted | PullOutcome::Gap | PullOutcome::Concealed
                    );
                assert!(
                    quiet || stalled || run.positions[index] == run.positions[index - 1],
                    "inserted mid-speech at {seq}"
                );
            }
            _ => {}
        }
    }
}

#[test]
fn a_jitter_spike_raises_the_delay_which_decays_at_quiet_frames() {
    let frames = 2_000; // 40 s
    let packets = encode(frames, false);
    let network = Network {
        latency_ms: 30.0,
        jitter_ms: 4.0,
        stall: Some((8.0, 300.0)),
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 5);
    let (playout, run) = simulate(default_config(), &arrivals, frames);
    let stats = playout.stats();
    eprintln!(
        "spike: {stats:?}\n(s, current ms, target ms): {:?}",
        run.delays
    );
    assert!(run.target_at(7.0) <= 30.0);
    assert!(run.target_at(8.6) >= 200.0, "{:?}", run.delays);
    assert!(run.target_at(38.0) <= 30.0, "target decays");
    assert!(
        stats.current_delay <= Duration::from_millis(60),
        "{stats:?}"
    );
    assert!(stats.dropped_for_delay > 0);
    adaptations_were_quiet(&run);
    assert!(run.max_len <= playout.buffer().config().capacity_frames);
}

#[test]
fn dtx_pauses_are_not_counted_as_loss() {
    let frames = 1_000;
    let packets = encode(frames, true);
    assert!(
        packets.len() < 900,
        "DTX left out {} frames",
        frames as usize - packets.len()
    );
    let network = Network {
        latency_ms: 30.0,
        jitter_ms: 5.0,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 6);
    let (playout, run) = simulate(default_config(), &arrivals, frames);
    let stats = playout.stats();
    assert_eq!(
        (stats.lost, stats.concealed, stats.fec_recovered),
        (0, 0, 0)
    );
    assert!(stats.dtx_frames > 100, "{stats:?}");
    // Every packet sent was decoded.
    let sent = packets
        .iter()
        .filter(|p| p.seq < playout.buffer().next_seq())
        .count() as u64;
    assert_eq!(
        run.count(PullOutcome::Decoded) + run.count(PullOutcome::Dropped) * 2,
        sent
    );
}

fn drift(ppm: f64) -> (Playout, Run) {
    // Four minutes of a repeating 18 s recording.
    drift_run(&encode(900, false), ppm, default_config())
}

/// Four minutes of `recording` on repeat from a sender whose clock is `ppm` off.
fn drift_run(recording: &[Encoded], ppm: f64, config: PlayoutConfig) -> (Playout, Run) {
    let frames = 12_000;
    let length = recording.len() as u64;
    let packets: Vec<Encoded> = (0..frames)
        .map(|seq| Encoded {
            seq,
            payload: recording[(seq % length) as usize].payload.clone(),
        })
        .collect();
    let network = Network {
        latency_ms: 30.0,
        jitter_ms: 3.0,
        drift_ppm: ppm,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 7);
    simulate(config, &arrivals, frames - 50)
}

#[test]
fn clock_drift_is_corrected_at_quiet_frames() {
    // 1000 ppm for four minutes is 240 ms, the same as 200 ppm over twenty minutes.
    for ppm in [1_000.0, -1_000.0] {
        let (playout, run) = drift(ppm);
        let stats = playout.stats();
        eprintln!("{ppm} ppm: {stats:?}");
        assert_eq!((stats.lost, stats.late), (0, 0), "{ppm} ppm: {stats:?}");
        let adjustments = stats.dropped_for_delay + stats.inserted_for_delay;
        assert!((8..=20).contains(&adjustments), "{ppm} ppm: {stats:?}");
        // Drops wait until the delay is two frames above the 20 ms target.
        let worst = run.delays.iter().skip(10).map(|d| d.1).fold(0.0, f64::max);
        assert!(worst <= 80.0, "{ppm} ppm: delay reached {worst} ms");
        adaptations_were_quiet(&run);
    }
}

#[test]
fn small_drift_stays_put() {
    let (playout, run) = drift(200.0);
    let stats = playout.stats();
    assert_eq!((stats.lost, stats.late), (0, 0));
    // 200 ppm for four minutes is 48 ms: two or three drops at most, delay bounded.
    assert!(stats.dropped_for_delay <= 3, "{stats:?}");
    let worst = run.delays.iter().skip(10).map(|d| d.1).fold(0.0, f64::max);
    assert!(worst <= 80.0);
}

#[test]
fn wrong_frame_sizes_are_errors() {
    let mut playout = new_playout(default_config());
    let mut short = vec![0i16; 100];
    assert!(matches!(
        playout.pull(Instant::now(), &mut short),
        Err(PlayoutError::FrameSize {
            expected: 960,
            got: 100
        })
    ));
    let mut config = default_config();
    config.jitter.frame = Duration::from_millis(10);
    let decoder = OpusDecoder::new(&config.opus).expect("decoder");
    assert!(matches!(
        Playout::new(config, decoder),
        Err(PlayoutError::FrameMismatch { .. })
    ));
}

#[test]
fn garbage_packets_are_concealed_not_fatal() {
    let epoch = Instant::now();
    let at = |ms: u64| epoch + Duration::from_millis(ms);
    let mut playout = new_playout(default_config());
    let mut frame = vec![0i16; FRAME_SAMPLES];
    // An Opus TOC byte announcing a code-3 packet with an impossible frame count.
    playout.push(at(0), 0, &[0xFF, 0xFF, 0xFF], PushMeta::default());
    playout.push(at(1), 1, &[0x0B], PushMeta::default());
    let mut outcomes = Vec::new();
    for period in 0..4 {
        outcomes.push(
            playout
                .pull(at(25 + period * 20), &mut frame)
                .expect("pull"),
        );
    }
    assert!(outcomes.contains(&PullOutcome::Concealed), "{outcomes:?}");
    assert!(playout.stats().decode_errors >= 1);
}

/// Frames `first..first + 3` of every talkspurt in `cycles` lost: bursts of three mid-speech.
fn drop_bursts<'a>(arrivals: Vec<Arrival<'a>>, first: u64) -> (Vec<Arrival<'a>>, Vec<u64>) {
    let in_burst = |seq: u64| (first..first + 3).contains(&(seq % CYCLE));
    let lost = arrivals
        .iter()
        .map(|a| a.packet.seq)
        .filter(|&seq| in_burst(seq))
        .collect();
    let kept = arrivals
        .into_iter()
        .filter(|a| !in_burst(a.packet.seq))
        .collect();
    (kept, lost)
}

#[test]
fn loss_bursts_are_concealed_at_once_without_growing_the_delay() {
    // Playout one frame after the first packet and a short path: after the first burst the
    // next frames are not in hand yet either. Packets that never come must not be waited for
    // (that inserted a frame per burst and ratcheted the delay up before).
    let frames = 800;
    let packets = encode(frames, false);
    let network = Network {
        latency_ms: 5.0,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 8);
    let (arrivals, lost) = drop_bursts(arrivals, 40);
    assert_eq!(lost.len(), 27);
    let (playout, run) = simulate(default_config(), &arrivals, frames);
    let stats = playout.stats();
    assert_eq!(stats.lost, 27, "{stats:?}");
    assert_eq!(stats.inserted_for_delay, 0, "{stats:?}");
    assert_eq!(playout.buffer().stats().waits, 0);
    assert_eq!(run.count(PullOutcome::Inserted), 0);
    assert_eq!(stats.late, 0);
    // Every lost frame took exactly its own period: the delay did not move.
    let delays: Vec<f64> = run.delays.iter().skip(1).map(|d| d.1).collect();
    let spread = delays.iter().fold(0.0, |m: f64, &d| m.max(d))
        - delays.iter().fold(f64::MAX, |m: f64, &d| m.min(d));
    assert!(spread < 1.0, "delay moved: {:?}", run.delays);
}

#[test]
fn a_loss_burst_with_later_frames_in_hand_is_concealed_and_fec_recovered() {
    let frames = 300;
    let packets = encode(frames, false);
    let network = Network {
        latency_ms: 10.0,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 9);
    let (arrivals, _) = drop_bursts(arrivals, 40);
    // Whole-frame adaptation only: it keeps the generous start's margin through the first
    // talkspurt, so frame 43 is in hand when 40 is due (time-stretching would have spent that
    // margin on lower delay already).
    let config = PlayoutConfig {
        time_stretch: false,
        ..generous_start_config()
    };
    let (playout, run) = simulate(config, &arrivals, frames);
    let at_burst: Vec<PullOutcome> = (40..43)
        .map(|seq| {
            let index = run
                .positions
                .iter()
                .position(|&p| p == seq)
                .expect("position reached");
            run.outcomes[index]
        })
        .collect();
    // Frame 43 is buffered when 40 is due: 40 and 41 are concealed at once, 42 is rebuilt
    // from 43's in-band FEC when the encoder put LBRR in it; nothing is waited for.
    let last = if packet_has_fec(&packets[43].payload) {
        PullOutcome::FecRecovered
    } else {
        PullOutcome::Concealed
    };
    assert_eq!(
        at_burst,
        [PullOutcome::Concealed, PullOutcome::Concealed, last]
    );
    let stats = playout.stats();
    assert_eq!(stats.inserted_for_delay, 0, "{stats:?}");
}

#[test]
fn a_40ms_jitter_spike_grows_the_delay_without_dropping_speech() {
    let frames = 1_000;
    let packets = encode(frames, false);
    let network = Network {
        latency_ms: 30.0,
        jitter_ms: 2.0,
        ..Network::default()
    };
    let (mut arrivals, _) = transmit(&packets, &network, 10);
    // Frames 280..300 (mid-talkspurt, 5.6 s) take 40 ms longer.
    for arrival in arrivals.iter_mut() {
        if (280..300).contains(&arrival.packet.seq) {
            arrival.at_us += 40_000;
        }
    }
    arrivals.sort_by_key(|arrival| arrival.at_us);
    let (playout, run) = simulate(default_config(), &arrivals, frames);
    let stats = playout.stats();
    eprintln!("spike: {stats:?}\n{:?}", run.delays);
    // Only the first packets of the spike can come too late; the delay grows to cover the
    // rest and no frame of the talkspurt is dropped to get the delay back.
    assert!(stats.late <= 2, "{stats:?}");
    assert!(stats.inserted_for_delay >= 1, "{stats:?}");
    assert!(run.target_at(6.0) >= 40.0, "{:?}", run.delays);
    for (index, outcome) in run.outcomes.iter().enumerate() {
        if *outcome == PullOutcome::Dropped {
            let seq = run.positions[index];
            assert!(in_pause(seq), "dropped frame {seq} of a talkspurt");
        }
    }
    adaptations_were_quiet(&run);
    // Every packet sent during the spike that was not late was played.
    let played_in_spike = (280..300)
        .filter(|seq| {
            run.positions.iter().enumerate().any(|(i, &p)| {
                p == *seq && matches!(run.outcomes[i], PullOutcome::Decoded | PullOutcome::Dropped)
            })
        })
        .count() as u64;
    assert_eq!(played_in_spike + stats.late, 20, "{stats:?}");
}

#[test]
fn the_start_delay_shrinks_only_in_pauses() {
    // Playout starts 80 ms after the first packet on a 30 ms path: the target is the 20 ms
    // floor, so the delay must come down, but not by cutting the talkspurt.
    let frames = 1_000;
    let packets = encode(frames, false);
    let network = Network {
        latency_ms: 30.0,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 11);
    let config = PlayoutConfig {
        time_stretch: false,
        ..generous_start_config()
    };
    let (playout, run) = simulate(config, &arrivals, frames);
    let stats = playout.stats();
    assert!(stats.dropped_for_delay >= 2, "{stats:?}");
    for (index, outcome) in run.outcomes.iter().enumerate() {
        if *outcome == PullOutcome::Dropped {
            let seq = run.positions[index];
            assert!(in_pause(seq), "dropped frame {seq} of a talkspurt");
        }
    }
    assert_eq!(stats.inserted_for_delay, 0);
    // Within two frames of the target once shrunk (no drop for less).
    assert!(
        stats.current_delay < stats.target_delay + Duration::from_millis(40),
        "{stats:?}"
    );
}

fn dred_config() -> OpusConfig {
    // As in the codec tests: a DRED stream turns in-band FEC off so DRED gets the bits.
    OpusConfig {
        dred_duration_ms: 200,
        fec: false,
        expected_loss_pct: 20,
        ..OpusConfig::default()
    }
}

#[test]
fn dred_rebuilds_a_burst_from_a_later_packet_in_hand() {
    let frames = 200;
    let mut encoder = OpusEncoder::new(&dred_config()).expect("encoder");
    let mut out = vec![0u8; 1500];
    let packets: Vec<Encoded> = (0..frames)
        .map(|seq| {
            let len = encoder
                .encode(&speech_frame(seq), &mut out)
                .expect("encode");
            Encoded {
                seq,
                payload: out[..len].to_vec(),
            }
        })
        .collect();
    let network = Network {
        latency_ms: 10.0,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 12);
    let (arrivals, _) = drop_bursts(arrivals, 40);
    for dred in [true, false] {
        let config = PlayoutConfig {
            opus: OpusConfig {
                // The receiver knows whether the stream carries DRED from its settings.
                dred_duration_ms: if dred { 200 } else { 0 },
                ..dred_config()
            },
            // Whole frames only, so the start's margin is still there at the first burst.
            time_stretch: false,
            ..generous_start_config()
        };
        let (playout, run) = simulate(config, &arrivals, frames);
        let stats = playout.stats();
        assert_eq!(stats.lost, 6, "{stats:?}");
        assert_eq!(run.count(PullOutcome::DredRecovered), stats.dred_recovered);
        assert_eq!(stats.dred_recovered + stats.concealed, 6, "{stats:?}");
        assert_eq!(stats.inserted_for_delay, 0);
        if dred {
            // The first burst has 43 in hand for all three frames; after the delay shrank in
            // the pause, the second burst's first frame is due before 133 arrives.
            assert!(stats.dred_recovered >= 4, "{stats:?}");
        } else {
            assert_eq!(stats.dred_recovered, 0, "{stats:?}");
        }
    }
}

/// One frame of continuous voiced sound with no pause at all (a talker who does not stop):
/// 120 Hz with harmonics, a slow pitch glide and a slowly varying level.
fn continuous_voice_frame(seq: u64) -> Vec<i16> {
    (0..FRAME_SAMPLES)
        .map(|i| {
            let t = (seq as f64 * FRAME_SAMPLES as f64 + i as f64) / 48_000.0;
            let f0 = 120.0 + 15.0 * (2.0 * std::f64::consts::PI * 0.2 * t).sin();
            let phase = 2.0 * std::f64::consts::PI * f0 * t;
            let level = 0.7 + 0.3 * (2.0 * std::f64::consts::PI * 0.5 * t).sin();
            let voiced = phase.sin() + 0.5 * (2.0 * phase).sin() + 0.3 * (3.0 * phase).sin();
            (8_000.0 * level * voiced) as i16
        })
        .collect()
}

fn encode_continuous(frames: u64) -> Vec<Encoded> {
    let mut encoder = OpusEncoder::new(&opus_config(false)).expect("encoder");
    let mut out = vec![0u8; 1500];
    (0..frames)
        .map(|seq| {
            let len = encoder
                .encode(&continuous_voice_frame(seq), &mut out)
                .expect("encode");
            Encoded {
                seq,
                payload: out[..len].to_vec(),
            }
        })
        .collect()
}

fn stretch_config(on: bool) -> PlayoutConfig {
    PlayoutConfig {
        time_stretch: on,
        ..default_config()
    }
}

/// Largest step between neighbouring samples.
fn max_step(pcm: &[i16]) -> i32 {
    pcm.windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

#[test]
fn time_stretching_brings_the_delay_down_inside_unbroken_speech() {
    // 300 ms stall at 4 s in the middle of speech that never pauses: the delay jumps to
    // cover it; afterwards only time-stretching can bring it back without cutting speech.
    let frames = 1_500; // 30 s
    let packets = encode_continuous(frames);
    let network = Network {
        latency_ms: 30.0,
        jitter_ms: 2.0,
        stall: Some((4.0, 300.0)),
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 21);
    let (fixed, fixed_run) = simulate(stretch_config(false), &arrivals, frames);
    let (stretched, stretched_run) = simulate(stretch_config(true), &arrivals, frames);
    let (a, b) = (fixed.stats(), stretched.stats());
    eprintln!("frames only: {a:?}\n{:?}", fixed_run.delays);
    eprintln!("stretching: {b:?}\n{:?}", stretched_run.delays);
    assert!(b.accelerated >= 10, "{b:?}");
    assert!(
        b.stretch_removed >= Duration::from_millis(100),
        "the stall's delay came back by stretching: {b:?}"
    );
    // No frame of the speech dropped for the delay; the stall's late frames are the same.
    assert_eq!(b.dropped_for_delay, 0, "{b:?}");
    assert!(b.lost <= a.lost, "{a:?}\n{b:?}");
    // Without stretching the delay stays up (no pause to drop in); with it, it returns to
    // the band where a drop would wait too (less than two frames above the target) plus what
    // is left decoded ahead (less than the smallest cut the stretcher can analyse, 10 ms).
    assert!(a.current_delay >= Duration::from_millis(150), "{a:?}");
    assert!(
        b.current_delay <= b.target_delay + Duration::from_millis(40 + 15),
        "{b:?}"
    );
    // The stretched output stays as smooth as the unstretched one (no clicks at splices).
    let settled = 500 * FRAME_SAMPLES;
    assert!(
        max_step(&stretched_run.pcm[settled..])
            <= max_step(&fixed_run.pcm[settled..]) * 3 / 2 + 200,
        "{} vs {}",
        max_step(&stretched_run.pcm[settled..]),
        max_step(&fixed_run.pcm[settled..])
    );
    // Every period of audio was filled: no decoded or queued frame ends in a run of silence
    // (a short queue would be padded with zeros), and the stretched run got further through
    // the stream.
    for (index, outcome) in stretched_run.outcomes.iter().enumerate() {
        if matches!(outcome, PullOutcome::Decoded | PullOutcome::Buffered) {
            let frame = &stretched_run.pcm[index * FRAME_SAMPLES..(index + 1) * FRAME_SAMPLES];
            assert!(
                frame[FRAME_SAMPLES - 48..].iter().any(|&x| x != 0),
                "pull {index} ({outcome:?}) ends in 1 ms of zeros"
            );
        }
    }
    assert!(stretched.buffer().next_seq() > fixed.buffer().next_seq());
    assert!(b.late <= a.late, "{a:?}\n{b:?}");
}

#[test]
fn ordinary_speech_is_stretched_only_while_no_pause_comes() {
    // The generous start again, with pauses every 1.2 s: the first talkspurt runs longer
    // than a second with too much delay and is stretched; after that the delay is within the
    // band where neither drops nor stretches happen, and stays there, as without stretching.
    let frames = 1_000;
    let packets = encode(frames, false);
    let network = Network {
        latency_ms: 30.0,
        ..Network::default()
    };
    let (arrivals, _) = transmit(&packets, &network, 11);
    let (fixed, _) = simulate(
        PlayoutConfig {
            time_stretch: false,
            ..generous_start_config()
        },
        &arrivals,
        frames,
    );
    let (stretched, run) = simulate(generous_start_config(), &arrivals, frames);
    let (a, b) = (fixed.stats(), stretched.stats());
    eprintln!("frames only: {a:?}\nstretching: {b:?}\n{:?}", run.delays);
    assert!(b.accelerated + b.expanded <= 8, "{b:?}");
    let late_stretching = run
        .delays
        .iter()
        .skip_while(|d| d.0 < 3.0)
        .map(|d| d.1)
        .collect::<Vec<_>>();
    assert!(
        late_stretching
            .windows(2)
            .all(|w| (w[0] - w[1]).abs() < 0.01),
        "the delay stays put once settled: {:?}",
        run.delays
    );
    assert_eq!((b.lost, b.late), (0, 0), "{b:?}");
    assert!(
        b.current_delay <= a.current_delay + Duration::from_millis(10),
        "{a:?}\n{b:?}"
    );
}

/// Four minutes of unbroken voice from a sender whose clock is `ppm` off.
fn drift_without_pauses(ppm: f64, stretch: bool) -> (Playout, Run) {
    drift_run(&encode_continuous(900), ppm, stretch_config(stretch))
}

#[test]
fn clock_drift_inside_unbroken_speech_is_absorbed_by_time_stretching() {
    // 240 ms of drift over four minutes and never a pause: without stretching the delay can
    // only move by whole frames cut from or concealed into the speech; with it, a pitch
    // period at a time.
    for ppm in [1_000.0, -1_000.0] {
        let (fixed, _) = drift_without_pauses(ppm, false);
        let (stretched, run) = drift_without_pauses(ppm, true);
        let (a, b) = (fixed.stats(), stretched.stats());
        eprintln!("{ppm} ppm\nframes only: {a:?}\nstretching: {b:?}");
        let net = if ppm > 0.0 {
            b.stretch_removed.saturating_sub(b.stretch_inserted)
        } else {
            b.stretch_inserted.saturating_sub(b.stretch_removed)
        };
        assert!(net >= Duration::from_millis(100), "{ppm} ppm: {b:?}");
        assert_eq!((b.lost, b.late), (0, 0), "{ppm} ppm: {b:?}");
        let whole_frames = |s: &viska_media::playout::JitterStats| {
            s.dropped_for_delay + s.inserted_for_delay + s.concealed
        };
        assert!(
            whole_frames(&b) < whole_frames(&a).max(1),
            "{ppm} ppm\nframes only: {a:?}\nstretching: {b:?}"
        );
        let worst = run.delays.iter().skip(10).map(|d| d.1).fold(0.0, f64::max);
        assert!(worst <= 80.0, "{ppm} ppm: delay reached {worst} ms");
    }
}
