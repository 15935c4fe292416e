//! Signaling messages and their framing on the call's QUIC bidirectional stream.
//!
//! ```text
//! frame = [u8 version][u8 type][u16 body length, big endian][body]
//! ```
//!
//! A receiver rejects a frame whose version it does not speak (the stream is then unusable),
//! skips a frame of a known version whose type it does not know (forward compatibility), and
//! ignores bytes after the fields it knows in a fixed-layout body (so that a later revision of
//! the same version can append fields).

use crate::error::{ProtoError, Reader};
use crate::ids::CallId;
use crate::media::FrameDuration;

/// The wire version this implementation writes.
pub const WIRE_VERSION: u8 = 1;
/// Oldest wire version this implementation reads.
pub const MIN_SUPPORTED_VERSION: u8 = 1;
/// Newest wire version this implementation reads.
pub const MAX_SUPPORTED_VERSION: u8 = 1;
/// Length of the frame header.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest body a sender may write and every receiver must accept.
pub const MAX_BODY_LEN: usize = 16 * 1024;

mod message_type {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const HANDSHAKE: u8 = 0x02;
    pub(super) const INVITE: u8 = 0x03;
    pub(super) const RINGING: u8 = 0x04;
    pub(super) const ACCEPT: u8 = 0x05;
    pub(super) const REJECT: u8 = 0x06;
    pub(super) const BUSY: u8 = 0x07;
    pub(super) const CANCEL: u8 = 0x08;
    pub(super) const HANGUP: u8 = 0x09;
    pub(super) const ENCRYPTED: u8 = 0x0a;
    pub(super) const PING: u8 = 0x0b;
    pub(super) const PONG: u8 = 0x0c;
}

/// Optional capabilities announced in `Hello`; bits a receiver does not know are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Features(pub u32);

impl Features {
    /// No optional capability.
    pub const NONE: Features = Features(0);

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// The capabilities both sides announced.
    pub fn intersection(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
}

/// An SFrame cipher suite identifier as registered by RFC 9605 (or a private-use value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SuiteId(pub u16);

/// Media parameters the caller proposes in `Invite`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MediaParams {
    /// Opus packet duration.
    pub frame: FrameDuration,
    /// Target Opus bitrate in bits per second.
    pub bitrate_bps: u32,
    /// SFrame cipher suite for media.
    pub suite: SuiteId,
}

impl MediaParams {
    /// The target bitrates a callee accepts in an `Invite`: those Opus can be set to
    /// (docs/protocol-wire.md 2.2.1).
    pub const BITRATE_BPS: std::ops::RangeInclusive<u32> = 6_000..=510_000;
}

/// Why a call was refused or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Ordinary end of the call.
    Normal,
    /// The user declined the call.
    Declined,
    /// The offered parameters (version, suite, media) are not supported.
    Unsupported,
    /// The peer's identity was not accepted.
    Untrusted,
    /// A timer ran out (no answer, handshake too slow).
    Timeout,
    /// A protocol or internal error.
    Error,
    /// The end-to-end handshake failed or a security check did not pass.
    Security,
    /// A code this implementation does not know.
    Other(u8),
}

impl Reason {
    /// The reason's code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Declined => 1,
            Self::Unsupported => 2,
            Self::Untrusted => 3,
            Self::Timeout => 4,
            Self::Error => 5,
            Self::Security => 6,
            Self::Other(code) => code,
        }
    }

    /// The reason for a code; unknown codes become [`Reason::Other`].
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Normal,
            1 => Self::Declined,
            2 => Self::Unsupported,
            3 => Self::Untrusted,
            4 => Self::Timeout,
            5 => Self::Error,
            6 => Self::Security,
            other => Self::Other(other),
        }
    }
}

/// One signaling message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// First message of each side: the wire versions and features it supports. Always sent in a
    /// version-1 frame so that any peer can read it. Both `Hello`s, as sent and as decoded, are
    /// the end-to-end handshake's prologue, bound into its signed transcript: a man in the
    /// middle who narrows a range or strips a feature bit makes the handshake fail
    /// (docs/protocol-wire.md §2.5).
    Hello {
        /// Oldest version the sender speaks.
        min_version: u8,
        /// Newest version the sender speaks.
        max_version: u8,
        /// Optional capabilities.
        features: Features,
    },
    /// An opaque end-to-end handshake message.
    Handshake(Vec<u8>),
    /// The caller asks to be connected.
    Invite {
        /// The call's id.
        call_id: CallId,
        /// Proposed media parameters.
        media: MediaParams,
    },
    /// The callee is alerting its user.
    Ringing,
    /// The callee answered.
    Accept,
    /// The callee refused the call.
    Reject {
        /// Why.
        reason: Reason,
    },
    /// The callee is busy with another call.
    Busy,
    /// The caller gave up before an answer.
    Cancel,
    /// Either side ended an answered call.
    Hangup {
        /// Why.
        reason: Reason,
    },
    /// An SFrame frame whose plaintext is a [`crate::ControlMessage`].
    Encrypted(Vec<u8>),
    /// Liveness probe; the peer answers with `Pong` carrying the same value.
    Ping(u64),
    /// Answer to `Ping`.
    Pong(u64),
}

impl Message {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Handshake(_) => "Handshake",
            Self::Invite { .. } => "Invite",
            Self::Ringing => "Ringing",
            Self::Accept => "Accept",
            Self::Reject { .. } => "Reject",
            Self::Busy => "Busy",
            Self::Cancel => "Cancel",
            Self::Hangup { .. } => "Hangup",
            Self::Encrypted(_) => "Encrypted",
            Self::Ping(_) => "Ping",
            Self::Pong(_) => "Pong",
        }
    }

    fn message_type(&self) -> u8 {
        match self {
            Self::Hello { .. } => message_type::HELLO,
            Self::Handshake(_) => message_type::HANDSHAKE,
            Self::Invite { .. } => message_type::INVITE,
            Self::Ringing => message_type::RINGING,
            Self::Accept => message_type::ACCEPT,
            Self::Reject { .. } => message_type::REJECT,
            Self::Busy => message_type::BUSY,
            Self::Cancel => message_type::CANCEL,
            Self::Hangup { .. } => message_type::HANGUP,
            Self::Encrypted(_) => message_type::ENCRYPTED,
            Self::Ping(_) => message_type::PING,
            Self::Pong(_) => message_type::PONG,
        }
    }

    /// Appends one complete frame (header and body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        let start = out.len();
        out.extend_from_slice(&[WIRE_VERSION, self.message_type(), 0, 0]);
        match self {
            Self::Hello {
                min_version,
                max_version,
                features,
            } => {
                out.push(*min_version);
                out.push(*max_version);
                out.extend_from_slice(&features.0.to_be_bytes());
            }
            Self::Handshake(bytes) | Self::Encrypted(bytes) => out.extend_from_slice(bytes),
            Self::Invite { call_id, media } => {
                out.extend_from_slice(call_id.as_bytes());
                out.extend_from_slice(&media.frame.millis().to_be_bytes());
                out.extend_from_slice(&media.bitrate_bps.to_be_bytes());
                out.extend_from_slice(&media.suite.0.to_be_bytes());
            }
            Self::Ringing | Self::Accept | Self::Busy | Self::Cancel => {}
            Self::Reject { reason } | Self::Hangup { reason } => out.push(reason.code()),
            Self::Ping(value) | Self::Pong(value) => out.extend_from_slice(&value.to_be_bytes()),
        }
        let body_len = out.len() - start - FRAME_HEADER_LEN;
        let length_field = u16::try_from(body_len)
            .ok()
            .filter(|_| body_len <= MAX_BODY_LEN);
        let (Some(length_field), Some(field)) = (length_field, out.get_mut(start + 2..start + 4))
        else {
            out.truncate(start);
            return Err(ProtoError::TooLarge {
                what: "signaling body",
                len: body_len,
                max: MAX_BODY_LEN,
            });
        };
        field.copy_from_slice(&length_field.to_be_bytes());
        Ok(())
    }

    /// The frame for this message in a new vector.
    pub fn to_frame(&self) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes a body of a known version; `Ok(None)` for a type this implementation does not know.
    fn decode_body(message_type: u8, body: &[u8]) -> Result<Option<Self>, ProtoError> {
        let mut reader = Reader::new(body, "signaling body");
        let message = match message_type {
            message_type::HELLO => {
                let min_version = reader.u8()?;
                let max_version = reader.u8()?;
                if min_version > max_version {
                    return Err(ProtoError::InvalidField {
                        field: "hello version range",
                        value: u64::from(min_version),
                    });
                }
                Self::Hello {
                    min_version,
                    max_version,
                    features: Features(reader.u32()?),
                }
            }
            message_type::HANDSHAKE => Self::Handshake(reader.rest().to_vec()),
            message_type::INVITE => {
                let call_id = CallId(reader.array()?);
                let frame = frame_duration(reader.u16()?)?;
                let bitrate_bps = reader.u32()?;
                let suite = SuiteId(reader.u16()?);
                Self::Invite {
                    call_id,
                    media: MediaParams {
                        frame,
                        bitrate_bps,
                        suite,
                    },
                }
            }
            message_type::RINGING => Self::Ringing,
            message_type::ACCEPT => Self::Accept,
            message_type::REJECT => Self::Reject {
                reason: Reason::from_code(reader.u8()?),
            },
            message_type::BUSY => Self::Busy,
            message_type::CANCEL => Self::Cancel,
            message_type::HANGUP => Self::Hangup {
                reason: Reason::from_code(reader.u8()?),
            },
            message_type::ENCRYPTED => Self::Encrypted(reader.rest().to_vec()),
            message_type::PING => Self::Ping(reader.u64()?),
            message_type::PONG => Self::Pong(reader.u64()?),
            _ => return Ok(None),
        };
        Ok(Some(message))
    }
}

/// The highest wire version both sides speak, given the peer's `Hello` range.
pub fn negotiate_version(peer_min: u8, peer_max: u8) -> Result<u8, ProtoError> {
    let version = peer_max.min(MAX_SUPPORTED_VERSION);
    if version < peer_min.max(MIN_SUPPORTED_VERSION) {
        return Err(ProtoError::UnsupportedVersion { version: peer_max });
    }
    Ok(version)
}

/// The `Hello` this implementation sends.
pub fn local_hello(features: Features) -> Message {
    Message::Hello {
        min_version: MIN_SUPPORTED_VERSION,
        max_version: MAX_SUPPORTED_VERSION,
        features,
    }
}

/// Reassembles signaling frames from a byte stream delivered in arbitrary chunks.
///
/// Feed bytes with [`push`](Self::push) and drain with [`next_message`](Self::next_message)
/// until it returns `Ok(None)`. A frame header with an unknown version or an oversize length
/// breaks the framing: the error is returned once and every later call returns
/// [`ProtoError::StreamFailed`]; close the stream. A well-framed body that does not parse is
/// consumed and its error returned; the next call continues with the following frame.
///
/// Memory is bounded by one maximal frame plus whatever was pushed since the last drain.
///
/// Each byte is copied at most a constant number of times: consumed frames only advance a read
/// offset, and the unread tail is moved to the front of the buffer only when it is no longer
/// than the consumed prefix, so a read holding many tiny frames (of an unknown type, for
/// instance, which the decoder skips in one call) costs time linear in its length.
#[derive(Debug)]
pub struct FrameDecoder {
    /// `buffer[consumed..]` holds the bytes not yet returned as messages.
    buffer: Vec<u8>,
    consumed: usize,
    max_body_len: usize,
    failed: bool,
    skipped_unknown: u64,
    /// Bytes moved to the front of the buffer by compaction, to test that the work is linear.
    #[cfg(test)]
    moved_bytes: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting bodies up to [`MAX_BODY_LEN`].
    pub fn new() -> Self {
        Self::with_max_body_len(MAX_BODY_LEN)
    }

    /// A decoder accepting bodies up to `max_body_len` bytes (at most 65535, the u16 limit).
    pub fn with_max_body_len(max_body_len: usize) -> Self {
        Self {
            buffer: Vec::new(),
            consumed: 0,
            max_body_len: max_body_len.min(usize::from(u16::MAX)),
            failed: false,
            skipped_unknown: 0,
            #[cfg(test)]
            moved_bytes: 0,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.compact();
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len().saturating_sub(self.consumed)
    }

    /// Whether the framing broke (an unsupported version byte, a body over the limit): the
    /// stream cannot be read further, and every later call returns
    /// [`ProtoError::StreamFailed`].
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Frames of an unknown type that were skipped.
    pub fn skipped_unknown(&self) -> u64 {
        self.skipped_unknown
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtoError> {
        loop {
            if self.failed {
                return Err(ProtoError::StreamFailed);
            }
            let unread = self.buffer.get(self.consumed..).unwrap_or_default();
            let Some(&[version, message_type, len_hi, len_lo]) =
                unread.first_chunk::<FRAME_HEADER_LEN>()
            else {
                self.compact();
                return Ok(None);
            };
            if !(MIN_SUPPORTED_VERSION..=MAX_SUPPORTED_VERSION).contains(&version) {
                self.fail();
                return Err(ProtoError::UnsupportedVersion { version });
            }
            let body_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
            if body_len > self.max_body_len {
                self.fail();
                return Err(ProtoError::TooLarge {
                    what: "signaling body",
                    len: body_len,
                    max: self.max_body_len,
                });
            }
            let frame_len = FRAME_HEADER_LEN + body_len;
            let Some(body) = unread.get(FRAME_HEADER_LEN..frame_len) else {
                self.compact();
                return Ok(None);
            };
            let decoded = Message::decode_body(message_type, body);
            self.consumed += frame_len;
            match decoded {
                Ok(Some(message)) => return Ok(Some(message)),
                Ok(None) => self.skipped_unknown += 1,
                Err(error) => return Err(error),
            }
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        self.buffer = Vec::new();
        self.consumed = 0;
    }

    /// Drops the consumed prefix once it is at least as long as the unread tail, so the copy
    /// is paid for by the bytes consumed since the last compaction.
    fn compact(&mut self) {
        let unread = self.buffered_len();
        if self.consumed == 0 || self.consumed < unread {
            return;
        }
        #[cfg(test)]
        {
            self.moved_bytes += unread;
        }
        self.buffer.drain(..self.consumed);
        self.consumed = 0;
    }
}

/// The frame duration a millisecond count names, or the protocol error for another count.
fn frame_duration(ms: u16) -> Result<FrameDuration, ProtoError> {
    FrameDuration::from_millis(ms).map_err(|_| ProtoError::InvalidField {
        field: "frame duration (ms)",
        value: u64::from(ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            local_hello(Features::NONE),
            Message::Hello {
                min_version: 1,
                max_version: 7,
                features: Features(0xdead_beef),
            },
            Message::Handshake(vec![]),
            Message::Handshake((0..=255).collect()),
            Message::Invite {
                call_id: CallId::from(0x1234_5678_9abc_def0_1122_3344_5566_7788),
                media: MediaParams {
                    frame: FrameDuration::Ms20,
                    bitrate_bps: 24_000,
                    suite: SuiteId(0x0004),
                },
            },
            Message::Invite {
                call_id: CallId([0xff; 16]),
                media: MediaParams {
                    frame: FrameDuration::Ms10,
                    bitrate_bps: u32::MAX,
                    suite: SuiteId(0xf001),
                },
            },
            Message::Ringing,
            Message::Accept,
            Message::Reject {
                reason: Reason::Declined,
            },
            Message::Reject {
                reason: Reason::Other(200),
            },
            Message::Busy,
            Message::Cancel,
            Message::Hangup {
                reason: Reason::Normal,
            },
            Message::Hangup {
                reason: Reason::Security,
            },
            Message::Encrypted(vec![0x5a; 300]),
            Message::Encrypted(vec![0; MAX_BODY_LEN]),
            Message::Ping(0),
            Message::Pong(u64::MAX),
        ]
    }

    fn decode_all(decoder: &mut FrameDecoder) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(message) = decoder.next_message().unwrap() {
            out.push(message);
        }
        out
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let frame = message.to_frame().unwrap();
            assert_eq!(frame[0], WIRE_VERSION);
            assert_eq!(
                usize::from(u16::from_be_bytes([frame[2], frame[3]])),
                frame.len() - FRAME_HEADER_LEN
            );
            let mut decoder = FrameDecoder::new();
            decoder.push(&frame);
            assert_eq!(decode_all(&mut decoder), vec![message]);
            assert_eq!(decoder.buffered_len(), 0);
        }
    }

    #[test]
    fn stream_reassembles_from_every_chunk_size() {
        let messages = samples();
        let mut stream = Vec::new();
        for message in &messages {
            message.encode(&mut stream).unwrap();
        }
        for chunk in [1usize, 2, 3, 4, 5, 7, 64, 1000, stream.len()] {
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece);
                got.extend(decode_all(&mut decoder));
            }
            assert_eq!(got, messages, "chunk size {chunk}");
        }
    }

    #[test]
    fn layouts_are_as_documented() {
        let invite = Message::Invite {
            call_id: CallId([7; 16]),
            media: MediaParams {
                frame: FrameDuration::Ms20,
                bitrate_bps: 0x0102_0304,
                suite: SuiteId(0x0004),
            },
        }
        .to_frame()
        .unwrap();
        let mut expected = vec![1, 0x03, 0, 24];
        expected.extend_from_slice(&[7; 16]);
        expected.extend_from_slice(&[0, 20, 1, 2, 3, 4, 0, 4]);
        assert_eq!(invite, expected);
        assert_eq!(
            local_hello(Features(0x0000_0102)).to_frame().unwrap(),
            [1, 0x01, 0, 6, 1, 1, 0, 0, 1, 2]
        );
        assert_eq!(Message::Ringing.to_frame().unwrap(), [1, 0x04, 0, 0]);
        assert_eq!(
            Message::Hangup {
                reason: Reason::Timeout
            }
            .to_frame()
            .unwrap(),
            [1, 0x09, 0, 1, 4]
        );
    }

    #[test]
    fn unknown_type_is_skipped() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[1, 0x7e, 0, 3, 9, 9, 9]);
        decoder.push(&Message::Accept.to_frame().unwrap());
        decoder.push(&[1, 0xff, 0, 0]);
        assert_eq!(decode_all(&mut decoder), vec![Message::Accept]);
        assert_eq!(decoder.skipped_unknown(), 2);
    }

    #[test]
    fn unknown_version_is_fatal() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[2, 0x04, 0, 0]);
        assert_eq!(
            decoder.next_message(),
            Err(ProtoError::UnsupportedVersion { version: 2 })
        );
        decoder.push(&Message::Accept.to_frame().unwrap());
        assert_eq!(decoder.next_message(), Err(ProtoError::StreamFailed));
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn oversize_is_detected_from_the_header_alone() {
        let mut decoder = FrameDecoder::with_max_body_len(100);
        decoder.push(&[1, 0x02, 0, 101]);
        assert_eq!(
            decoder.next_message(),
            Err(ProtoError::TooLarge {
                what: "signaling body",
                len: 101,
                max: 100
            })
        );
        assert_eq!(decoder.next_message(), Err(ProtoError::StreamFailed));
        let too_big = Message::Handshake(vec![0; MAX_BODY_LEN + 1]);
        let mut out = vec![0xaa];
        assert!(matches!(
            too_big.encode(&mut out),
            Err(ProtoError::TooLarge { .. })
        ));
        assert_eq!(out, [0xaa], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn malformed_body_is_an_error_and_the_stream_goes_on() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[1, 0x03, 0, 2, 0, 0]); // truncated Invite
        decoder.push(&[1, 0x0b, 0, 3, 1, 2, 3]); // truncated Ping
        decoder.push(&[1, 0x01, 0, 6, 3, 2, 0, 0, 0, 0]); // min > max
        let mut invite = vec![1, 0x03, 0, 24];
        invite.extend_from_slice(&[0; 16]);
        invite.extend_from_slice(&[0, 30, 0, 0, 0, 0, 0, 4]); // 30 ms is not a valid duration
        decoder.push(&invite);
        decoder.push(&Message::Busy.to_frame().unwrap());
        assert!(matches!(
            decoder.next_message(),
            Err(ProtoError::Truncated { .. })
        ));
        assert!(matches!(
            decoder.next_message(),
            Err(ProtoError::Truncated { .. })
        ));
        assert!(matches!(
            decoder.next_message(),
            Err(ProtoError::InvalidField { .. })
        ));
        assert!(matches!(
            decoder.next_message(),
            Err(ProtoError::InvalidField { .. })
        ));
        assert_eq!(decoder.next_message(), Ok(Some(Message::Busy)));
        assert_eq!(decoder.next_message(), Ok(None));
    }

    #[test]
    fn trailing_bytes_in_fixed_bodies_are_ignored() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[1, 0x05, 0, 2, 0xaa, 0xbb]);
        decoder.push(&[1, 0x06, 0, 3, 1, 0xaa, 0xbb]);
        assert_eq!(
            decode_all(&mut decoder),
            vec![
                Message::Accept,
                Message::Reject {
                    reason: Reason::Declined
                }
            ]
        );
    }

    #[test]
    fn reason_codes_round_trip() {
        for code in 0..=u8::MAX {
            assert_eq!(Reason::from_code(code).code(), code);
        }
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate_version(1, 1), Ok(1));
        assert_eq!(negotiate_version(1, 9), Ok(1));
        assert_eq!(
            negotiate_version(2, 9),
            Err(ProtoError::UnsupportedVersion { version: 9 })
        );
        assert!(negotiate_version(0, 0).is_err());
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        // A small xorshift generator: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut decoder = FrameDecoder::with_max_body_len(64);
            let len = (next() % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    // Mostly version 1 so the body parsers are reached.
                    if i % 5 == 0 { 1 } else { next() as u8 }
                })
                .collect();
            decoder.push(&bytes);
            // Every call either consumes a frame of at least a header or ends the loop.
            for _ in 0..=bytes.len() / FRAME_HEADER_LEN {
                match decoder.next_message() {
                    Ok(None) => {
                        // What is left is less than one frame the decoder would accept.
                        assert!(decoder.buffered_len() < FRAME_HEADER_LEN + 64);
                        break;
                    }
                    Err(ProtoError::StreamFailed) => {
                        assert_eq!(decoder.buffered_len(), 0);
                        break;
                    }
                    Ok(Some(message)) => {
                        // Whatever decodes must re-encode and decode to itself.
                        let frame = message.to_frame().unwrap();
                        let mut again = FrameDecoder::new();
                        again.push(&frame);
                        assert_eq!(again.next_message().unwrap(), Some(message));
                    }
                    Err(_) => {}
                }
            }
            assert!(
                matches!(
                    decoder.next_message(),
                    Ok(None) | Err(ProtoError::StreamFailed)
                ),
                "the decoder stopped within one call per frame"
            );
        }
    }

    #[test]
    fn many_tiny_frames_in_one_read_are_skipped_in_linear_work() {
        let mut decoder = FrameDecoder::new();
        let mut read = [1u8, 0x7f, 0, 0].repeat(1024);
        // Then the first half of a Ping, which must survive compaction intact.
        let ping = Message::Ping(0x0102_0304_0506_0708).to_frame().unwrap();
        let (ping_head, ping_tail) = ping.split_at(7);
        read.extend_from_slice(ping_head);
        decoder.push(&read);
        assert_eq!(decoder.next_message(), Ok(None));
        assert_eq!(decoder.skipped_unknown(), 1024);
        assert_eq!(decoder.buffered_len(), ping_head.len());
        decoder.push(ping_tail);
        assert_eq!(
            decoder.next_message(),
            Ok(Some(Message::Ping(0x0102_0304_0506_0708)))
        );
        assert_eq!(decoder.buffered_len(), 0);
        // Removing each frame from the front would move about 2 MB; compaction moves only
        // the unread tail, once.
        assert!(
            decoder.moved_bytes <= ping_head.len(),
            "moved {} bytes",
            decoder.moved_bytes
        );
    }

    #[test]
    fn compaction_keeps_memory_bounded_under_small_reads() {
        // A long run of one-byte reads of many small frames: the buffer never holds more
        // than the unread bytes plus as many consumed ones, and the copying stays linear.
        let mut stream = Vec::new();
        for i in 0..500u64 {
            Message::Ping(i).encode(&mut stream).unwrap();
            stream.extend_from_slice(&[1, 0x7f, 0, 1, 0]);
        }
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for (index, piece) in stream.chunks(3).enumerate() {
            decoder.push(piece);
            assert!(decoder.buffer.len() <= 2 * decoder.buffered_len() + piece.len());
            if index % 7 == 0 {
                got.extend(decode_all(&mut decoder));
            }
        }
        got.extend(decode_all(&mut decoder));
        assert_eq!(got, (0..500).map(Message::Ping).collect::<Vec<_>>());
        assert_eq!(decoder.skipped_unknown(), 500);
        assert!(decoder.moved_bytes <= stream.len());
    }
}
