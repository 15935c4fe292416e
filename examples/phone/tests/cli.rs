//! The `viska-phone` binary as a person uses it: a listener and a caller in two processes,
//! commands typed on the caller's terminal.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_viska-phone")
}

#[test]
fn listen_and_call_with_terminal_commands() {
    let dir = std::env::temp_dir().join(format!("viska-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let heard = dir.join("heard.wav");
    let speech = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/speech.wav");

    let mut listener = Command::new(exe())
        .args([
            "listen",
            "--bind",
            "127.0.0.1:0",
            "--auto-answer",
            "--output",
        ])
        .arg(&heard)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listener");
    let mut lines = BufReader::new(listener.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines.next().expect("listener output").expect("line");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.trim().to_owned();
        }
    };
    // Keep draining the listener's stderr; collect it for the assertions.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let mut caller = Command::new(exe())
        .args(["call", &addr, "--input", speech])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("caller");
    let mut stdin = caller.stdin.take().expect("stdin");
    std::thread::sleep(Duration::from_millis(1500));
    for cmd in [
        "verify",
        "dtmf 42#",
        "data ticket 4711",
        "hold",
        "resume",
        "stats",
    ] {
        writeln!(stdin, "{cmd}").expect("type");
        std::thread::sleep(Duration::from_millis(300));
    }
    writeln!(stdin, "hangup").expect("type");
    let out = caller.wait_with_output().expect("caller exit");
    let caller_err = String::from_utf8_lossy(&out.stderr);

    std::thread::sleep(Duration::from_millis(300));
    let _ = listener.kill();
    let _ = listener.wait();
    let listener_err: Vec<String> = rx.try_iter().collect();
    let listener_err = listener_err.join("\n");

    assert!(caller_err.contains("SAS: "), "caller output:\n{caller_err}");
    // Every typed command was accepted (hold, resume, dtmf, data...): no "! error" line.
    assert!(
        !caller_err.lines().any(|l| l.starts_with("! ")),
        "a command failed:\n{caller_err}"
    );
    assert!(
        caller_err.contains("local_hold: true"),
        "hold took effect:\n{caller_err}"
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
    assert!(
        listener_err.contains("call data: ticket 4711"),
        "listener output:\n{listener_err}"
    );
    // The SAS printed by both ends is the same.
    let sas = |text: &str| {
        text.lines()
            .find_map(|l| l.split("compare this code with your peer: ").nth(1))
            .map(str::to_owned)
    };
    assert!(sas(caller_err.as_ref()).is_some());
    assert_eq!(sas(caller_err.as_ref()), sas(&listener_err));
    // The listener's WAV holds the caller's speech, not silence: speech.wav's RMS is about
    // 2700 and the call carries it for about 3 s (minus the hold); silence or lost audio stays
    // far below 1000.
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
    let _ = std::fs::remove_dir_all(&dir);
}
