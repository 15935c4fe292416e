//! Speech quality under packet loss and jitter: encodes a WAV with Viska's Opus settings, drops
//! and delays packets with a seeded network model, decodes through a receiver that uses FEC,
//! DRED and PLC, and writes the result for scoring (see `scripts/quality`).
//!
//! ```text
//! cargo run --release -p viska-media --example quality_sim -- \
//!     --input speech.wav --output out.wav --bitrate 32000 --loss 0.1 --burst 3 --seed 7
//! ```
//!
//! Network model: each 20 ms packet is lost with probability `--loss`, independently
//! (`--burst 1`) or in Gilbert-Elliott bursts whose mean length is `--burst` frames. With
//! `--jitter-ms J` every packet gets an extra delay drawn from a half-normal distribution
//! with sigma J.
//!
//! Receiver: a fixed playout deadline `--playout-ms` after each packet's send time (default one
//! frame + 2 J, so FEC has the next packet in time and ~95 % of jittered packets make it).
//! A packet that misses its deadline counts as lost. For a missing frame the receiver looks for
//! the earliest later packet already arrived: the next one with FEC -> `decode_fec`; any later
//! one with DRED reaching back -> `decode_dred`; otherwise `conceal`. This is the decision logic
//! of a jitter buffer without its adaptive delay. `--receiver playout` instead drives the
//! adaptive `viska_media::playout::Playout` (jitter buffer + FEC/DRED/PLC) on a virtual clock,
//! with its own delay target in place of `--playout-ms` (`--jitter-min-ms` and
//! `--jitter-start-ms` override its `min_delay` and `start_delay`; `--stretch off` turns its
//! time-stretching off; `--trace` prints every
//! pull's outcome and delays on stderr).
//!
//! Prints one JSON line of counters on stdout (for `playout`, `inserted`/`dropped` are frames
//! inserted or dropped to change the delay and `waits` the buffer's waits for a stalled
//! stream).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use viska_media::audio::{AudioSink, AudioSource, SourceStatus};
use viska_media::codec::{
    FrameDuration, MAX_PACKET_BYTES, MAX_PACKET_SAMPLES, OpusConfig, OpusDecoder, OpusEncoder,
    packet_has_fec,
};
use viska_media::jitter::PushMeta;
use viska_media::playout::{Playout, PlayoutConfig, PullOutcome};
use viska_media::wav::{WavSink, WavSource};

#[derive(Debug)]
struct Args {
    input: String,
    output: String,
    bitrate: u32,
    loss: f64,
    burst: f64,
    jitter_ms: f64,
    playout_ms: Option<f64>,
    seed: u64,
    fec: bool,
    expected_loss: u8,
    dred_ms: u16,
    decoder_complexity: u8,
    playout: bool,
    jitter_min_ms: Option<f64>,
    jitter_start_ms: Option<f64>,
    trace: bool,
    stretch: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        input: String::new(),
        output: String::new(),
        bitrate: 32_000,
        loss: 0.0,
        burst: 1.0,
        jitter_ms: 0.0,
        playout_ms: None,
        seed: 1,
        fec: true,
        expected_loss: 10,
        dred_ms: 0,
        decoder_complexity: OpusConfig::default().decoder_complexity,
        playout: false,
        jitter_min_ms: None,
        jitter_start_ms: None,
        trace: false,
        stretch: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--input" => args.input = value()?,
            "--output" => args.output = value()?,
            "--bitrate" => args.bitrate = num(value()?)? as u32,
            "--loss" => args.loss = num(value()?)?,
            "--burst" => args.burst = num(value()?)?,
            "--jitter-ms" => args.jitter_ms = num(value()?)?,
            "--playout-ms" => args.playout_ms = Some(num(value()?)?),
            "--seed" => args.seed = num(value()?)? as u64,
            "--fec" => args.fec = value()? != "off",
            "--expected-loss" => args.expected_loss = num(value()?)? as u8,
            "--dred-ms" => args.dred_ms = num(value()?)? as u16,
            "--decoder-complexity" => args.decoder_complexity = num(value()?)? as u8,
            "--receiver" => args.playout = value()? == "playout",
            "--jitter-min-ms" => args.jitter_min_ms = Some(num(value()?)?),
            "--jitter-start-ms" => args.jitter_start_ms = Some(num(value()?)?),
            "--trace" => args.trace = true,
            "--stretch" => args.stretch = value()? != "off",
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.input.is_empty() || args.output.is_empty() {
        return Err("--input and --output are required".into());
    }
    if !(0.0..1.0).contains(&args.loss) || args.burst < 1.0 || args.jitter_ms < 0.0 {
        return Err("--loss must be in [0,1), --burst >= 1, --jitter-ms >= 0".into());
    }
    Ok(args)
}

/// SplitMix64: small, seeded, and good enough for a loss pattern.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Which packets the network drops: independent losses, or a two-state Gilbert-Elliott chain
/// (every packet in the bad state lost) with stationary loss `loss` and mean burst `burst`.
fn loss_pattern(frames: usize, loss: f64, burst: f64, rng: &mut Rng) -> Vec<bool> {
    if burst <= 1.0 {
        return (0..frames).map(|_| rng.uniform() < loss).collect();
    }
    let leave_bad = 1.0 / burst;
    let enter_bad = loss * leave_bad / (1.0 - loss);
    let mut bad = false;
    (0..frames)
        .map(|_| {
            bad = if bad {
                rng.uniform() >= leave_bad
            } else {
                rng.uniform() < enter_bad
            };
            bad
        })
        .collect()
}

#[derive(Default, Debug)]
struct Counters {
    frames: usize,
    lost: usize,
    late: usize,
    decoded: usize,
    fec: usize,
    dred: usize,
    concealed: usize,
    inserted: usize,
    dropped: usize,
    waits: usize,
    buffered: usize,
    accelerated: u64,
    expanded: u64,
    delay_ms_sum: f64,
    packets: usize,
    bytes: usize,
}

fn run(args: &Args) -> Result<Counters, String> {
    let config = OpusConfig {
        frame: FrameDuration::Ms20,
        bitrate_bps: args.bitrate,
        fec: args.fec,
        expected_loss_pct: args.expected_loss,
        dred_duration_ms: args.dred_ms,
        decoder_complexity: args.decoder_complexity,
        // Every frame is sent and scored here, as the loss models assume; DTX is measured in
        // real calls (`viska-phone demo`, performance.md "Silence (DTX)").
        dtx: false,
        ..OpusConfig::default()
    };
    let frame = config.frame_samples();
    let frame_ms = f64::from(config.frame.millis());
    let mut source = WavSource::open(&args.input).map_err(|e| e.to_string())?;
    let input_len = source.samples().len();

    // Sender: encode the whole clip plus enough silence to flush the encoder's lookahead.
    let mut encoder = OpusEncoder::new(&config).map_err(|e| e.to_string())?;
    let lookahead = encoder.lookahead().map_err(|e| e.to_string())?;
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut pcm = vec![0i16; frame];
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let mut counters = Counters::default();
    loop {
        let status = source.read_frame(&mut pcm).map_err(|e| e.to_string())?;
        if status == SourceStatus::Ended && packets.len() * frame >= input_len + lookahead {
            break;
        }
        let len = encoder.encode(&pcm, &mut buf).map_err(|e| e.to_string())?;
        counters.bytes += len;
        packets.push(buf.get(..len).unwrap_or_default().to_vec());
    }

    counters.packets = packets.len();

    // Network.
    let mut rng = Rng(args.seed);
    let lost = loss_pattern(packets.len(), args.loss, args.burst, &mut rng);
    let playout_ms = args.playout_ms.unwrap_or(frame_ms + 2.0 * args.jitter_ms);
    // Arrival time relative to the packet's own send time.
    let extra_delay: Vec<f64> = (0..packets.len())
        .map(|_| (rng.normal() * args.jitter_ms).abs())
        .collect();
    // Whether packet `j` is in hand when frame `k` must be played.
    let in_hand = |j: usize, k: usize| -> bool {
        let arrival = j as f64 * frame_ms + extra_delay.get(j).copied().unwrap_or(f64::MAX);
        !lost.get(j).copied().unwrap_or(true) && arrival <= k as f64 * frame_ms + playout_ms
    };

    if args.playout {
        let decoded =
            receive_with_playout(args, &config, &packets, &lost, &extra_delay, &mut counters)?;
        return write_aligned(&args.output, &decoded, lookahead, input_len, frame)
            .map(|()| counters);
    }

    // Receiver.
    let mut decoder = OpusDecoder::new(&config).map_err(|e| e.to_string())?;
    let mut out = vec![0i16; MAX_PACKET_SAMPLES];
    let mut decoded: Vec<i16> = Vec::with_capacity(packets.len() * frame);
    // How far ahead the receiver looks for a packet carrying redundancy for a missing frame.
    let horizon = 1 + (args.dred_ms as usize / config.frame.millis() as usize);
    for k in 0..packets.len() {
        counters.frames += 1;
        let n = if in_hand(k, k) {
            counters.decoded += 1;
            decoder
                .decode(&packets[k], &mut out)
                .map_err(|e| e.to_string())?
        } else {
            if lost[k] {
                counters.lost += 1;
            } else {
                counters.late += 1;
            }
            let later = (k + 1..packets.len().min(k + 1 + horizon)).find(|&j| in_hand(j, k));
            match later {
                Some(j) if j == k + 1 && args.fec && packet_has_fec(&packets[j]) => {
                    counters.fec += 1;
                    decoder
                        .decode_fec(&packets[j], &mut out)
                        .map_err(|e| e.to_string())?
                }
                Some(j) if args.dred_ms > 0 => {
                    match decoder
                        .decode_dred(&packets[j], (j - k) * frame, &mut out)
                        .map_err(|e| e.to_string())?
                    {
                        Some(n) => {
                            counters.dred += 1;
                            n
                        }
                        None => {
                            counters.concealed += 1;
                            decoder.conceal(&mut out).map_err(|e| e.to_string())?
                        }
                    }
                }
                _ => {
                    counters.concealed += 1;
                    decoder.conceal(&mut out).map_err(|e| e.to_string())?
                }
            }
        };
        decoded.extend_from_slice(out.get(..n).unwrap_or_default());
    }

    write_aligned(&args.output, &decoded, lookahead, input_len, frame)?;
    Ok(counters)
}

/// Drives the adaptive `Playout` (jitter buffer + decoder) on a virtual clock: packets are
/// pushed at their arrival times, one frame is pulled every 20 ms. Its delay adapts and it
/// drops or inserts quiet frames, so the output may be time-warped slightly against the input
/// (PESQ aligns per utterance).
fn receive_with_playout(
    args: &Args,
    config: &OpusConfig,
    packets: &[Vec<u8>],
    lost: &[bool],
    extra_delay: &[f64],
    counters: &mut Counters,
) -> Result<Vec<i16>, String> {
    let frame_ms = f64::from(config.frame.millis());
    let decoder = OpusDecoder::new(config).map_err(|e| e.to_string())?;
    let mut playout_config = PlayoutConfig {
        opus: *config,
        time_stretch: args.stretch,
        ..PlayoutConfig::default()
    };
    let millis = |ms: f64| Duration::from_secs_f64(ms.max(0.0) / 1_000.0);
    if let Some(ms) = args.jitter_min_ms {
        playout_config.jitter.min_delay = millis(ms);
    }
    if let Some(ms) = args.jitter_start_ms {
        playout_config.jitter.start_delay = millis(ms);
    }
    let mut playout = Playout::new(playout_config, decoder).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let at = |ms: f64| start + Duration::from_secs_f64(ms.max(0.0) / 1_000.0);
    let mut arrivals: Vec<(f64, usize)> = (0..packets.len())
        .filter(|&j| !lost.get(j).copied().unwrap_or(true))
        .map(|j| {
            (
                j as f64 * frame_ms + extra_delay.get(j).copied().unwrap_or(0.0),
                j,
            )
        })
        .collect();
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    counters.lost = lost.iter().filter(|&&l| l).count();
    let mut next_arrival = 0;
    let mut out = vec![0i16; config.frame_samples()];
    let mut decoded = Vec::new();
    let mut started = false;
    // Pull until the last packet had time to arrive and play, plus the buffer's maximum delay.
    let last_ms = arrivals.last().map_or(0.0, |a| a.0) + 500.0;
    let mut k = 0usize;
    while (k as f64) * frame_ms <= last_ms {
        // Pulls happen half a frame after the send grid, so a packet sent at the same instant
        // without jitter is in hand.
        let now_ms = k as f64 * frame_ms + frame_ms / 2.0;
        while let Some(&(arrival, j)) = arrivals.get(next_arrival) {
            if arrival > now_ms {
                break;
            }
            let payload = packets.get(j).map(Vec::as_slice).unwrap_or_default();
            playout.push(
                at(arrival),
                j as u64,
                payload,
                PushMeta {
                    marker: j == 0,
                    dtx: false,
                },
            );
            next_arrival += 1;
        }
        let outcome = playout
            .pull(at(now_ms), &mut out)
            .map_err(|e| e.to_string())?;
        k += 1;
        if args.trace {
            let stats = playout.stats();
            eprintln!(
                "pull {k}: {outcome:?}, delay {:?}, target {:?}, buffered {}",
                stats.current_delay,
                stats.target_delay,
                playout.buffer().len()
            );
        }
        match outcome {
            PullOutcome::Silence if !started => continue,
            PullOutcome::Decoded => counters.decoded += 1,
            PullOutcome::FecRecovered => counters.fec += 1,
            PullOutcome::DredRecovered => counters.dred += 1,
            PullOutcome::Concealed | PullOutcome::Gap => counters.concealed += 1,
            PullOutcome::Inserted => counters.inserted += 1,
            PullOutcome::Dropped => counters.dropped += 1,
            PullOutcome::Buffered => counters.buffered += 1,
            _ => {}
        }
        counters.delay_ms_sum += playout.stats().current_delay.as_secs_f64() * 1_000.0;
        started = true;
        counters.frames += 1;
        decoded.extend_from_slice(&out);
    }
    let stats = playout.stats();
    counters.late = usize::try_from(stats.late).unwrap_or(usize::MAX);
    counters.waits = usize::try_from(playout.buffer().stats().waits).unwrap_or(usize::MAX);
    counters.accelerated = stats.accelerated;
    counters.expanded = stats.expanded;
    Ok(decoded)
}

/// Undoes the codec delay so the output lines up with the input, and writes exactly the
/// input's length.
fn write_aligned(
    path: &str,
    decoded: &[i16],
    lookahead: usize,
    input_len: usize,
    frame: usize,
) -> Result<(), String> {
    let mut aligned = decoded.get(lookahead..).unwrap_or_default().to_vec();
    aligned.resize(input_len, 0);
    let mut sink = WavSink::create(path).map_err(|e| e.to_string())?;
    for chunk in aligned.chunks(frame) {
        sink.write_frame(chunk).map_err(|e| e.to_string())?;
    }
    sink.finish().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("quality_sim: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(c) => {
            let seconds = c.packets as f64 * 0.02;
            println!(
                "{{\"frames\":{},\"lost\":{},\"late\":{},\"decoded\":{},\"fec\":{},\"dred\":{},\"concealed\":{},\"inserted\":{},\"dropped\":{},\"waits\":{},\"buffered\":{},\"accelerated\":{},\"expanded\":{},\"mean_delay_ms\":{:.1},\"kbps\":{:.2}}}",
                c.frames,
                c.lost,
                c.late,
                c.decoded,
                c.fec,
                c.dred,
                c.concealed,
                c.inserted,
                c.dropped,
                c.waits,
                c.buffered,
                c.accelerated,
                c.expanded,
                c.delay_ms_sum / c.frames.max(1) as f64,
                c.bytes as f64 * 8.0 / seconds / 1_000.0
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quality_sim: {e}");
            ExitCode::FAILURE
        }
    }
}
