//! Control messages: the end-to-end encrypted messages carried in [`crate::Message::Encrypted`].
//!
//! ```text
//! control message = [u8 version = 1][u8 type][body]
//! ```
//!
//! The message is the plaintext of one SFrame frame, so its length is known from the frame and
//! the body carries no length of its own. A receiver ignores bytes after the fields it knows in a
//! fixed-layout body, so that a later revision of version 1 can append fields.

use crate::error::{ProtoError, Reader};

/// Version byte of the control message encoding.
pub const CONTROL_VERSION: u8 = 1;
/// Largest opaque call-data payload carried in one control message.
pub const MAX_CALL_DATA_LEN: usize = 4096;
/// Largest DTMF volume (RFC 4733: power level 0 to -63 dBm0, sent as 0..=63).
pub const MAX_DTMF_VOLUME: u8 = 63;
/// Tone duration used when the application does not choose one.
pub const DEFAULT_DTMF_DURATION_MS: u16 = 100;
/// Volume used when the application does not choose one (-10 dBm0).
pub const DEFAULT_DTMF_VOLUME: u8 = 10;

mod control_type {
    pub(super) const DTMF: u8 = 0x01;
    pub(super) const CALL_DATA: u8 = 0x02;
    pub(super) const HOLD: u8 = 0x03;
    pub(super) const RESUME: u8 = 0x04;
    pub(super) const MUTE: u8 = 0x05;
    pub(super) const RECEPTION_REPORT: u8 = 0x06;
}

/// A DTMF event, numbered as in RFC 4733 section 3.2 (0-9 = digits, 10 = `*`, 11 = `#`, 12-15 = A-D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the names are the keys
pub enum DtmfEvent {
    Digit0,
    Digit1,
    Digit2,
    Digit3,
    Digit4,
    Digit5,
    Digit6,
    Digit7,
    Digit8,
    Digit9,
    Star,
    Pound,
    A,
    B,
    C,
    D,
}

const DTMF_EVENTS: [DtmfEvent; 16] = [
    DtmfEvent::Digit0,
    DtmfEvent::Digit1,
    DtmfEvent::Digit2,
    DtmfEvent::Digit3,
    DtmfEvent::Digit4,
    DtmfEvent::Digit5,
    DtmfEvent::Digit6,
    DtmfEvent::Digit7,
    DtmfEvent::Digit8,
    DtmfEvent::Digit9,
    DtmfEvent::Star,
    DtmfEvent::Pound,
    DtmfEvent::A,
    DtmfEvent::B,
    DtmfEvent::C,
    DtmfEvent::D,
];

const DTMF_CHARS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

impl DtmfEvent {
    /// Every event, in code order.
    pub const ALL: [DtmfEvent; 16] = DTMF_EVENTS;

    /// The RFC 4733 event code (0..=15).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The event for an RFC 4733 event code.
    pub fn from_code(code: u8) -> Result<Self, ProtoError> {
        DTMF_EVENTS
            .get(usize::from(code))
            .copied()
            .ok_or(ProtoError::InvalidField {
                field: "DTMF event",
                value: u64::from(code),
            })
    }

    /// The key's character (`0`-`9`, `*`, `#`, `A`-`D`).
    pub fn to_char(self) -> char {
        DTMF_CHARS
            .get(usize::from(self.code()))
            .copied()
            .unwrap_or('?')
    }

    /// The event for a key character; `a`-`d` are accepted as `A`-`D`.
    pub fn from_char(c: char) -> Result<Self, ProtoError> {
        let upper = c.to_ascii_uppercase();
        DTMF_CHARS
            .iter()
            .position(|&k| k == upper)
            .and_then(|i| DTMF_EVENTS.get(i).copied())
            .ok_or(ProtoError::InvalidDtmfDigit(c))
    }

    /// Parses a digit string such as `"12#"`; the whole string is refused if any character is
    /// not a DTMF key (spaces included).
    pub fn parse_digits(digits: &str) -> Result<Vec<Self>, ProtoError> {
        digits.chars().map(Self::from_char).collect()
    }
}

/// An end-to-end encrypted in-call message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// One DTMF key press.
    Dtmf {
        /// The key.
        event: DtmfEvent,
        /// Tone duration in milliseconds (at least 1).
        duration_ms: u16,
        /// Power level in -dBm0 (0..=63).
        volume: u8,
    },
    /// Opaque application (CTI) data, at most [`MAX_CALL_DATA_LEN`] bytes.
    CallData(Vec<u8>),
    /// The sender put the call on hold: it stops sending and receiving media.
    Hold,
    /// The sender took the call off hold.
    Resume,
    /// The sender muted (`true`) or unmuted its microphone; informational only.
    Mute(bool),
    /// How the sender's receiver is doing, about once a second, so the peer's encoder can
    /// match its forward error correction to the loss really seen.
    ReceptionReport {
        /// Media frames lost in transit since the previous report, per thousand expected.
        loss_permille: u16,
        /// Interarrival jitter in milliseconds.
        jitter_ms: u16,
    },
}

impl ControlMessage {
    /// Appends the encoding of this message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        self.validate()?;
        out.push(CONTROL_VERSION);
        match self {
            Self::Dtmf {
                event,
                duration_ms,
                volume,
            } => {
                out.push(control_type::DTMF);
                out.push(event.code());
                out.extend_from_slice(&duration_ms.to_be_bytes());
                out.push(*volume);
            }
            Self::CallData(data) => {
                out.push(control_type::CALL_DATA);
                out.extend_from_slice(data);
            }
            Self::Hold => out.push(control_type::HOLD),
            Self::Resume => out.push(control_type::RESUME),
            Self::Mute(muted) => {
                out.push(control_type::MUTE);
                out.push(u8::from(*muted));
            }
            Self::ReceptionReport {
                loss_permille,
                jitter_ms,
            } => {
                out.push(control_type::RECEPTION_REPORT);
                out.extend_from_slice(&loss_permille.to_be_bytes());
                out.extend_from_slice(&jitter_ms.to_be_bytes());
            }
        }
        Ok(())
    }

    /// The encoding of this message in a new vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes one control message.
    ///
    /// An unknown type of a known version is [`ProtoError::UnknownControlType`], which the
    /// receiver should ignore rather than treat as an attack.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let mut reader = Reader::new(bytes, "control message");
        let version = reader.u8()?;
        if version != CONTROL_VERSION {
            return Err(ProtoError::UnsupportedVersion { version });
        }
        let message_type = reader.u8()?;
        let message = match message_type {
            control_type::DTMF => Self::Dtmf {
                event: DtmfEvent::from_code(reader.u8()?)?,
                duration_ms: reader.u16()?,
                volume: reader.u8()?,
            },
            control_type::CALL_DATA => Self::CallData(reader.rest().to_vec()),
            control_type::HOLD => Self::Hold,
            control_type::RESUME => Self::Resume,
            control_type::MUTE => Self::Mute(match reader.u8()? {
                0 => false,
                1 => true,
                other => {
                    return Err(ProtoError::InvalidField {
                        field: "mute flag",
                        value: u64::from(other),
                    });
                }
            }),
            control_type::RECEPTION_REPORT => Self::ReceptionReport {
                loss_permille: reader.u16()?,
                jitter_ms: reader.u16()?,
            },
            other => {
                return Err(ProtoError::UnknownControlType {
                    message_type: other,
                });
            }
        };
        message.validate()?;
        Ok(message)
    }

    fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Self::Dtmf {
                duration_ms,
                volume,
                ..
            } => {
                if *duration_ms == 0 {
                    return Err(ProtoError::InvalidField {
                        field: "DTMF duration (ms)",
                        value: 0,
                    });
                }
                if *volume > MAX_DTMF_VOLUME {
                    return Err(ProtoError::InvalidField {
                        field: "DTMF volume",
                        value: u64::from(*volume),
                    });
                }
            }
            Self::CallData(data) if data.len() > MAX_CALL_DATA_LEN => {
                return Err(ProtoError::TooLarge {
                    what: "call data",
                    len: data.len(),
                    max: MAX_CALL_DATA_LEN,
                });
            }
            Self::ReceptionReport { loss_permille, .. } if *loss_permille > 1000 => {
                return Err(ProtoError::InvalidField {
                    field: "loss (per mille)",
                    value: u64::from(*loss_permille),
                });
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reception_report_layout_and_bounds() {
        let report = ControlMessage::ReceptionReport {
            loss_permille: 0x0102,
            jitter_ms: 0x0304,
        };
        assert_eq!(
            report.to_bytes().expect("encode"),
            vec![CONTROL_VERSION, 0x06, 0x01, 0x02, 0x03, 0x04]
        );
        let too_much = [CONTROL_VERSION, 0x06, 0x03, 0xe9, 0x00, 0x00];
        assert!(matches!(
            ControlMessage::decode(&too_much),
            Err(ProtoError::InvalidField { .. })
        ));
        assert!(ControlMessage::decode(&[CONTROL_VERSION, 0x06, 0x00]).is_err());
    }

    fn samples() -> Vec<ControlMessage> {
        let mut messages = vec![
            ControlMessage::Hold,
            ControlMessage::Resume,
            ControlMessage::Mute(true),
            ControlMessage::Mute(false),
            ControlMessage::CallData(Vec::new()),
            ControlMessage::CallData(b"{\"crm\":\"ticket-42\"}".to_vec()),
            ControlMessage::CallData(vec![0xff; MAX_CALL_DATA_LEN]),
            ControlMessage::ReceptionReport {
                loss_permille: 0,
                jitter_ms: 0,
            },
            ControlMessage::ReceptionReport {
                loss_permille: 1000,
                jitter_ms: u16::MAX,
            },
        ];
        for event in DtmfEvent::ALL {
            for (duration_ms, volume) in [(1, 0), (100, 10), (u16::MAX, MAX_DTMF_VOLUME)] {
                messages.push(ControlMessage::Dtmf {
                    event,
                    duration_ms,
                    volume,
                });
            }
        }
        messages
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let bytes = message.to_bytes().unwrap();
            assert_eq!(bytes[0], CONTROL_VERSION);
            assert_eq!(ControlMessage::decode(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn dtmf_layout_is_as_documented() {
        let bytes = ControlMessage::Dtmf {
            event: DtmfEvent::Pound,
            duration_ms: 0x0102,
            volume: 7,
        }
        .to_bytes()
        .unwrap();
        assert_eq!(bytes, [1, 0x01, 11, 0x01, 0x02, 7]);
    }

    #[test]
    fn rfc4733_event_codes() {
        let expected = [
            ('0', 0),
            ('5', 5),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('b', 13),
            ('C', 14),
            ('d', 15),
        ];
        for (c, code) in expected {
            let event = DtmfEvent::from_char(c).unwrap();
            assert_eq!(event.code(), code);
            assert_eq!(DtmfEvent::from_code(code).unwrap(), event);
            assert_eq!(event.to_char(), c.to_ascii_uppercase());
        }
        assert!(DtmfEvent::from_code(16).is_err());
        assert_eq!(
            DtmfEvent::parse_digits("1 2"),
            Err(ProtoError::InvalidDtmfDigit(' '))
        );
        assert_eq!(
            DtmfEvent::parse_digits("12#").unwrap(),
            vec![DtmfEvent::Digit1, DtmfEvent::Digit2, DtmfEvent::Pound]
        );
        assert!(DtmfEvent::parse_digits("E").is_err());
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        assert!(matches!(
            ControlMessage::decode(&[]),
            Err(ProtoError::Truncated { .. })
        ));
        assert_eq!(
            ControlMessage::decode(&[2, 0x03]),
            Err(ProtoError::UnsupportedVersion { version: 2 })
        );
        assert_eq!(
            ControlMessage::decode(&[1, 0x7f]),
            Err(ProtoError::UnknownControlType { message_type: 0x7f })
        );
        assert!(matches!(
            ControlMessage::decode(&[1, 0x01, 3, 0]),
            Err(ProtoError::Truncated { .. })
        ));
        assert!(matches!(
            ControlMessage::decode(&[1, 0x01, 16, 0, 100, 0]),
            Err(ProtoError::InvalidField { .. })
        ));
        assert!(matches!(
            ControlMessage::decode(&[1, 0x01, 1, 0, 100, 64]),
            Err(ProtoError::InvalidField { .. })
        ));
        assert!(matches!(
            ControlMessage::decode(&[1, 0x01, 1, 0, 0, 10]),
            Err(ProtoError::InvalidField { .. })
        ));
        assert!(matches!(
            ControlMessage::decode(&[1, 0x05, 2]),
            Err(ProtoError::InvalidField { .. })
        ));
        let mut oversize = vec![1, 0x02];
        oversize.resize(2 + MAX_CALL_DATA_LEN + 1, 0);
        assert!(matches!(
            ControlMessage::decode(&oversize),
            Err(ProtoError::TooLarge { .. })
        ));
        assert!(
            ControlMessage::CallData(vec![0; MAX_CALL_DATA_LEN + 1])
                .to_bytes()
                .is_err()
        );
    }

    #[test]
    fn trailing_bytes_after_fixed_fields_are_ignored() {
        assert_eq!(
            ControlMessage::decode(&[1, 0x03, 9, 9]).unwrap(),
            ControlMessage::Hold
        );
        assert_eq!(
            ControlMessage::decode(&[1, 0x05, 1, 0xee]).unwrap(),
            ControlMessage::Mute(true)
        );
    }
}
