//! Operations over real sockets: the allow-list of client networks (a QUIC connection refused
//! before TLS, or accepted), an operator-given certificate, and the Prometheus endpoint
//! fetched over TCP.
//!
//! Nothing here sleeps to wait: every step waits on the message or counter it expects, with a
//! generous timeout only as a failure guard.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use viska_relay::{CertificateFiles, IpNetwork, RelayError};

#[tokio::test]
async fn a_connection_from_outside_the_allowed_networks_is_refused_before_tls() {
    let dir = tempfile::tempdir().unwrap();
    let only_ten: IpNetwork = "10.0.0.0/8".parse().unwrap();
    let relay = start_with(dir.path(), |c| c.allowed_networks = vec![only_ten]).await;
    let refused = guard(
        "the refusal",
        connect(relay.local_addr(), relay.fingerprint()),
    )
    .await;
    let Err(why) = refused else {
        panic!("a connection from 127.0.0.1 was accepted with only 10.0.0.0/8 allowed");
    };
    assert!(why.to_lowercase().contains("refused"), "{why}");
    let stats = relay.stats();
    assert_eq!(stats.refused_network, 1, "{stats:?}");
    assert_eq!(stats.connections, 0, "{stats:?}");
    assert_eq!(stats.authenticated, 0, "{stats:?}");
    relay.shutdown().await;

    // The same data directory with loopback allowed (IPv6 listed too): accepted.
    let relay = start_with(dir.path(), |c| {
        c.allowed_networks = vec![
            only_ten,
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ];
    })
    .await;
    let mut alice = Device::new(&relay).await;
    alice.sync().await;
    let stats = relay.stats();
    assert_eq!(stats.refused_network, 0, "{stats:?}");
    assert_eq!(stats.authenticated, 1, "{stats:?}");
    relay.shutdown().await;
}

#[tokio::test]
async fn an_ipv6_source_is_matched_against_ipv6_networks() {
    let dir = tempfile::tempdir().unwrap();
    let start = |allowed: &'static [&'static str]| {
        let mut config = RelayConfig::new("[::1]:0".parse().unwrap(), dir.path().to_path_buf());
        config.db_key = Some(db_key());
        config.allowed_networks = allowed.iter().map(|n| n.parse().unwrap()).collect();
        Relay::start(config)
    };
    let relay = start(&["10.0.0.0/8", "2001:db8::/32"]).await.unwrap();
    let refused = guard(
        "the refusal",
        connect_from("::1", relay.local_addr(), relay.fingerprint()),
    )
    .await;
    assert!(
        refused.is_err(),
        "::1 accepted with only 2001:db8::/32 allowed"
    );
    assert_eq!(relay.stats().refused_network, 1);
    relay.shutdown().await;
    let relay = start(&["::1/128"]).await.unwrap();
    let link = guard(
        "the challenge",
        connect_from("::1", relay.local_addr(), relay.fingerprint()),
    )
    .await;
    assert!(link.is_ok(), "{:?}", link.err());
    assert_eq!(relay.stats().refused_network, 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn an_operator_certificate_is_presented_and_pinned_by_its_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["relay.example".into()]).unwrap();
    let cert = certified.cert.der().to_vec();
    let files = CertificateFiles {
        cert: dir.path().join("operator-cert.der"),
        key: dir.path().join("operator-key.der"),
    };
    std::fs::write(&files.cert, &cert).unwrap();
    std::fs::write(&files.key, certified.signing_key.serialize_der()).unwrap();
    let data = dir.path().join("data");
    let relay = start_with(&data, |c| c.certificate = Some(files.clone())).await;
    let expected: [u8; 32] = Sha256::digest(&cert).into();
    assert_eq!(relay.fingerprint(), expected);
    assert!(
        !data.join("relay-cert.der").exists(),
        "no self-signed pair made"
    );
    let mut alice = Device::new(&relay).await;
    alice.sync().await;
    relay.shutdown().await;
    // A key file that is missing is an error naming it.
    let missing = CertificateFiles {
        cert: files.cert.clone(),
        key: dir.path().join("nowhere.der"),
    };
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), data);
    config.db_key = Some(db_key());
    config.certificate = Some(missing);
    let e = Relay::start(config).await.unwrap_err().to_string();
    assert!(e.contains("nowhere.der"), "{e}");
}

/// `GET path` over a fresh TCP connection: the status line and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nAccept: text/plain\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    guard("the response", stream.read_to_string(&mut response))
        .await
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    assert_eq!(length, body.len());
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `name` (without labels) in an exposition.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no sample {name}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| {
        c.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
        c.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let metrics = relay.metrics_addr().unwrap();
    // A call of two members, one datagram forwarded, and a refused connection.
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;
    let call = CallRef([7; 16]);
    let route = open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob]).await;
    alice.send_datagram(&media(route, 1, 0, b"frame"));
    let _ = bob.datagram().await;
    assert!(
        connect_from("127.0.0.2", relay.local_addr(), relay.fingerprint())
            .await
            .is_err()
    );
    until(&relay, "the counters", |s| {
        s.refused_network == 1 && s.datagrams_forwarded == 1
    })
    .await;

    let (status, body) = http_get(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.split(' ');
            let kind = words.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            let name = words.next().unwrap();
            assert!(name.starts_with("viska_relay_"), "{line}");
            if kind == "TYPE" {
                let t = words.next().unwrap();
                assert!(t == "counter" || t == "gauge", "{line}");
                assert_eq!(t == "counter", name.ends_with("_total"), "{line}");
            }
        } else {
            assert!(line.starts_with("viska_relay_"), "{line}");
            let value = line.rsplit(' ').next().unwrap();
            value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
        }
    }
    assert_eq!(sample(&body, "viska_relay_authenticated_total"), 2);
    assert_eq!(sample(&body, "viska_relay_devices_online"), 2);
    assert_eq!(sample(&body, "viska_relay_calls"), 1);
    assert_eq!(sample(&body, "viska_relay_members"), 2);
    assert_eq!(sample(&body, "viska_relay_commits_accepted_total"), 1);
    assert_eq!(sample(&body, "viska_relay_datagrams_forwarded_total"), 1);
    assert_eq!(sample(&body, "viska_relay_refused_network_total"), 1);
    assert!(body.contains("# TYPE viska_relay_calls gauge\n"));
    assert!(body.contains("# HELP viska_relay_login_failures_total "));

    let (status, _) = http_get(metrics, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_rekey_from_the_command_line_reaches_every_member_within_the_recheck_interval() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| {
        c.recheck_interval = Duration::from_millis(20)
    })
    .await;
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;
    let call = CallRef([9; 16]);
    open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob]).await;
    let mut admin = viska_relay::admin::Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    admin.rekey_call(&call).unwrap();
    for d in [&mut alice, &mut bob] {
        assert_eq!(d.recv().await, RelayMessage::Rekey { call, epoch: 1 });
    }
    // Both answer with an update commit at epoch 1: the first wins, the other is refused.
    for d in [&mut alice, &mut bob] {
        d.send(RelayMessage::Commit {
            call,
            epoch: 1,
            commit: b"update".to_vec(),
            welcome: None,
            added: vec![],
            removed: vec![],
        })
        .await;
    }
    until(&relay, "one commit accepted, one refused", |s| {
        s.commits_accepted == 2 && s.commits_refused == 1 && s.rekeys == 1
    })
    .await;
    relay.shutdown().await;
}

/// Every file of a directory: its name and bytes.
fn snapshot(dir: &std::path::Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn the_relay_needs_its_database_key_and_a_wrong_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    assert_eq!(relay.stats().database_encrypted, 1);
    relay.shutdown().await;
    let raw = std::fs::read(dir.path().join(viska_relay::DB_FILE)).unwrap();
    assert!(!raw.starts_with(b"SQLite format 3"), "encrypted at rest");

    let before = snapshot(dir.path());
    let config = || RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    let e = Relay::start(config()).await.unwrap_err();
    assert!(matches!(e, RelayError::NoDatabaseKey), "{e}");
    let mut wrong = config();
    wrong.db_key = Some(viska_relay::DbKey::generate());
    let e = Relay::start(wrong).await.unwrap_err();
    assert!(matches!(e, RelayError::WrongDatabaseKey), "{e}");
    assert_eq!(e.to_string(), "database key does not match the database");
    let mut insecure = config();
    insecure.insecure_unencrypted_db = true;
    let e = Relay::start(insecure).await.unwrap_err();
    assert!(matches!(e, RelayError::DatabaseEncrypted(_)), "{e}");
    assert!(snapshot(dir.path()) == before, "no file changed");

    // A plaintext relay (tests only) says so in its counters, and a key does not open it.
    let plain = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), plain.path().to_path_buf());
    config.insecure_unencrypted_db = true;
    let relay = Relay::start(config.clone()).await.unwrap();
    assert_eq!(relay.stats().database_encrypted, 0);
    relay.shutdown().await;
    config.db_key = Some(db_key());
    let e = Relay::start(config).await.unwrap_err();
    assert!(matches!(e, RelayError::DatabaseNotEncrypted(_)), "{e}");
    assert!(e.to_string().contains("db encrypt"), "{e}");
}

#[test]
fn encrypting_once_then_rekeying_keeps_every_row_and_the_old_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = viska_relay::admin::Admin::open(dir.path(), None, "test").unwrap();
    admin.revoke_device(&[7; 32]).unwrap();
    drop(admin);
    let first = db_key();
    viska_relay::storage::encrypt_database(dir.path(), &first).unwrap();
    assert!(matches!(
        viska_relay::storage::encrypt_database(dir.path(), &first),
        Err(RelayError::DatabaseEncrypted(_))
    ));
    let second = viska_relay::DbKey::generate();
    // Not while someone holds the directory.
    let holder = viska_relay::admin::Admin::open(dir.path(), Some(&first), "test").unwrap();
    assert!(matches!(
        viska_relay::storage::rekey_database(dir.path(), &first, &second),
        Err(RelayError::DataDirBusy(_))
    ));
    drop(holder);
    assert!(matches!(
        viska_relay::storage::rekey_database(dir.path(), &second, &second),
        Err(RelayError::WrongDatabaseKey)
    ));
    viska_relay::storage::rekey_database(dir.path(), &first, &second).unwrap();
    assert!(matches!(
        viska_relay::admin::Admin::open(dir.path(), Some(&first), "test"),
        Err(viska_relay::admin::AdminError::Relay(
            RelayError::WrongDatabaseKey
        ))
    ));
    let admin = viska_relay::admin::Admin::open(dir.path(), Some(&second), "test").unwrap();
    assert_eq!(admin.devices(None).unwrap().len(), 1);
    let report = admin.audit_verify().unwrap().unwrap();
    assert_eq!(report.rows, 1);
}
