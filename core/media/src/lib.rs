//! Viska media: Opus codec, adaptive jitter buffer and playout, audio devices (cpal, feature
//! `device`), WAV and Ogg Opus files.
//!
//! Everything here works on 48 kHz mono 16-bit PCM in whole frames (10 or 20 ms). Devices and
//! files at other rates and channel counts are converted at the edge.

pub mod app;
pub mod audio;
pub mod background;
pub mod codec;
#[cfg(feature = "device")]
pub mod device;
pub mod drift;
pub mod jitter;
pub mod ogg;
mod opus_ext;
pub mod playout;
pub mod recovery;
pub mod resample;
pub mod ring;
pub mod stretch;
pub mod wav;
