//! Call statistics and a listening-quality estimate (MOS) from a simplified ITU-T G.107 E-model.
//!
//! # The model
//!
//! ```text
//! R      = 93.2 - Id - Ie_eff                       (Ro - Is at G.107 default values, A = 0)
//! Id     = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)  (d: one-way mouth-to-ear delay in ms,
//!                                                    H(x) = 1 if x >= 0 else 0; the usual
//!                                                    closed-form approximation of G.107's Idd)
//! Ie_eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)
//!                                                   (G.107 7.2; Ppl: packet loss in percent,
//!                                                    BurstR = 1 for random loss)
//! MOS    = 1                                             if R < 0
//!        = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6       if 0 <= R <= 100
//!        = 4.5                                           if R > 100
//! ```
//!
//! For a call ([`CallStats::estimate_mos`]), `Ppl` is the loss the listener hears: frames
//! played as concealment, in percent of the frames due ([`CallStats::concealed_percent`]).
//! Frames whose packet was lost but that were rebuilt from FEC or DRED are not counted (their
//! quality cost is small next to concealment), nor are pauses. `BurstR` stays 1: the loss
//! pattern is not measured, so bursty loss is scored as if it were random, which G.107 rates
//! a little better than the same loss in bursts. `Ie` is taken at the encoder's target
//! bitrate ([`CallStats::bitrate_bps`]), not at what silence or hold actually send.
//!
//! G.113 does not tabulate Opus. [`CodecImpairment::opus`] uses our own assumptions, stated
//! there: `Ie` falls with bitrate (0 at 32 kbit/s and above), and `Bpl = 25.1` (the G.113 value
//! for G.711 with packet-loss concealment), a conservative choice for Opus PLC. The scale is
//! the narrowband one, so the best reachable score is about 4.4.

/// Counters and measurements of one call.
///
/// [`crate::Call::stats`] fills what the call state machine sees (control plane, RTT); the
/// media path (driver) fills the packet, jitter and codec counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallStats {
    /// Media packets sent.
    pub packets_sent: u64,
    /// Media packets received and authenticated (including late ones).
    pub packets_received: u64,
    /// Media frames whose packet was not there in time to be played: lost in transit, or
    /// arrived after its frame was played (those are also in `packets_received` and
    /// `packets_late`). Includes frames then rebuilt from FEC or DRED; pauses (hold, DTX) are
    /// not losses.
    pub packets_lost: u64,
    /// Media packets that arrived after their frame was played (counted lost as well).
    pub packets_late: u64,
    /// Interarrival jitter in milliseconds (RFC 3550 style estimate).
    pub jitter_ms: f64,
    /// Smoothed round-trip time in milliseconds, once measured.
    pub rtt_ms: Option<f64>,
    /// The encoder's target bitrate (the call's agreed media parameters), in bits per second.
    pub bitrate_bps: u32,
    /// Opus payload actually sent over the last statistics interval (about a second; the first
    /// interval runs from the media's start, ringing included), in bits per second: 0 while on
    /// hold or muted, lower than the target in DTX silence.
    pub send_bitrate_bps: u32,
    /// Frames (media and control) that failed authentication or decryption.
    pub decrypt_failures: u64,
    /// Frames replaced by packet-loss concealment.
    pub concealed_frames: u64,
    /// Frames recovered from in-band forward error correction.
    pub fec_recovered: u64,
}

impl CallStats {
    /// Frames due to be played so far: those whose packet came in time, and those lost.
    fn frames_due(&self) -> u64 {
        self.packets_received
            .saturating_sub(self.packets_late)
            .saturating_add(self.packets_lost)
    }

    /// Packet loss (lost in transit or late) in percent of the frames due; 0 with no traffic.
    pub fn loss_percent(&self) -> f64 {
        percent(self.packets_lost, self.frames_due())
    }

    /// Frames played as concealment in percent of the frames due: the loss the listener hears
    /// (after FEC and DRED repair); 0 with no traffic.
    pub fn concealed_percent(&self) -> f64 {
        percent(self.concealed_frames, self.frames_due())
    }

    /// The MOS estimate for these statistics: one-way delay = RTT / 2 + `extra_delay_ms`
    /// (jitter buffer, frame and codec look-ahead), the concealed share of frames as the loss
    /// (see the module documentation), Opus at its target `bitrate_bps`.
    pub fn estimate_mos(&self, extra_delay_ms: f64) -> f64 {
        let one_way = self.rtt_ms.unwrap_or(0.0) / 2.0 + extra_delay_ms;
        estimate_mos(
            one_way,
            self.concealed_percent(),
            CodecImpairment::opus(self.bitrate_bps),
        )
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    // Precision loss only above 2^53 packets.
    (100.0 * part as f64 / whole as f64).min(100.0)
}

/// A codec's E-model impairment values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodecImpairment {
    /// Equipment impairment factor without loss.
    pub ie: f64,
    /// Packet-loss robustness factor.
    pub bpl: f64,
}

impl CodecImpairment {
    /// Our assumed values for Opus (VOIP mode, PLC, in-band FEC) at a bitrate; see the module
    /// documentation. A bitrate of 0 (unknown) is taken as 32 kbit/s.
    pub fn opus(bitrate_bps: u32) -> Self {
        let ie = match bitrate_bps {
            0 => 0.0,
            b if b >= 32_000 => 0.0,
            b if b >= 24_000 => 2.0,
            b if b >= 16_000 => 6.0,
            b if b >= 12_000 => 11.0,
            _ => 20.0,
        };
        Self { ie, bpl: 25.1 }
    }
}

/// The E-model rating factor R for a one-way delay (ms), a random packet loss (%) and a codec.
/// Inputs outside their range are clamped (negative delay to 0, loss to 0..=100).
pub fn r_factor(one_way_delay_ms: f64, loss_percent: f64, codec: CodecImpairment) -> f64 {
    let d = if one_way_delay_ms.is_finite() {
        one_way_delay_ms.max(0.0)
    } else {
        f64::MAX
    };
    let ppl = if loss_percent.is_finite() {
        loss_percent.clamp(0.0, 100.0)
    } else {
        100.0
    };
    let id = 0.024 * d + if d >= 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ie_eff = codec.ie + (95.0 - codec.ie) * ppl / (ppl + codec.bpl);
    93.2 - id - ie_eff
}

/// The MOS (1.0..=4.5) G.107 assigns to a rating factor R.
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r < 0.0 {
        1.0
    } else if r > 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6
    }
}

/// The estimated MOS for a one-way delay (ms), a random packet loss (%) and a codec.
pub fn estimate_mos(one_way_delay_ms: f64, loss_percent: f64, codec: CodecImpairment) -> f64 {
    mos_from_r(r_factor(one_way_delay_ms, loss_percent, codec))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPUS: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };

    #[test]
    fn g107_mos_mapping_known_points() {
        // G.107 Annex B: R = 93.2 maps to MOS 4.41, R = 50 to 2.58, R = 0 to 1.
        assert!((mos_from_r(93.2) - 4.41).abs() < 0.01);
        assert!((mos_from_r(50.0) - 2.58).abs() < 0.01);
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
    }

    #[test]
    fn clean_short_call_scores_about_4_4() {
        let mos = estimate_mos(40.0, 0.0, OPUS);
        assert!((4.3..=4.45).contains(&mos), "mos {mos}");
    }

    #[test]
    fn loss_and_delay_lower_the_score_monotonically() {
        let mut previous = f64::INFINITY;
        for loss in [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0] {
            let mos = estimate_mos(40.0, loss, OPUS);
            assert!(mos < previous, "loss {loss}: {mos} !< {previous}");
            previous = mos;
        }
        let ten_percent = estimate_mos(40.0, 10.0, OPUS);
        assert!(
            (3.0..3.8).contains(&ten_percent),
            "mos at 10% {ten_percent}"
        );
        let mut previous = f64::INFINITY;
        for delay in [0.0, 100.0, 177.0, 200.0, 300.0, 500.0] {
            let mos = estimate_mos(delay, 1.0, OPUS);
            assert!(mos < previous, "delay {delay}");
            previous = mos;
        }
    }

    #[test]
    fn r_factor_matches_hand_computation() {
        // d = 200: Id = 4.8 + 0.11 * 22.7 = 7.297; 5% loss: Ie_eff = 95 * 5 / 30.1 = 15.781
        let r = r_factor(200.0, 5.0, OPUS);
        assert!((r - (93.2 - 7.297 - 15.7807)).abs() < 0.01, "r {r}");
    }

    #[test]
    fn lower_opus_bitrate_scores_lower() {
        let high = estimate_mos(40.0, 0.0, CodecImpairment::opus(32_000));
        let low = estimate_mos(40.0, 0.0, CodecImpairment::opus(12_000));
        assert!(low < high);
    }

    #[test]
    fn stats_loss_and_mos() {
        // 1000 frames due: 900 arrived in time, 60 never arrived, 40 arrived too late (they
        // are in packets_received too); 70 of the 100 lost were concealed, 30 rebuilt by FEC.
        let stats = CallStats {
            packets_received: 940,
            packets_late: 40,
            packets_lost: 100,
            concealed_frames: 70,
            fec_recovered: 30,
            rtt_ms: Some(60.0),
            bitrate_bps: 32_000,
            ..CallStats::default()
        };
        assert!((stats.loss_percent() - 10.0).abs() < 1e-9);
        assert!((stats.concealed_percent() - 7.0).abs() < 1e-9);
        assert_eq!(CallStats::default().loss_percent(), 0.0);
        assert_eq!(CallStats::default().concealed_percent(), 0.0);
        // The MOS hears the concealed 7 %, not the 10 % of which FEC rebuilt some.
        let mos = stats.estimate_mos(50.0);
        assert!((mos - estimate_mos(80.0, 7.0, OPUS)).abs() < 1e-9);
        assert!(mos > estimate_mos(80.0, 10.0, OPUS));
        assert!(mos < CallStats::default().estimate_mos(50.0));
    }
}
