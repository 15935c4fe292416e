//! What a call is set up with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use viska_e2ee::direct::ChannelBinding;
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_proto::{CallId, Features, FrameDuration, MediaParams, SuiteId};
use viska_sframe::CipherSuite;

use crate::error::CallError;
use crate::state::Role;

/// Default time the callee may ring before the call ends unanswered.
pub const DEFAULT_RING_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time from dialing (or from the first incoming message) to ringing.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval between liveness pings in an answered call (also yields the RTT).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Default Opus bitrate.
pub const DEFAULT_BITRATE_BPS: u32 = 32_000;

/// Everything one end of a call needs.
#[derive(Debug)]
pub struct CallConfig {
    /// Caller or callee.
    pub role: Role,
    /// This end's long-term identity.
    pub identity: IdentityKeyPair,
    /// SFrame suites this end accepts, in order of preference.
    pub suites: Vec<CipherSuite>,
    /// The TLS certificates of the underlying connection, bound into the handshake.
    pub binding: ChannelBinding,
    /// The identity pinned for the peer, if any: decides [`crate::Trust`] (`Verified` when the
    /// peer presents it, `KeyChanged` when it presents another).
    pub expected_peer: Option<PublicIdentity>,
    /// Identities this end's user has verified before (compared the SAS, see
    /// [`crate::Command::MarkVerified`]). Without an `expected_peer`, a peer among them is
    /// `Verified`, any other `Unverified`.
    pub verified_peers: Vec<PublicIdentity>,
    /// The user's record of the peers they know (trust on first use, verification, changed
    /// keys), asked once per call when the peer proves its identity. Without an
    /// `expected_peer` it decides [`crate::Trust`]; `verified_peers` is then ignored.
    pub directory: Option<Arc<dyn PeerDirectory>>,
    /// Media parameters: proposed by a caller; a callee checks the caller's suite against
    /// `suites` and adopts the caller's parameters.
    pub media: MediaParams,
    /// How long the callee may ring.
    pub ring_timeout: Duration,
    /// How long handshake and invitation may take.
    pub setup_timeout: Duration,
    /// Interval between pings in an answered call.
    pub keepalive_interval: Duration,
    /// Optional capabilities announced in `Hello`.
    pub features: Features,
    /// The call's id, chosen by the caller's application (`None`: drawn at random). A callee
    /// learns it from the `Invite`; its own value is ignored.
    pub call_id: Option<CallId>,
}

impl CallConfig {
    /// A configuration with the default suites, media parameters and timers.
    pub fn new(role: Role, identity: IdentityKeyPair, binding: ChannelBinding) -> Self {
        let suites = CipherSuite::ALL.to_vec();
        let suite = SuiteId(CipherSuite::ALL[0].id());
        Self {
            role,
            identity,
            suites,
            binding,
            expected_peer: None,
            verified_peers: Vec::new(),
            directory: None,
            media: MediaParams {
                frame: FrameDuration::Ms20,
                bitrate_bps: DEFAULT_BITRATE_BPS,
                suite,
            },
            ring_timeout: DEFAULT_RING_TIMEOUT,
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            features: Features::NONE,
            call_id: None,
        }
    }

    /// Refuses configurations that cannot work.
    pub fn validate(&self) -> Result<(), CallError> {
        if self.suites.is_empty() {
            return Err(CallError::InvalidConfig("no cipher suite"));
        }
        if self.role == Role::Caller && !self.accepts_suite(self.media.suite) {
            return Err(CallError::InvalidConfig(
                "media suite is not among the accepted suites",
            ));
        }
        if self.ring_timeout.is_zero()
            || self.setup_timeout.is_zero()
            || self.keepalive_interval.is_zero()
        {
            return Err(CallError::InvalidConfig("timers must be longer than zero"));
        }
        if self.media.bitrate_bps == 0 {
            return Err(CallError::InvalidConfig("bitrate must be positive"));
        }
        if !self.media.frame.is_played() {
            return Err(CallError::InvalidConfig(
                "frames must be 10 or 20 ms (a version-1 phone plays no others)",
            ));
        }
        Ok(())
    }

    pub(crate) fn accepts_suite(&self, id: SuiteId) -> bool {
        CipherSuite::from_id(id.0).is_some_and(|suite| self.suites.contains(&suite))
    }
}

/// Where a peer stands with this end's user, as a [`PeerDirectory`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Standing {
    /// The user verified this identity (compared the SAS or the group code).
    Verified,
    /// Known but not verified, or seen for the first time (and now remembered).
    Unverified,
    /// The contact was known under another identity, which the user has not replaced by
    /// verifying this one: possible interception, or a reinstalled device.
    KeyChanged {
        /// The identity the contact was known by.
        pinned: PublicIdentity,
    },
}

/// The user's record of the peers they know: the seam between a call and a contact store
/// (trust on first use, verification, key changes), asked when the peer has proven its
/// identity. An implementation may record what it learns (a first contact, a changed key);
/// it must not block for long: it runs on the call's driver.
pub trait PeerDirectory: Send + Sync + fmt::Debug {
    /// Where `peer`, who has just proven its identity in this call, stands.
    fn standing(&self, peer: &PublicIdentity) -> Standing;
    /// The user verified `peer` in this call ([`crate::Command::MarkVerified`]).
    fn verified(&self, peer: &PublicIdentity);
}
