//! A quinn UDP socket that impairs what it sends (feature `quinn`).
//!
//! [`ImpairedSocket`] wraps a real UDP socket. Every outgoing datagram goes through an
//! [`Impairment`] model; a tokio task sends each surviving datagram when the model says
//! its time has come. Incoming datagrams are untouched, so each endpoint impairs its own
//! direction: impair one side for an asymmetric link, both sides for a symmetric one.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use tokio::sync::Notify;

use crate::config::{ConfigError, ImpairmentConfig};
use crate::model::{Impairment, ImpairmentStats, WireLen};

/// Why an impaired socket could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// Binding or wrapping the UDP socket failed.
    #[error("UDP socket: {0}")]
    Io(#[from] io::Error),
    /// The impairment configuration is invalid.
    #[error("impairment configuration: {0}")]
    Config(#[from] ConfigError),
    /// The socket must be created inside a tokio runtime, which runs its sending task.
    #[error("no tokio runtime is running on this thread")]
    NoRuntime,
}

impl From<SocketError> for io::Error {
    fn from(error: SocketError) -> Self {
        match error {
            SocketError::Io(io) => io,
            SocketError::Config(config) => io::Error::new(io::ErrorKind::InvalidInput, config),
            other @ SocketError::NoRuntime => io::Error::other(other),
        }
    }
}

/// One outgoing UDP datagram held by the model: the fields of a quinn [`Transmit`]
/// for a single segment, with owned contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingDatagram {
    /// Where the datagram goes.
    pub destination: SocketAddr,
    /// Explicit congestion notification bits to set.
    pub ecn: Option<EcnCodepoint>,
    /// Source address to send from, if quinn chose one.
    pub src_ip: Option<IpAddr>,
    /// The UDP payload.
    pub contents: Vec<u8>,
}

impl OutgoingDatagram {
    fn as_transmit(&self) -> Transmit<'_> {
        Transmit {
            destination: self.destination,
            ecn: self.ecn,
            contents: &self.contents,
            segment_size: None,
            src_ip: self.src_ip,
        }
    }
}

impl WireLen for OutgoingDatagram {
    fn wire_len(&self) -> usize {
        self.contents.len()
    }
}

/// Counters of an [`ImpairedSocket`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketStats {
    /// What the impairment model did to outgoing datagrams.
    pub impairment: ImpairmentStats,
    /// Datagrams the model released but the real socket failed to send.
    pub send_errors: u64,
}

/// State shared by the socket and its sending task.
struct Shared {
    model: Mutex<Impairment<OutgoingDatagram>>,
    /// Wakes the sending task when a datagram is submitted or the socket closes.
    wake: Notify,
    closing: AtomicBool,
    send_errors: AtomicU64,
}

impl Shared {
    fn model(&self) -> MutexGuard<'_, Impairment<OutgoingDatagram>> {
        // The model holds no invariant a panicking holder could break halfway.
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The current time on tokio's clock, which the sending task's timers use.
fn tokio_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A UDP socket for quinn that passes outgoing datagrams through an [`Impairment`].
///
/// Sends never block: each datagram is accepted into the model at once (or dropped and
/// counted when the model's queue is full, like a router's tail drop), and a tokio task
/// sends it at its delivery time. Packets still in the model when the socket is dropped
/// are sent at their time before the task ends, as packets in flight would arrive.
pub struct ImpairedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
}

impl fmt::Debug for ImpairedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairedSocket")
            .field("inner", &self.inner)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ImpairedSocket {
    /// Binds a UDP socket to `addr` and impairs what it sends. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// [`SocketError::Config`] for an invalid configuration, [`SocketError::NoRuntime`]
    /// outside tokio, [`SocketError::Io`] if binding fails.
    pub fn bind(addr: SocketAddr, config: ImpairmentConfig) -> Result<Arc<Self>, SocketError> {
        Self::wrap(std::net::UdpSocket::bind(addr)?, config)
    }

    /// Impairs what an already bound UDP socket sends. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// As [`Self::bind`].
    pub fn wrap(
        socket: std::net::UdpSocket,
        config: ImpairmentConfig,
    ) -> Result<Arc<Self>, SocketError> {
        let model = Impairment::new(config)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SocketError::NoRuntime)?;
        // Entering the runtime explicitly lets tokio register the socket with its reactor.
        let _guard = runtime.enter();
        let inner = TokioRuntime.wrap_udp_socket(socket)?;
        let shared = Arc::new(Shared {
            model: Mutex::new(model),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            send_errors: AtomicU64::new(0),
        });
        runtime.spawn(send_when_due(Arc::clone(&inner), Arc::clone(&shared)));
        Ok(Arc::new(Self { inner, shared }))
    }

    /// What has happened to outgoing datagrams so far.
    #[must_use]
    pub fn stats(&self) -> SocketStats {
        SocketStats {
            impairment: self.shared.model().stats(),
            send_errors: self.shared.send_errors.load(Ordering::Relaxed),
        }
    }

    /// Changes the impairment for datagrams sent from now on (see
    /// [`Impairment::set_config`]).
    ///
    /// # Errors
    /// The [`ConfigError`] of an invalid configuration; the old one then stays in force.
    pub fn set_config(&self, config: ImpairmentConfig) -> Result<(), ConfigError> {
        self.shared.model().set_config(config)
    }
}

impl Drop for ImpairedSocket {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// Binds an impaired UDP socket for
/// [`quinn::Endpoint::new_with_abstract_socket`] (with [`quinn::TokioRuntime`]).
/// Use [`ImpairedSocket::bind`] instead to keep a handle for stats and reconfiguration,
/// and a typed error.
///
/// # Errors
/// The [`SocketError`] of [`ImpairedSocket::bind`] as an [`io::Error`]: an invalid
/// configuration is [`io::ErrorKind::InvalidInput`] carrying the [`ConfigError`].
pub fn bind_impaired(
    addr: SocketAddr,
    config: ImpairmentConfig,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let socket: Arc<dyn AsyncUdpSocket> = ImpairedSocket::bind(addr, config)?;
    Ok(socket)
}

impl AsyncUdpSocket for ImpairedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let now = tokio_now();
        let segment_size = transmit
            .segment_size
            .filter(|size| *size > 0)
            .unwrap_or(transmit.contents.len().max(1));
        {
            let mut model = self.shared.model();
            for segment in transmit.contents.chunks(segment_size) {
                model.submit(
                    now,
                    OutgoingDatagram {
                        destination: transmit.destination,
                        ecn: transmit.ecn,
                        src_ip: transmit.src_ip,
                        contents: segment.to_vec(),
                    },
                );
            }
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// One datagram per transmit: the model impairs datagrams one by one, so batching
    /// them for segmentation offload would be undone anyway.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Sends are accepted into the model at once, so the socket is always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The sending task: sends each datagram the model releases, sleeping until the next
/// deadline or the next submission in between. Ends once the socket is dropped and the
/// model is empty.
async fn send_when_due(inner: Arc<dyn AsyncUdpSocket>, shared: Arc<Shared>) {
    let mut writable = Arc::clone(&inner).create_io_poller();
    let mut due = Vec::new();
    loop {
        let next_deadline = {
            let mut model = shared.model();
            let now = tokio_now();
            while let Some(datagram) = model.poll_deliver(now) {
                due.push(datagram);
            }
            model.next_deadline()
        };
        if !due.is_empty() {
            for datagram in due.drain(..) {
                send_one(inner.as_ref(), writable.as_mut(), &datagram, &shared).await;
            }
            // Sending took time: look again before sleeping.
            continue;
        }
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.into()) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None if shared.closing.load(Ordering::Acquire) => break,
            None => shared.wake.notified().await,
        }
    }
}

/// Sends one datagram on the real socket, waiting while it would block.
async fn send_one(
    socket: &dyn AsyncUdpSocket,
    mut writable: Pin<&mut dyn UdpPoller>,
    datagram: &OutgoingDatagram,
    shared: &Shared,
) {
    loop {
        match socket.try_send(&datagram.as_transmit()) {
            Ok(()) => return,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if poll_fn(|cx| writable.as_mut().poll_writable(cx))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    shared.send_errors.fetch_add(1, Ordering::Relaxed);
}
