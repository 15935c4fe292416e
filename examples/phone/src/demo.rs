//! `viska-phone demo`: a whole encrypted call between two phones of this process over real
//! QUIC sockets on loopback, with optional network impairment. Progress goes to stderr; the
//! last line of stdout is one JSON object with the call's figures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use viska::CallHandle;
use viska::PhoneEvent;
use viska::call::CallState;
use viska::netem::{ImpairmentConfig, LossModel, MAX_DELAY};
use viska::phone::{FileAudio, LatencyProbe, PhoneListener};

use crate::{BoxError, DemoLink, SuiteArg, demo_phone};

/// The bundled speech sample (espeak-ng, 16 kHz mono).
const SPEECH: &[u8] = include_bytes!("../assets/speech.wav");

/// Flags of `viska-phone demo`.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Seconds of audio to send after the call is answered (0 to 86400).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    seconds: f64,
    /// Packet loss in percent (0 to 100), applied to each phone's outgoing packets:
    /// independent per packet, or in bursts with `--burst`.
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    loss: f64,
    /// Mean length of a loss burst, in packets (1 or more): `--loss` is then the long-run
    /// loss of a Gilbert-Elliott channel whose bursts last this long on average. Without the
    /// flag, each packet is lost independently.
    #[arg(long, value_parser = parse_burst)]
    burst: Option<f64>,
    /// Percentage of packets (0 to 100) held back by `--reorder-delay` so that later packets
    /// overtake them.
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    reorder: f64,
    /// How long a packet picked by `--reorder` is held back, in milliseconds.
    #[arg(long, default_value_t = 30, value_parser = parse_impairment_millis)]
    reorder_delay: u64,
    /// Up to this many milliseconds of random extra delay per packet (at most an hour). Packets
    /// stay in order (jitter shows as bunching); `--reorder` reorders.
    #[arg(long, default_value_t = 0, value_parser = parse_impairment_millis)]
    jitter: u64,
    /// Fixed one-way delay in milliseconds (at most an hour).
    #[arg(long, default_value_t = 0, value_parser = parse_impairment_millis)]
    delay: u64,
    /// SFrame cipher suite.
    #[arg(long, value_enum, default_value_t = SuiteArg::AesCtrHmac80)]
    suite: SuiteArg,
    /// Opus bitrate in bits per second.
    #[arg(long, default_value_t = 32_000)]
    bitrate: u32,
    /// Both phones send every frame, also while silent (DTX, on by default, sends a
    /// comfort-noise update every 420 ms instead).
    #[arg(long)]
    no_dtx: bool,
    /// Deep redundancy (Opus DRED) each packet carries, in milliseconds of history (a
    /// multiple of 10, up to 1040; 0, the default, sends none). Receivers rebuild lost frames
    /// from it when a later packet is in hand.
    #[arg(long, default_value_t = 0)]
    dred_ms: u16,
    /// WAV the caller plays (default: a bundled speech sample).
    #[arg(long)]
    input: Option<PathBuf>,
    /// WAV where the callee writes what it hears.
    #[arg(long, default_value = "callee-heard.wav")]
    output: PathBuf,
    /// Seed of the impairment's random generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// After the call, run the codec alone (paced the same way, as long as the call) and report
    /// each phone's CPU time relative to it.
    #[arg(long)]
    measure_cpu: bool,
    /// Run without the latency probe (a measurement hook with a cost of its own per frame):
    /// latency figures are then not reported, CPU figures leave the probe's work out.
    #[arg(long)]
    no_latency_probe: bool,
    /// Give each phone zero-length QUIC connection IDs instead of 8-byte ones: 8 bytes less
    /// per packet, but no survival of NAT rebinding and one connection per peer address.
    #[arg(long)]
    zero_length_connection_ids: bool,
    /// Use ECN on the QUIC connection (marks and ACK_ECN counts; off by default).
    #[arg(long)]
    ecn: bool,
    /// Ask the peer to acknowledge only every N ack-eliciting packets (the QUIC ACK
    /// frequency extension; default: the peer's own, every second packet).
    #[arg(long)]
    ack_every: Option<u32>,
    /// With `--ack-every`: the longest the peer may hold an acknowledgment back, in
    /// milliseconds (quinn caps it at the greater of the RTT and 25 ms).
    #[arg(long, default_value_t = 100)]
    ack_delay_ms: u64,
    /// Debugging: write the QUIC connection's TLS secrets to the file named by
    /// `SSLKEYLOGFILE`, so that a packet capture of the call can be decrypted.
    #[arg(long)]
    tls_key_log: bool,
    /// Run a group call instead of the direct one: an in-process relay and this many phones
    /// (2 to 32; 3 when the flag has no value) over real QUIC on loopback, one MLS group,
    /// each phone speaking its share of `--input` in turn. The last JSON line then carries a
    /// `participants` array.
    #[arg(long, num_args = 0..=1, default_missing_value = "3")]
    participants: Option<usize>,
    /// Leave the phones' media threads at normal priority (by default they ask for real-time
    /// priority, which the system may refuse).
    #[arg(long)]
    no_realtime: bool,
}

/// The demo's JSON summary.
#[derive(Serialize, Debug)]
pub(crate) struct Summary {
    frames_sent: u64,
    frames_received: u64,
    frames_lost: u64,
    frames_concealed: u64,
    frames_fec_recovered: u64,
    frames_dred_recovered: u64,
    decrypt_failures: u64,
    replays_rejected: u64,
    sas_caller: Option<String>,
    sas_callee: Option<String>,
    sas_match: bool,
    /// The SFrame suite the call's handshake chose, as the caller reports it.
    suite: String,
    setup_ms: Option<f64>,
    quic_handshake_ms: Option<f64>,
    mouth_to_ear_ms: Option<f64>,
    added_latency_p99_ms: Option<f64>,
    added_latency_median_ms: Option<f64>,
    added_latency_p90_ms: Option<f64>,
    frames_late: u64,
    /// SFrame's share alone: the caller's media datagrams (SFrame header, the payload's own
    /// framing, tag) minus their Opus bytes, per media packet, over the whole call.
    bytes_overhead_per_packet: Option<f64>,
    /// Every layer (see `WirePerPacket`), measured on the caller's connection from its first
    /// once-a-second counters with media flowing to the end of the call.
    wire_bytes_per_packet: Option<f64>,
    /// Breakdown of `wire_bytes_per_packet`.
    wire: Option<WirePerPacket>,
    /// IP-level bitrate each phone's connection sent while the call ran (see `WireRate`),
    /// kbit/s. The callee says nothing (digital zero): with DTX its figure is a silent
    /// talker's.
    wire_kbps_caller: Option<f64>,
    wire_kbps_callee: Option<f64>,
    /// Media packets each phone sent that were comfort-noise updates (DTX).
    comfort_noise_sent_caller: u64,
    comfort_noise_sent_callee: u64,
    /// Frames the callee played as comfort noise (the caller's DTX pauses).
    frames_comfort_noise: u64,
    opus_bytes_per_packet: Option<f64>,
    jitter_buffer_delay_ms: f64,
    /// Audio the callee's playout cut out of / added to speech by time-stretching.
    stretch_removed_ms: f64,
    stretch_inserted_ms: f64,
    /// Whole frames the callee's playout dropped / inserted to move its delay.
    frames_dropped_for_delay: u64,
    frames_inserted_for_delay: u64,
    estimated_mos: f64,
    cpu_ms_caller: Option<f64>,
    cpu_ms_callee: Option<f64>,
    cpu_percent_caller: Option<f64>,
    cpu_percent_callee: Option<f64>,
    /// Times each phone's thread was woken per frame period during the measured interval.
    wakeups_per_frame_caller: Option<f64>,
    wakeups_per_frame_callee: Option<f64>,
    codec_only_cpu_ms: Option<f64>,
    cpu_vs_codec: Option<f64>,
    /// CPU of two bare transport endpoints (the same QUIC configuration, no codec, no SFrame,
    /// no call) trading one datagram of the call's size each way per frame period for as
    /// long as the call ran, both together.
    transport_floor_cpu_ms: Option<f64>,
    /// (codec alone + bare transport) / codec alone: the lowest `cpu_vs_codec` this transport
    /// allows on this machine.
    cpu_floor_vs_codec: Option<f64>,
    seconds: f64,
    loss_pct: f64,
    /// Mean loss burst in packets (`--burst`), absent for independent loss.
    burst: Option<f64>,
    reorder_pct: f64,
    jitter_ms: u64,
    delay_ms: u64,
    caller_end: String,
    callee_end: String,
    output: PathBuf,
}

/// What the caller's QUIC connection sent in the measured interval, per media packet sent in
/// it. `bytes_above_opus` = (every UDP payload byte the connection sent, ACK-only packets,
/// keep-alives and signaling included, + 28 bytes of IPv4 and UDP header per UDP datagram
/// − the Opus bytes of the media sent) / media packets sent.
#[derive(Serialize, Debug)]
pub(crate) struct WirePerPacket {
    bytes_above_opus: f64,
    /// UDP datagrams per media packet (1 = no packet but the media packets).
    udp_datagrams: f64,
    /// ACK frames per media packet, alone in a packet or riding on media.
    ack_frames: f64,
    /// UDP datagrams that carried no media, per media packet (ACK-only packets, keep-alives,
    /// signaling).
    non_media_datagrams: f64,
    /// Media packets measured.
    media_packets: u64,
}

/// A connection's IP-level bitrate between the first and the last refresh of its counters
/// seen (read every 250 ms; the session refreshes them once a second): every packet it sent,
/// media, ACK-only packets, keep-alives and signaling, with 28 bytes of IPv4 and UDP header
/// each.
#[derive(Default)]
struct WireRate {
    first: Option<(Instant, viska::transport::WireCounters)>,
    last: Option<(Instant, viska::transport::WireCounters)>,
}

impl WireRate {
    fn observe(&mut self, snap: &viska::phone::CallSnapshot) {
        if snap.media.frames_sent == 0 && snap.media.frames_skipped == 0 {
            return;
        }
        let seen = (Instant::now(), snap.wire);
        match (&self.first, &self.last) {
            (None, _) => self.first = Some(seen),
            (Some((_, first)), None) if *first != snap.wire => self.last = Some(seen),
            (_, Some((_, last))) if *last != snap.wire => self.last = Some(seen),
            _ => {}
        }
    }

    fn kbps(&self) -> Option<f64> {
        use viska::transport::WireCounters;
        let ((t0, w0), (t1, w1)) = (self.first.as_ref()?, self.last.as_ref()?);
        let secs = t1.saturating_duration_since(*t0).as_secs_f64();
        let bits = w1.since(w0).wire_bytes(WireCounters::IPV4_UDP_HEADER) as f64 * 8.0;
        (secs > 0.0).then(|| (bits / secs / 10.0).round() / 100.0)
    }
}

/// `WirePerPacket` between two snapshots of one call, `None` without media in between.
fn wire_per_packet(
    base: &viska::phone::CallSnapshot,
    end: &viska::phone::CallSnapshot,
) -> Option<WirePerPacket> {
    use viska::transport::WireCounters;
    let wire = end.wire.since(&base.wire);
    let frames = end.media.frames_sent.checked_sub(base.media.frames_sent)?;
    let opus = end
        .media
        .opus_bytes_sent
        .saturating_sub(base.media.opus_bytes_sent);
    if frames == 0 {
        return None;
    }
    let per = |x: u64| (x as f64 / frames as f64 * 100.0).round() / 100.0;
    Some(WirePerPacket {
        bytes_above_opus: per(wire
            .wire_bytes(WireCounters::IPV4_UDP_HEADER)
            .saturating_sub(opus)),
        udp_datagrams: per(wire.udp_datagrams_sent),
        ack_frames: per(wire.ack_frames_sent),
        non_media_datagrams: per(wire
            .udp_datagrams_sent
            .saturating_sub(wire.datagram_frames_sent)),
        media_packets: frames,
    })
}

struct AutoAnswer {
    calls: std::sync::mpsc::Sender<CallHandle>,
}

impl PhoneListener for AutoAnswer {
    fn on_event(&self, event: PhoneEvent) {
        let PhoneEvent::IncomingCall { call, caller } = event else {
            return;
        };
        eprintln!(
            "callee: incoming call from {} ({:?}, {})",
            caller.remote_addr,
            caller.trust,
            caller.identity.fingerprint()
        );
        if let Err(e) = call.answer() {
            eprintln!("callee: answer failed: {e}");
        }
        let _ = self.calls.send(call);
    }
}

/// Longest `--seconds` accepted: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// `--seconds`: a finite number of seconds from 0 to [`MAX_SECONDS`].
fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=MAX_SECONDS).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!("must be from 0 to {MAX_SECONDS} seconds"))
    }
}

/// `--loss`: a finite percentage from 0 to 100.
fn parse_percent(text: &str) -> Result<f64, String> {
    let percent: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=100.0).contains(&percent) {
        Ok(percent)
    } else {
        Err("must be a percentage from 0 to 100".into())
    }
}

/// `--burst`: a finite mean burst length of at least one packet.
fn parse_burst(text: &str) -> Result<f64, String> {
    let burst: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if burst.is_finite() && (1.0..=1000.0).contains(&burst) {
        Ok(burst)
    } else {
        Err("must be from 1 to 1000 packets".into())
    }
}

/// The impairment the flags describe, `None` when they describe none.
fn impairment(args: &DemoArgs) -> Result<Option<ImpairmentConfig>, BoxError> {
    let mut config = ImpairmentConfig::simple(
        args.loss,
        Duration::from_millis(args.delay),
        Duration::from_millis(args.jitter),
        args.seed,
    )?;
    if let (Some(burst), true) = (args.burst, args.loss > 0.0) {
        config.loss = LossModel::gilbert_elliott(args.loss, burst)?;
    }
    config.reorder_pct = args.reorder;
    config.reorder_delay = Duration::from_millis(args.reorder_delay);
    config.validate()?;
    Ok((!config.is_identity()).then_some(config))
}

/// `--delay` and `--jitter`: milliseconds up to the impairment model's longest delay.
fn parse_impairment_millis(text: &str) -> Result<u64, String> {
    let millis: u64 = text.parse().map_err(|e| format!("{e}"))?;
    if Duration::from_millis(millis) <= MAX_DELAY {
        Ok(millis)
    } else {
        Err(format!("must be at most {} ms", MAX_DELAY.as_millis()))
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

pub(crate) fn run(args: DemoArgs) -> Result<(), BoxError> {
    let input = match &args.input {
        Some(p) => p.clone(),
        None => {
            let path = std::env::temp_dir().join(format!("viska-demo-{}.wav", std::process::id()));
            std::fs::write(&path, SPEECH)?;
            path
        }
    };
    if let Some(n) = args.participants {
        return crate::group_demo::run(n, args.seconds, &input);
    }
    let impairment = impairment(&args)?;
    let probe = Arc::new(LatencyProbe::new());
    let transport = viska::TransportConfig {
        connection_ids: if args.zero_length_connection_ids {
            viska::transport::ConnectionIds::ZeroLength
        } else {
            viska::transport::ConnectionIds::Routable
        },
        ecn: args.ecn,
        tls_key_log: args.tls_key_log,
        ack_frequency: args.ack_every.map(|packets| viska::AckFrequency {
            packets: packets.max(1),
            max_delay: std::time::Duration::from_millis(args.ack_delay_ms),
        }),
        ..viska::TransportConfig::default()
    };
    let opus = viska::media::codec::OpusConfig {
        bitrate_bps: args.bitrate,
        dtx: !args.no_dtx,
        dred_duration_ms: args.dred_ms,
        ..viska::media::codec::OpusConfig::default()
    };
    let callee = demo_phone(
        "callee",
        args.suite,
        opus,
        FileAudio {
            input: None,
            loop_input: false,
            output: Some(args.output.clone()),
        },
        DemoLink {
            transport: transport.clone(),
            impairment: impairment.clone().map(|mut i| {
                i.seed = i.seed.wrapping_add(1);
                i
            }),
        },
        (!args.no_latency_probe).then(|| probe.clone()),
        !args.no_realtime,
    )?;
    let caller = demo_phone(
        "caller",
        args.suite,
        opus,
        FileAudio {
            input: Some(input.clone()),
            loop_input: true,
            output: None,
        },
        DemoLink {
            transport,
            impairment,
        },
        (!args.no_latency_probe).then(|| probe.clone()),
        !args.no_realtime,
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    callee.set_listener(Arc::new(AutoAnswer { calls: tx }));
    let addr = callee.listen("127.0.0.1:0".parse()?)?;
    eprintln!("callee: listening on {addr} (QUIC, ALPN viska/1)");

    let quic_handshake = bare_quic_handshake().ok();

    let call = caller.call(addr)?;
    eprintln!("caller: dialing {addr}");
    let reached = call.wait_for(Duration::from_secs(10), |s| {
        matches!(s, CallState::Active { .. }) || s.is_ended()
    });
    if !matches!(reached, CallState::Active { .. }) {
        return Err(format!("call did not connect: {:?}", call.state()).into());
    }
    let callee_call = rx.recv_timeout(Duration::from_secs(5))?;
    let snap = call.snapshot();
    eprintln!(
        "caller: call {:?}; SAS {} (callee sees {})",
        snap.state,
        snap.sas.clone().unwrap_or_default(),
        callee_call.sas().unwrap_or_default()
    );
    let cpu0 = (caller.cpu_time(), callee.cpu_time());
    let wake0 = (caller.wakeups(), callee.wakeups());
    let t0 = Instant::now();
    // The flag's parser keeps it finite and in range; a bad value is still an error here.
    let talk = Duration::try_from_secs_f64(args.seconds)?;

    // The wire is measured from the first counters read with media flowing (the session
    // refreshes them once a second), so the handshake and setup are left out.
    let mut wire_base = None;
    let mut rates = [WireRate::default(), WireRate::default()];
    while t0.elapsed() < talk && !call.is_ended() {
        std::thread::sleep(Duration::from_millis(250).min(talk.saturating_sub(t0.elapsed())));
        let snap = call.snapshot();
        if wire_base.is_none() {
            wire_base = (snap.media.frames_sent > 0).then(|| snap.clone());
        }
        rates[0].observe(&snap);
        rates[1].observe(&callee_call.snapshot());
    }
    let wall = t0.elapsed();
    let cpu1 = (caller.cpu_time(), callee.cpu_time());
    let wake1 = (caller.wakeups(), callee.wakeups());
    // Let the last frames drain through the jitter buffer before hanging up.
    std::thread::sleep(Duration::from_millis(300));
    call.hangup()?;
    // Teardown complete on both ends: final counters, the callee's WAV file finished.
    call.wait_ended(Duration::from_secs(5));
    callee_call.wait_ended(Duration::from_secs(5));

    let a = call.snapshot();
    let b = callee_call.snapshot();
    let latency = probe.summary();
    let cpu = |c0: Option<Duration>, c1: Option<Duration>| match (c0, c1) {
        (Some(c0), Some(c1)) => Some(c1.saturating_sub(c0)),
        _ => None,
    };
    let cpu_caller = cpu(cpu0.0, cpu1.0);
    let cpu_callee = cpu(cpu0.1, cpu1.1);
    let pct = |c: Option<Duration>| {
        c.map(|c| (1000.0 * c.as_secs_f64() / wall.as_secs_f64()).round() / 10.0)
    };
    // The demo's phones use the default frame duration.
    let frame_ms = viska::media::codec::OpusConfig::default().frame.millis();
    let frames_in_window = wall.as_secs_f64() * 1000.0 / f64::from(frame_ms);
    let per_frame = |w0: Option<u64>, w1: Option<u64>| match (w0, w1) {
        (Some(w0), Some(w1)) if frames_in_window > 0.0 => {
            Some((100.0 * w1.saturating_sub(w0) as f64 / frames_in_window).round() / 100.0)
        }
        _ => None,
    };
    let per_packet = |bytes: u64, packets: u64| {
        (packets > 0).then(|| ((bytes as f64 / packets as f64) * 100.0).round() / 100.0)
    };
    // With --measure-cpu: the codec alone, paced like a call (one frame of encode + decode per
    // period) for as long as the call ran, after it: the floor an endpoint's CPU is compared with.
    let codec_cpu = if args.measure_cpu {
        eprintln!("measuring the codec alone for {:.1} s", wall.as_secs_f64());
        let input = input.clone();
        let bitrate = args.bitrate;
        std::thread::spawn(move || paced_codec_cpu(&input, bitrate, wall))
            .join()
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    // With --measure-cpu, then: the transport alone, paced the same way.
    let floor_cpu = if args.measure_cpu {
        eprintln!(
            "measuring the bare transport for {:.1} s",
            wall.as_secs_f64()
        );
        let len = usize::try_from(a.media.bytes_sent / a.media.frames_sent.max(1)).unwrap_or(100);
        paced_transport_cpu(len, wall)
            .map_err(|e| eprintln!("transport floor not measured: {e}"))
            .ok()
    } else {
        None
    };
    let floor_ratio = match (codec_cpu, floor_cpu) {
        (Some(k), Some(f)) if !k.is_zero() => {
            Some((100.0 * (k + f).as_secs_f64() / k.as_secs_f64()).round() / 100.0)
        }
        _ => None,
    };
    // Both phones together do the codec work of both directions: that is what the baseline did.
    let ratio = match (cpu_caller, cpu_callee, codec_cpu) {
        (Some(a), Some(b), Some(k)) if !k.is_zero() => {
            Some((100.0 * (a + b).as_secs_f64() / k.as_secs_f64()).round() / 100.0)
        }
        _ => None,
    };
    let overhead = per_packet(
        a.media.bytes_sent.saturating_sub(a.media.opus_bytes_sent),
        a.media.frames_sent,
    );
    let wire = wire_base
        .as_ref()
        .and_then(|base| wire_per_packet(base, &a));
    let summary = Summary {
        frames_sent: a.media.frames_sent,
        frames_received: b.media.frames_received,
        frames_lost: b.media.playout.lost,
        frames_concealed: b.media.playout.concealed,
        frames_fec_recovered: b.media.playout.fec_recovered,
        frames_dred_recovered: b.media.playout.dred_recovered,
        decrypt_failures: a.media.decrypt_failures + b.media.decrypt_failures,
        replays_rejected: a.media.replays_rejected + b.media.replays_rejected,
        sas_match: a.sas.is_some() && a.sas == b.sas,
        sas_caller: a.sas,
        sas_callee: b.sas,
        suite: a.suite.map(|s| format!("{s:?}")).unwrap_or_default(),
        setup_ms: a.setup_time.map(ms),
        quic_handshake_ms: quic_handshake.map(ms),
        mouth_to_ear_ms: latency.mouth_to_ear_median.map(ms),
        added_latency_p99_ms: latency.added_latency_p99.map(ms),
        added_latency_median_ms: latency.added_latency_median.map(ms),
        added_latency_p90_ms: latency.added_latency_p90.map(ms),
        frames_late: b.media.playout.late,
        bytes_overhead_per_packet: overhead,
        wire_bytes_per_packet: wire.as_ref().map(|w| w.bytes_above_opus),
        wire,
        wire_kbps_caller: rates[0].kbps(),
        wire_kbps_callee: rates[1].kbps(),
        comfort_noise_sent_caller: a.media.comfort_noise_sent,
        comfort_noise_sent_callee: b.media.comfort_noise_sent,
        frames_comfort_noise: b.media.playout.comfort_noise,
        opus_bytes_per_packet: per_packet(a.media.opus_bytes_sent, a.media.frames_sent),
        jitter_buffer_delay_ms: ms(b.media.playout.current_delay),
        stretch_removed_ms: ms(b.media.playout.stretch_removed),
        stretch_inserted_ms: ms(b.media.playout.stretch_inserted),
        frames_dropped_for_delay: b.media.playout.dropped_for_delay,
        frames_inserted_for_delay: b.media.playout.inserted_for_delay,
        // The E-model's delay term gets the measured mouth-to-ear delay beyond the network's.
        estimated_mos: (b.stats.estimate_mos(
            latency
                .mouth_to_ear_median
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
                - b.stats.rtt_ms.unwrap_or(0.0) / 2.0,
        ) * 100.0)
            .round()
            / 100.0,
        cpu_ms_caller: cpu_caller.map(ms),
        cpu_ms_callee: cpu_callee.map(ms),
        cpu_percent_caller: pct(cpu_caller),
        cpu_percent_callee: pct(cpu_callee),
        wakeups_per_frame_caller: per_frame(wake0.0, wake1.0),
        wakeups_per_frame_callee: per_frame(wake0.1, wake1.1),
        codec_only_cpu_ms: codec_cpu.map(ms),
        cpu_vs_codec: ratio,
        transport_floor_cpu_ms: floor_cpu.map(ms),
        cpu_floor_vs_codec: floor_ratio,
        seconds: (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        loss_pct: args.loss,
        burst: args.burst,
        reorder_pct: args.reorder,
        jitter_ms: args.jitter,
        delay_ms: args.delay,
        caller_end: format!("{:?}", a.state),
        callee_end: format!("{:?}", b.state),
        output: args.output.clone(),
    };
    if args.input.is_none() {
        let _ = std::fs::remove_file(&input);
    }
    eprintln!(
        "done: {} frames sent, {} received, {} lost, {} concealed, {} decrypt failures; callee audio in {}",
        summary.frames_sent,
        summary.frames_received,
        summary.frames_lost,
        summary.frames_concealed,
        summary.decrypt_failures,
        args.output.display()
    );
    caller.shutdown();
    callee.shutdown();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Time of a bare QUIC handshake (same TLS configuration, fresh endpoints, loopback), for
/// comparison with the call setup time.
fn bare_quic_handshake() -> Result<Duration, BoxError> {
    use viska::transport::{LocalCertificate, QuicEndpoint, TransportConfig};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = TransportConfig::default();
        let server = QuicEndpoint::bind(
            "127.0.0.1:0".parse()?,
            Arc::new(LocalCertificate::generate()?),
            &config,
        )?;
        let client = QuicEndpoint::bind(
            "127.0.0.1:0".parse()?,
            Arc::new(LocalCertificate::generate()?),
            &config,
        )?;
        let addr = server.local_addr()?;
        let accept = tokio::spawn(async move { server.accept().await.map(|r| r.is_ok()) });
        let t0 = Instant::now();
        let conn = client.connect(addr).await?;
        let elapsed = t0.elapsed();
        conn.close("measured");
        let _ = accept.await;
        Ok(elapsed)
    })
}

/// CPU time two bare transport endpoints spend, both together, trading one `len`-byte
/// datagram each way per 20 ms frame period for `duration`: Viska's QUIC configuration and
/// runtime with nothing on top. Each endpoint runs on its own thread and runtime, as a phone
/// does.
fn paced_transport_cpu(len: usize, duration: Duration) -> Result<Duration, BoxError> {
    use viska::transport::{LocalCertificate, PeerConnection, QuicEndpoint, TransportConfig};
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let run = move |conn: PeerConnection| async move {
        let period = Duration::from_millis(20);
        let payload = vec![0x5au8; len];
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // schedstat is updated when the thread is switched out: read it across sleeps.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t0 = viska::phone::current_thread_cpu_time();
        let start = Instant::now();
        let mut received = 0u64;
        while start.elapsed() < duration {
            tokio::select! {
                _ = tick.tick() => conn.send_media(&payload)?,
                d = conn.recv_media() => {
                    d?;
                    received += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t1 = viska::phone::current_thread_cpu_time();
        conn.close("measured");
        if received == 0 {
            return Err::<Duration, BoxError>("no datagram received".into());
        }
        match (t0, t1) {
            (Some(t0), Some(t1)) => Ok(t1.saturating_sub(t0)),
            _ => Err("no thread CPU clock".into()),
        }
    };
    // One endpoint on its own thread and runtime: it listens (and reports its address) when
    // `peer` is None, else it connects to `peer`.
    let endpoint =
        move |name: &str,
              peer: Option<std::net::SocketAddr>,
              addr_tx: std::sync::mpsc::Sender<std::net::SocketAddr>| {
            std::thread::Builder::new().name(name.into()).spawn(
                move || -> Result<Duration, String> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async {
                        let endpoint = QuicEndpoint::bind(
                            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                            Arc::new(LocalCertificate::generate().map_err(|e| e.to_string())?),
                            &TransportConfig::default(),
                        )
                        .map_err(|e| e.to_string())?;
                        let conn = match peer {
                            Some(peer) => {
                                endpoint.connect(peer).await.map_err(|e| e.to_string())?
                            }
                            None => {
                                let _ =
                                    addr_tx.send(endpoint.local_addr().map_err(|e| e.to_string())?);
                                endpoint
                                    .accept()
                                    .await
                                    .ok_or("endpoint closed")?
                                    .map_err(|e| e.to_string())?
                            }
                        };
                        run(conn).await.map_err(|e| e.to_string())
                    })
                },
            )
        };
    let server = endpoint("vk-floor-a", None, addr_tx.clone())?;
    let addr = addr_rx.recv_timeout(Duration::from_secs(5))?;
    let client = endpoint("vk-floor-b", Some(addr), addr_tx)?;
    let a = server.join().map_err(|_| "transport thread panicked")??;
    let b = client.join().map_err(|_| "transport thread panicked")??;
    Ok(a + b)
}

/// CPU time a thread spends doing the codec work of the demo's call alone, paced one frame per
/// period for `duration`: the caller's direction (encode and decode `input`) and the callee's
/// (encode and decode silence), with the Opus settings a clean call settles on.
fn paced_codec_cpu(
    input: &std::path::Path,
    bitrate: u32,
    duration: Duration,
) -> Result<Duration, String> {
    use viska::media::audio::AudioSource;
    use viska::media::codec::{OpusConfig, OpusDecoder, OpusEncoder};
    use viska::media::wav::WavSource;
    let config = OpusConfig {
        bitrate_bps: bitrate,
        // A clean path's reception reports bring the call's expected loss to 0.
        expected_loss_pct: 0,
        ..OpusConfig::default()
    };
    let n = config.frame_samples();
    let mut source = WavSource::open(input)
        .map_err(|e| e.to_string())?
        .looping(true);
    let mut encoder = OpusEncoder::new(&config).map_err(|e| e.to_string())?;
    let mut decoder = OpusDecoder::new(&config).map_err(|e| e.to_string())?;
    let mut silent_encoder = OpusEncoder::new(&config).map_err(|e| e.to_string())?;
    let mut silent_decoder = OpusDecoder::new(&config).map_err(|e| e.to_string())?;
    let silence = vec![0i16; n];
    let mut pcm = vec![0i16; n];
    let mut packet = vec![0u8; 1500];
    let mut out = vec![0i16; n];
    let period = Duration::from_millis(u64::from(config.frame.millis()));
    let start = Instant::now();
    let mut next = start;
    // schedstat is updated when the thread is switched out, so read it across whole sleeps.
    std::thread::sleep(Duration::from_millis(1));
    let t0 = viska::phone::current_thread_cpu_time().ok_or("no thread CPU clock")?;
    while start.elapsed() < duration {
        source.read_frame(&mut pcm).map_err(|e| e.to_string())?;
        let len = encoder
            .encode(&pcm, &mut packet)
            .map_err(|e| e.to_string())?;
        decoder
            .decode(packet.get(..len).unwrap_or_default(), &mut out)
            .map_err(|e| e.to_string())?;
        let len = silent_encoder
            .encode(&silence, &mut packet)
            .map_err(|e| e.to_string())?;
        silent_decoder
            .decode(packet.get(..len).unwrap_or_default(), &mut out)
            .map_err(|e| e.to_string())?;
        next += period;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(viska::phone::current_thread_cpu_time()
        .ok_or("no thread CPU clock")?
        .saturating_sub(t0))
}
