//! The counters in the Prometheus text exposition format (version 0.0.4), served at
//! `GET /metrics` over plain HTTP/1.1 ([`crate::RelayConfig::metrics_bind`]).
//!
//! A deliberately small responder: one request per connection, read for at most 5 s and
//! 8 KiB, answered and closed. It serves the counters only, nothing that names a device or a
//! call; bind it to a loopback or management address.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::RelayStats;
use crate::state::Shared;

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Metrics served at once; more wait for their turn in the kernel's accept queue.
const MAX_CLIENTS: usize = 16;

/// Whether a metric only grows (a counter) or goes up and down (a gauge).
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Every metric: its name (after `viska_relay_`), kind, help text and value.
fn metrics(s: &RelayStats) -> [(&'static str, Kind, &'static str, u64); 35] {
    use Kind::{Counter, Gauge};
    [
        (
            "connections_total",
            Counter,
            "QUIC connections accepted.",
            s.connections,
        ),
        (
            "authenticated_total",
            Counter,
            "Connections that authenticated.",
            s.authenticated,
        ),
        (
            "auth_failures_total",
            Counter,
            "Connections whose authentication failed (timeouts included).",
            s.auth_failures,
        ),
        (
            "auth_timeouts_total",
            Counter,
            "Connections closed for not authenticating in time.",
            s.auth_timeouts,
        ),
        (
            "refused_source_full_total",
            Counter,
            "Connections refused before TLS: their source held its share of unauthenticated connections.",
            s.refused_source_full,
        ),
        (
            "refused_rate_limited_total",
            Counter,
            "Connections refused before TLS: their source started new ones too fast.",
            s.refused_rate_limited,
        ),
        (
            "refused_network_total",
            Counter,
            "Connections refused before TLS: not from an allowed network.",
            s.refused_network,
        ),
        (
            "unauthenticated_taken_back_total",
            Counter,
            "Unauthenticated connections closed to make room for a newcomer.",
            s.unauthenticated_taken_back,
        ),
        (
            "unauthenticated",
            Gauge,
            "Connections not authenticated yet.",
            s.unauthenticated,
        ),
        (
            "devices_online",
            Gauge,
            "Devices authenticated and connected.",
            s.devices_online,
        ),
        ("calls", Gauge, "Active calls.", s.calls),
        (
            "members",
            Gauge,
            "Members of active calls, connected or within their hold time.",
            s.members,
        ),
        (
            "database_encrypted",
            Gauge,
            "1 if the database is encrypted at rest (SQLCipher), 0 if it runs unencrypted (--insecure-unencrypted-db).",
            s.database_encrypted,
        ),
        (
            "datagrams_forwarded_total",
            Counter,
            "Datagram copies sent to receivers.",
            s.datagrams_forwarded,
        ),
        (
            "dropped_no_route_total",
            Counter,
            "Datagrams dropped: no active call has their route.",
            s.dropped_no_route,
        ),
        (
            "dropped_not_member_total",
            Counter,
            "Datagrams dropped: the sender is not a member of the call.",
            s.dropped_not_member,
        ),
        (
            "dropped_malformed_total",
            Counter,
            "Datagrams dropped: malformed, or an epoch the call has not reached.",
            s.dropped_malformed,
        ),
        (
            "dropped_slow_receiver_total",
            Counter,
            "Datagram copies not sent: the receiver's send buffer was full.",
            s.dropped_slow_receiver,
        ),
        (
            "dropped_before_join_total",
            Counter,
            "Datagram copies not sent: from an epoch before the receiver joined.",
            s.dropped_before_join,
        ),
        (
            "commits_accepted_total",
            Counter,
            "Commits accepted.",
            s.commits_accepted,
        ),
        (
            "commits_refused_total",
            Counter,
            "Commits refused (stale epoch, or storage failed).",
            s.commits_refused,
        ),
        (
            "key_packages_missing_total",
            Counter,
            "Key-package fetches answered with none (the device has published none).",
            s.key_packages_missing,
        ),
        (
            "bad_frames_total",
            Counter,
            "Control frames that did not decode or were not allowed.",
            s.bad_frames,
        ),
        (
            "logins_total",
            Counter,
            "Devices registered by a successful login.",
            s.logins,
        ),
        (
            "login_failures_total",
            Counter,
            "Logins refused.",
            s.login_failures,
        ),
        (
            "login_locked_total",
            Counter,
            "Login attempts refused unchecked: the name or source was locked out.",
            s.login_locked,
        ),
        (
            "lockouts_total",
            Counter,
            "Lock-outs begun after repeated login failures.",
            s.lockouts,
        ),
        (
            "password_checks_total",
            Counter,
            "Password verifications made.",
            s.password_checks,
        ),
        (
            "forbidden_total",
            Counter,
            "Commits refused by the role matrix.",
            s.forbidden,
        ),
        (
            "evicted_total",
            Counter,
            "Devices disconnected and taken out of their calls (revoked, or account disabled).",
            s.evicted,
        ),
        (
            "rechecked_total",
            Counter,
            "Devices checked again after a change from the command line.",
            s.rechecked,
        ),
        (
            "rekeys_total",
            Counter,
            "Emergency rekeys passed to calls' members.",
            s.rekeys,
        ),
        ("up", Gauge, "1 while the relay runs.", 1),
        ("build_info", Gauge, "The relay's version, as a label.", 1),
        (
            "held_queue_limit",
            Gauge,
            "Most control messages held per device.",
            0,
        ),
    ]
}

/// The counters of `stats` in the Prometheus text format; `max_held` is
/// [`crate::RelayConfig::max_held`].
pub(crate) fn render(stats: &RelayStats, max_held: usize) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for (name, kind, help, value) in metrics(stats) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP viska_relay_{name} {help}");
        let _ = writeln!(out, "# TYPE viska_relay_{name} {kind}");
        match name {
            "build_info" => {
                let _ = writeln!(
                    out,
                    "viska_relay_{name}{{version=\"{}\"}} {value}",
                    env!("CARGO_PKG_VERSION")
                );
            }
            "held_queue_limit" => {
                let _ = writeln!(out, "viska_relay_{name} {max_held}");
            }
            _ => {
                let _ = writeln!(out, "viska_relay_{name} {value}");
            }
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &shared)).await;
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: tokio::net::TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let stats = crate::RelayHandle::stats_of(shared);
            let body = render(&stats, shared.config.max_held);
            respond(&mut stream, "200 OK", &body).await
        }
        (_, "/metrics") => respond(&mut stream, "405 Method Not Allowed", "").await,
        _ => respond(&mut stream, "404 Not Found", "").await,
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_type_and_one_sample() {
        let stats = RelayStats {
            logins: 7,
            ..RelayStats::default()
        };
        let text = render(&stats, 256);
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                names.push(rest.split(' ').next().unwrap().to_string());
            }
        }
        assert_eq!(names.len(), 35);
        for name in &names {
            assert!(name.starts_with("viska_relay_"), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            let samples = text
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))
                })
                .count();
            assert_eq!(samples, 1, "{name}");
        }
        assert!(text.contains("viska_relay_logins_total 7\n"));
        assert!(text.contains("viska_relay_database_encrypted 0\n"));
        assert!(text.contains("viska_relay_held_queue_limit 256\n"));
        assert!(text.contains("# TYPE viska_relay_devices_online gauge\n"));
        assert!(text.contains("# TYPE viska_relay_connections_total counter\n"));
    }
}
