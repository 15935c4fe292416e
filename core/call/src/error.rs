//! Errors returned by [`crate::Call`].

use thiserror::Error;
use viska_e2ee::direct::HandshakeError;
use viska_proto::ProtoError;
use viska_sframe::SframeError;

use crate::state::CallState;

/// What went wrong handling an input.
///
/// An error from [`crate::Call::handle_input`] never leaves the call in an inconsistent state:
/// either the input was refused and nothing changed, or the call ended (see
/// [`crate::Call::state`]) and the peer was told.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CallError {
    /// The configuration cannot make a call.
    #[error("invalid call configuration: {0}")]
    InvalidConfig(&'static str),
    /// The command is not allowed in the current state (for example `Answer` while not ringing).
    #[error("command {command} is not allowed in state {state:?}")]
    InvalidCommand {
        /// The command's name.
        command: &'static str,
        /// The state the call was in.
        state: CallState,
    },
    /// The peer sent a message that makes no sense in the current state; it was ignored.
    #[error("unexpected {message} in state {state:?}")]
    UnexpectedMessage {
        /// The message's name.
        message: &'static str,
        /// The state the call was in.
        state: CallState,
    },
    /// The peer speaks no wire version we speak; the call ended.
    #[error("no common wire version")]
    VersionMismatch(#[source] ProtoError),
    /// The peer proposed media parameters we do not support; the call was refused.
    #[error("unsupported media parameters: {0}")]
    UnsupportedMedia(&'static str),
    /// A digit string, call-data payload or control message is invalid.
    #[error("invalid control message")]
    InvalidControl(#[source] ProtoError),
    /// The end-to-end handshake failed; the call ended.
    #[error("end-to-end handshake failed")]
    Handshake(#[source] HandshakeError),
    /// SFrame keys could not be set up or a frame could not be protected.
    #[error("SFrame failure")]
    Sframe(#[source] SframeError),
}
