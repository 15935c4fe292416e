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
use viska::call::{CallState, SecurityEvent};
use viska::media::codec::OpusConfig;
use viska::netem::ImpairmentConfig;
use viska::phone::{
    AudioEvent, AudioFactory, CallListener, CallerInfo, FileAudio, LatencyProbe, MissedCall,
    PhoneListener,
};
use viska::sframe::CipherSuite;
use viska::{CallHandle, Phone, PhoneConfig};

mod demo;

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
        media: MediaArgs,
    },
    /// Call a listening phone.
    Call {
        /// The callee's address.
        addr: SocketAddr,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Two phones in this process place an encrypted call over loopback QUIC.
    Demo(demo::DemoArgs),
    /// List sound devices.
    Devices,
}

/// Cipher suite names on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum SuiteArg {
    /// ChaCha20-Poly1305 (default).
    Chacha,
    /// AES-128-GCM (RFC 9605 suite 0x0004).
    AesGcm,
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
        }
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
    /// Preferred SFrame cipher suite.
    #[arg(long, value_enum, default_value_t = SuiteArg::Chacha)]
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
            media,
        } => listen(bind, auto_answer, max_handshakes_per_source, media),
        Cmd::Call { addr, media } => call(addr, media),
        Cmd::Demo(args) => demo::run(args),
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
    use viska::media::device::{list_input_devices, list_output_devices};
    for (kind, list) in [
        ("input", list_input_devices()?),
        ("output", list_output_devices()?),
    ] {
        for d in list {
            println!(
                "{kind:6} {}{} ({} Hz, {} ch)",
                d.name,
                if d.is_default { " [default]" } else { "" },
                d.default_rate,
                d.channels
            );
        }
    }
    Ok(())
}

fn phone_config(name: &str, media: &MediaArgs) -> Result<PhoneConfig, BoxError> {
    let mut config = PhoneConfig::new(name, viska::phone::generate_identity());
    config.suites = media.suite.suites();
    config.opus = OpusConfig {
        bitrate_bps: media.bitrate,
        ..OpusConfig::default()
    };
    config.audio = audio_for(media)?;
    config.recording = media.record.clone();
    Ok(config)
}

/// Prints call events for a person at a terminal.
struct Printer;

impl CallListener for Printer {
    fn state_changed(&self, state: CallState) {
        eprintln!("* call: {state:?}");
    }
    fn keys_ready(&self, sas: String) {
        eprintln!("* end-to-end keys ready; compare this code with your peer: {sas}");
    }
    fn dtmf(&self, digit: char, duration_ms: u16) {
        eprintln!("* DTMF {digit} ({duration_ms} ms)");
    }
    fn data(&self, data: Vec<u8>) {
        eprintln!("* call data: {}", String::from_utf8_lossy(&data));
    }
    fn security_event(&self, event: SecurityEvent) {
        eprintln!("! security: {event:?}");
    }
    fn audio_event(&self, event: AudioEvent) {
        eprintln!("* audio: {event:?}");
    }
}

struct Incoming {
    calls: mpsc::Sender<(CallHandle, CallerInfo)>,
}

impl PhoneListener for Incoming {
    fn incoming_call(&self, call: CallHandle, caller: CallerInfo) {
        // Keys are ready before the phone rings: the listener is told the SAS at once.
        call.set_listener(Arc::new(Printer));
        // Never block a listener: hand the call to the terminal thread.
        let _ = self.calls.send((call, caller));
    }
    fn security_event(&self, event: String) {
        eprintln!("! security: {event}");
    }
    fn missed_call(&self, caller: CallerInfo, why: MissedCall) {
        eprintln!(
            "* missed call from {} (identity {}): {why:?}",
            caller.remote_addr,
            caller.identity.fingerprint()
        );
    }
}

fn listen(
    bind: SocketAddr,
    auto_answer: bool,
    per_source: u16,
    media: MediaArgs,
) -> Result<(), BoxError> {
    let mut config = phone_config("listen", &media)?;
    config.max_handshakes_per_source = usize::from(per_source);
    // One source may hold every place, but not more.
    config.max_handshakes = config.max_handshakes.max(config.max_handshakes_per_source);
    let phone = Phone::new(config)?;
    eprintln!("identity fingerprint: {}", phone.identity().fingerprint());
    let (tx, rx) = mpsc::channel();
    phone.set_listener(Arc::new(Incoming { calls: tx }));
    let addr = phone.listen(bind)?;
    eprintln!("listening on {addr}");
    let commands = stdin_lines();
    loop {
        let (call, caller) = rx.recv()?;
        eprintln!(
            "* incoming call from {} ({:?}), identity {}",
            caller.remote_addr,
            caller.trust,
            caller.identity.fingerprint()
        );
        if auto_answer {
            call.answer()?;
        } else {
            eprintln!("  type 'answer' or 'reject'");
        }
        interact(&call, &commands);
    }
}

fn call(addr: SocketAddr, media: MediaArgs) -> Result<(), BoxError> {
    let phone = Phone::new(phone_config("call", &media)?)?;
    eprintln!("identity fingerprint: {}", phone.identity().fingerprint());
    let call = phone.call(addr)?;
    call.set_listener(Arc::new(Printer));
    let commands = stdin_lines();
    interact(&call, &commands);
    Ok(())
}

fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

const HELP: &str = "commands: answer, reject, hangup, hold, resume, mute, unmute, dtmf DIGITS, \
                    data TEXT, input [DEVICE], output [DEVICE], verify, stats, quit";

/// Runs terminal commands against `call` until it ends.
fn interact(call: &CallHandle, commands: &mpsc::Receiver<String>) {
    eprintln!("{HELP}");
    while !call.is_ended() {
        let Ok(line) = commands.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
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
            "verify" => {
                match call.sas() {
                    Some(sas) => eprintln!(
                        "SAS: {sas} — if your peer reads the same code, the call is not intercepted"
                    ),
                    None => eprintln!("keys are not ready yet"),
                }
                Ok(())
            }
            "stats" => {
                let snap = call.snapshot();
                eprintln!("{:#?}", snap.stats);
                eprintln!("estimated MOS: {:.2}", snap.stats.estimate_mos(40.0));
                Ok(())
            }
            "quit" => {
                let _ = call.hangup();
                std::thread::sleep(Duration::from_millis(200));
                std::process::exit(0);
            }
            _ => {
                eprintln!("{HELP}");
                Ok(())
            }
        };
        if let Err(e) = result {
            eprintln!("! {e}");
        }
    }
    eprintln!("* call ended: {:?}", call.state());
}

/// Identity for the demo's two phones and the measurement hooks.
pub(crate) fn demo_phone(
    name: &str,
    suite: SuiteArg,
    bitrate: u32,
    audio: FileAudio,
    impairment: Option<ImpairmentConfig>,
    probe: Arc<LatencyProbe>,
) -> Result<Phone, BoxError> {
    let mut config = PhoneConfig::new(name, viska::phone::generate_identity());
    config.suites = suite.suites();
    config.opus = OpusConfig {
        bitrate_bps: bitrate,
        ..OpusConfig::default()
    };
    config.audio = Arc::new(audio);
    config.impairment = impairment;
    config.latency_probe = Some(probe);
    Ok(Phone::new(config)?)
}
