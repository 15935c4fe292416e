//! Viska: an end-to-end encrypted softphone library.
//!
//! Only the people in a call can hear it: media is encrypted per frame with SFrame (RFC 9605)
//! under keys from an end-to-end key exchange (a direct X25519 handshake for 1:1 calls), and
//! carried over QUIC. Relays and networks see ciphertext only.
//!
//! The IO-free parts live in their own crates and are re-exported here: [`sframe`],
//! [`identity`] and [`e2ee`], [`media`], [`proto`], [`call`], [`session`] (one call's
//! signaling, keys and media as a state machine), [`netem`]. This crate adds the drivers: the
//! QUIC transport (quinn) and the [`Phone`] that runs each call's session on its own thread.
#![forbid(unsafe_code)]

pub use viska_call as call;
pub use viska_e2ee as e2ee;
pub use viska_media as media;
pub use viska_netem as netem;
pub use viska_proto as proto;
pub use viska_sframe as sframe;

pub mod group;
mod group_memberships;
pub mod phone;
/// The QUIC transport (quinn): public only with the `testing` feature, for the transport
/// benchmark and tests; applications use the [`Phone`].
#[cfg(feature = "testing")]
pub mod transport;
#[cfg(not(feature = "testing"))]
#[allow(unreachable_pub, dead_code)]
mod transport;

pub use phone::{
    CallHandle, CallListener, CallSnapshot, CallUpdate, Phone, PhoneConfig, PhoneConfigBuilder,
    PhoneError, PhoneEvent, PhoneListener,
};
pub use transport::{AckFrequency, ConnectionIds, TransportConfig, TransportError, WireCounters};
pub use viska_e2ee::identity;
pub use viska_session as session;
pub use viska_store as store;

/// Locks `m`, also after a thread panicked while holding it: every lock in this crate guards
/// state that is updated in one step, so a poisoned lock still holds consistent data (and a
/// panicking listener must not take a phone down with it).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
