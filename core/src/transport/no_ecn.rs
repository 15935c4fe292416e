//! A UDP socket that neither sets nor reports ECN marks, so QUIC falls back to plain ACK
//! frames (RFC 9000 type 0x02) without the three ECN counts of ACK_ECN (0x03).
//!
//! quinn marks every packet ECT(0) and, once it sees marked packets arrive, acknowledges
//! with ACK_ECN, whose counts take 4 bytes (6 after 16 383 packets) in the ACK frame that
//! rides on nearly every media packet. quinn has no switch for it; the socket is where the
//! marks are set and read.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Wraps a socket: outgoing datagrams carry no ECN codepoint (Not-ECT), incoming ones are
/// reported as unmarked.
pub(crate) struct NoEcn(pub(crate) Arc<dyn AsyncUdpSocket>);

impl fmt::Debug for NoEcn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NoEcn").field(&self.0).finish()
    }
}

impl AsyncUdpSocket for NoEcn {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.0).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.0.try_send(&Transmit {
            ecn: None,
            ..transmit.clone()
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.0.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = polled {
            for m in meta.iter_mut().take(n) {
                m.ecn = None;
            }
        }
        polled
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}
