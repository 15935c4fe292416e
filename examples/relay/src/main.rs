//! `viska-relay`: runs a Viska relay (group calls' SFU and MLS delivery service) until Ctrl-C.
//!
//! ```text
//! viska-relay --bind 0.0.0.0:4433 --data-dir /var/lib/viska-relay [--hold-secs 30] [--auth-secs 5]
//!     [--max-unauthenticated 512] [--max-unauthenticated-per-source 16]
//! ```
//!
//! Prints `fingerprint <64 hex>` (what devices pin) and `listening on <addr>` once it is up.
//! Logs go to stderr; `RUST_LOG` filters them (default `info`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use viska_relay::{Relay, RelayConfig};

/// Runs a Viska relay.
#[derive(Debug, Parser)]
#[command(name = "viska-relay", version, about)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:4433")]
    bind: SocketAddr,
    /// Directory of the certificate, its key and the database (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Seconds a disconnected device stays a member of its calls.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// Seconds a connection has to authenticate before it is closed.
    #[arg(long, default_value_t = 5)]
    auth_secs: u64,
    /// Most connections not authenticated yet, in total.
    #[arg(long, default_value_t = 512)]
    max_unauthenticated: usize,
    /// Most connections not authenticated yet from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = 16)]
    max_unauthenticated_per_source: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = RelayConfig::new(args.bind, args.data_dir);
    config.hold_time = Duration::from_secs(args.hold_secs);
    config.auth_timeout = Duration::from_secs(args.auth_secs);
    config.max_unauthenticated = args.max_unauthenticated;
    config.max_unauthenticated_per_source = args.max_unauthenticated_per_source;
    let relay = match Relay::start(config).await {
        Ok(relay) => relay,
        Err(e) => {
            eprintln!("viska-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("fingerprint {}", hex::encode(relay.fingerprint()));
    println!("listening on {}", relay.local_addr());
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("viska-relay: waiting for Ctrl-C: {e}");
    }
    tracing::info!("shutting down");
    relay.shutdown().await;
    ExitCode::SUCCESS
}
