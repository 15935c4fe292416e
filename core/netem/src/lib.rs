//! Userspace network impairment for tests and demos: loss (independent or bursty
//! Gilbert-Elliott), delay, jitter, reordering, duplication and a bottleneck rate.
//!
//! Where the kernel's `tc netem` is not available (or not wanted, because it needs root and
//! affects the whole interface), Viska impairs its own packets:
//!
//! - [`Impairment`] is an IO-free model: you [`submit`](Impairment::submit) packets with the
//!   current time and [`poll_deliver`](Impairment::poll_deliver) them when
//!   [`next_deadline`](Impairment::next_deadline) has passed. It reads no clock, so tests run
//!   minutes of traffic on a virtual clock in milliseconds, and a fixed
//!   [`seed`](ImpairmentConfig::seed) makes every run identical.
//! - With the `quinn` feature, `ImpairedSocket` wraps a UDP socket for a quinn endpoint
//!   and passes every outgoing datagram through the model, sending delayed datagrams later
//!   from a tokio task.
//!
//! # Example: a lossy, jittery link on a virtual clock
//!
//! ```
//! use std::time::{Duration, Instant};
//! use viska_netem::{Impairment, ImpairmentConfig, LossModel};
//!
//! let config = ImpairmentConfig {
//!     // 5 % loss in bursts of 2 packets on average.
//!     loss: LossModel::gilbert_elliott(5.0, 2.0)?,
//!     delay: Duration::from_millis(40),
//!     jitter: Duration::from_millis(15),
//!     seed: 42,
//!     ..ImpairmentConfig::default()
//! };
//! let mut link = Impairment::new(config)?;
//!
//! // One 20 ms audio frame per tick for one virtual second.
//! let start = Instant::now();
//! let mut received = Vec::new();
//! for tick in 0..=100u32 {
//!     let now = start + Duration::from_millis(20) * tick;
//!     if tick < 50 {
//!         link.submit(now, (tick, vec![0u8; 80]));
//!     }
//!     while let Some((sequence, _payload)) = link.poll_deliver(now) {
//!         received.push(sequence);
//!     }
//! }
//! let stats = link.stats();
//! assert_eq!(stats.submitted, 50);
//! assert_eq!(stats.delivered + stats.dropped, 50);
//! // The default delivery order is FIFO: jitter never reorders.
//! assert!(received.windows(2).all(|pair| pair[0] < pair[1]));
//! # Ok::<(), viska_netem::ConfigError>(())
//! ```
//!
//! # Example: impairing a quinn endpoint (feature `quinn`)
//!
//! ```no_run
//! # #[cfg(feature = "quinn")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{sync::Arc, time::Duration};
//! use viska_netem::{ImpairmentConfig, bind_impaired};
//!
//! let config = ImpairmentConfig::simple(10.0, Duration::from_millis(50), Duration::ZERO, 1)?;
//! let socket = bind_impaired("127.0.0.1:0".parse()?, config)?;
//! let endpoint = quinn::Endpoint::new_with_abstract_socket(
//!     quinn::EndpointConfig::default(),
//!     None,
//!     socket,
//!     Arc::new(quinn::TokioRuntime),
//! )?;
//! # drop(endpoint);
//! # Ok(())
//! # }
//! ```

mod config;
mod model;
#[cfg(feature = "quinn")]
mod socket;

pub use config::{
    ConfigError, DEFAULT_QUEUE_LIMIT, DeliveryOrder, ImpairmentConfig, JitterDistribution,
    LossModel, MAX_DELAY, RateLimit,
};
pub use model::{Impairment, ImpairmentStats, WireLen};
#[cfg(feature = "quinn")]
pub use socket::{ImpairedSocket, OutgoingDatagram, SocketError, SocketStats, bind_impaired};
