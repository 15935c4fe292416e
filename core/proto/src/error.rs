//! The error type shared by every decoder and encoder in this crate.

use thiserror::Error;

/// Why a signaling frame, control message or media payload could not be decoded or encoded.
///
/// Every variant is the consequence of bad input (from the network or from the caller); none of
/// them means the crate is broken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The version byte names a wire version this implementation does not speak.
    #[error("unsupported wire version {version}")]
    UnsupportedVersion {
        /// The version byte that was received.
        version: u8,
    },
    /// A frame or message body is larger than the configured maximum.
    #[error("{what} of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Which item was too large.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum allowed length in bytes.
        max: usize,
    },
    /// The input ended before all fields of an item were read.
    #[error("{what} truncated: needed {needed} bytes, had {available}")]
    Truncated {
        /// Which item was cut short.
        what: &'static str,
        /// Bytes needed to read the item.
        needed: usize,
        /// Bytes that were available.
        available: usize,
    },
    /// A field holds a value outside its allowed range.
    #[error("invalid {field}: {value}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A control message type this implementation does not know (the message can be ignored).
    #[error("unknown control message type {message_type:#04x}")]
    UnknownControlType {
        /// The type byte that was received.
        message_type: u8,
    },
    /// The output buffer given to an encoder is too small.
    #[error("output buffer too small: needed {needed} bytes, had {available}")]
    BufferTooSmall {
        /// Bytes the encoded item needs.
        needed: usize,
        /// Bytes the buffer offers.
        available: usize,
    },
    /// A character that is not a DTMF digit (0-9, *, #, A-D).
    #[error("{0:?} is not a DTMF digit")]
    InvalidDtmfDigit(char),
    /// The frame decoder met an unrecoverable framing error earlier and the stream must be closed.
    #[error("the signaling stream is unusable after an earlier framing error")]
    StreamFailed,
}

/// Reads fixed-size fields from a byte slice without panicking.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        match self.bytes.split_at_checked(n) {
            Some((head, tail)) => {
                self.bytes = tail;
                Ok(head)
            }
            None => Err(ProtoError::Truncated {
                what: self.what,
                needed: n,
                available: self.bytes.len(),
            }),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}
