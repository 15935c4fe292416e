//! The group calls a device is in, recorded in its key store so that a device that restarts
//! (it crashed, was killed, or its phone rebooted) asks to be put back into them.
//!
//! One setting per call: `viska.group.call.<call id in hex>`, whose value is `accepted` (the
//! user took the call, or this device created it) or `held` (added, not taken yet), followed
//! by `:` and the call's route in decimal (`accepted:3`). A value without a route (written by
//! an earlier version) is read as a call to be added back into rather than resumed. A record
//! is written when the device joins a call and when its user accepts it, and removed when the
//! device leaves it or is taken out of it. A store's write is committed when it returns, so a
//! record survives a `kill -9` right after it. The call's MLS state is in the same store
//! (`viska_group::GroupMember::resume`).

use viska_proto::relay::CallRef;
use viska_store::Store;

/// The prefix of the settings keys of the records.
pub(crate) const PREFIX: &str = "viska.group.call.";

/// The value of a call the user took.
const ACCEPTED: &str = "accepted";

/// The value of a call not taken yet.
const HELD: &str = "held";

/// A recorded membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Membership {
    /// The call.
    pub(crate) call: CallRef,
    /// Whether its user took it (a device added back into it goes on sending without asking).
    pub(crate) accepted: bool,
    /// The call's route on the relay, if recorded.
    pub(crate) route: Option<u32>,
}

fn key(call: &CallRef) -> String {
    let mut k = String::with_capacity(PREFIX.len() + 32);
    k.push_str(PREFIX);
    for b in call.0 {
        k.push_str(&format!("{b:02x}"));
    }
    k
}

fn parse_call(hex: &str) -> Option<CallRef> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(CallRef(id))
}

/// Records that this device is in `call` (`accepted` or held), whose route is `route`.
pub(crate) fn record(store: &Store, call: &CallRef, accepted: bool, route: u32) {
    let value = format!("{}:{route}", if accepted { ACCEPTED } else { HELD });
    if let Err(e) = store.set_setting(&key(call), &value) {
        tracing::warn!(error = %e, "group call membership not recorded");
    }
}

/// Removes the record of `call` (this device is out of it).
pub(crate) fn forget(store: &Store, call: &CallRef) {
    if let Err(e) = store.remove_setting(&key(call)) {
        tracing::warn!(error = %e, "group call membership not removed");
    }
}

/// Every recorded membership (records that do not parse are skipped).
pub(crate) fn load(store: &Store) -> Vec<Membership> {
    let settings = match store.settings() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "group call memberships not read");
            return Vec::new();
        }
    };
    settings
        .into_iter()
        .filter_map(|(k, v)| {
            let call = parse_call(k.strip_prefix(PREFIX)?)?;
            let (accepted, route) = parse_value(&v)?;
            Some(Membership {
                call,
                accepted,
                route,
            })
        })
        .collect()
}

/// `accepted` or `held`, with the route after a `:` when there is one.
fn parse_value(value: &str) -> Option<(bool, Option<u32>)> {
    let (state, route) = match value.split_once(':') {
        Some((state, route)) => (state, Some(route.parse().ok()?)),
        None => (value, None),
    };
    let accepted = match state {
        ACCEPTED => true,
        HELD => false,
        _ => return None,
    };
    Some((accepted, route))
}

/// The recorded membership of `call`, if any.
pub fn recorded(store: &Store, call: &CallRef) -> Result<Option<bool>, viska_store::StoreError> {
    Ok(store
        .setting(&key(call))?
        .and_then(|v| parse_value(&v))
        .map(|(accepted, _)| accepted))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_round_trip_and_bad_ones_are_refused() {
        let call = CallRef([0xab; 16]);
        let k = key(&call);
        assert_eq!(parse_call(k.strip_prefix(PREFIX).unwrap()), Some(call));
        assert_eq!(parse_call("ab"), None);
        assert_eq!(parse_call(&"zz".repeat(16)), None);
        assert_eq!(parse_call(&"é".repeat(16)), None);
    }

    #[test]
    fn values_with_and_without_a_route_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_value("accepted:3"), Some((true, Some(3))));
        assert_eq!(parse_value("held:0"), Some((false, Some(0))));
        assert_eq!(parse_value("accepted"), Some((true, None)));
        assert_eq!(parse_value("held"), Some((false, None)));
        assert_eq!(parse_value("accepted:x"), None);
        assert_eq!(parse_value("accepted:-1"), None);
        assert_eq!(parse_value("taken:1"), None);
        assert_eq!(parse_value(""), None);
    }
}
