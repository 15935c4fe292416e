//! Errors of the session and its media path.

use viska_call::CallError;
use viska_media::codec::CodecError;
use viska_media::playout::PlayoutError;
use viska_proto::ProtoError;
use viska_sframe::SframeError;

/// Errors of the media path. Receive-side errors are also counted in
/// [`MediaCounters`](crate::MediaCounters) and, when they come from the network, reported as
/// [`SecurityEvent::MediaRejected`](viska_call::SecurityEvent::MediaRejected).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// SFrame protection or unprotection failed.
    #[error("sframe: {0}")]
    Sframe(#[from] SframeError),
    /// The Opus codec failed.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The decrypted payload is malformed.
    #[error("media payload: {0}")]
    Payload(#[from] ProtoError),
    /// Playout could not produce a frame.
    #[error("playout: {0}")]
    Playout(#[from] PlayoutError),
    /// The session's settings do not fit together.
    #[error("configuration: {0}")]
    Config(String),
}

/// What went wrong handling one [`Input`](crate::Input). The session stays usable after
/// every one of them: the input was refused (and counted where it came from the network), or
/// the call ended and says why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The configuration cannot make a session.
    #[error("invalid session configuration: {0}")]
    InvalidConfig(String),
    /// The call state machine refused the input (a command not possible in its state, a
    /// signaling message out of order, a failed handshake).
    #[error(transparent)]
    Call(#[from] CallError),
    /// A media datagram was refused (counted; see [`MediaError`]).
    #[error(transparent)]
    Media(#[from] MediaError),
    /// The input is not expected now (captured audio nobody asked for, an answer to a
    /// question not asked).
    #[error("{0} is not expected now")]
    Unexpected(&'static str),
}
