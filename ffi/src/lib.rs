//! Viska's foreign-function skin: the [`Phone`], [`Call`] and [`GroupPhone`] objects that
//! UniFFI turns into Kotlin, Swift and Python classes, and (module `c`) a C API.
//!
//! Nothing here decides anything about a call: every method forwards to the `viska` crate and
//! converts its types into ones a foreign language can hold (no `char`, no tuples, byte
//! strings as `Vec<u8>`, ids as lowercase hex).
//!
//! # Threads
//!
//! Every method returns promptly and may be called from any thread, except the `wait_*`
//! helpers, which block the calling thread. Listeners ([`PhoneListener`], [`CallListener`],
//! [`GroupListener`]) are called on the library's own dispatcher thread (`vk-<name>-ev` for a
//! phone, `vk-group-events` for a group phone), one event at a time, in order, never while a
//! lock of the library is held. They must not block: hand long work to a thread of your own.
//! A listener that throws is logged and counted ([`Phone::listener_failures`]); the call goes
//! on.
//!
//! # Errors and panics
//!
//! Fallible methods return [`ViskaError`] (Kotlin `ViskaException`, Swift `ViskaError`,
//! Python `ViskaError`). A Rust panic never crosses the boundary: UniFFI catches it and raises
//! the language's internal-error exception.

pub mod c;
mod call;
mod error;
mod group;
mod identity;
mod phone;
mod store;
mod types;

pub use call::{Call, CallEvent, CallInfo, CallListener};
pub use error::{ListenerError, ViskaError};
pub use group::{
    GroupCallInfo, GroupEvent, GroupListener, GroupParticipant, GroupPhone, GroupSettings,
    RelayLogin,
};
pub use identity::{Identity, PeerIdentity, fingerprint_of, safety_number};
pub use phone::{
    AudioSetup, CallerInfo, MissedReason, Phone, PhoneEvent, PhoneListener, PhoneSettings,
};
pub use store::{CallHistoryEntry, ContactInfo, KeyStore};
pub use types::{
    AudioDevice, AudioDirection, AudioNotice, CallState, CallStats, EndReason, SecurityKind,
    SecurityNotice, Side, Suite, Trust,
};

uniffi::setup_scaffolding!("viska");
