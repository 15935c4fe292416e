//! The media payload: what is inside one SFrame-protected QUIC datagram.
//!
//! ```text
//! datagram = SFrame header (config byte, KID, CTR) || AEAD( flags || [timestamp] || opus ) || tag
//! flags    = M D LL T RRR   (bit 7 .. bit 0)
//!            M   marker: first frame of a talkspurt (after silence / DTX)
//!            D   DTX: comfort-noise / discontinuous-transmission frame
//!            LL  frame duration code: 0 = 10 ms, 1 = 20 ms, 2 = 40 ms, 3 = 60 ms
//!            T   an explicit 32-bit big-endian timestamp (48 kHz units) follows the flags
//!            RRR reserved, sent as 0; a receiver rejects a payload with any of them set
//! ```
//!
//! Without `T`, the timestamp is implied by the SFrame counter: `ctr * samples_per_frame`
//! (modulo 2^32), because the sender uses one counter value per frame. `T` is for a sender whose
//! frames stopped being evenly spaced in counter space (duration change mid-call).

use viska_sframe::{CipherSuite, KeyId};

use crate::error::{ProtoError, Reader};

/// Length of the flags byte.
pub const MEDIA_FLAGS_LEN: usize = 1;
/// Length of the optional explicit timestamp.
pub const MEDIA_TIMESTAMP_LEN: usize = 4;
/// Largest Opus packet accepted: one 1275-byte frame plus its TOC byte (RFC 6716 section 3.2.1).
pub const MAX_OPUS_PACKET_LEN: usize = 1276;
/// Opus sample clock used for timestamps.
pub const MEDIA_CLOCK_HZ: u32 = 48_000;

const FLAG_MARKER: u8 = 0x80;
const FLAG_DTX: u8 = 0x40;
const DURATION_SHIFT: u8 = 4;
const DURATION_MASK: u8 = 0x30;
const FLAG_TIMESTAMP: u8 = 0x08;
const FLAGS_RESERVED: u8 = 0x07;

/// Duration of one Opus packet (defined once, in `viska-types`).
pub use viska_types::FrameDuration;

/// The payload's 2-bit duration code (§4.2 of `docs/protocol-wire.md`).
trait DurationCode: Sized {
    fn code(self) -> u8;
    fn from_code(code: u8) -> Self;
}

impl DurationCode for FrameDuration {
    fn code(self) -> u8 {
        match self {
            Self::Ms10 => 0,
            Self::Ms20 => 1,
            Self::Ms40 => 2,
            Self::Ms60 => 3,
        }
    }

    fn from_code(code: u8) -> Self {
        match code & 0x03 {
            0 => Self::Ms10,
            1 => Self::Ms20,
            2 => Self::Ms40,
            _ => Self::Ms60,
        }
    }
}

/// The fields in front of the Opus bytes of one media payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MediaHeader {
    /// First frame of a talkspurt: the receiver may resynchronise its playout here.
    pub marker: bool,
    /// Discontinuous transmission / comfort-noise frame.
    pub dtx: bool,
    /// Duration of the Opus packet.
    pub duration: FrameDuration,
    /// Explicit 48 kHz timestamp; `None` means "implied by the SFrame counter".
    pub timestamp: Option<u32>,
}

impl MediaHeader {
    /// Bytes this header takes on the wire (1, or 5 with an explicit timestamp).
    pub fn encoded_len(&self) -> usize {
        MEDIA_FLAGS_LEN
            + if self.timestamp.is_some() {
                MEDIA_TIMESTAMP_LEN
            } else {
                0
            }
    }

    fn flags(&self) -> u8 {
        let mut flags = self.duration.code() << DURATION_SHIFT;
        if self.marker {
            flags |= FLAG_MARKER;
        }
        if self.dtx {
            flags |= FLAG_DTX;
        }
        if self.timestamp.is_some() {
            flags |= FLAG_TIMESTAMP;
        }
        flags
    }

    /// The 48 kHz timestamp of this frame: the explicit one, or the one implied by `ctr`.
    pub fn timestamp_for_counter(&self, ctr: u64) -> u32 {
        self.timestamp
            .unwrap_or_else(|| implied_timestamp(ctr, self.duration))
    }
}

/// The timestamp implied by an SFrame counter: `ctr * samples_per_frame` modulo 2^32.
pub fn implied_timestamp(ctr: u64, duration: FrameDuration) -> u32 {
    // Truncation is the point: timestamps wrap at 2^32 like RTP timestamps.
    (ctr.wrapping_mul(duration.samples() as u64) & u64::from(u32::MAX)) as u32
}

/// Bytes a media datagram carries beyond the Opus packet, for a frame protected with this
/// suite, KID and counter and no explicit timestamp: the SFrame header (config byte, KID bytes
/// when `kid >= 8`, CTR bytes when `ctr >= 8`), the flags byte and the AEAD tag.
///
/// With KID below 8 and a counter below 65536 this is 1 + 2 + 1 + 16 = 20 bytes with a 16-byte
/// tag (18 while the counter is below 8, 19 below 256), and 14 with the 80-bit-tag suite.
pub fn media_overhead(suite: CipherSuite, kid: KeyId, ctr: u64) -> usize {
    viska_sframe::overhead(suite, kid, ctr) + MEDIA_FLAGS_LEN
}

/// Writes `header || opus` into `out` and returns the number of bytes written.
///
/// Never allocates. Fails if `opus` is longer than [`MAX_OPUS_PACKET_LEN`] or `out` is too small.
pub fn encode_media_payload(
    header: &MediaHeader,
    opus: &[u8],
    out: &mut [u8],
) -> Result<usize, ProtoError> {
    if opus.len() > MAX_OPUS_PACKET_LEN {
        return Err(ProtoError::TooLarge {
            what: "opus packet",
            len: opus.len(),
            max: MAX_OPUS_PACKET_LEN,
        });
    }
    let header_len = header.encoded_len();
    let needed = header_len + opus.len();
    let available = out.len();
    let dest = out
        .get_mut(..needed)
        .ok_or(ProtoError::BufferTooSmall { needed, available })?;
    let (head, body) = dest.split_at_mut(header_len);
    if let Some((flags, rest)) = head.split_first_mut() {
        *flags = header.flags();
        if let Some(ts) = header.timestamp {
            rest.copy_from_slice(&ts.to_be_bytes());
        }
    }
    body.copy_from_slice(opus);
    Ok(needed)
}

/// Splits a decrypted media payload into its header and the Opus bytes, without copying.
pub fn decode_media_payload(payload: &[u8]) -> Result<(MediaHeader, &[u8]), ProtoError> {
    let mut reader = Reader::new(payload, "media payload");
    let flags = reader.u8()?;
    if flags & FLAGS_RESERVED != 0 {
        return Err(ProtoError::InvalidField {
            field: "media flags (reserved bits)",
            value: u64::from(flags),
        });
    }
    let timestamp = if flags & FLAG_TIMESTAMP != 0 {
        Some(reader.u32()?)
    } else {
        None
    };
    let opus = reader.rest();
    if opus.len() > MAX_OPUS_PACKET_LEN {
        return Err(ProtoError::TooLarge {
            what: "opus packet",
            len: opus.len(),
            max: MAX_OPUS_PACKET_LEN,
        });
    }
    let header = MediaHeader {
        marker: flags & FLAG_MARKER != 0,
        dtx: flags & FLAG_DTX != 0,
        duration: FrameDuration::from_code((flags & DURATION_MASK) >> DURATION_SHIFT),
        timestamp,
    };
    Ok((header, opus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_headers() -> Vec<MediaHeader> {
        let mut headers = Vec::new();
        for marker in [false, true] {
            for dtx in [false, true] {
                for duration in [
                    FrameDuration::Ms10,
                    FrameDuration::Ms20,
                    FrameDuration::Ms40,
                    FrameDuration::Ms60,
                ] {
                    for timestamp in [None, Some(0), Some(0xdead_beef)] {
                        headers.push(MediaHeader {
                            marker,
                            dtx,
                            duration,
                            timestamp,
                        });
                    }
                }
            }
        }
        headers
    }

    #[test]
    fn every_header_round_trips_with_payload() {
        let opus: Vec<u8> = (0..97u8).collect();
        for header in all_headers() {
            let mut out = [0u8; 200];
            let written = encode_media_payload(&header, &opus, &mut out).unwrap();
            assert_eq!(written, header.encoded_len() + opus.len());
            let (decoded, body) = decode_media_payload(&out[..written]).unwrap();
            assert_eq!(decoded, header);
            assert_eq!(body, &opus[..]);
        }
    }

    #[test]
    fn flag_byte_layout_is_as_documented() {
        let header = MediaHeader {
            marker: true,
            dtx: false,
            duration: FrameDuration::Ms20,
            timestamp: Some(0x0102_0304),
        };
        let mut out = [0u8; 8];
        let n = encode_media_payload(&header, &[0xaa], &mut out).unwrap();
        assert_eq!(&out[..n], &[0x80 | 0x10 | 0x08, 1, 2, 3, 4, 0xaa]);
        let dtx = MediaHeader {
            dtx: true,
            duration: FrameDuration::Ms10,
            ..MediaHeader::default()
        };
        let n = encode_media_payload(&dtx, &[], &mut out).unwrap();
        assert_eq!(&out[..n], &[0x40]);
    }

    #[test]
    fn malformed_payloads_are_typed_errors() {
        assert!(matches!(
            decode_media_payload(&[]),
            Err(ProtoError::Truncated { .. })
        ));
        assert!(matches!(
            decode_media_payload(&[0x08, 1, 2]),
            Err(ProtoError::Truncated { .. })
        ));
        for reserved in 1..8u8 {
            assert!(matches!(
                decode_media_payload(&[0x10 | reserved, 1]),
                Err(ProtoError::InvalidField { .. })
            ));
        }
        let oversize = vec![0x10; MAX_OPUS_PACKET_LEN + 2];
        assert!(matches!(
            decode_media_payload(&oversize),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn encoder_refuses_small_buffer_and_oversize_opus() {
        let header = MediaHeader::default();
        let mut small = [0u8; 3];
        assert_eq!(
            encode_media_payload(&header, &[1, 2, 3], &mut small),
            Err(ProtoError::BufferTooSmall {
                needed: 4,
                available: 3
            })
        );
        let big = vec![0u8; MAX_OPUS_PACKET_LEN + 1];
        let mut out = vec![0u8; 2000];
        assert!(matches!(
            encode_media_payload(&header, &big, &mut out),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn implied_timestamp_follows_counter_and_wraps() {
        assert_eq!(implied_timestamp(0, FrameDuration::Ms20), 0);
        assert_eq!(implied_timestamp(1, FrameDuration::Ms20), 960);
        assert_eq!(implied_timestamp(3, FrameDuration::Ms10), 1440);
        // 2^32 / 960 is not whole: check the wrap against 128-bit arithmetic.
        let ctr = 10_000_000u64;
        let expected = ((u128::from(ctr) * 960) % (1u128 << 32)) as u32;
        assert_eq!(implied_timestamp(ctr, FrameDuration::Ms20), expected);
        let explicit = MediaHeader {
            timestamp: Some(7),
            ..MediaHeader::default()
        };
        assert_eq!(explicit.timestamp_for_counter(99), 7);
        assert_eq!(MediaHeader::default().timestamp_for_counter(2), 1920);
    }

    #[test]
    fn overhead_numbers() {
        for suite in CipherSuite::ALL {
            // Header, flags byte and tag: 16-byte tags but for the 80-bit-tag suite.
            let tag = suite.tag_len();
            assert_eq!(media_overhead(suite, KeyId(0), 0), 2 + tag);
            assert_eq!(media_overhead(suite, KeyId(7), 7), 2 + tag);
            assert_eq!(media_overhead(suite, KeyId(0), 8), 3 + tag);
            assert_eq!(media_overhead(suite, KeyId(0), 255), 3 + tag);
            assert_eq!(media_overhead(suite, KeyId(0), 256), 4 + tag);
            assert_eq!(media_overhead(suite, KeyId(3), 65_535), 4 + tag);
            assert_eq!(media_overhead(suite, KeyId(3), 65_536), 5 + tag);
            assert_eq!(media_overhead(suite, KeyId(8), 1000), 5 + tag);
            // After 65 536 frames (about 22 minutes of 20 ms frames) the counter takes 3 bytes.
            assert_eq!(media_overhead(suite, KeyId(1), 3 * 60 * 60 * 50), 5 + tag);
        }
        assert_eq!(
            media_overhead(CipherSuite::AesCtr128HmacSha256_80, KeyId(3), 65_535),
            14
        );
        assert_eq!(
            media_overhead(CipherSuite::ChaCha20Poly1305Sha256, KeyId(3), 65_535),
            20
        );
    }

    #[test]
    fn overhead_matches_a_real_protected_frame() {
        use viska_sframe::{BaseKey, SframeSender};
        let opus = [0x5au8; 60];
        let header = MediaHeader::default();
        let mut payload = [0u8; 100];
        let payload_len = encode_media_payload(&header, &opus, &mut payload).unwrap();
        for suite in CipherSuite::ALL {
            let base_key = BaseKey::new(vec![9; suite.key_len()]);
            for ctr in [0u64, 300, 70_000] {
                let mut sender = SframeSender::new(suite, KeyId(2), &base_key).unwrap();
                sender.skip_to(ctr).unwrap();
                let mut frame = [0u8; 200];
                let frame_len = sender
                    .protect(&[], &payload[..payload_len], &mut frame)
                    .unwrap();
                assert_eq!(frame_len - opus.len(), media_overhead(suite, KeyId(2), ctr));
            }
        }
    }

    #[test]
    fn durations_convert() {
        for ms in [10u16, 20, 40, 60] {
            let d = FrameDuration::from_millis(ms).unwrap();
            assert_eq!(d.millis(), ms);
            assert_eq!(d.samples(), usize::from(ms) * 48);
        }
        assert!(FrameDuration::from_millis(30).is_err());
    }
}
