//! Two sessions in an answered call on a virtual clock, driven frame by frame without any
//! allocation of the driver's own: the per-frame cost of the session (bench) and its
//! allocations (test) are measured on the same path.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use viska_call::{CallConfig, CallState, Command, Role};
use viska_e2ee::direct::ChannelBinding;
use viska_e2ee::identity::IdentityKeyPair;
use viska_session::{Admission, AudioStatus, Input, Output, Request, Session, SessionConfig};

const FRAME: Duration = Duration::from_millis(20);

pub struct Pair {
    pub now: Instant,
    pub sessions: [Session; 2],
    /// The one datagram in flight each way (a frame period is far longer than the path).
    datagram: [Vec<u8>; 2],
    datagram_len: [Option<usize>; 2],
    /// Signaling in flight (setup only).
    signaling: [Vec<u8>; 2],
    pcm: Vec<i16>,
    pub played: [u64; 2],
    pub captured: [u64; 2],
    /// Each side's position in its own continuous tone.
    phase: [u64; 2],
}

impl Pair {
    /// Dials, rings, answers and runs the call until media flows both ways.
    pub fn answered() -> Self {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        let binding = ChannelBinding {
            tls_exporter: [3; 32],
        };
        let make = |role, seed: u64, rng: &mut StdRng| {
            let id = IdentityKeyPair::generate(&mut StdRng::seed_from_u64(seed));
            Session::new(
                SessionConfig::new(CallConfig::new(role, id, binding)),
                now,
                rng,
            )
            .unwrap()
        };
        let caller = make(Role::Caller, 1, &mut rng);
        let callee = make(Role::Callee, 2, &mut rng);
        let mut pair = Self {
            now,
            sessions: [caller, callee],
            datagram: [vec![0; 1500], vec![0; 1500]],
            datagram_len: [None, None],
            signaling: [Vec::new(), Vec::new()],
            pcm: vec![0; 960],
            played: [0, 0],
            captured: [0, 0],
            phase: [0, 0],
        };
        pair.sessions[0]
            .handle_input(Input::Command(now, Command::Dial))
            .unwrap();
        for _ in 0..20 {
            pair.exchange_signaling();
        }
        assert_eq!(pair.sessions[1].state(), CallState::Ringing);
        pair.sessions[1]
            .handle_input(Input::Command(now, Command::Answer))
            .unwrap();
        for _ in 0..20 {
            pair.exchange_signaling();
        }
        assert!(matches!(pair.sessions[0].state(), CallState::Active { .. }));
        // A few seconds of call: buffers reach their working size, the first reports pass.
        for _ in 0..150 {
            pair.frame();
        }
        pair
    }

    fn exchange_signaling(&mut self) {
        for i in 0..2 {
            self.drain(i);
            let bytes = std::mem::take(&mut self.signaling[i]);
            if !bytes.is_empty() {
                let now = self.now;
                self.sessions[1 - i]
                    .handle_input(Input::Signaling(now, &bytes))
                    .unwrap();
            }
        }
    }

    /// Drains session `i`'s outputs (the harness's answers included), allocating nothing in
    /// the steady state.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        loop {
            let mut capture = false;
            match self.sessions[i].poll_output() {
                Output::Datagram(bytes) => {
                    self.datagram[i][..bytes.len()].copy_from_slice(bytes);
                    self.datagram_len[i] = Some(bytes.len());
                }
                Output::Signaling(bytes) => self.signaling[i].extend_from_slice(bytes),
                Output::Capture => capture = true,
                Output::Play(_) => self.played[i] += 1,
                Output::Request(Request::Admit { .. }) => {
                    self.sessions[i]
                        .handle_input(Input::Admission(now, Admission::Admit))
                        .unwrap();
                }
                Output::Request(Request::OpenAudio { .. }) => {
                    self.sessions[i]
                        .handle_input(Input::Audio(
                            now,
                            AudioStatus::Opened {
                                source_clocked: true,
                            },
                        ))
                        .unwrap();
                }
                Output::Timeout(_) => return,
                _ => {}
            }
            if capture {
                self.captured[i] += 1;
                // A continuous 440 Hz tone per side, computed in place.
                for (k, s) in self.pcm.iter_mut().enumerate() {
                    let n = (self.phase[i] + k as u64) as f64;
                    *s =
                        (6000.0 * (2.0 * std::f64::consts::PI * 440.0 * n / 48_000.0).sin()) as i16;
                }
                self.phase[i] += self.pcm.len() as u64;
                let pcm = std::mem::take(&mut self.pcm);
                let _ = self.sessions[i].handle_input(Input::Captured(now, &pcm));
                self.pcm = pcm;
            }
        }
    }

    /// One frame period: each side captures, sends, receives the other's frame and plays.
    pub fn frame(&mut self) {
        self.now += FRAME;
        let now = self.now;
        for i in 0..2 {
            let _ = self.sessions[i].handle_input(Input::Timeout(now));
            self.drain(i);
        }
        for i in 0..2 {
            if let Some(len) = self.datagram_len[i].take() {
                let datagram = std::mem::take(&mut self.datagram[i]);
                let _ = self.sessions[1 - i].handle_input(Input::Datagram(now, &datagram[..len]));
                self.datagram[i] = datagram;
                self.drain(1 - i);
            }
        }
        // Signaling of the steady state (reception reports, pings) is delivered too.
        self.exchange_signaling();
    }

    /// Whether the next frame crosses a statistics interval (once a second), where the
    /// session builds statistics and a reception report.
    pub fn frames_until_stats(&self) -> u64 {
        50
    }
}
