//! Viska wire protocol, without IO.
//!
//! - [`signal`]: the signaling messages on the call's QUIC stream and the [`FrameDecoder`] that
//!   reassembles them from arbitrary chunks.
//! - [`control`]: end-to-end encrypted in-call messages (DTMF, CTI call data, hold, mute).
//! - [`media`]: the payload inside each SFrame-protected media datagram, and its overhead.
//! - [`ids`]: call and participant identifiers.
//! - [`relay`]: a device's connection to a relay (group calls) and the media routing prefix.
//!
//! The byte layouts are specified in `docs/protocol-wire.md` at the repository root.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod control;
pub mod error;
pub mod ids;
pub mod media;
pub mod relay;
pub mod signal;

pub use control::{ControlMessage, DtmfEvent};
pub use error::ProtoError;
pub use ids::{CallId, ParticipantId};
pub use media::{
    FrameDuration, MediaHeader, decode_media_payload, encode_media_payload, media_overhead,
};
pub use signal::{Features, FrameDecoder, MediaParams, Message, Reason, SuiteId};
