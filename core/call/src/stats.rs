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
//! For a call ([`CallStats::estimate_mos`]), `Ppl` is the loss the listener hears
//! ([`CallStats::heard_loss_percent`]): frames played as concealment, plus an eighth of the
//! frames rebuilt from in-band FEC (a rebuilt frame is a lower-rate copy, not the frame
//! itself), plus every frame rebuilt from DRED (measured to be heard no better than
//! concealment), in percent of the frames due; pauses do not count. `BurstR` stays 1: the loss
//! pattern is not measured; bursts show through the concealed share instead (the FEC of the
//! next packet repairs an isolated loss, only the last frame of a burst). `Ie` is taken at the
//! encoder's target bitrate ([`CallStats::bitrate_bps`]), not at what silence or hold send.
//!
//! # Calibration
//!
//! G.113 does not tabulate Opus, and what a listener of a wideband call hears is what the
//! estimate should follow, so [`CodecImpairment::opus`] is fitted to PESQ-WB (ITU-T P.862.2,
//! MOS-LQO) of real calls: two phones over QUIC on loopback, Opus at 32 kbit/s, 12.55 s of
//! speech, 7 seeds of each of clean, 5/10/20 % random loss, 10 % random loss with 0-30 ms
//! jitter, 5 and 10 % Gilbert-Elliott bursts (mean 3 packets), 10 % of packets reordered by
//! 30 ms and 5 % loss with that reordering (`scripts/quality-calls`, docs/performance.md).
//! The fit (least worst per-condition median error over 105 calls) gives `Ie = 12.5` at
//! 32 kbit/s (a clean wideband call scores about 4.05; PESQ-WB gave 4.20), `Bpl = 10.5`, and
//! the eighth for FEC-rebuilt frames. Per condition the median estimate is within 0.15 of the
//! median PESQ-WB, and 95 % of single calls within 0.4; the largest misses are calls whose
//! playout also stretched or dropped audio, which the estimate does not see. Below 32 kbit/s
//! `Ie` keeps the steps of the earlier narrowband assumptions (not calibrated).

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
    /// Frames rebuilt from deep redundancy (Opus DRED), when the stream carries it.
    pub dred_recovered: u64,
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

    /// Frames played as concealment in percent of the frames due: the loss left after FEC and
    /// DRED repair; 0 with no traffic.
    pub fn concealed_percent(&self) -> f64 {
        percent(self.concealed_frames, self.frames_due())
    }

    /// The loss the listener hears, in percent of the frames due: the concealed frames, an
    /// eighth of those rebuilt from FEC, and all of those rebuilt from DRED (see the module
    /// documentation); 0 with no traffic.
    pub fn heard_loss_percent(&self) -> f64 {
        let whole = self.frames_due();
        if whole == 0 {
            return 0.0;
        }
        let heard = self.concealed_frames as f64
            + self.fec_recovered as f64 * FEC_HEARD_SHARE
            + self.dred_recovered as f64 * DRED_HEARD_SHARE;
        (100.0 * heard / whole as f64).min(100.0)
    }

    /// The MOS estimate for these statistics, on the scale of PESQ-WB (see the module
    /// documentation): one-way delay = RTT / 2 + `extra_delay_ms` (jitter buffer, frame and
    /// codec look-ahead), [`Self::heard_loss_percent`] as the loss, Opus at its target
    /// `bitrate_bps`.
    pub fn estimate_mos(&self, extra_delay_ms: f64) -> f64 {
        let one_way = self.rtt_ms.unwrap_or(0.0) / 2.0 + extra_delay_ms;
        estimate_mos(
            one_way,
            self.heard_loss_percent(),
            CodecImpairment::opus(self.bitrate_bps),
        )
    }
}

/// How much a frame rebuilt from in-band FEC counts as heard loss, next to a concealed one
/// (fitted; see the module documentation).
const FEC_HEARD_SHARE: f64 = 0.125;
/// How much of a DRED-rebuilt frame the listener hears as lost: all of it. In real calls with
/// DRED on (100 and 200 ms, 7 seeds of 20 % random and 10 % bursty loss, docs/performance.md)
/// PESQ-WB did not rise while the concealed frames fell by as many as DRED rebuilt, so counting
/// them as repaired put the estimate up to 1.1 above what was heard.
const DRED_HEARD_SHARE: f64 = 1.0;

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
    /// Values for Opus (VOIP mode, deep PLC, in-band FEC) at a bitrate, calibrated against
    /// PESQ-WB at 32 kbit/s; see the module documentation. A bitrate of 0 (unknown) is taken
    /// as 32 kbit/s.
    pub fn opus(bitrate_bps: u32) -> Self {
        let below_32k = match bitrate_bps {
            0 => 0.0,
            b if b >= 32_000 => 0.0,
            b if b >= 24_000 => 2.0,
            b if b >= 16_000 => 6.0,
            b if b >= 12_000 => 11.0,
            _ => 20.0,
        };
        Self {
            ie: 12.5 + below_32k,
            bpl: 10.5,
        }
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
        // The MOS hears the concealed 7 % and an eighth of the 3 % FEC rebuilt, not all 10 %.
        assert!((stats.heard_loss_percent() - 7.375).abs() < 1e-9);
        // A frame DRED rebuilt is heard like a concealed one.
        let dred = CallStats {
            concealed_frames: 50,
            dred_recovered: 20,
            ..stats.clone()
        };
        assert!((dred.heard_loss_percent() - 7.375).abs() < 1e-9);
        assert_eq!(CallStats::default().heard_loss_percent(), 0.0);
        let opus = CodecImpairment::opus(32_000);
        let mos = stats.estimate_mos(50.0);
        assert!((mos - estimate_mos(80.0, 7.375, opus)).abs() < 1e-9);
        assert!(mos > estimate_mos(80.0, 10.0, opus));
        assert!(mos < CallStats::default().estimate_mos(50.0));
    }

    /// Points of the calibration (docs/performance.md): the estimate for the median counters
    /// of real calls is within 0.4 of their median PESQ-WB.
    #[test]
    fn calibrated_opus_estimate_follows_pesq_wb() {
        // (frames due, concealed, FEC-rebuilt, PESQ-WB median)
        for (due, concealed, fec, pesq) in [
            (668, 0, 0, 4.20),
            (668, 19, 51, 3.27),
            (668, 45, 90, 2.30),
            (668, 39, 19, 2.37),
        ] {
            let stats = CallStats {
                packets_received: due - concealed - fec,
                packets_lost: concealed + fec,
                concealed_frames: concealed,
                fec_recovered: fec,
                bitrate_bps: 32_000,
                ..CallStats::default()
            };
            let mos = stats.estimate_mos(0.0);
            assert!(
                (mos - pesq).abs() <= 0.4,
                "{stats:?}: {mos} vs PESQ-WB {pesq}"
            );
        }
    }
}
