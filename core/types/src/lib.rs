//! Units Viska's layers share, defined once: the codec ([`viska-media`]), the wire format
//! ([`viska-proto`]) and the session all speak of the same [`FrameDuration`].
//!
//! [`viska-media`]: https://docs.rs/viska-media
//! [`viska-proto`]: https://docs.rs/viska-proto
#![forbid(unsafe_code)]

/// Samples per second of every frame Viska moves: 48 kHz.
pub const SAMPLE_RATE: u32 = 48_000;

/// A frame duration the wire and the codec can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} ms is not a frame duration (10, 20, 40 or 60)")]
pub struct NotAFrameDuration(pub u16);

/// The duration of one Opus packet (one media frame).
///
/// The wire format can name 10, 20, 40 and 60 ms (`docs/protocol-wire.md` §4.2); a version-1
/// phone sends and plays 10 and 20 ms frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FrameDuration {
    /// 10 ms (480 samples): lower latency, more packet overhead.
    Ms10,
    /// 20 ms (960 samples): the usual choice for voice.
    #[default]
    Ms20,
    /// 40 ms (1920 samples).
    Ms40,
    /// 60 ms (2880 samples).
    Ms60,
}

impl FrameDuration {
    /// The duration in milliseconds.
    pub const fn millis(self) -> u16 {
        match self {
            Self::Ms10 => 10,
            Self::Ms20 => 20,
            Self::Ms40 => 40,
            Self::Ms60 => 60,
        }
    }

    /// Samples per frame at 48 kHz.
    pub const fn samples(self) -> usize {
        self.millis() as usize * (SAMPLE_RATE as usize / 1000)
    }

    /// The duration as a [`std::time::Duration`].
    pub const fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis() as u64)
    }

    /// Whether a version-1 phone sends and plays frames of this duration (10 and 20 ms; its
    /// jitter buffer and codec are set up for the caller's frame duration). The others are
    /// refused in an `Invite`, and in a configuration.
    pub const fn is_played(self) -> bool {
        matches!(self, Self::Ms10 | Self::Ms20)
    }

    /// The duration for a millisecond count, if it is one of 10, 20, 40, 60.
    pub const fn from_millis(ms: u16) -> Result<Self, NotAFrameDuration> {
        match ms {
            10 => Ok(Self::Ms10),
            20 => Ok(Self::Ms20),
            40 => Ok(Self::Ms40),
            60 => Ok(Self::Ms60),
            other => Err(NotAFrameDuration(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_count_48_khz_samples() {
        for d in [
            FrameDuration::Ms10,
            FrameDuration::Ms20,
            FrameDuration::Ms40,
            FrameDuration::Ms60,
        ] {
            assert_eq!(FrameDuration::from_millis(d.millis()), Ok(d));
            assert_eq!(d.samples(), usize::from(d.millis()) * 48);
            assert_eq!(d.duration().as_millis(), u128::from(d.millis()));
            assert_eq!(d.is_played(), d.millis() <= 20);
        }
        assert_eq!(FrameDuration::from_millis(30), Err(NotAFrameDuration(30)));
        assert_eq!(FrameDuration::default(), FrameDuration::Ms20);
    }
}
