//! The relay's database at rest, against the real binary and real SQLCipher files: where the
//! key comes from (file, environment, systemd credential, configuration), what happens
//! without one, a wrong key, a plaintext database met with a key, the one-time encryption,
//! key rotation, and that no secret reaches the output, the metrics, the audit export or the
//! raw files.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

const PASSWORD: &str = "vN4#qT9!mZ2@rL7x";

/// The binary with `args`, no key from the environment, `stdin` as its input.
fn run(args: &[&std::ffi::OsStr], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_viska-relay"));
    command
        .args(args)
        .env_remove("VISKA_RELAY_DB_KEY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("USER", "tester")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // A command refused before it reads its input has exited already.
        if let Err(e) = input.write_all(text.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// `--data-dir DIR --db-key-file KEY args…`.
fn with_key(dir: &Path, key: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec![
        os("--data-dir"),
        dir.as_os_str(),
        os("--db-key-file"),
        key.as_os_str(),
    ];
    all.extend(args.iter().map(|a| os(a)));
    run(&all, &[], stdin)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Exit code 2 and a message containing `expected` on stderr.
fn refused(out: Output, expected: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(expected), "wanted {expected:?} in: {err}");
}

/// A new key file (owner-only) made by `db generate-key`.
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    ok(run(
        &[os("db"), os("generate-key"), path.as_os_str()],
        &[],
        None,
    ));
    path
}

fn key_hex(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// The database opened as SQLCipher with the key in `key` (raw key, the file's salt).
fn keyed(dir: &Path, key: &Path) -> Connection {
    let path = dir.join("relay.sqlite3");
    let salt: String = std::fs::read(&path).unwrap()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&format!("PRAGMA key = \"x'{}{salt}'\";", key_hex(key)))
        .unwrap();
    conn
}

/// SHA-256 of every file in `dir`, by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                Sha256::digest(std::fs::read(e.path()).unwrap()).to_vec(),
            )
        })
        .collect();
    out.sort();
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn generated_keys_are_owner_only_and_never_overwritten() {
    let keys = tempfile::tempdir().unwrap();
    let path = key_file(keys.path(), "k");
    assert_eq!(key_hex(&path).len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = run(&[os("db"), os("generate-key"), path.as_os_str()], &[], None);
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn the_database_is_encrypted_and_a_wrong_or_missing_key_is_refused_without_a_change() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "key");
    let data = tempfile::tempdir().unwrap();
    let d = &data.path().join("relay");
    ok(with_key(
        d,
        &key,
        &["user", "add", "alice", "--role", "agent"],
        Some(&format!("{PASSWORD}\n")),
    ));
    ok(with_key(d, &key, &["user", "totp-enroll", "alice"], None));
    let raw = std::fs::read(d.join("relay.sqlite3")).unwrap();
    assert!(!raw.starts_with(b"SQLite format 3"), "no plaintext header");
    assert!(!contains(&raw, b"alice") && !contains(&raw, b"argon2id"));
    assert!(!contains(&raw, b"CREATE TABLE"));

    let before = files(d);
    let other = key_file(keys.path(), "other");
    refused(
        with_key(d, &other, &["user", "list"], None),
        "database key does not match",
    );
    refused(
        with_key(d, &other, &["user", "disable", "alice"], None),
        "database key does not match",
    );
    assert_eq!(files(d), before, "a wrong key changes no file");

    let dir_args = [os("--data-dir"), d.as_os_str(), os("user"), os("list")];
    refused(run(&dir_args, &[], None), "no database key");
    let mut insecure = dir_args.to_vec();
    insecure.push(os("--insecure-unencrypted-db"));
    refused(run(&insecure, &[], None), "is encrypted: give its key");
    refused(
        run(&dir_args, &[("VISKA_RELAY_DB_KEY", "abc")], None),
        "not 64 hex digits",
    );
    assert_eq!(files(d), before);

    // The same key from the environment, a systemd credential, the configuration file.
    let hex = key_hex(&key);
    let listed = ok(run(&dir_args, &[("VISKA_RELAY_DB_KEY", &hex)], None));
    assert!(listed.contains("alice"), "{listed}");
    let creds = tempfile::tempdir().unwrap();
    std::fs::copy(&key, creds.path().join("viska-relay-db-key")).unwrap();
    let listed = ok(run(
        &dir_args,
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
        None,
    ));
    assert!(listed.contains("alice"), "{listed}");
    let config = keys.path().join("relay.toml");
    std::fs::write(
        &config,
        format!("data_dir = {d:?}\ndb_key_file = {key:?}\n"),
    )
    .unwrap();
    let listed = ok(run(
        &[os("--config"), config.as_os_str(), os("user"), os("list")],
        &[],
        None,
    ));
    assert!(listed.contains("alice"), "{listed}");
}

#[cfg(unix)]
#[test]
fn a_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = tempfile::tempdir().unwrap();
    refused(
        with_key(data.path(), &key, &["user", "list"], None),
        "readable by others",
    );
    assert!(!data.path().join("relay.sqlite3").exists());
}

#[test]
fn a_plaintext_database_is_refused_with_a_key_until_it_is_encrypted_once() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "key");
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let plain = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec![
            os("--data-dir"),
            d.as_os_str(),
            os("--insecure-unencrypted-db"),
        ];
        all.extend(args.iter().map(|a| os(a)));
        run(&all, &[], stdin)
    };
    let out = plain(
        &["user", "add", "alice", "--role", "agent"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT encrypted"),
        "the insecure mode is warned about"
    );
    ok(out);
    ok(plain(&["user", "totp-enroll", "alice"], None));
    assert!(
        std::fs::read(d.join("relay.sqlite3"))
            .unwrap()
            .starts_with(b"SQLite format 3")
    );

    refused(with_key(d, &key, &["user", "list"], None), "db encrypt");
    let out = ok(with_key(d, &key, &["db", "encrypt"], None));
    assert!(out.contains("encrypted"), "{out}");
    let raw = std::fs::read(d.join("relay.sqlite3")).unwrap();
    assert!(!raw.starts_with(b"SQLite format 3") && !contains(&raw, b"alice"));
    assert!(!d.join("relay.sqlite3-wal").exists());
    let listed = ok(with_key(d, &key, &["user", "list"], None));
    assert!(
        listed.contains("alice") && listed.contains("yes"),
        "{listed}"
    );
    let verified = ok(with_key(d, &key, &["audit", "verify"], None));
    assert!(
        verified.starts_with("audit log intact: 2 rows"),
        "{verified}"
    );
    refused(plain(&["user", "list"], None), "is encrypted");
    refused(with_key(d, &key, &["db", "encrypt"], None), "is encrypted");
}

/// Starts the relay on `dir` with `key`; its child and the `listening on` line read.
fn start_relay(dir: &Path, key: &Path, extra: &[&str]) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .arg("--db-key-file")
        .arg(key)
        .args(extra)
        .env_remove("VISKA_RELAY_DB_KEY")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the relay stopped: {lines:?}"
        );
        lines.push(line.trim_end().to_string());
        if line.starts_with("listening on ") {
            break;
        }
    }
    if extra.contains(&"--metrics-bind") {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_string());
    }
    (child, lines)
}

fn stop(mut child: std::process::Child) -> String {
    child.kill().unwrap();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn rekeying_moves_to_the_new_key_and_the_old_one_no_longer_opens() {
    let keys = tempfile::tempdir().unwrap();
    let old = key_file(keys.path(), "old");
    let new = key_file(keys.path(), "new");
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    ok(with_key(
        d,
        &old,
        &["user", "add", "alice", "--role", "agent"],
        Some(&format!("{PASSWORD}\n")),
    ));
    // Not while the relay runs.
    let (relay, _) = start_relay(d, &old, &[]);
    let new_arg = new.to_str().unwrap();
    refused(
        with_key(d, &old, &["db", "rekey", "--new-key-file", new_arg], None),
        "stop it first",
    );
    stop(relay);
    refused(
        with_key(d, &new, &["db", "rekey", "--new-key-file", new_arg], None),
        "database key does not match",
    );
    ok(with_key(
        d,
        &old,
        &["db", "rekey", "--new-key-file", new_arg],
        None,
    ));
    refused(
        with_key(d, &old, &["user", "list"], None),
        "database key does not match",
    );
    let listed = ok(with_key(d, &new, &["user", "list"], None));
    assert!(listed.contains("alice"), "{listed}");
    let verified = ok(with_key(d, &new, &["audit", "verify"], None));
    assert!(
        verified.starts_with("audit log intact: 1 rows"),
        "{verified}"
    );
    // The relay starts with the new key only.
    let (relay, lines) = start_relay(d, &new, &[]);
    assert!(lines.iter().any(|l| l.starts_with("fingerprint ")));
    stop(relay);
    let out = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(d)
        .arg("--db-key-file")
        .arg(&old)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database key does not match"));
}

#[test]
fn no_secret_reaches_the_logs_the_metrics_the_audit_export_or_the_raw_files() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "key");
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let mut outputs = Vec::new();
    let mut record = |out: Output| {
        outputs.extend_from_slice(&out.stderr);
        ok(out)
    };
    let added = record(with_key(
        d,
        &key,
        &["user", "add", "alice", "--role", "agent"],
        Some(&format!("{PASSWORD}\n")),
    ));
    // The enrollment prints the secret, on purpose and once: its stdout is not searched.
    let enrolled = record(with_key(d, &key, &["user", "totp-enroll", "alice"], None));
    let base32 = enrolled
        .lines()
        .find_map(|l| l.strip_prefix("secret "))
        .unwrap()
        .to_string();
    let listed = record(with_key(d, &key, &["user", "list"], None));
    let export = record(with_key(d, &key, &["audit", "export"], None));
    let verified = record(with_key(d, &key, &["audit", "verify"], None));
    let (hash, totp): (String, Vec<u8>) = keyed(d, &key)
        .query_row(
            "SELECT hash, totp_secret FROM users WHERE name = 'alice'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "the real hash: {hash}");
    assert!(totp.len() >= 20);
    let (relay, lines) = start_relay(d, &key, &["--metrics-bind", "127.0.0.1:0"]);
    let url = lines
        .last()
        .unwrap()
        .strip_prefix("metrics on http://")
        .unwrap();
    let mut stream = std::net::TcpStream::connect(url.strip_suffix("/metrics").unwrap()).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut metrics = String::new();
    stream.read_to_string(&mut metrics).unwrap();
    assert!(
        metrics.contains("\nviska_relay_database_encrypted 1\n"),
        "{metrics}"
    );
    let logs = stop(relay);
    assert!(
        logs.contains("relay listening"),
        "trace logs were taken: {logs}"
    );

    let mut haystacks: Vec<(String, Vec<u8>)> = vec![
        ("command stderr".into(), outputs),
        ("user add".into(), added.into_bytes()),
        ("user list".into(), listed.into_bytes()),
        ("audit export".into(), export.into_bytes()),
        ("audit verify".into(), verified.into_bytes()),
        ("relay stdout".into(), lines.join("\n").into_bytes()),
        ("relay logs".into(), logs.into_bytes()),
        ("metrics".into(), metrics.into_bytes()),
    ];
    for entry in std::fs::read_dir(d).unwrap() {
        let entry = entry.unwrap();
        haystacks.push((
            entry.file_name().to_string_lossy().to_string(),
            std::fs::read(entry.path()).unwrap(),
        ));
    }
    let totp_hex: String = totp.iter().map(|b| format!("{b:02x}")).collect();
    let phc_hash = hash.rsplit('$').next().unwrap().to_string();
    let key_text = key_hex(&key);
    let needles: [(&str, &[u8]); 7] = [
        ("the TOTP secret in base32", base32.as_bytes()),
        ("the password", PASSWORD.as_bytes()),
        ("the password hash", hash.as_bytes()),
        ("the hash's digest", phc_hash.as_bytes()),
        ("the TOTP secret", &totp),
        ("the TOTP secret in hex", totp_hex.as_bytes()),
        ("the database key", key_text.as_bytes()),
    ];
    for (where_, hay) in &haystacks {
        for (what, needle) in &needles {
            assert!(!contains(hay, needle), "{what} in {where_}");
        }
    }
    assert!(haystacks.iter().any(|(n, _)| n == "relay.sqlite3"));
}
