//! `viska-phone group --relay ADDR --relay-fingerprint HEX`: a device on a relay, driven from
//! the terminal. It registers (authenticates and publishes key packages), joins every call it
//! is added to (held until `accept CALL`), and reads commands: `create`, `add CALL IDENTITY`,
//! `accept CALL`, `leave CALL`, `roster`,
//! `quit`. Calls and identities are hex; the roster shows each member's identity, trust and
//! level, and the call's verification code.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::SocketAddr;

use viska::group::{CallRef, GroupConfig, GroupPhone, GroupPhoneConfig};
use viska::identity::{IdentityKeyPair, PublicIdentity};
use viska::session::GroupSessionConfig;

use crate::{BoxError, MediaArgs, audio_for};

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], BoxError> {
    let bytes = hex::decode(s.trim())?;
    bytes
        .try_into()
        .map_err(|_| format!("expected {} hex digits", 2 * N).into())
}

/// Parses a relay certificate fingerprint (64 hex digits).
pub(crate) fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    parse_hex::<32>(s).map_err(|e| e.to_string())
}

fn print_roster(phone: &GroupPhone) {
    for call in phone.calls() {
        println!(
            "call {} epoch {:?}{}",
            hex::encode(call.call.0),
            call.epoch,
            if call.ended { " (left)" } else { "" }
        );
        if let Some(code) = &call.verification_code {
            println!("  verification code: {code}");
        }
        for (participant, identity) in &call.roster {
            let trust = if call.me == Some(*participant) {
                "this device".to_string()
            } else {
                call.trust
                    .get(participant)
                    .map_or("unknown".into(), |t| format!("{t:?}").to_lowercase())
            };
            println!(
                "  {participant}: {} [{trust}] level {:.2}",
                hex::encode(identity.to_bytes()),
                call.levels.get(participant).copied().unwrap_or(0.0)
            );
        }
    }
}

/// Runs the terminal group phone until `quit` or end of input.
pub(crate) fn run(
    relay: SocketAddr,
    fingerprint: [u8; 32],
    verified: Vec<String>,
    media: &MediaArgs,
) -> Result<(), BoxError> {
    let identity = IdentityKeyPair::generate_from_os()?;
    let verified: BTreeSet<[u8; 32]> = verified
        .iter()
        .map(|v| parse_hex::<32>(v))
        .collect::<Result<_, _>>()?;
    let phone = std::sync::Arc::new(GroupPhone::connect(GroupPhoneConfig {
        relay,
        relay_fingerprint: fingerprint,
        identity,
        audio: audio_for(media)?,
        session: GroupSessionConfig::default(),
        group: GroupConfig::default(),
        verified_peers: verified
            .iter()
            .map(|v| PublicIdentity::from_bytes(v))
            .collect::<Result<_, _>>()?,
    })?);
    println!("registered on {relay}");
    println!("identity {}", hex::encode(phone.identity().to_bytes()));
    println!("fingerprint {}", phone.identity().fingerprint());
    println!("commands: create | add CALL IDENTITY | accept CALL | leave CALL | roster | quit");
    // Calls this device is added to, announced as they come.
    let watcher = std::sync::Arc::clone(&phone);
    std::thread::spawn(move || {
        let mut known: BTreeSet<CallRef> = BTreeSet::new();
        loop {
            let new = |calls: &std::collections::BTreeMap<CallRef, _>| {
                calls.keys().any(|c| !known.contains(c))
            };
            if watcher.wait_for(std::time::Duration::from_secs(3600), new) {
                for call in watcher.calls() {
                    if known.insert(call.call) {
                        if call.accepted {
                            println!("in call {}", hex::encode(call.call.0));
                        } else {
                            println!(
                                "added to call {} (held; type: accept {})",
                                hex::encode(call.call.0),
                                hex::encode(call.call.0)
                            );
                        }
                    }
                }
            } else if watcher.calls().is_empty() && known.is_empty() {
                continue;
            } else {
                return;
            }
        }
    });
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let result: Result<(), BoxError> = match words.as_slice() {
            ["create"] => phone
                .create_call()
                .map(|call| {
                    println!("call {}", hex::encode(call.0));
                })
                .map_err(Into::into),
            ["add", call, who] => (|| {
                let call = CallRef(parse_hex::<16>(call)?);
                let who = PublicIdentity::from_bytes(&parse_hex::<32>(who)?)?;
                phone.add(call, who)?;
                Ok(())
            })(),
            ["accept", call] => (|| {
                phone.accept(CallRef(parse_hex::<16>(call)?))?;
                Ok(())
            })(),
            ["leave", call] => (|| {
                phone.leave(CallRef(parse_hex::<16>(call)?))?;
                Ok(())
            })(),
            ["roster"] | [] => {
                print_roster(&phone);
                Ok(())
            }
            ["quit"] => break,
            _ => Err("unknown command".into()),
        };
        if let Err(e) = result {
            eprintln!("error: {e}");
        }
    }
    // Leave every call before the process (and with it the connection) goes.
    for call in phone.calls().into_iter().filter(|c| !c.ended) {
        let _ = phone.leave(call.call);
    }
    let _ = phone.wait_for(std::time::Duration::from_secs(2), |calls| {
        calls.values().all(|c| c.ended)
    });
    Ok(())
}
