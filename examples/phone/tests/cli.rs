//! The `viska-phone` binary as a person uses it: a listener and a caller in two processes,
//! commands typed on their terminals; library phones of this process call the listener where a
//! test needs to control the far end precisely.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use viska::call::CallState;
use viska::{CallHandle, Phone, PhoneConfig};

/// How long any one expected event may take: generous for a loaded 2-core machine, and only
/// reached when the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_viska-phone")
}

/// A scratch directory of one test, removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("viska-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running `viska-phone` whose stderr is read line by line as it comes.
struct CliPhone {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far, for assertions and failure messages.
    seen: Vec<String>,
}

impl CliPhone {
    /// Starts `viska-phone ARGS`; `typed` says whether the test types on its stdin (else it is
    /// closed from the start).
    fn spawn(args: &[&str], typed: bool) -> Self {
        Self::spawn_with(args, typed, &[])
    }

    /// [`CliPhone::spawn`] with extra environment variables.
    fn spawn_with(args: &[&str], typed: bool, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(exe())
            .args(args)
            .envs(env.iter().copied())
            .stdin(if typed { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start viska-phone");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// `viska-phone listen --auto-answer` on a loopback port; returns it and its address.
    fn listener(typed: bool, output: &Path) -> (Self, String) {
        let output = output.to_str().expect("utf-8 path");
        let mut phone = Self::spawn(
            &[
                "listen",
                "--bind",
                "127.0.0.1:0",
                "--auto-answer",
                "--output",
                output,
            ],
            typed,
        );
        let line = phone.wait_line(|l| l.starts_with("listening on "));
        let addr = line.trim_start_matches("listening on ").trim().to_owned();
        (phone, addr)
    }

    /// The next stderr line satisfying `pred` (earlier lines are kept in `seen`); fails the
    /// test after [`PATIENCE`].
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("expected line not printed; output:\n{}", self.output()),
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("typed stdin");
        writeln!(stdin, "{line}").expect("type a command");
    }

    /// Everything printed on stderr so far.
    fn output(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// Waits for the process to exit by itself and reads the rest of its output; fails the
    /// test after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The reader thread ends at the end of the pipe.
                while let Ok(line) = self
                    .lines
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// CPU time (user + system) the process has used, from /proc.
    #[cfg(target_os = "linux")]
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc stat");
        // Fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, utime and stime fields 14 and 15, in clock ticks.
        let after_name = stat.rsplit_once(')').expect("stat format").1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| -> u64 {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .expect("stat field")
        };
        // In USER_HZ: 100 per second on x86 and ARM Linux.
        Duration::from_millis((ticks(11) + ticks(12)) * 10)
    }
}

impl Drop for CliPhone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A library phone (no audio device: it sends silence and plays nothing).
fn library_phone(name: &str) -> Phone {
    Phone::new(
        PhoneConfig::builder(name, viska::phone::generate_identity())
            .build()
            .expect("config"),
    )
    .expect("phone")
}

/// Places a call from `phone` to `addr` and waits until it is answered.
fn active_call(phone: &Phone, addr: &str) -> CallHandle {
    let call = phone.call(addr.parse().expect("address")).expect("dial");
    let state = call.wait_for(PATIENCE, |s| {
        matches!(s, CallState::Active { .. }) || s.is_ended()
    });
    assert!(
        matches!(state, CallState::Active { .. }),
        "call not answered: {state:?}"
    );
    call
}

/// The `send_bitrate_bps` of the next `stats` the phone prints.
fn send_bitrate(phone: &mut CliPhone) -> u64 {
    phone.type_line("stats");
    let line = phone.wait_line(|l| l.trim_start().starts_with("send_bitrate_bps: "));
    line.trim()
        .trim_start_matches("send_bitrate_bps: ")
        .trim_end_matches(',')
        .parse()
        .expect("bitrate figure")
}

/// Asks for `stats` until the send rate satisfies `pred` (the phone publishes it once a
/// second); fails the test after [`PATIENCE`].
fn wait_send_bitrate(phone: &mut CliPhone, pred: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rate = send_bitrate(phone);
        if pred(rate) {
            return rate;
        }
        assert!(
            Instant::now() < deadline,
            "send rate stayed {rate}; output:\n{}",
            phone.output()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether the Ogg stream in `bytes` ends with an end-of-stream page, as a finished recording
/// does (a process cut off mid-recording leaves none). Walks the pages from the start.
fn ogg_finished(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    let mut last_flags = None;
    while let Some(header) = bytes.get(at..at + 27) {
        if header.get(..4) != Some(b"OggS".as_slice()) {
            return false;
        }
        let flags = header.get(5).copied().unwrap_or_default();
        let segments = usize::from(header.get(26).copied().unwrap_or_default());
        let Some(table) = bytes.get(at + 27..at + 27 + segments) else {
            return false;
        };
        let body: usize = table.iter().map(|&b| usize::from(b)).sum();
        at += 27 + segments + body;
        last_flags = Some(flags);
    }
    at == bytes.len() && last_flags.is_some_and(|f| f & 0x04 != 0)
}

#[test]
fn listen_and_call_with_terminal_commands() {
    let dir = Scratch::new("terminal");
    let heard = dir.file("heard.wav");
    let caller_heard = dir.file("caller-heard.wav");
    let recording = dir.file("call.ogg");
    let speech = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/speech.wav");

    let (mut listener, addr) = CliPhone::listener(true, &heard);
    let mut caller = CliPhone::spawn(
        &[
            "call",
            &addr,
            "--input",
            speech,
            "--output",
            caller_heard.to_str().expect("utf-8 path"),
            "--record",
            recording.to_str().expect("utf-8 path"),
        ],
        true,
    );
    caller.wait_line(|l| l.starts_with("* call: Active"));
    // Some speech before the commands, for the check of what the listener heard.
    std::thread::sleep(Duration::from_millis(1500));

    // `verify`: the SAS is shown and the callee is marked verified from then on.
    caller.type_line("stats");
    caller.wait_line(|l| l.starts_with("trust: Some(Unverified)"));
    caller.type_line("verify");
    caller.wait_line(|l| l.starts_with("SAS: "));
    caller.wait_line(|l| l.contains("peer marked verified"));
    caller.type_line("dtmf 42#");
    listener.wait_line(|l| l.contains("DTMF #"));
    caller.type_line("data ticket 4711");
    listener.wait_line(|l| l.contains("call data: ticket 4711"));
    caller.type_line("stats");
    caller.wait_line(|l| l.starts_with("trust: Some(Verified)"));
    caller.type_line("hold");
    caller.wait_line(|l| l.starts_with("* call: Active") && l.contains("local_hold: true"));
    caller.type_line("resume");
    caller.wait_line(|l| l.starts_with("* call: Active") && l.contains("local_hold: false"));

    // Muted, the caller sends nothing: its measured send rate falls to 0, and comes back
    // once unmuted.
    wait_send_bitrate(&mut caller, |rate| rate > 0);
    caller.type_line("mute");
    caller.wait_line(|l| l.starts_with("* call: Active") && l.contains("muted: true"));
    wait_send_bitrate(&mut caller, |rate| rate == 0);
    caller.type_line("unmute");
    caller.wait_line(|l| l.starts_with("* call: Active") && l.contains("muted: false"));
    let rate = wait_send_bitrate(&mut caller, |rate| rate > 0);
    println!("send rate after unmute: {rate} bit/s");

    // `quit` hangs up, lets the call finish its files and exits cleanly.
    caller.type_line("quit");
    let status = caller.wait_exit(PATIENCE);
    let caller_err = caller.output();
    assert!(status.success(), "quit exit {status:?}:\n{caller_err}");
    listener.wait_line(|l| l.starts_with("* call ended: Ended"));
    // An idle listener quits at once, cleanly.
    listener.type_line("quit");
    let status = listener.wait_exit(Duration::from_secs(5));
    let listener_err = listener.output();
    assert!(
        status.success(),
        "listener exit {status:?}:\n{listener_err}"
    );

    // Every typed command was accepted (hold, resume, dtmf, data...): no "! error" line.
    assert!(
        !caller_err.lines().any(|l| l.starts_with("! ")),
        "a command failed:\n{caller_err}"
    );
    assert!(
        caller_err.contains("call ended"),
        "caller output:\n{caller_err}"
    );
    assert!(
        caller_err.contains("packets_received"),
        "stats printed:\n{caller_err}"
    );
    for digit in ["DTMF 4", "DTMF 2", "DTMF #"] {
        assert!(
            listener_err.contains(digit),
            "listener output:\n{listener_err}"
        );
    }
    // The SAS printed by both ends is the same.
    let sas = |text: &str| {
        text.lines()
            .find_map(|l| l.split("compare this code with your peer: ").nth(1))
            .map(str::to_owned)
    };
    assert!(sas(&caller_err).is_some());
    assert_eq!(sas(&caller_err), sas(&listener_err));

    // The caller's files were finished before it exited: its WAV opens, its recording ends
    // with an end-of-stream page.
    let caller_wav = viska::media::wav::WavSource::open(&caller_heard).expect("caller's WAV");
    assert!(
        caller_wav.samples().len() > 48_000,
        "caller's WAV covers the call ({} samples)",
        caller_wav.samples().len()
    );
    let ogg = std::fs::read(&recording).expect("recording");
    assert!(
        ogg_finished(&ogg),
        "recording not finished ({} bytes)",
        ogg.len()
    );

    // The listener's WAV holds the caller's speech, not silence: speech.wav's RMS is about
    // 2700 and the call carries it for a few seconds (minus the hold and the mute); silence
    // or lost audio stays far below 1000.
    let heard_wav = viska::media::wav::WavSource::open(&heard).expect("listener wrote heard.wav");
    let samples = heard_wav.samples();
    assert!(
        samples.len() > 48_000,
        "listener heard at least a second ({} samples)",
        samples.len()
    );
    let energy = samples
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / samples.len() as f64;
    let rms = energy.sqrt();
    println!("heard.wav: {} samples, RMS {rms:.0}", samples.len());
    assert!(
        rms > 1000.0,
        "heard audio RMS {rms:.0}: silence or lost audio"
    );
}

/// A caller that gives up while the listener is busy must not end the listener: the call it
/// left behind has ended by the time the listener turns to it, and answering it fails.
#[test]
fn listener_survives_a_caller_that_gave_up() {
    let dir = Scratch::new("gave-up");
    let (mut listener, addr) = CliPhone::listener(true, &dir.file("heard.wav"));

    let first_phone = library_phone("first");
    let first = active_call(&first_phone, &addr);
    // A second caller rings while the listener is in the first call, then gives up.
    let second_phone = library_phone("second");
    let second = second_phone
        .call(addr.parse().expect("address"))
        .expect("dial");
    let state = second.wait_for(PATIENCE, |s| *s == CallState::Alerting || s.is_ended());
    assert_eq!(state, CallState::Alerting, "{}", listener.output());
    second.hangup().expect("cancel");
    assert!(second.wait_ended(PATIENCE));
    listener.wait_line(|l| l.starts_with("* call: Ended"));
    // The first call ends: the listener turns to the second, which is over.
    first.hangup().expect("hang up");
    assert!(first.wait_ended(PATIENCE));
    listener.wait_line(|l| l.starts_with("! answer: "));

    // The listener still answers the next caller.
    let third_phone = library_phone("third");
    let third = active_call(&third_phone, &addr);
    assert!(listener.is_running(), "{}", listener.output());
    third.hangup().expect("hang up");
    assert!(third.wait_ended(PATIENCE));

    listener.type_line("quit");
    let status = listener.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}: {}", listener.output());
}

/// Commands typed while no call is on are not kept for the next call: a late `hangup` must
/// not reject the next caller. `quit` stops an idle listener.
#[test]
fn commands_typed_between_calls_do_not_reach_the_next_call() {
    let dir = Scratch::new("idle");
    let (mut listener, addr) = CliPhone::listener(true, &dir.file("heard.wav"));
    listener.type_line("hangup");
    listener.wait_line(|l| l.starts_with("no call"));

    let phone = library_phone("caller");
    let call = active_call(&phone, &addr);
    // Still on a moment later: nothing queued hangs it up.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        matches!(call.state(), CallState::Active { .. }),
        "{:?}: {}",
        call.state(),
        listener.output()
    );
    call.hangup().expect("hang up");
    assert!(call.wait_ended(PATIENCE));
    listener.wait_line(|l| l.starts_with("* call ended"));

    let asked = Instant::now();
    listener.type_line("quit");
    let status = listener.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}: {}", listener.output());
    println!("idle listener quit in {:?}", asked.elapsed());
}

/// With standard input closed, a listener keeps answering calls and neither end spins
/// waiting for commands that cannot come.
#[cfg(target_os = "linux")]
#[test]
fn closed_input_neither_stops_nor_spins() {
    let dir = Scratch::new("closed-input");
    let (mut listener, addr) = CliPhone::listener(false, &dir.file("heard.wav"));
    let caller_heard = dir.file("caller-heard.wav");
    let mut caller = CliPhone::spawn(
        &[
            "call",
            &addr,
            "--output",
            caller_heard.to_str().expect("utf-8 path"),
        ],
        false,
    );
    caller.wait_line(|l| l.starts_with("* call: Active"));
    listener.wait_line(|l| l.starts_with("* call: Active"));

    let window = Duration::from_secs(1);
    let before = (listener.cpu_time(), caller.cpu_time(), Instant::now());
    std::thread::sleep(window);
    let wall = before.2.elapsed();
    let used = (
        listener.cpu_time().saturating_sub(before.0),
        caller.cpu_time().saturating_sub(before.1),
    );
    println!(
        "CPU over {wall:?}: listener {:?}, caller {:?}",
        used.0, used.1
    );
    // A call costs a few percent of a core; a loop on the closed input takes all it gets.
    for (who, cpu) in [("listener", used.0), ("caller", used.1)] {
        assert!(
            cpu < wall / 2,
            "{who} used {cpu:?} of CPU in {wall:?}: busy loop"
        );
    }
    assert!(caller.is_running() && listener.is_running());
}

/// A bad number for a demo flag is a usage error, not a panic.
#[test]
fn demo_refuses_out_of_range_numbers() {
    for args in [
        ["--seconds", "inf"],
        ["--seconds", "1e20"],
        ["--seconds", "NaN"],
        ["--seconds", "-1"],
        ["--seconds", "86401"],
        ["--loss", "101"],
        ["--loss", "NaN"],
        ["--loss", "-5"],
        ["--delay", "99999999999"],
        ["--jitter", "3600001"],
    ] {
        let out = Command::new(exe())
            .arg("demo")
            .arg(args.join("="))
            .stdin(Stdio::null())
            .output()
            .expect("run demo");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(args[0]), "{args:?} named: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `--store` and `--contact`: a caller whose key store pins the listener on the first call,
/// remembers the user's verification into the next process, and keeps its own identity; a
/// wrong passphrase is refused with a clear error.
#[test]
fn the_key_store_keeps_identity_and_trust_across_runs() {
    let dir = Scratch::new("store");
    let heard = dir.file("heard.wav");
    let store = dir.file("caller.db");
    let store = store.to_str().expect("utf-8 path");
    let pass = [("VISKA_STORE_PASSPHRASE", "ochre falcon 5512 drifts")];
    let (mut listener, addr) = CliPhone::listener(true, &heard);
    let mut fingerprints = Vec::new();
    for (round, trust) in [(1, "Unverified"), (2, "Verified")] {
        let caller_heard = dir.file(&format!("caller-heard-{round}.wav"));
        let mut caller = CliPhone::spawn_with(
            &[
                "call",
                &addr,
                "--contact",
                "front-desk",
                "--store",
                store,
                "--input",
                concat!(env!("CARGO_MANIFEST_DIR"), "/assets/speech.wav"),
                "--output",
                caller_heard.to_str().expect("utf-8 path"),
            ],
            true,
            &pass,
        );
        let line = caller.wait_line(|l| l.starts_with("identity fingerprint: "));
        fingerprints.push(line);
        caller.wait_line(|l| l.contains(&format!("end-to-end keys ready ({trust})")));
        caller.wait_line(|l| l.starts_with("* call: Active"));
        if round == 1 {
            caller.type_line("verify");
            caller.wait_line(|l| l.contains("peer marked verified"));
        }
        caller.type_line("quit");
        let status = caller.wait_exit(PATIENCE);
        assert!(
            status.success(),
            "caller exit {status:?}:\n{}",
            caller.output()
        );
        listener.wait_line(|l| l.starts_with("* call ended: Ended"));
    }
    assert_eq!(
        fingerprints[0], fingerprints[1],
        "the same identity from the store"
    );
    let mut wrong = CliPhone::spawn_with(
        &["call", &addr, "--store", store],
        false,
        &[("VISKA_STORE_PASSPHRASE", "not the passphrase")],
    );
    let status = wrong.wait_exit(PATIENCE);
    let output = wrong.output();
    assert!(
        !status.success(),
        "opened with a wrong passphrase:\n{output}"
    );
    assert!(output.contains("wrong key"), "{output}");
    listener.type_line("quit");
    assert!(listener.wait_exit(Duration::from_secs(5)).success());
}

/// `store passwd`: the passphrase changes when the current one is right and the new one is
/// strong; the old one is then refused and the new one opens the same identity. A weak new
/// passphrase, a wrong current one and a missing store change nothing.
#[test]
fn store_passwd_changes_the_passphrase() {
    use viska::store::{Store, StoreError, StoreKey};
    let dir = Scratch::new("passwd");
    let path = dir.file("phone.db");
    let store = path.to_str().expect("utf-8 path");
    const OLD: &str = "ochre falcon 5512 drifts";
    const NEW: &str = "basalt meadow 0419 hums";
    let id = Store::open(&path, StoreKey::passphrase(OLD))
        .and_then(|s| s.identity())
        .expect("a store")
        .public();
    let passwd = |old: &str, new: &str, store: &str| {
        let mut run = CliPhone::spawn_with(
            &["store", "passwd", "--store", store],
            false,
            &[
                ("VISKA_STORE_PASSPHRASE", old),
                ("VISKA_STORE_NEW_PASSPHRASE", new),
            ],
        );
        let status = run.wait_exit(PATIENCE);
        (status.success(), run.output())
    };
    let (ok, output) = passwd(OLD, "password1234", store);
    assert!(!ok && output.contains("passphrase refused"), "{output}");
    let (ok, output) = passwd("not the passphrase", NEW, store);
    assert!(!ok && output.contains("wrong key"), "{output}");
    let missing = dir.file("missing.db");
    let (ok, output) = passwd(OLD, NEW, missing.to_str().expect("utf-8 path"));
    assert!(!ok && output.contains("no key store"), "{output}");
    assert!(!missing.exists(), "no store made");
    let still = Store::open(&path, StoreKey::passphrase(OLD)).expect("the old passphrase still");
    assert_eq!(still.identity().expect("identity").public(), id);
    drop(still);

    let (ok, output) = passwd(OLD, NEW, store);
    assert!(ok && output.contains("is changed"), "{output}");
    assert!(matches!(
        Store::open(&path, StoreKey::passphrase(OLD)),
        Err(StoreError::WrongKey)
    ));
    let reopened = Store::open(&path, StoreKey::passphrase(NEW)).expect("the new passphrase");
    assert_eq!(reopened.identity().expect("identity").public(), id);
}
