//! The RFC 9605 §4.3 SFrame header: one config byte `X|K(3)|Y|C(3)` followed by the KID and the
//! counter (CTR) as minimal big-endian integers. A value below 8 fits in the config byte itself.

use crate::key::KeyId;

/// Longest possible header: config byte + 8 KID bytes + 8 CTR bytes.
pub const MAX_HEADER_LEN: usize = 17;

const EXTENDED_KID: u8 = 0b1000_0000;
const EXTENDED_CTR: u8 = 0b0000_1000;
const FIELD_MASK: u8 = 0b0111;

/// Why a header could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The input is empty or ends inside the KID or CTR field.
    #[error("header truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the config byte announces.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The output buffer cannot hold the encoded header.
    #[error("buffer too small for header: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Header length.
        needed: usize,
        /// Buffer length.
        available: usize,
    },
}

/// A decoded SFrame header: the key id and the frame counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SframeHeader {
    /// Key identifier.
    pub kid: KeyId,
    /// Frame counter (the nonce input; never reused under one key).
    pub ctr: u64,
}

/// Bytes needed for `value` in minimal big-endian form (at least 1).
fn minimal_len(value: u64) -> usize {
    let significant_bits = 64 - value.leading_zeros() as usize;
    significant_bits.div_ceil(8).max(1)
}

/// Bytes one field adds after the config byte: none when it fits inline.
fn field_len(value: u64) -> usize {
    if value < 8 { 0 } else { minimal_len(value) }
}

fn write_be(value: u64, out: &mut [u8]) {
    let bytes = value.to_be_bytes();
    let start = bytes.len() - out.len();
    out.copy_from_slice(&bytes[start..]);
}

fn read_be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// The config-byte bits for one field: `(extended flag, 3-bit value)`.
fn config_bits(value: u64) -> (bool, u8) {
    if value < 8 {
        // value < 8, so the cast keeps all bits
        (false, value as u8)
    } else {
        // minimal_len is 1..=8, so len - 1 fits in 3 bits
        (true, (minimal_len(value) - 1) as u8)
    }
}

impl SframeHeader {
    /// Length of this header on the wire (1 to [`MAX_HEADER_LEN`] bytes).
    pub fn encoded_len(&self) -> usize {
        1 + field_len(self.kid.0) + field_len(self.ctr)
    }

    /// Writes the header at the start of `out`; returns the bytes written.
    ///
    /// # Errors
    /// [`HeaderError::BufferTooSmall`] if `out` is shorter than [`Self::encoded_len`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, HeaderError> {
        let kid_len = field_len(self.kid.0);
        let ctr_len = field_len(self.ctr);
        let total = 1 + kid_len + ctr_len;
        let Some(dst) = out.get_mut(..total) else {
            return Err(HeaderError::BufferTooSmall {
                needed: total,
                available: out.len(),
            });
        };
        let (kid_extended, kid_bits) = config_bits(self.kid.0);
        let (ctr_extended, ctr_bits) = config_bits(self.ctr);
        let mut config = (kid_bits << 4) | ctr_bits;
        if kid_extended {
            config |= EXTENDED_KID;
        }
        if ctr_extended {
            config |= EXTENDED_CTR;
        }
        let (config_dst, fields) = dst.split_at_mut(1);
        config_dst.fill(config);
        let (kid_dst, ctr_dst) = fields.split_at_mut(kid_len);
        if kid_extended {
            write_be(self.kid.0, kid_dst);
        }
        if ctr_extended {
            write_be(self.ctr, ctr_dst);
        }
        Ok(total)
    }

    /// Parses a header from the start of `buf`; returns it and its length in bytes.
    ///
    /// Non-minimal encodings (an extended field holding a value that would fit in fewer bytes)
    /// are accepted, as RFC 9605 only requires senders to be minimal; the header is
    /// authenticated as AAD, so such a header cannot be substituted for the sender's.
    ///
    /// # Errors
    /// [`HeaderError::Truncated`] if `buf` is empty or ends inside the KID or CTR field.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), HeaderError> {
        let Some(&config) = buf.first() else {
            return Err(HeaderError::Truncated {
                needed: 1,
                available: 0,
            });
        };
        let kid_bits = (config >> 4) & FIELD_MASK;
        let ctr_bits = config & FIELD_MASK;
        let kid_len = if config & EXTENDED_KID != 0 {
            usize::from(kid_bits) + 1
        } else {
            0
        };
        let ctr_len = if config & EXTENDED_CTR != 0 {
            usize::from(ctr_bits) + 1
        } else {
            0
        };
        let total = 1 + kid_len + ctr_len;
        let Some(fields) = buf.get(1..total) else {
            return Err(HeaderError::Truncated {
                needed: total,
                available: buf.len(),
            });
        };
        let (kid_bytes, ctr_bytes) = fields.split_at(kid_len);
        let kid = if kid_len == 0 {
            u64::from(kid_bits)
        } else {
            read_be(kid_bytes)
        };
        let ctr = if ctr_len == 0 {
            u64::from(ctr_bits)
        } else {
            read_be(ctr_bytes)
        };
        Ok((
            Self {
                kid: KeyId(kid),
                ctr,
            },
            total,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(kid: u64, ctr: u64) -> Vec<u8> {
        let header = SframeHeader {
            kid: KeyId(kid),
            ctr,
        };
        let mut buf = [0u8; MAX_HEADER_LEN];
        let len = header.encode(&mut buf).expect("17 bytes always suffice");
        assert_eq!(len, header.encoded_len());
        assert_eq!(SframeHeader::decode(&buf[..len]), Ok((header, len)));
        buf[..len].to_vec()
    }

    #[test]
    fn inline_values_take_one_byte() {
        assert_eq!(round_trip(0, 0), [0x00]);
        assert_eq!(round_trip(7, 7), [0x77]);
        assert_eq!(round_trip(1, 2), [0x12]);
    }

    #[test]
    fn extended_values_are_minimal_big_endian() {
        assert_eq!(round_trip(8, 0), [0x80, 0x08]);
        assert_eq!(round_trip(0, 8), [0x08, 0x08]);
        assert_eq!(round_trip(0x123, 0x4567), [0x99, 0x01, 0x23, 0x45, 0x67]);
        let max = round_trip(u64::MAX, u64::MAX);
        assert_eq!(max.len(), MAX_HEADER_LEN);
        assert_eq!(max[0], 0xff);
    }

    #[test]
    fn boundaries_round_trip() {
        for shift in 0..64 {
            for delta in [-1i128, 0, 1] {
                let value = (1i128 << shift) + delta;
                let Ok(value) = u64::try_from(value) else {
                    continue;
                };
                round_trip(value, value);
                round_trip(value, 3);
                round_trip(5, value);
            }
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert_eq!(
            SframeHeader::decode(&[]),
            Err(HeaderError::Truncated {
                needed: 1,
                available: 0
            })
        );
        let full = round_trip(0x123, 0x4567);
        for cut in 1..full.len() {
            assert_eq!(
                SframeHeader::decode(&full[..cut]),
                Err(HeaderError::Truncated {
                    needed: full.len(),
                    available: cut
                })
            );
        }
    }

    #[test]
    fn non_minimal_encoding_decodes_to_its_value() {
        // KID 5 written as one extended byte, CTR 1 as two extended bytes.
        let (header, len) = SframeHeader::decode(&[0x89, 0x05, 0x00, 0x01]).expect("valid");
        assert_eq!(
            header,
            SframeHeader {
                kid: KeyId(5),
                ctr: 1
            }
        );
        assert_eq!(len, 4);
    }

    #[test]
    fn encode_into_short_buffer_fails() {
        let header = SframeHeader {
            kid: KeyId(300),
            ctr: 0,
        };
        let mut buf = [0u8; 2];
        assert_eq!(
            header.encode(&mut buf),
            Err(HeaderError::BufferTooSmall {
                needed: 3,
                available: 2
            })
        );
    }

    #[test]
    fn trailing_bytes_are_not_consumed() {
        let (header, len) = SframeHeader::decode(&[0x12, 0xaa, 0xbb]).expect("valid");
        assert_eq!(
            header,
            SframeHeader {
                kid: KeyId(1),
                ctr: 2
            }
        );
        assert_eq!(len, 1);
    }
}
