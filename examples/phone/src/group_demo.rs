//! `viska-phone demo --participants N`: an in-process relay and N group phones over real QUIC
//! on loopback, in one MLS group call, each speaking its share of the input in turn.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use viska::group::{GroupConfig, GroupPhone, GroupPhoneConfig};
use viska::identity::IdentityKeyPair;
use viska::media::audio::{AudioIoError, AudioSink, AudioSource, SourceStatus};
use viska::media::wav::WavSource;
use viska::phone::{AudioFactory, DiscardSink};
use viska::session::GroupSessionConfig;
use viska_relay::{Relay, RelayConfig};

use crate::BoxError;

/// How long setting the group up may take before the demo gives up.
const SETUP: Duration = Duration::from_secs(30);

/// One phone's audio: the input, but only during this phone's turn (turns of `turn_frames`
/// frames go round the participants), silence otherwise.
struct Share {
    samples: Arc<Vec<i16>>,
    index: usize,
    participants: usize,
    turn_frames: u64,
}

struct ShareSource {
    share: Arc<Vec<i16>>,
    index: usize,
    participants: usize,
    turn_frames: u64,
    frame: u64,
    position: usize,
}

impl AudioSource for ShareSource {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<SourceStatus, AudioIoError> {
        let turn = (self.frame / self.turn_frames) as usize % self.participants;
        self.frame += 1;
        if turn != self.index || self.share.is_empty() {
            out.fill(0);
            return Ok(SourceStatus::Silence);
        }
        for s in out.iter_mut() {
            *s = self.share[self.position % self.share.len()];
            self.position += 1;
        }
        Ok(SourceStatus::Audio)
    }

    fn has_own_clock(&self) -> bool {
        false
    }
}

impl AudioFactory for Share {
    fn open_source(&self, _frame_samples: usize) -> Result<Box<dyn AudioSource>, AudioIoError> {
        Ok(Box::new(ShareSource {
            share: Arc::clone(&self.samples),
            index: self.index,
            participants: self.participants,
            turn_frames: self.turn_frames,
            frame: 0,
            position: 0,
        }))
    }

    fn open_sink(&self, _frame_samples: usize) -> Result<Box<dyn AudioSink>, AudioIoError> {
        Ok(Box::new(DiscardSink))
    }
}

/// One participant in the JSON summary.
#[derive(Serialize, Debug)]
struct Participant {
    identity: String,
    frames_sent: u64,
    frames_received: u64,
    frames_lost: u64,
    frames_concealed: u64,
    decrypt_failures: u64,
    unattributed: u64,
    group_failures: u64,
    verification_code: Option<String>,
    epochs: u64,
    roster: usize,
}

/// The group demo's JSON summary (the last line of output).
#[derive(Serialize, Debug)]
struct GroupSummary {
    participants: Vec<Participant>,
    verification_codes_match: bool,
    setup_ms: f64,
    relay_datagrams_forwarded: u64,
    relay_datagrams_dropped: u64,
    relay_commits_accepted: u64,
    relay_commits_refused: u64,
}

/// Runs the group demo for `seconds` of talk with `n` phones; `input` is the WAV they share.
pub(crate) fn run(n: usize, seconds: f64, input: &Path) -> Result<(), BoxError> {
    if !(2..=32).contains(&n) {
        return Err(format!("--participants takes 2 to 32 phones, not {n}").into());
    }
    let samples = Arc::new(WavSource::open(input)?.samples().to_vec());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("relay")
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("viska-demo-relay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut relay_config = RelayConfig::new("127.0.0.1:0".parse()?, dir.clone());
    // A key for this run's throwaway data directory (a real relay reads one from a file).
    relay_config.db_key = Some(viska_relay::DbKey::generate());
    let relay = runtime.block_on(Relay::start(relay_config))?;
    eprintln!(
        "relay: listening on {}, fingerprint {}",
        relay.local_addr(),
        relay
            .fingerprint()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let started = Instant::now();
    let mut phones = Vec::with_capacity(n);
    for index in 0..n {
        let config = GroupPhoneConfig {
            relay: relay.local_addr(),
            relay_fingerprint: relay.fingerprint(),
            identity: IdentityKeyPair::generate_from_os()?,
            audio: Arc::new(Share {
                samples: Arc::clone(&samples),
                index,
                participants: n,
                // Two-second turns.
                turn_frames: 100,
            }),
            session: GroupSessionConfig::default(),
            group: GroupConfig::default(),
            verified_peers: Vec::new(),
        };
        phones.push(GroupPhone::connect(config)?);
    }
    let call = phones[0].create_call()?;
    for p in &phones[1..] {
        phones[0].add(call, p.identity())?;
    }
    // Everyone added takes the call (until then it is held).
    for p in &phones[1..] {
        if !p.wait_for(SETUP, |calls| calls.contains_key(&call)) {
            return Err("a phone was not added".into());
        }
        p.accept(call)?;
    }
    for (i, p) in phones.iter().enumerate() {
        let joined = p.wait_for(SETUP, |calls| {
            calls
                .get(&call)
                .is_some_and(|c| c.roster.len() == n && c.sending_epoch == c.epoch)
        });
        if !joined {
            return Err(format!("phone {i} did not join the call").into());
        }
    }
    let setup_ms = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!("{n} phones in the call after {setup_ms:.0} ms; talking for {seconds} s");
    std::thread::sleep(Duration::from_secs_f64(seconds));

    let mut participants = Vec::with_capacity(n);
    for p in &phones {
        let s = p.snapshot(call).ok_or("a phone lost its call")?;
        participants.push(Participant {
            identity: p.identity().fingerprint().to_string(),
            frames_sent: s.media.frames_sent,
            frames_received: s.media.frames_received,
            frames_lost: s.media.playout.lost,
            frames_concealed: s.media.playout.concealed,
            decrypt_failures: s.media.decrypt_failures,
            unattributed: s.media.unattributed,
            group_failures: s.group_failures,
            verification_code: s.verification_code.clone(),
            epochs: s.epochs_seen,
            roster: s.roster.len(),
        });
    }
    let codes_match = participants
        .windows(2)
        .all(|w| w[0].verification_code == w[1].verification_code)
        && participants[0].verification_code.is_some();
    if let Some(code) = &participants[0].verification_code {
        eprintln!("verification code: {code}");
    }
    for p in phones {
        p.close();
    }
    let stats = relay.stats();
    runtime.block_on(relay.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
    let summary = GroupSummary {
        participants,
        verification_codes_match: codes_match,
        setup_ms,
        relay_datagrams_forwarded: stats.datagrams_forwarded,
        relay_datagrams_dropped: stats.dropped_no_route
            + stats.dropped_not_member
            + stats.dropped_malformed
            + stats.dropped_slow_receiver
            + stats.dropped_before_join,
        relay_commits_accepted: stats.commits_accepted,
        relay_commits_refused: stats.commits_refused,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
