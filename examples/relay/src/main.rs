//! `viska-relay`: runs a Viska relay (group calls' SFU and MLS delivery service) until Ctrl-C,
//! or administers its data directory.
//!
//! ```text
//! viska-relay [--config FILE] --bind 0.0.0.0:4433 [--bind [::]:4433]... --data-dir /var/lib/viska-relay [--hold-secs 30]
//!     [--auth-secs 5] [--max-unauthenticated 512] [--max-unauthenticated-per-source 16]
//!     [--require-accounts] [--recheck-ms 1000] [--allow CIDR]... [--metrics-bind ADDR]
//!     [--tls-cert FILE --tls-key FILE] [--log-format text|json]
//!     [--db-key-file FILE | --insecure-unencrypted-db]
//! viska-relay --data-dir DIR user add NAME --role agent|supervisor|admin
//! viska-relay --data-dir DIR user list | passwd NAME | disable NAME | enable NAME
//!     | role NAME ROLE | totp-enroll NAME
//! viska-relay --data-dir DIR device list [--user NAME] | revoke KEY
//! viska-relay --data-dir DIR call list | rekey ID
//! viska-relay --data-dir DIR audit verify [--key HEX] [--checkpoints FILE] | export
//! viska-relay --data-dir DIR backup FILE
//! viska-relay --data-dir DIR restore FILE
//! viska-relay --data-dir DIR db encrypt | rekey --new-key-file FILE
//! viska-relay db generate-key FILE
//! ```
//!
//! The database is encrypted (SQLCipher) with a 32-byte key kept outside the data directory:
//! `--db-key-file FILE` (64 hex digits, readable by its owner only), else the environment
//! variable `VISKA_RELAY_DB_KEY`, else the systemd credential `viska-relay-db-key`
//! (`$CREDENTIALS_DIRECTORY/viska-relay-db-key`), else `db_key_file` in `--config`. Every
//! command takes the same options; without a key nothing starts unless
//! `--insecure-unencrypted-db` is given. Backups are encrypted under a passphrase
//! (`VISKA_RELAY_BACKUP_PASSPHRASE`, else standard input when it is not a terminal, else
//! prompted for).
//!
//! Running, it prints `fingerprint <64 hex>` (what devices pin) and `listening on <addr>` once
//! it is up, then `also listening on <addr>` for each further `--bind` (and `metrics on http://<addr>/metrics` when metrics are served). Logs go to
//! stderr, as text or JSON lines (`--log-format`); `RUST_LOG` filters them (default `info`). Passwords are read
//! from standard input when it is not a terminal (one line), and prompted for without echo
//! otherwise. Every administrative change is recorded in the audit log.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use viska_relay::admin::{self, Admin, AdminError};
use viska_relay::storage;
use viska_relay::{AccountsMode, CertificateFiles, DbKey, IpNetwork, Relay, RelayConfig, Role};
use zeroize::Zeroizing;

use crate::config::{AccountsSetting, FileConfig, LogFormat};

mod config;

/// Runs a Viska relay, or administers its data directory.
#[derive(Debug, Parser)]
#[command(name = "viska-relay", version, about)]
struct Args {
    /// A TOML configuration file; the flags below override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address to listen on [default: 0.0.0.0:4433]; given more than once, the relay
    /// listens on each (the first is the one printed as `listening on`).
    #[arg(long)]
    bind: Vec<SocketAddr>,
    /// Directory of the certificate, its key, the database and the audit checkpoints (created
    /// if missing); required here or in the configuration file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds a disconnected device stays a member of its calls [default: 30].
    #[arg(long)]
    hold_secs: Option<u64>,
    /// Seconds a connection has to authenticate (and log in) before it is closed [default: 5].
    #[arg(long)]
    auth_secs: Option<u64>,
    /// Most connections not authenticated yet, in total [default: 512].
    #[arg(long)]
    max_unauthenticated: Option<usize>,
    /// Most connections not authenticated yet from one IPv4 address or IPv6 /64 [default: 16].
    #[arg(long)]
    max_unauthenticated_per_source: Option<usize>,
    /// Admit only devices registered to an account (unregistered ones log in with account,
    /// password and TOTP code), and check every operation against the account's role.
    #[arg(long)]
    require_accounts: bool,
    /// Milliseconds between looks for devices revoked, disabled or changed, and calls to
    /// rekey, from the command line [default: 1000].
    #[arg(long)]
    recheck_ms: Option<u64>,
    /// A network devices may connect from (CIDR, IPv4 or IPv6; repeatable). Replaces the
    /// file's list; none anywhere: every address.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<IpNetwork>,
    /// TCP address to serve Prometheus metrics at (GET /metrics) [default: not served].
    #[arg(long, value_name = "ADDR")]
    metrics_bind: Option<SocketAddr>,
    /// The certificate to present (DER), instead of the data directory's self-signed one.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PKCS#8 DER).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Log lines as text or as JSON objects [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// The database key: a file of 64 hex digits, readable by its owner only, outside the
    /// data directory [else VISKA_RELAY_DB_KEY, else the systemd credential
    /// viska-relay-db-key, else db_key_file in --config].
    #[arg(long, value_name = "FILE", global = true)]
    db_key_file: Option<PathBuf>,
    /// Without a key, use a plaintext database (password hashes and TOTP secrets readable
    /// from the data directory): for tests only.
    #[arg(long, global = true)]
    insecure_unencrypted_db: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Devices registered to accounts.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Active calls: list them, rekey one.
    #[command(subcommand)]
    Call(CallCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Writes an encrypted backup of the data directory to the new file PATH (safe while
    /// the relay runs); the passphrase comes from VISKA_RELAY_BACKUP_PASSPHRASE, stdin or a
    /// prompt.
    Backup {
        /// Where (a file that does not exist).
        path: PathBuf,
    },
    /// Restores the backup PATH into the data directory, which must be fresh; its database
    /// is keyed with the key options.
    Restore {
        /// The backup file.
        path: PathBuf,
    },
    /// The database's encryption: migrate a plaintext one, rotate the key, make a key.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Encrypts a plaintext database with the key of the key options, once (relay stopped).
    Encrypt,
    /// Re-keys the database from the key of the key options to the one in --new-key-file
    /// (relay stopped); the old key no longer opens it.
    Rekey {
        /// The new key (64 hex digits, readable by its owner only).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Writes a new random key (64 hex digits) to the new file PATH, readable by its owner
    /// only.
    GenerateKey {
        /// Where (a file that does not exist).
        path: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Adds an account (the password is read from stdin or prompted for).
    Add {
        /// The account name (a-z, 0-9, '.', '_', '-', '@').
        name: String,
        /// agent, supervisor or admin.
        #[arg(long)]
        role: Role,
    },
    /// Lists the accounts.
    List,
    /// Sets an account's password.
    Passwd {
        /// The account.
        name: String,
    },
    /// Disables an account: its devices are disconnected and refused.
    Disable {
        /// The account.
        name: String,
    },
    /// Enables a disabled account again.
    Enable {
        /// The account.
        name: String,
    },
    /// Changes an account's role.
    Role {
        /// The account.
        name: String,
        /// agent, supervisor or admin.
        role: Role,
    },
    /// Enrolls a new TOTP secret: prints the otpauth:// URI and the base32 secret.
    TotpEnroll {
        /// The account.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Lists registered devices.
    List {
        /// Only this account's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revokes a device (64 hex digits of its identity key): disconnected at once, out of its
    /// calls, refused from then on.
    Revoke {
        /// The device's identity key.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum CallCommand {
    /// Lists the active calls: id (32 hex digits), route, epoch, members.
    List,
    /// Emergency rekey: within --recheck-ms the running relay asks the call's members to
    /// commit new keys.
    Rekey {
        /// The call's id (32 hex digits, as `call list` shows it).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Checks the hash chain and the signed checkpoints; exits 1 naming the first bad row.
    Verify {
        /// The audit public key as recorded elsewhere (64 hex digits), instead of the one of
        /// the data directory's audit key.
        #[arg(long)]
        key: Option<String>,
        /// A copy of the checkpoints kept elsewhere, instead of DIR/audit-checkpoints.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// Writes the log as JSON lines to stdout.
    Export,
}

/// Who runs the command, for the audit log.
fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}

/// A backup passphrase: `VISKA_RELAY_BACKUP_PASSPHRASE`, else [`read_password`] (prompted
/// twice for a new backup, once for a restore).
fn read_passphrase(confirm: bool) -> Result<Zeroizing<String>, String> {
    if let Some(p) = std::env::var_os(PASSPHRASE_ENV) {
        return p
            .into_string()
            .map(Zeroizing::new)
            .map_err(|_| format!("{PASSPHRASE_ENV} is not UTF-8"));
    }
    if !confirm && std::io::stdin().is_terminal() {
        return rpassword::prompt_password("backup passphrase: ")
            .map(Zeroizing::new)
            .map_err(|e| format!("prompt: {e}"));
    }
    read_password("backup passphrase")
}

/// The environment variable a backup passphrase may come from.
const PASSPHRASE_ENV: &str = "VISKA_RELAY_BACKUP_PASSPHRASE";

/// The database key from the first of: `--db-key-file`, `VISKA_RELAY_DB_KEY`, the systemd
/// credential, `db_key_file` of the configuration. None anywhere: an error, unless
/// `--insecure-unencrypted-db` (then `None`, warned about).
fn database_key(args: &Args, file: &FileConfig) -> Result<Option<DbKey>, String> {
    let err = |e: viska_relay::DbKeyError| e.to_string();
    if let Some(path) = &args.db_key_file {
        return DbKey::from_file(path).map(Some).map_err(err);
    }
    if let Some(hex) = std::env::var_os(storage::KEY_ENV) {
        let hex = Zeroizing::new(
            hex.into_string()
                .map_err(|_| format!("{} is not 64 hex digits", storage::KEY_ENV))?,
        );
        return DbKey::from_hex(&hex, storage::KEY_ENV)
            .map(Some)
            .map_err(err);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(storage::KEY_CREDENTIAL);
        if path.exists() {
            return DbKey::from_file(&path).map(Some).map_err(err);
        }
    }
    if let Some(path) = &file.db_key_file {
        return DbKey::from_file(path).map(Some).map_err(err);
    }
    if args.insecure_unencrypted_db {
        eprintln!(
            "viska-relay: WARNING: no database key, --insecure-unencrypted-db: the database is \
             NOT encrypted at rest"
        );
        return Ok(None);
    }
    Err(viska_relay::RelayError::NoDatabaseKey.to_string())
}

/// Writes a new random key to the new file `path` (owner-only).
fn generate_key(path: &Path) -> Result<(), String> {
    let key = DbKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    out.write_all(format!("{}\n", key.to_hex().as_str()).as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A password from stdin (one line) or, on a terminal, prompted twice without echo.
fn read_password(what: &str) -> Result<Zeroizing<String>, String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = Zeroizing::new(String::new());
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        let trimmed = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string());
        return Ok(trimmed);
    }
    let first = Zeroizing::new(
        rpassword::prompt_password(format!("{what}: ")).map_err(|e| format!("prompt: {e}"))?,
    );
    let again = Zeroizing::new(
        rpassword::prompt_password(format!("{what} again: "))
            .map_err(|e| format!("prompt: {e}"))?,
    );
    if *first != *again {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs an administrative command on the database keyed with `key`; the exit code.
fn administer(dir: &Path, key: Option<&DbKey>, command: Command) -> Result<ExitCode, String> {
    let err = |e: AdminError| e.to_string();
    if let Command::Db(db) = &command {
        let key =
            key.ok_or("the db commands need a database key (no --insecure-unencrypted-db)")?;
        match db {
            DbCommand::Encrypt => {
                storage::encrypt_database(dir, key).map_err(|e| e.to_string())?;
                println!("encrypted the database of {}", dir.display());
            }
            DbCommand::Rekey { new_key_file } => {
                let new = DbKey::from_file(new_key_file).map_err(|e| e.to_string())?;
                storage::rekey_database(dir, key, &new).map_err(|e| e.to_string())?;
                println!(
                    "re-keyed the database of {}: start the relay with {} from now on",
                    dir.display(),
                    new_key_file.display()
                );
            }
            DbCommand::GenerateKey { path } => generate_key(path)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Restore { path } = &command {
        let passphrase = read_passphrase(false)?;
        let report = admin::restore(path, &passphrase, dir, key).map_err(err)?;
        println!(
            "restored {} into {} ({} audit rows, chain intact)",
            path.display(),
            dir.display(),
            report.rows
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut admin = Admin::open(dir, key, &operator()).map_err(err)?;
    match command {
        Command::User(UserCommand::Add { name, role }) => {
            let password = read_password("password")?;
            admin.add_user(&name, &password, role).map_err(err)?;
            println!("added {name} ({role}); enroll TOTP with: user totp-enroll {name}");
        }
        Command::User(UserCommand::List) => {
            println!(
                "{:<24} {:<10} {:<8} {:<5} devices",
                "name", "role", "state", "totp"
            );
            for u in admin.users().map_err(err)? {
                println!(
                    "{:<24} {:<10} {:<8} {:<5} {}",
                    u.name,
                    u.role,
                    if u.disabled { "disabled" } else { "enabled" },
                    if u.totp { "yes" } else { "no" },
                    u.devices
                );
            }
        }
        Command::User(UserCommand::Passwd { name }) => {
            let password = read_password("new password")?;
            admin.set_password(&name, &password).map_err(err)?;
            println!("password of {name} changed");
        }
        Command::User(UserCommand::Disable { name }) => {
            admin.set_disabled(&name, true).map_err(err)?;
            println!("{name} disabled; its devices are disconnected");
        }
        Command::User(UserCommand::Enable { name }) => {
            admin.set_disabled(&name, false).map_err(err)?;
            println!("{name} enabled");
        }
        Command::User(UserCommand::Role { name, role }) => {
            admin.set_role(&name, role).map_err(err)?;
            println!("{name} is now {role}");
        }
        Command::User(UserCommand::TotpEnroll { name }) => {
            let enrollment = admin.totp_enroll(&name).map_err(err)?;
            let secret = enrollment.secret.to_base32();
            println!("{}", enrollment.uri.as_str());
            println!("secret {}", secret.as_str());
        }
        Command::Device(DeviceCommand::List { user }) => {
            println!("{:<64} {:<24} {:<20} revoked", "key", "user", "registered");
            for d in admin.devices(user.as_deref()).map_err(err)? {
                println!(
                    "{} {:<24} {:<20} {}",
                    hex(&d.key),
                    d.user,
                    time(d.registered_ms),
                    d.revoked_ms.map_or_else(|| "-".to_string(), time)
                );
            }
        }
        Command::Device(DeviceCommand::Revoke { key }) => {
            let key = admin::parse_key(&key).map_err(err)?;
            admin.revoke_device(&key).map_err(err)?;
            println!("revoked {}", hex(&key));
        }
        Command::Call(CallCommand::List) => {
            println!("{:<32} {:>6} {:>8} members", "call", "route", "epoch");
            for c in admin.calls().map_err(err)? {
                let members: Vec<String> = c.members.iter().map(|k| hex(k)).collect();
                println!(
                    "{} {:>6} {:>8} {}",
                    hex(&c.call.0),
                    c.route,
                    c.epoch,
                    members.join(",")
                );
            }
        }
        Command::Call(CallCommand::Rekey { id }) => {
            let call = admin::parse_call(&id).map_err(err)?;
            admin.rekey_call(&call).map_err(err)?;
            println!(
                "rekey of {} queued; the running relay asks its members within --recheck-ms",
                hex(&call.0)
            );
        }
        Command::Audit(AuditCommand::Verify { key, checkpoints }) => match admin
            .audit_verify_with(key.as_deref(), checkpoints.as_deref())
            .map_err(err)?
        {
            Ok(report) => {
                println!(
                    "audit log intact: {} rows, {} signed checkpoints (last at row {}); audit key {}",
                    report.rows,
                    report.checkpoints,
                    report.last_checkpoint,
                    admin.audit_public_key()
                );
            }
            Err(problem) => {
                println!("audit log damaged: {problem}");
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Audit(AuditCommand::Export) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            admin.audit_export(&mut out).map_err(err)?;
            out.flush().map_err(|e| e.to_string())?;
        }
        Command::Backup { path } => {
            let passphrase = read_passphrase(true)?;
            let report = admin.backup(&path, &passphrase).map_err(err)?;
            println!(
                "backed up into {} ({} audit rows, encrypted)",
                path.display(),
                report.audit_rows
            );
        }
        Command::Restore { .. } | Command::Db(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The relay's configuration: a flag, else the file's value, else the default.
fn relay_config(args: &Args, file: FileConfig, data_dir: PathBuf) -> RelayConfig {
    let binds = match (args.bind.is_empty(), file.bind.clone()) {
        (false, _) => args.bind.clone(),
        (true, Some(binds)) => binds,
        (true, None) => vec![SocketAddr::from(([0, 0, 0, 0], 4433))],
    };
    let limits = &file.limits;
    let mut config = RelayConfig::new(binds[0], data_dir);
    config.also_bind = binds[1..].to_vec();
    config.hold_time = Duration::from_secs(args.hold_secs.or(limits.hold_secs).unwrap_or(30));
    config.auth_timeout = Duration::from_secs(args.auth_secs.or(limits.auth_secs).unwrap_or(5));
    config.max_unauthenticated = args
        .max_unauthenticated
        .or(limits.max_unauthenticated)
        .unwrap_or(512);
    config.max_unauthenticated_per_source = args
        .max_unauthenticated_per_source
        .or(limits.max_unauthenticated_per_source)
        .unwrap_or(16);
    let recheck = args.recheck_ms.or(limits.recheck_ms).unwrap_or(1000);
    config.recheck_interval = Duration::from_millis(recheck.max(10));
    if let Some(idle) = limits.idle_secs {
        config.idle_timeout = Duration::from_secs(idle.max(1));
    }
    if let Some(held) = limits.max_held {
        config.max_held = held.max(1);
    }
    if let Some(attempts) = limits.max_login_attempts {
        config.max_login_attempts = attempts.max(1);
    }
    if let Some(burst) = limits.handshake_burst {
        config.handshake_rate.burst = burst.max(1);
    }
    if let Some(rate) = limits.handshakes_per_second {
        config.handshake_rate.per_second = rate.max(1);
    }
    if args.require_accounts || file.accounts == Some(AccountsSetting::Required) {
        config.accounts = AccountsMode::Required;
    }
    config.allowed_networks = if args.allow.is_empty() {
        file.network.allowed
    } else {
        args.allow.clone()
    };
    config.certificate = match (&args.tls_cert, &args.tls_key, file.tls) {
        (Some(cert), Some(key), _) => Some(CertificateFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (_, _, Some(tls)) => Some(CertificateFiles {
            cert: tls.cert,
            key: tls.key,
        }),
        _ => None,
    };
    config.metrics_bind = args.metrics_bind.or(file.metrics.bind);
    config
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let file = match &args.config {
        Some(path) => match config::load(path) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("viska-relay: {e}");
                return ExitCode::from(2);
            }
        },
        None => FileConfig::default(),
    };
    init_logs(args.log_format.or(file.log_format).unwrap_or_default());
    if let Some(Command::Db(DbCommand::GenerateKey { path })) = &args.command {
        return match generate_key(path) {
            Ok(()) => {
                println!("wrote a new database key to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("viska-relay: {e}");
                ExitCode::from(2)
            }
        };
    }
    let key = match database_key(&args, &file) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("viska-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(data_dir) = args.data_dir.clone().or_else(|| file.data_dir.clone()) else {
        eprintln!("viska-relay: no data directory: give --data-dir or data_dir in --config");
        return ExitCode::from(2);
    };
    let mut args = args;
    if let Some(command) = args.command.take() {
        return match administer(&data_dir, key.as_ref(), command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("viska-relay: {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut config = relay_config(&args, file, data_dir);
    config.insecure_unencrypted_db = key.is_none() && args.insecure_unencrypted_db;
    config.db_key = key;
    if !config.allowed_networks.is_empty() {
        let list: Vec<String> = config
            .allowed_networks
            .iter()
            .map(ToString::to_string)
            .collect();
        tracing::info!(allowed = %list.join(" "), "devices admitted from these networks only");
    }
    let relay = match Relay::start(config).await {
        Ok(relay) => relay,
        Err(e) => {
            eprintln!("viska-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("fingerprint {}", hex(&relay.fingerprint()));
    println!("listening on {}", relay.local_addr());
    for addr in &relay.local_addrs()[1..] {
        println!("also listening on {addr}");
    }
    if let Some(addr) = relay.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("viska-relay: waiting for Ctrl-C: {e}");
    }
    tracing::info!("shutting down");
    relay.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }
}
