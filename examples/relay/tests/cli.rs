//! The administrative command line against real data directories: accounts (password from
//! stdin, the policy), TOTP enrollment, `audit verify` on an intact log and on every kind of
//! damage, `audit export`, encrypted backup and restore. Every data directory's database is
//! encrypted with this process's test key (given as `VISKA_RELAY_DB_KEY`); the tests that
//! damage it open it with that key. `tests/storage.rs` covers the key options themselves.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

const PASSWORD: &str = "vN4#qT9!mZ2@rL7x";
const PASSPHRASE: &str = "quartz lantern 71 drifting over harbours";

/// This process's database key, 64 hex digits (random per run).
fn key_hex() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        Sha256::digest(seed.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

fn relay(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("VISKA_RELAY_DB_KEY", key_hex())
        .env("VISKA_RELAY_BACKUP_PASSPHRASE", PASSPHRASE)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("USER", "tester")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // A command refused before it reads its input (a bad argument) has
        // exited already: its closed pipe is not the test's failure.
        if let Err(e) = input.write_all(text.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = relay(dir, args, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A data directory with a few accounts and changes: a log of 7 rows.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, role) in [
        ("alice", "agent"),
        ("bob", "supervisor"),
        ("carol", "admin"),
    ] {
        ok(
            d,
            &["user", "add", name, "--role", role],
            Some(&format!("{PASSWORD}\n")),
        );
    }
    ok(d, &["user", "role", "alice", "supervisor"], None);
    ok(d, &["user", "disable", "bob"], None);
    ok(d, &["user", "enable", "bob"], None);
    ok(d, &["user", "totp-enroll", "carol"], None);
    dir
}

/// The data directory's database, opened with the test key (SQLCipher's raw key with the
/// file's own salt, its first 16 bytes).
fn db(dir: &Path) -> Connection {
    let path = dir.join("relay.sqlite3");
    let salt: String = std::fs::read(&path).unwrap()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&format!("PRAGMA key = \"x'{}{salt}'\";", key_hex()))
        .unwrap();
    conn
}

/// `audit verify`: exit code and output.
fn verify(dir: &Path) -> (i32, String) {
    let out = relay(dir, &["audit", "verify"], None);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// The row hash as docs/operations.md specifies it, written again here from the text.
fn row_hash(seq: u64, time_ms: i64, texts: [&str; 5], prev_hash: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"viska audit v1");
    h.update(seq.to_be_bytes());
    h.update(time_ms.to_be_bytes());
    for t in texts {
        h.update((t.len() as u32).to_be_bytes());
        h.update(t.as_bytes());
    }
    h.update(prev_hash);
    h.finalize().to_vec()
}

/// Recomputes every hash of the chain, as an attacker without the audit key could.
fn rechain(conn: &Connection) {
    let rows: Vec<(u64, i64, String, String, String, String, String)> = {
        let mut stmt = conn
            .prepare("SELECT seq, time_ms, kind, actor, subject, source, details FROM audit ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    let mut prev = vec![0u8; 32];
    for (seq, time, kind, actor, subject, source, details) in rows {
        let hash = row_hash(
            seq,
            time,
            [&kind, &actor, &subject, &source, &details],
            &prev,
        );
        conn.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![prev, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
}

#[test]
fn accounts_are_added_with_a_password_from_stdin_and_weak_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(
        d,
        &["user", "add", "Alice", "--role", "agent"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.contains("added Alice (agent)"), "{out}");
    let weak = relay(
        d,
        &["user", "add", "bob", "--role", "agent"],
        Some("password1234\n"),
    );
    assert_eq!(weak.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("password refused"));
    let named = relay(
        d,
        &["user", "add", "margaretha", "--role", "agent"],
        Some("Margaretha-2024!x\n"),
    );
    assert_eq!(
        named.status.code(),
        Some(2),
        "a password built from the name"
    );
    let twice = relay(
        d,
        &["user", "add", "alice", "--role", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(twice.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("exists already"));
    let bad_role = relay(
        d,
        &["user", "add", "dave", "--role", "root"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_ne!(bad_role.status.code(), Some(0));
    let list = ok(d, &["user", "list"], None);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[1].starts_with("alice ")
            && lines[1].contains("agent")
            && lines[1].contains("enabled")
    );
    ok(
        d,
        &["user", "passwd", "alice"],
        Some("another Long passphrase 77\n"),
    );
    let missing = relay(
        d,
        &["user", "passwd", "nobody"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account nobody"));
    // The hash is Argon2id with the login parameters; the password itself is nowhere.
    let hash: String = db(d)
        .query_row("SELECT hash FROM users WHERE name = 'alice'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
}

#[test]
fn totp_enrollment_prints_an_otpauth_uri_and_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &["user", "add", "alice", "--role", "agent"],
        Some(&format!("{PASSWORD}\n")),
    );
    let out = ok(d, &["user", "totp-enroll", "alice"], None);
    let mut lines = out.lines();
    let uri = lines.next().unwrap();
    let secret = lines.next().unwrap().strip_prefix("secret ").unwrap();
    assert_eq!(secret.len(), 32, "20 bytes in base32");
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    );
    assert_eq!(
        uri,
        format!(
            "otpauth://totp/Viska%20relay:alice?secret={secret}&issuer=Viska%20relay&algorithm=SHA1&digits=6&period=30"
        )
    );
    let list = ok(d, &["user", "list"], None);
    assert!(list.lines().nth(1).unwrap().contains(" yes "), "{list}");
}

#[test]
fn an_intact_log_verifies_and_exports_as_json_lines() {
    let dir = populated();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("audit log intact: 7 rows, 7 signed checkpoints"),
        "{out}"
    );
    let export = ok(dir.path(), &["audit", "export"], None);
    let rows: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 7);
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "user_add",
            "user_add",
            "user_add",
            "user_role",
            "user_disable",
            "user_enable",
            "totp_enroll"
        ]
    );
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        assert_eq!(r["actor"], "cli:tester");
        assert_eq!(r["hash"].as_str().unwrap().len(), 64);
    }
    assert_eq!(rows[1]["prev_hash"], rows[0]["hash"]);
    assert_eq!(
        rows[0]["details"]["role"], "agent",
        "details are JSON objects"
    );
    assert!(
        !export.contains(PASSWORD) && !export.contains("argon2"),
        "no secrets"
    );
}

/// Damages a populated log with `damage`; `audit verify` must exit 1 naming `expected`.
fn damaged(damage: impl FnOnce(&Connection), expected: &str) {
    let dir = populated();
    let conn = db(dir.path());
    damage(&conn);
    drop(conn);
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(expected), "expected {expected:?} in {out:?}");
}

#[test]
fn a_changed_row_is_named() {
    damaged(
        |c| {
            c.execute(
                "UPDATE audit SET details = '{\"role\":\"admin\"}' WHERE seq = 4",
                [],
            )
            .unwrap();
        },
        "row 4: its contents do not match its hash",
    );
}

#[test]
fn a_deleted_row_is_named() {
    damaged(
        |c| {
            c.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
        },
        "row 3: missing",
    );
}

#[test]
fn an_inserted_row_is_named_even_with_a_valid_hash() {
    // In the middle: rows 4.. move up one and a forged row 4 goes in, the chain recomputed.
    damaged(
        |c| {
            c.execute("UPDATE audit SET seq = seq + 100 WHERE seq >= 4", [])
                .unwrap();
            c.execute("UPDATE audit SET seq = seq - 99 WHERE seq >= 104", [])
                .unwrap();
            c.execute(
                "INSERT INTO audit (seq, time_ms, kind, actor, subject, source, details, prev_hash, hash)
                 VALUES (4, 0, 'user_role', 'cli:tester', 'mallory', 'local', '{}', x'', x'')",
                [],
            )
            .unwrap();
            rechain(c);
        },
        "row 4: differs from its signed checkpoint",
    );
    // At the end, chained correctly: no signed checkpoint covers it.
    damaged(
        |c| {
            c.execute(
                "INSERT INTO audit (seq, time_ms, kind, actor, subject, source, details, prev_hash, hash)
                 VALUES (8, 0, 'user_add', 'cli:tester', 'mallory', 'local', '{}', x'', x'')",
                [],
            )
            .unwrap();
            rechain(c);
        },
        "row 8: after the last signed checkpoint",
    );
}

#[test]
fn reordered_rows_are_named() {
    damaged(
        |c| {
            let swap = "UPDATE audit SET kind = (SELECT kind FROM audit WHERE seq = ?2),
                actor = (SELECT actor FROM audit WHERE seq = ?2),
                subject = (SELECT subject FROM audit WHERE seq = ?2),
                details = (SELECT details FROM audit WHERE seq = ?2),
                time_ms = (SELECT time_ms FROM audit WHERE seq = ?2),
                prev_hash = (SELECT prev_hash FROM audit WHERE seq = ?2),
                hash = (SELECT hash FROM audit WHERE seq = ?2) WHERE seq = ?1";
            c.execute(
                "CREATE TEMP TABLE keep AS SELECT * FROM audit WHERE seq = 2",
                [],
            )
            .unwrap();
            c.execute(swap, params![2, 3]).unwrap();
            c.execute(
                "UPDATE audit SET kind = k.kind, actor = k.actor, subject = k.subject,
                 details = k.details, time_ms = k.time_ms, prev_hash = k.prev_hash, hash = k.hash
                 FROM (SELECT * FROM keep) AS k WHERE audit.seq = 3",
                [],
            )
            .unwrap();
        },
        "row 2:",
    );
}

#[test]
fn truncation_and_a_full_rewrite_are_caught_by_the_checkpoints() {
    damaged(
        |c| {
            c.execute("DELETE FROM audit WHERE seq >= 6", []).unwrap();
        },
        "row 6: in a signed checkpoint but not in the log, which ends at row 5 (truncated)",
    );
    damaged(
        |c| {
            c.execute("UPDATE audit SET subject = 'mallory' WHERE seq = 2", [])
                .unwrap();
            rechain(c);
        },
        "row 2: differs from its signed checkpoint",
    );
}

#[test]
fn a_forged_checkpoint_line_is_refused() {
    let dir = populated();
    let file = dir.path().join("audit-checkpoints");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!("v1 8 {} 0 {}\n", "00".repeat(32), "11".repeat(64)));
    std::fs::write(&file, text).unwrap();
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1);
    assert!(out.contains("checkpoint file line 8"), "{out}");
}

#[test]
fn a_backup_restores_into_a_fresh_directory_only() {
    let dir = populated();
    let backup = tempfile::tempdir().unwrap();
    let path = backup.path().join("b1");
    let out = ok(dir.path(), &["backup", path.to_str().unwrap()], None);
    assert!(out.contains("7 audit rows"), "{out}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"VSKRLBAK\x01"), "the versioned magic");
    for clear in [&b"SQLite format 3"[..], b"alice", b"argon2id", b"audit-key"] {
        assert!(
            !bytes.windows(clear.len()).any(|w| w == clear),
            "{} in the backup",
            String::from_utf8_lossy(clear)
        );
    }
    // The backup itself is a row of the live log.
    assert!(verify(dir.path()).1.starts_with("audit log intact: 8 rows"));
    let again = relay(dir.path(), &["backup", path.to_str().unwrap()], None);
    assert_eq!(again.status.code(), Some(2), "no backup over a backup");

    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("relay");
    let out = ok(&target, &["restore", path.to_str().unwrap()], None);
    assert!(out.contains("chain intact"), "{out}");
    let list = ok(&target, &["user", "list"], None);
    assert_eq!(list.lines().count(), 4, "{list}");
    let (code, out) = verify(&target);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("audit log intact: 8 rows"),
        "the restore is recorded: {out}"
    );
    // The certificate came along: devices' pins still hold.
    assert_eq!(
        std::fs::read(dir.path().join("relay-cert.der")).unwrap(),
        std::fs::read(target.join("relay-cert.der")).unwrap()
    );
    let twice = relay(&target, &["restore", path.to_str().unwrap()], None);
    assert_eq!(
        twice.status.code(),
        Some(2),
        "a directory with a database is not fresh"
    );
    assert!(String::from_utf8_lossy(&twice.stderr).contains("is not empty"));
}

/// Restores `backup` into a new directory with `passphrase`: the exit code and stderr; the
/// target must be left as it was on failure (not even created).
fn restore_into_fresh(backup: &Path, passphrase: &str) -> (Option<i32>, String) {
    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("relay");
    let out = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .arg("--data-dir")
        .arg(&target)
        .arg("restore")
        .arg(backup)
        .env("VISKA_RELAY_DB_KEY", key_hex())
        .env("VISKA_RELAY_BACKUP_PASSPHRASE", passphrase)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        assert!(!target.exists(), "a refused restore left {target:?}: {err}");
        assert_eq!(
            std::fs::read_dir(fresh.path()).unwrap().count(),
            0,
            "nothing staged is left behind"
        );
    }
    (out.status.code(), err)
}

#[test]
fn a_damaged_backup_is_not_restored() {
    let dir = populated();
    let backup = tempfile::tempdir().unwrap();
    let path = backup.path().join("b");
    // A database big enough for several chunks of 64 KiB.
    let blob = vec![0x5a_u8; 300 * 1024];
    db(dir.path())
        .execute(
            "INSERT INTO key_packages (identity, package) VALUES (?1, ?2)",
            params![&[1_u8; 32][..], blob],
        )
        .unwrap();
    ok(dir.path(), &["backup", path.to_str().unwrap()], None);
    let good = std::fs::read(&path).unwrap();
    const HEADER: usize = 57;
    const CHUNK: usize = 64 * 1024 + 16;
    assert!(good.len() > HEADER + 4 * CHUNK, "{}", good.len());
    let write = |name: &str, bytes: &[u8]| {
        let p = backup.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    let (code, err) = restore_into_fresh(&path, "a different passphrase 9 of them");
    assert_eq!(code, Some(2));
    assert!(err.contains("wrong passphrase"), "{err}");

    let mut tampered = good.clone();
    tampered[HEADER + CHUNK + 100] ^= 0x01;
    let (code, err) = restore_into_fresh(&write("tampered", &tampered), PASSPHRASE);
    assert_eq!(code, Some(2));
    assert!(err.contains("chunk 1"), "{err}");

    let mut header = good.clone();
    header[12] ^= 0x01; // Argon2 memory: another key
    assert_eq!(
        restore_into_fresh(&write("header", &header), PASSPHRASE).0,
        Some(2)
    );

    for (name, cut) in [
        ("cut-at-chunk", HEADER + 2 * CHUNK),
        ("cut-mid-chunk", HEADER + 2 * CHUNK + 500),
        ("cut-last-byte", good.len() - 1),
    ] {
        let (code, err) = restore_into_fresh(&write(name, &good[..cut]), PASSPHRASE);
        assert_eq!(code, Some(2), "{name}");
        assert!(
            err.contains("truncated") || err.contains("does not authenticate"),
            "{name}: {err}"
        );
    }

    let mut reordered = good[..HEADER + CHUNK].to_vec();
    reordered.extend_from_slice(&good[HEADER + 2 * CHUNK..HEADER + 3 * CHUNK]);
    reordered.extend_from_slice(&good[HEADER + CHUNK..HEADER + 2 * CHUNK]);
    reordered.extend_from_slice(&good[HEADER + 3 * CHUNK..]);
    let (code, err) = restore_into_fresh(&write("reordered", &reordered), PASSPHRASE);
    assert_eq!(code, Some(2));
    assert!(err.contains("chunk 1"), "{err}");

    let mut longer = good.clone();
    longer.extend_from_slice(&good[HEADER..HEADER + CHUNK]);
    assert_eq!(
        restore_into_fresh(&write("longer", &longer), PASSPHRASE).0,
        Some(2)
    );

    assert_eq!(
        restore_into_fresh(&path, PASSPHRASE).0,
        Some(0),
        "the good one restores"
    );
}

#[test]
fn a_weak_backup_passphrase_is_refused_and_nothing_is_written() {
    let dir = populated();
    let backup = tempfile::tempdir().unwrap();
    let path = backup.path().join("b");
    let out = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("backup")
        .arg(&path)
        .env("VISKA_RELAY_DB_KEY", key_hex())
        .env("VISKA_RELAY_BACKUP_PASSPHRASE", "password1234")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!path.exists());
    // Without the variable, from stdin (not a terminal): one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("backup")
        .arg(&path)
        .env("VISKA_RELAY_DB_KEY", key_hex())
        .env_remove("VISKA_RELAY_BACKUP_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(format!("{PASSPHRASE}\n").as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(restore_into_fresh(&path, PASSPHRASE).0, Some(0));
}

#[test]
fn a_backup_whose_audit_log_was_damaged_before_it_was_taken_is_not_restored() {
    let dir = populated();
    db(dir.path())
        .execute("UPDATE audit SET actor = 'x' WHERE seq = 1", [])
        .unwrap();
    let backup = tempfile::tempdir().unwrap();
    let path = backup.path().join("b");
    ok(dir.path(), &["backup", path.to_str().unwrap()], None);
    let (code, err) = restore_into_fresh(&path, PASSPHRASE);
    assert_eq!(code, Some(2));
    assert!(err.contains("row 1"), "{err}");
}

#[test]
fn device_commands_take_keys_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad = relay(d, &["device", "revoke", "abc"], None);
    assert_eq!(bad.status.code(), Some(2));
    let key = "ab".repeat(32);
    let out = ok(d, &["device", "revoke", &key], None);
    assert!(out.contains(&key));
    let list = ok(d, &["device", "list"], None);
    let row = list.lines().nth(1).unwrap();
    assert!(row.starts_with(&key) && !row.ends_with(" -"), "{list}");
}

#[test]
fn a_replaced_audit_key_is_caught_by_the_key_recorded_elsewhere() {
    let dir = populated();
    let d = dir.path();
    let (_, out) = verify(d);
    let recorded = out.rsplit("audit key ").next().unwrap().trim().to_string();
    assert_eq!(recorded.len(), 64, "{out}");
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(d.join("audit-checkpoints"), copy.path()).unwrap();
    let with = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--key", &recorded];
        args.extend_from_slice(extra);
        let out = relay(d, &args, None);
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
        )
    };
    assert_eq!(with(&[]).0, 0);
    // Someone with the data directory rewrites a row, makes a key of their own and re-signs:
    // the directory alone then verifies, the recorded key does not.
    db(d)
        .execute("UPDATE audit SET subject = 'mallory' WHERE seq = 1", [])
        .unwrap();
    rechain(&db(d));
    std::fs::remove_file(d.join("audit-key")).unwrap();
    std::fs::remove_file(d.join("audit-checkpoints")).unwrap();
    let out = relay(
        d,
        &["user", "add", "eve", "--role", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.status.success());
    // That made a new audit key, which signed the new last row: the data directory alone
    // verifies, which is why the public key is recorded elsewhere.
    assert_eq!(verify(d).0, 0);
    let (code, text) = with(&[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("checkpoint file line 1"), "{text}");
    // The checkpoints kept elsewhere name the rewritten row.
    let (code, text) = with(&["--checkpoints", copy.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("row 1: differs from its signed checkpoint"),
        "{text}"
    );
    let bad = relay(d, &["audit", "verify", "--key", "xyz"], None);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_configuration_file_with_an_unknown_key_is_refused_naming_it_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "bind = \"127.0.0.1:0\"\n[limits]\nhold_secs = 5\nhold_time = 9\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relay.toml"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("unknown field `hold_time`"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing started");
    // A bad network on the command line is refused by the flag parser.
    let out = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .args(["--allow", "10.0.0.0/40", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a prefix length"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn call_list_and_rekey_name_active_calls_and_refuse_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let listed = ok(d, &["call", "list"], None);
    assert_eq!(listed.lines().count(), 1, "a header only: {listed}");
    // A call as the relay stores it.
    db(d)
        .execute(
            "INSERT INTO calls (call, route, epoch) VALUES (?1, 3, 7)",
            [&[0xab_u8; 16][..]],
        )
        .unwrap();
    db(d)
        .execute(
            "INSERT INTO members (call, identity, join_epoch) VALUES (?1, ?2, 0)",
            params![&[0xab_u8; 16][..], &[0x11_u8; 32][..]],
        )
        .unwrap();
    let listed = ok(d, &["call", "list"], None);
    let row = listed.lines().nth(1).unwrap();
    assert!(row.starts_with(&"ab".repeat(16)), "{listed}");
    assert!(row.contains(&"11".repeat(32)), "{listed}");
    let out = ok(d, &["call", "rekey", &"ab".repeat(16)], None);
    assert!(out.contains("rekey of"), "{out}");
    let queued: i64 = db(d)
        .query_row("SELECT COUNT(*) FROM rekeys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 1);
    let bad = relay(d, &["call", "rekey", &"cd".repeat(16)], None);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no active call"));
    let bad = relay(d, &["call", "rekey", "xyz"], None);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad call id"));
    let export = ok(d, &["audit", "export"], None);
    assert_eq!(export.matches("\"call_rekey\"").count(), 1, "{export}");
    assert_eq!(verify(d).0, 0);
}

#[test]
fn the_relay_runs_from_a_configuration_file_with_json_logs_and_serves_metrics() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\nbind = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\nlog_format = \"json\"\n\
             [network]\nallowed = [\"127.0.0.0/8\", \"::1/128\"]\n\
             [metrics]\nbind = \"127.0.0.1:0\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_viska-relay"))
        .arg("--config")
        .arg(&file)
        .env("VISKA_RELAY_DB_KEY", key_hex())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..4 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_string());
    }
    assert!(
        lines[0].starts_with("fingerprint ") && lines[0].len() == 12 + 64,
        "{lines:?}"
    );
    assert!(lines[1].starts_with("listening on 127.0.0.1:"), "{lines:?}");
    // The second address of the list.
    assert!(
        lines[2].starts_with("also listening on 127.0.0.2:"),
        "{lines:?}"
    );
    let url = lines[3].strip_prefix("metrics on http://").unwrap();
    let addr = url.strip_suffix("/metrics").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("\nviska_relay_up 1\n"), "{response}");
    assert!(
        response.contains("\nviska_relay_database_encrypted 1\n"),
        "{response}"
    );
    assert!(
        response.contains("\nviska_relay_connections_total 0\n"),
        "{response}"
    );
    child.kill().unwrap();
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut events = 0;
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        events += 1;
    }
    assert!(
        stderr.contains("devices admitted from these networks only"),
        "{stderr}"
    );
    assert!(stderr.contains("127.0.0.0/8 ::1/128"), "{stderr}");
    assert!(events >= 2, "{stderr}");
}
