//! The sans-IO heart of a Viska call: one call's signaling, keys and media, for any number of
//! remote participants, as one state machine driven by time passed in.
//!
//! A [`Session`] owns the call state machine ([`viska_call::Call`]), its key source (the
//! direct handshake; an outside source such as MLS feeds [`Input::Keys`]), one media sender,
//! one receiving stream per [`ParticipantId`] (SFrame receiver, jitter buffer, decoder), the
//! mix of what is heard, the capture and playout clocks, hold and mute, FEC sized from
//! reception reports, statistics and the recording's mix. It reads no clock, opens no socket,
//! starts no thread and touches no device: the driver moves bytes and frames in and out, in
//! the shape of str0m's `Rtc` and quinn-proto's `Connection`.
//!
//! # The driver loop
//!
//! Every input carries `now`; after each, drain [`Session::poll_output`] until it returns
//! [`Output::Timeout`]:
//!
//! ```text
//! loop {
//!     let deadline = loop {
//!         match session.poll_output() {
//!             Output::Datagram(bytes) => if !socket.send_datagram(bytes) {
//!                 session.handle_input(Input::DatagramRefused(now))?
//!             },
//!             Output::Signaling(bytes) => stream.write(bytes),
//!             Output::Capture => {
//!                 source.read_frame(&mut pcm);
//!                 session.handle_input(Input::Captured(now, &pcm))?
//!             }
//!             Output::Play(pcm) => sink.write_frame(pcm),
//!             Output::Record(pcm) => recorder.write_frame(pcm),
//!             Output::Request(Request::Admit { peer, trust }) =>
//!                 session.handle_input(Input::Admission(now, phone.admit(peer, trust)))?,
//!             Output::Request(Request::OpenAudio { frame_samples, .. }) =>
//!                 open_audio_in_the_background(frame_samples), // answers Input::Audio later
//!             Output::Event(event) => app_events.push(event),
//!             Output::Timeout(at) => break at,
//!         }
//!     };
//!     now = wait_for(socket, stream, commands, deadline);  // one clock read per wake-up
//!     session.handle_input(/* Input::Datagram / Signaling / Command / Timeout */)?;
//! }
//! ```
//!
//! Tests drive two or three sessions on a virtual clock through the IO-free network model of
//! `viska-netem`: minutes of call in milliseconds, without sleeping (`tests/scenarios.rs`).
//!
//! # Keys and counters
//!
//! Keys enter through one seam, [`viska_e2ee::keys::KeyUpdate`]: the first send key opens the
//! sender, a later one rekeys it and its frame index (the SFrame counter) runs on, so
//! receivers' jitter buffers see one unbroken sequence across an epoch change and no counter is
//! used twice under a key; receive keys open a participant's stream or add to it.
#![forbid(unsafe_code)]

mod clock;
mod control;
mod error;
#[cfg(fuzzing)]
pub mod fuzzing;
mod sender;
mod session;
mod stream;

pub use error::{MediaError, SessionError};
pub use session::{
    Admission, AudioStatus, EARLY_WINDOW, FOLLOW_WAIT, GroupSessionConfig, Input, LATE_MARGIN,
    MediaCounters, Output, Request, STATS_INTERVAL, Session, SessionConfig, SessionEvent,
    SignalingCounters,
};
pub use viska_e2ee::keys::{Epoch, KeyUpdate, ParticipantId};

/// Largest media datagram the session builds or accepts.
pub const MAX_DATAGRAM: usize = 1500;

/// Packets marked as a talkspurt start after a pause (hold, mute, DTX, the call's start). The
/// marker tells the receiver that the frames skipped before it were silence, not losses; were
/// only the first packet marked, losing it would turn the whole pause into loss (a second of
/// concealment after a one-second hold, and a loss rate that flags a good call as bad). A
/// marker on a packet that follows its predecessor without a gap changes nothing.
pub const MARKED_AFTER_PAUSE: u8 = 3;
