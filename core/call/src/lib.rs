//! The Viska call state machine, without IO.
//!
//! A [`Call`] is fed [`Input`]s (signaling messages, application commands, timeouts), each with
//! the current [`std::time::Instant`], and polled for [`Output`]s (messages to transmit, events
//! for the application, the next timeout). It never reads a clock, touches a socket or sleeps.
//!
//! The driver loop:
//!
//! ```text
//! loop {
//!     let timeout = loop {
//!         match call.poll_output() {
//!             Output::Transmit(message) => stream.write(message.to_frame()?),
//!             Output::Event(event) => app.handle(event),
//!             Output::Keys(update) => media.install(update),
//!             Output::Timeout(at) => break at,
//!         }
//!     };
//!     let input = wait_for(stream, app, timeout);  // Input::Signal / Command / Timeout
//!     call.handle_input(input)?;
//! }
//! ```
//!
//! States, messages and timers are specified in `docs/protocol-wire.md` at the repository root.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod call;
mod config;
mod error;
mod state;
pub mod stats;

pub use call::{CONTROL_AAD, Call};
pub use config::{
    CallConfig, DEFAULT_BITRATE_BPS, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_RING_TIMEOUT,
    DEFAULT_SETUP_TIMEOUT, PeerDirectory, Standing,
};
pub use error::CallError;
pub use state::{
    CallEvent, CallState, Command, EndReason, HandshakeStage, Input, MediaRejection, Output, Role,
    SecurityEvent, Side, Trust,
};
pub use stats::{CallStats, CodecImpairment, estimate_mos};
pub use viska_proto::{CallId, DtmfEvent, MediaParams, Message, Reason};
