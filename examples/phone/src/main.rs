//! `viska-phone`: the example CLI softphone.
//!
//! `viska-phone listen` waits for calls, `viska-phone call ADDR` places one, and
//! `viska-phone demo` runs a whole end-to-end encrypted call between two phones of this process
//! over real QUIC sockets on loopback, printing a JSON summary as its last line.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use viska::media::codec::OpusConfig;
use viska::netem::ImpairmentConfig;
use viska::phone::{
    AudioFactory, CallListener, CallerInfo, FileAudio, LatencyProbe, PhoneListener,
};
use viska::proto::CallId;
use viska::sframe::CipherSuite;
use viska::{CallHandle, CallUpdate, Phone, PhoneConfig, PhoneConfigBuilder, PhoneEvent};

mod demo;
mod group_cli;
mod group_demo;

#[derive(Parser, Debug)]
#[command(
    name = "viska-phone",
    version,
    about = "Viska end-to-end encrypted softphone"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Wait for incoming calls.
    Listen {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7700")]
        bind: SocketAddr,
        /// Answer incoming calls without asking.
        #[arg(long)]
        auto_answer: bool,
        /// How many connections not yet authenticated one source address may hold at once;
        /// raise it when callers come through a relay or a shared NAT.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
        max_handshakes_per_source: u16,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Call a listening phone.
    Call {
        /// The callee's address.
        addr: SocketAddr,
        /// Call it as this contact: its trust comes from the key store (`--store`): pinned on
        /// the first call, verified once you verify it, key-changed when another identity
        /// answers.
        #[arg(long)]
        contact: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Register on a relay and take part in group calls: joins every call it is added to;
    /// commands on standard input (create, add CALL IDENTITY, accept CALL, leave CALL, roster, quit).
    Group {
        /// The relay's address.
        #[arg(long)]
        relay: SocketAddr,
        /// The relay's certificate fingerprint (64 hex digits, as the relay prints it).
        #[arg(long, value_parser = group_cli::parse_fingerprint)]
        relay_fingerprint: [u8; 32],
        /// Identities (64 hex digits) this user has verified: shown as verified in rosters.
        #[arg(long)]
        verified: Vec<String>,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Manage the key store.
    Store {
        #[command(subcommand)]
        command: StoreCmd,
    },
    /// Two phones in this process place an encrypted call over loopback QUIC.
    Demo(demo::DemoArgs),
    /// List sound devices.
    Devices,
}

/// Cipher suite names on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum SuiteArg {
    /// ChaCha20-Poly1305.
    Chacha,
    /// AES-128-GCM (RFC 9605 suite 0x0004).
    AesGcm,
    /// AES-128-CTR with HMAC-SHA256, 80-bit tag (RFC 9605 suite 0x0001; the default): 6 bytes
    /// less per packet.
    AesCtrHmac80,
}

impl SuiteArg {
    pub(crate) fn suites(self) -> Vec<CipherSuite> {
        match self {
            Self::Chacha => vec![
                CipherSuite::ChaCha20Poly1305Sha256,
                CipherSuite::Aes128GcmSha256,
            ],
            Self::AesGcm => vec![
                CipherSuite::Aes128GcmSha256,
                CipherSuite::ChaCha20Poly1305Sha256,
            ],
            Self::AesCtrHmac80 => vec![
                CipherSuite::AesCtr128HmacSha256_80,
                CipherSuite::ChaCha20Poly1305Sha256,
                CipherSuite::Aes128GcmSha256,
            ],
        }
    }
}

/// What `viska-phone store` does.
#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Change the key store's passphrase: the current one from VISKA_STORE_PASSPHRASE or
    /// asked for, the new one from VISKA_STORE_NEW_PASSPHRASE or asked for twice. The new one
    /// must be at least 12 characters, not a common password, and hard to guess. Every page
    /// of the store is rewritten under the new key; if this is interrupted, the store opens
    /// with the old passphrase or the new one.
    Passwd {
        /// The key store (it must exist).
        #[arg(long)]
        store: PathBuf,
    },
}

/// A secret from the environment variable `var`, or asked for on the terminal without echo.
fn secret_from(var: &str, prompt: &str) -> Result<zeroize::Zeroizing<String>, BoxError> {
    match std::env::var(var) {
        Ok(p) => Ok(zeroize::Zeroizing::new(p)),
        Err(_) => Ok(zeroize::Zeroizing::new(rpassword::prompt_password(prompt)?)),
    }
}

/// `viska-phone store passwd`.
fn store_passwd(path: &std::path::Path) -> Result<(), BoxError> {
    if !path.is_file() {
        return Err(format!("no key store at {}", path.display()).into());
    }
    let old = secret_from(
        "VISKA_STORE_PASSPHRASE",
        &format!("passphrase of {}: ", path.display()),
    )?;
    let store = viska::store::Store::open(path, viska::store::StoreKey::passphrase(old.as_str()))?;
    drop(old);
    let new = match std::env::var("VISKA_STORE_NEW_PASSPHRASE") {
        Ok(p) => zeroize::Zeroizing::new(p),
        Err(_) => {
            let first = zeroize::Zeroizing::new(rpassword::prompt_password("new passphrase: ")?);
            let again =
                zeroize::Zeroizing::new(rpassword::prompt_password("new passphrase again: ")?);
            if *first != *again {
                return Err("the two new passphrases differ; nothing changed".into());
            }
            first
        }
    };
    store.change_key(viska::store::StoreKey::passphrase(new.as_str()))?;
    eprintln!("the passphrase of {} is changed", path.display());
    Ok(())
}

/// The device's key store.
#[derive(Args, Debug, Clone)]
struct StoreArgs {
    /// The key store (an encrypted SQLite file, made on first use): the phone's identity, its
    /// contacts and their trust, call history. Its passphrase comes from the environment
    /// variable VISKA_STORE_PASSPHRASE, or is asked for on the terminal. Without it the phone
    /// has a fresh identity each run and remembers nothing.
    #[arg(long)]
    store: Option<std::path::PathBuf>,
}

impl StoreArgs {
    fn open(&self) -> Result<Option<viska::store::Store>, BoxError> {
        let Some(path) = &self.store else {
            return Ok(None);
        };
        let passphrase = secret_from(
            "VISKA_STORE_PASSPHRASE",
            &format!("passphrase of {}: ", path.display()),
        )?;
        let store = viska::store::Store::open(
            path,
            viska::store::StoreKey::passphrase(passphrase.as_str()),
        )?;
        Ok(Some(store))
    }
}

#[derive(Args, Debug, Clone)]
struct MediaArgs {
    /// Play this WAV file into the call instead of the microphone.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Write what the call plays to this WAV file instead of the speaker.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Record the call (both sides mixed) to this Ogg Opus file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Opus bitrate in bits per second.
    #[arg(long, default_value_t = 32_000)]
    bitrate: u32,
    /// Send every frame, also while silent (DTX, on by default, sends a comfort-noise update
    /// every 420 ms instead).
    #[arg(long)]
    no_dtx: bool,
    /// Preferred SFrame cipher suite.
    #[arg(long, value_enum, default_value_t = SuiteArg::AesCtrHmac80)]
    suite: SuiteArg,
    /// Microphone by name (see `devices`); default: the system's default input.
    #[arg(long)]
    input_device: Option<String>,
    /// Speaker by name (see `devices`); default: the system's default output.
    #[arg(long)]
    output_device: Option<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Listen {
            bind,
            auto_answer,
            max_handshakes_per_source,
            store,
            media,
        } => store
            .open()
            .and_then(|store| listen(bind, auto_answer, max_handshakes_per_source, store, media)),
        Cmd::Call {
            addr,
            contact,
            store,
            media,
        } => store
            .open()
            .and_then(|store| call(addr, contact.as_deref(), store, media)),
        Cmd::Store {
            command: StoreCmd::Passwd { store },
        } => store_passwd(&store),
        Cmd::Demo(args) => demo::run(args),
        Cmd::Group {
            relay,
            relay_fingerprint,
            verified,
            media,
        } => group_cli::run(relay, relay_fingerprint, verified, &media),
        Cmd::Devices => devices(),
    };
    if let Err(e) = result {
        eprintln!("viska-phone: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn audio_for(media: &MediaArgs) -> Result<Arc<dyn AudioFactory>, BoxError> {
    if media.input.is_some() || media.output.is_some() {
        return Ok(Arc::new(FileAudio {
            input: media.input.clone(),
            loop_input: false,
            output: media.output.clone(),
        }));
    }
    Ok(Arc::new(viska::phone::DeviceAudio {
        input: media.input_device.clone(),
        output: media.output_device.clone(),
    }))
}

fn devices() -> Result<(), BoxError> {
    let phone =
        Phone::new(PhoneConfig::builder("devices", viska::phone::generate_identity()).build()?)?;
    for d in phone.audio_devices()? {
        println!(
            "{:6} {}{} ({} Hz, {} ch)",
            format!("{:?}", d.direction).to_lowercase(),
            d.name,
            if d.is_default { " [default]" } else { "" },
            d.rate,
            d.channels
        );
    }
    Ok(())
}

fn phone_config(
    name: &str,
    store: Option<viska::store::Store>,
    media: &MediaArgs,
) -> Result<PhoneConfigBuilder, BoxError> {
    let identity = match &store {
        Some(store) => store.identity()?,
        None => viska::phone::generate_identity(),
    };
    let mut config = PhoneConfig::builder(name, identity)
        .suites(media.suite.suites())
        .opus(OpusConfig {
            bitrate_bps: media.bitrate,
            dtx: !media.no_dtx,
            ..OpusConfig::default()
        })
        .audio(audio_for(media)?);
    if let Some(record) = &media.record {
        config = config.recording(record);
    }
    if let Some(store) = store {
        config = config.store(store);
    }
    Ok(config)
}

/// Prints call events for a person at a terminal.
struct Printer;

impl CallListener for Printer {
    fn on_event(&self, _call: CallId, update: CallUpdate) {
        match update {
            CallUpdate::StateChanged(state) => eprintln!("* call: {state:?}"),
            CallUpdate::KeysReady { sas, trust } => eprintln!(
                "* end-to-end keys ready ({trust:?}); compare this code with your peer: {sas}"
            ),
            CallUpdate::Dtmf {
                event, duration_ms, ..
            } => eprintln!("* DTMF {} ({duration_ms} ms)", event.to_char()),
            CallUpdate::Data { data, .. } => {
                eprintln!("* call data: {}", String::from_utf8_lossy(&data));
            }
            CallUpdate::PeerMuted { muted, .. } => eprintln!("* peer muted: {muted}"),
            CallUpdate::PeerHold { on_hold, .. } => eprintln!("* peer on hold: {on_hold}"),
            CallUpdate::Security(event) => eprintln!("! security: {event:?}"),
            CallUpdate::Audio(event) => eprintln!("* audio: {event:?}"),
            CallUpdate::TrustChanged(trust) => eprintln!("* trust: {trust:?}"),
            _ => {}
        }
    }
}

/// What the terminal thread is told about: a line typed, the end of typed input, a call.
enum Event {
    /// A line from standard input.
    Line(String),
    /// Standard input is closed: no more commands will come.
    StdinClosed,
    /// An incoming call, its terminal listener already set.
    Call(Box<(CallHandle, CallerInfo)>),
}

/// Whether the terminal goes on after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Quit,
}

struct Incoming {
    events: mpsc::Sender<Event>,
}

impl PhoneListener for Incoming {
    fn on_event(&self, event: PhoneEvent) {
        match event {
            PhoneEvent::IncomingCall { call, caller } => {
                // Keys are ready before the phone rings: the listener is told the SAS at once.
                call.set_listener(Arc::new(Printer));
                // Hand the call to the terminal thread.
                let _ = self.events.send(Event::Call(Box::new((call, caller))));
            }
            PhoneEvent::Security {
                source,
                event,
                suppressed,
            } => {
                eprintln!("! security from {source}: {event:?} ({suppressed} more not shown)");
            }
            PhoneEvent::MissedCall { caller, why } => eprintln!(
                "* missed call from {} (identity {}): {why:?}",
                caller.remote_addr,
                caller.identity.fingerprint()
            ),
            _ => {}
        }
    }
}

fn listen(
    bind: SocketAddr,
    auto_answer: bool,
    per_source: u16,
    store: Option<viska::store::Store>,
    media: MediaArgs,
) -> Result<(), BoxError> {
    let per_source = usize::from(per_source);
    let config = phone_config("listen", store, &media)?
        .max_handshakes_per_source(per_source)
        // One source may hold every place, but not more.
        .max_handshakes(per_source.max(16))
        .build()?;
    let phone = Phone::new(config)?;
    eprintln!("identity fingerprint: {}", phone.identity().fingerprint());
    let (tx, events) = mpsc::channel();
    phone.set_listener(Arc::new(Incoming { events: tx.clone() }));
    let addr = phone.listen(bind)?;
    eprintln!("listening on {addr}");
    read_stdin(tx);
    let mut terminal = Terminal::new(events);
    // Nothing a caller does (cancelling while it rings, hanging up at once) ends the listener:
    // errors of one call are reported and the next call is waited for.
    while let Some((call, caller)) = terminal.next_call() {
        eprintln!(
            "* incoming call from {} ({:?}), identity {}",
            caller.remote_addr,
            caller.trust,
            caller.identity.fingerprint()
        );
        if auto_answer {
            if let Err(e) = call.answer() {
                eprintln!("! answer: {e}");
            }
        } else {
            eprintln!("  type 'answer' or 'reject'");
        }
        if terminal.interact(&call) == Next::Quit {
            break;
        }
    }
    // Calls still waiting are hung up and every audio file finished before the process ends.
    phone.shutdown();
    Ok(())
}

fn call(
    addr: SocketAddr,
    contact: Option<&str>,
    store: Option<viska::store::Store>,
    media: MediaArgs,
) -> Result<(), BoxError> {
    let phone = Phone::new(phone_config("call", store, &media)?.build()?)?;
    eprintln!("identity fingerprint: {}", phone.identity().fingerprint());
    let call = match contact {
        Some(contact) => phone.call_contact(contact, addr)?,
        None => phone.call(addr)?,
    };
    call.set_listener(Arc::new(Printer));
    let (tx, events) = mpsc::channel();
    read_stdin(tx);
    Terminal::new(events).interact(&call);
    // The call's WAV output and recording are finished before the process ends.
    phone.shutdown();
    Ok(())
}

/// Sends each line of standard input to `events`, then [`Event::StdinClosed`].
fn read_stdin(events: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if events.send(Event::Line(line)).is_err() {
                return;
            }
        }
        let _ = events.send(Event::StdinClosed);
    });
}

const HELP: &str = "commands: answer, reject, hangup, hold, resume, mute, unmute, dtmf DIGITS, \
                    data TEXT, input [DEVICE], output [DEVICE], verify, stats, quit";

/// Commands that act on a call: typed while there is none, they are dropped, not kept for the
/// next call (a `hangup` typed too late must not reject the next caller).
const CALL_COMMANDS: &[&str] = &[
    "answer", "reject", "hangup", "hold", "resume", "mute", "unmute", "dtmf", "data", "input",
    "output", "verify", "stats",
];

/// How often a call's end is checked while no input arrives.
const END_POLL: Duration = Duration::from_millis(100);

/// How long `quit` waits for the call to end after hanging up: the peer is told, the call's
/// audio files are finished. A peer that does not answer is cut off when the phone stops.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// The person at the terminal: their typed lines and the incoming calls, in arrival order.
struct Terminal {
    events: mpsc::Receiver<Event>,
    /// Calls that came in while another call was on; they are taken in turn.
    waiting: std::collections::VecDeque<(CallHandle, CallerInfo)>,
}

impl Terminal {
    fn new(events: mpsc::Receiver<Event>) -> Self {
        Self {
            events,
            waiting: std::collections::VecDeque::new(),
        }
    }

    /// Waits for the next call, running the commands typed meanwhile; `None` once the user
    /// typed `quit` (or nothing can bring a call any more).
    fn next_call(&mut self) -> Option<(CallHandle, CallerInfo)> {
        if let Some(call) = self.waiting.pop_front() {
            return Some(call);
        }
        loop {
            match self.events.recv().ok()? {
                Event::Call(call) => return Some(*call),
                Event::Line(line) => {
                    if idle_command(&line) == Next::Quit {
                        return None;
                    }
                }
                // Closed input (a service, `< /dev/null`) does not stop a listener.
                Event::StdinClosed => {}
            }
        }
    }

    /// Runs terminal commands against `call` until it ends, or until the user typed `quit`
    /// (then the call is hung up and its end awaited, bounded).
    fn interact(&mut self, call: &CallHandle) -> Next {
        eprintln!("{HELP}");
        while !call.is_ended() {
            match self.events.recv_timeout(END_POLL) {
                Ok(Event::Line(line)) => {
                    if call_command(call, &line) == Next::Quit {
                        let _ = call.hangup();
                        if call.wait_ended(QUIT_GRACE) {
                            eprintln!("* call ended: {:?}", call.state());
                        } else {
                            eprintln!("! the call did not end in time; stopping anyway");
                        }
                        return Next::Quit;
                    }
                }
                Ok(Event::Call(other)) => {
                    eprintln!(
                        "* another call from {} waits until this one ends",
                        other.1.remote_addr
                    );
                    self.waiting.push_back(*other);
                }
                Ok(Event::StdinClosed) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                // No input of any kind can come any more: only the call's end is left to
                // wait for (a blocking wait, not a loop on a closed channel).
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    while !call.wait_ended(Duration::from_secs(1)) {}
                }
            }
        }
        eprintln!("* call ended: {:?}", call.state());
        Next::Continue
    }
}

/// A line typed while there is no call: `quit` stops, call commands are dropped.
fn idle_command(line: &str) -> Next {
    let verb = line.split_whitespace().next().unwrap_or_default();
    match verb {
        "" => {}
        "quit" => return Next::Quit,
        _ if CALL_COMMANDS.contains(&verb) => eprintln!("no call: '{verb}' ignored"),
        _ => eprintln!("{HELP}"),
    }
    Next::Continue
}

/// Runs one typed line against `call`; errors are printed, never fatal.
fn call_command(call: &CallHandle, line: &str) -> Next {
    let mut words = line.trim().splitn(2, ' ');
    let verb = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default();
    let result = match verb {
        "" => Ok(()),
        "answer" => call.answer(),
        "reject" => call.reject(),
        "hangup" => call.hangup(),
        "hold" => call.hold(),
        "resume" => call.resume(),
        "mute" => call.mute(true),
        "unmute" => call.mute(false),
        "dtmf" => call.send_dtmf(rest),
        "data" => call.send_data(rest.as_bytes().to_vec()),
        // Mid-call device switch (no name: the default device); `devices` lists names.
        "input" => call.switch_input_device(Some(rest).filter(|r| !r.is_empty())),
        "output" => call.switch_output_device(Some(rest).filter(|r| !r.is_empty())),
        "verify" => match call.sas() {
            // Shown, and the peer marked verified: typing `verify` is the user saying the
            // peer read out the same code.
            Some(sas) => {
                eprintln!("SAS: {sas} — the same code on both ends: the call is not intercepted");
                call.mark_verified().map(|()| {
                    eprintln!("* peer marked verified (for this call and later ones)");
                })
            }
            None => {
                eprintln!("keys are not ready yet");
                Ok(())
            }
        },
        "stats" => {
            let snap = call.snapshot();
            eprintln!("trust: {:?}, suite: {:?}", snap.trust, snap.suite);
            eprintln!("{:#?}", snap.stats);
            eprintln!("estimated MOS: {:.2}", snap.stats.estimate_mos(40.0));
            Ok(())
        }
        "quit" => return Next::Quit,
        _ => {
            eprintln!("{HELP}");
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("! {e}");
    }
    Next::Continue
}

/// How a demo phone reaches the other: its QUIC settings and the impairment of what it sends.
pub(crate) struct DemoLink {
    pub(crate) transport: viska::TransportConfig,
    pub(crate) impairment: Option<ImpairmentConfig>,
}

/// Identity for the demo's two phones and the measurement hooks.
pub(crate) fn demo_phone(
    name: &str,
    suite: SuiteArg,
    opus: OpusConfig,
    audio: FileAudio,
    link: DemoLink,
    probe: Option<Arc<LatencyProbe>>,
    realtime: bool,
) -> Result<Phone, BoxError> {
    let DemoLink {
        transport,
        impairment,
    } = link;
    let mut config = PhoneConfig::builder(name, viska::phone::generate_identity())
        .suites(suite.suites())
        .transport(transport)
        .opus(opus)
        .audio(Arc::new(audio))
        .realtime(realtime);
    if let Some(probe) = probe {
        config = config.latency_probe(probe);
    }
    if let Some(impairment) = impairment {
        config = config.impairment(impairment);
    }
    Ok(Phone::new(config.build()?)?)
}
