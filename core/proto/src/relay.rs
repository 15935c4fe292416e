//! The relay protocol (`docs/protocol-relay.md`): what a device and a Viska relay say on the
//! device's one long-lived QUIC connection, and the routing prefix of a group call's media
//! datagrams. No IO: [`RelayMessage::encode`] and a [`RelayDecoder`] that reassembles frames
//! from arbitrary chunks.
//!
//! A frame is `length: u32 (big-endian, of what follows) || type: u8 || body`; byte strings in
//! a body are `u32 length || bytes`, lists `u16 count || items`.

use crate::error::{ProtoError, Reader};

use zeroize::Zeroizing;

/// ALPN of a relay connection, protocol version 1 (no account login).
pub const RELAY_ALPN: &[u8] = b"viska-relay/1";

/// ALPN of a relay connection, protocol version 2: version 1 and the account login
/// ([`RelayMessage::LoginRequired`], [`RelayMessage::Login`], [`RelayMessage::LoginFailed`]).
/// A device offers both, version 2 first; the relay picks the highest it speaks. The choice is
/// part of the TLS handshake, so nobody between can downgrade it.
pub const RELAY_ALPN_V2: &[u8] = b"viska-relay/2";

/// Most bytes of an account name in [`RelayMessage::Login`].
pub const MAX_ACCOUNT_NAME: usize = 64;

/// Most bytes of a password in [`RelayMessage::Login`].
pub const MAX_LOGIN_PASSWORD: usize = 1024;

/// Most bytes of a one-time code in [`RelayMessage::Login`].
pub const MAX_LOGIN_CODE: usize = 16;

/// Largest frame (type and body) either side sends or accepts: a Welcome into a group of a
/// thousand members fits.
pub const MAX_RELAY_FRAME: usize = 1 << 20;

/// Largest byte string inside a frame.
const MAX_BYTES: usize = MAX_RELAY_FRAME - 16;

/// Most items of a list (key packages published at once, members added by one commit).
pub const MAX_LIST: usize = 1024;

/// The label a device signs, with the TLS exporter value and the relay's nonce, to prove its
/// identity key ([`RelayMessage::Auth`]).
pub const AUTH_LABEL: &[u8] = b"viska relay auth v1";

/// TLS exporter label of the value the device's authentication is bound to (RFC 8446 §7.5).
pub const AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-viska-relay-auth";

/// The bytes a device signs to authenticate: label, the 32-byte TLS exporter value of the
/// connection, the relay's 32-byte nonce.
pub fn auth_transcript(exporter: &[u8; 32], nonce: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(AUTH_LABEL.len() + 64);
    t.extend_from_slice(AUTH_LABEL);
    t.extend_from_slice(exporter);
    t.extend_from_slice(nonce);
    t
}

/// A call on the relay: the 16 bytes its creator chose (the MLS group id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallRef(pub [u8; 16]);

/// A device's identity key (Ed25519 public key).
pub type DeviceKey = [u8; 32];

/// Why the relay refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RelayErrorCode {
    /// Not authenticated yet, or the signature did not verify.
    Unauthenticated,
    /// The call does not exist.
    NoSuchCall,
    /// The device is not a member of the call.
    NotMember,
    /// The device has no key package left.
    NoKeyPackage,
    /// The call exists already.
    CallExists,
    /// The request is not allowed (malformed, too large, out of place).
    BadRequest,
    /// This relay admits only devices registered to an account, and this one is not: log in
    /// (protocol version 2), or, on a version 1 connection, the device cannot be admitted.
    LoginRequired,
    /// The device's role does not allow the request (`docs/protocol-relay.md` §9).
    Forbidden,
    /// The device was revoked, or its account disabled: it cannot log in again.
    Revoked,
    /// A code this implementation does not know.
    Other(u16),
}

impl RelayErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::Unauthenticated => 1,
            Self::NoSuchCall => 2,
            Self::NotMember => 3,
            Self::NoKeyPackage => 4,
            Self::CallExists => 5,
            Self::BadRequest => 6,
            Self::LoginRequired => 7,
            Self::Forbidden => 8,
            Self::Revoked => 9,
            Self::Other(c) => c,
        }
    }

    fn from_u16(c: u16) -> Self {
        match c {
            1 => Self::Unauthenticated,
            2 => Self::NoSuchCall,
            3 => Self::NotMember,
            4 => Self::NoKeyPackage,
            5 => Self::CallExists,
            6 => Self::BadRequest,
            7 => Self::LoginRequired,
            8 => Self::Forbidden,
            9 => Self::Revoked,
            c => Self::Other(c),
        }
    }
}

/// One message of the relay protocol. Direction in brackets.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayMessage {
    /// [relay → device] First message on the connection: sign this to authenticate.
    Challenge {
        /// Random, fresh per connection.
        nonce: [u8; 32],
    },
    /// [device → relay] The device's identity and its signature over [`auth_transcript`].
    Auth {
        /// The identity key.
        identity: DeviceKey,
        /// Ed25519 signature.
        signature: [u8; 64],
    },
    /// [relay → device] Authenticated; held messages follow.
    AuthOk,
    /// [device → relay] Key packages others may add this device with (replacing those held);
    /// `last_resort` is handed out when the others are used up, and not consumed.
    PublishKeyPackages {
        /// One-use packages (serialized MLS messages).
        packages: Vec<Vec<u8>>,
        /// A reusable package.
        last_resort: Option<Vec<u8>>,
    },
    /// [device → relay] Fetch (and consume) one key package of `identity`.
    FetchKeyPackage {
        /// Echoed in the answer.
        request: u32,
        /// Whose.
        identity: DeviceKey,
    },
    /// [relay → device] The answer to [`RelayMessage::FetchKeyPackage`].
    KeyPackage {
        /// The request answered.
        request: u32,
        /// Whose.
        identity: DeviceKey,
        /// The package; none if the device published none.
        package: Option<Vec<u8>>,
    },
    /// [device → relay] Open a call with this device as its only member, at epoch 0.
    CreateCall {
        /// The call (its MLS group id).
        call: CallRef,
    },
    /// [relay → device] The device is a member of `call`; its media datagrams carry `route`.
    CallOpened {
        /// The call.
        call: CallRef,
        /// The routing number of the call's media datagrams.
        route: u32,
        /// The call's epoch.
        epoch: u64,
    },
    /// [device → relay] A commit for `epoch` (the group's epoch before it), with the devices it
    /// adds (their Welcome) and removes.
    Commit {
        /// The call.
        call: CallRef,
        /// The epoch the commit was made in.
        epoch: u64,
        /// The MLS commit (a `PublicMessage`).
        commit: Vec<u8>,
        /// The Welcome for the added devices.
        welcome: Option<Vec<u8>>,
        /// Devices the commit adds.
        added: Vec<DeviceKey>,
        /// Devices the commit removes.
        removed: Vec<DeviceKey>,
    },
    /// [relay → device] The verdict on this device's commit: the first for an epoch wins.
    CommitResult {
        /// The call.
        call: CallRef,
        /// The epoch the commit was made in.
        epoch: u64,
        /// Whether it took effect.
        accepted: bool,
    },
    /// [relay → device] Another member's accepted commit, in the call's order.
    Handshake {
        /// The call.
        call: CallRef,
        /// The epoch it was made in.
        epoch: u64,
        /// The MLS message.
        message: Vec<u8>,
    },
    /// [relay → device] The device was added to `call`.
    Welcome {
        /// The call.
        call: CallRef,
        /// The routing number of the call's media datagrams.
        route: u32,
        /// The epoch the device joins at.
        epoch: u64,
        /// The MLS Welcome.
        welcome: Vec<u8>,
    },
    /// [device → relay] This device holds the keys of `epoch`.
    Ready {
        /// The call.
        call: CallRef,
        /// The epoch.
        epoch: u64,
    },
    /// [relay → device] Every member holds `epoch`: send under it.
    Switch {
        /// The call.
        call: CallRef,
        /// The epoch.
        epoch: u64,
    },
    /// [device → relay] This device leaves `call`.
    Leave {
        /// The call.
        call: CallRef,
    },
    /// [relay → device] A member left or was removed by the relay's rule: a remaining member
    /// should commit its removal (the relay stopped forwarding to it already).
    MemberGone {
        /// The call.
        call: CallRef,
        /// Who.
        identity: DeviceKey,
    },
    /// [device → relay] This device cannot follow `call`'s group any more (it missed or could
    /// not process a commit): take it out and have it added back. Forwarding to it stops at
    /// once, as for a leave.
    Rejoin {
        /// The call.
        call: CallRef,
    },
    /// [relay → device] A member asked to be added back ([`RelayMessage::Rejoin`]): a
    /// remaining member should commit its removal and add it again from a fresh key package.
    Readd {
        /// The call.
        call: CallRef,
        /// Who.
        identity: DeviceKey,
    },
    /// [relay → device] An operator asked for an emergency rekey of `call`: a member still
    /// at `epoch` commits an update of its own leaf (fresh keys for the call; the relay's
    /// first-commit-wins order keeps one). Version 2; a device that predates it ignores it.
    Rekey {
        /// The call.
        call: CallRef,
        /// The call's epoch when the rekey was asked for.
        epoch: u64,
    },
    /// [relay → device, version 2] Where `call` stands, sent after `AuthOk` and the messages
    /// held for the device, for each call it is a member of (none is sent for a call whose
    /// next commit is being stored): a device that lost a message with its previous
    /// connection finds out here, not at the next change.
    CallStatus {
        /// The call.
        call: CallRef,
        /// The call's epoch.
        epoch: u64,
        /// SHA-256 of the commit that moved the call into `epoch` (its `commit` bytes as the
        /// committer sent them); absent for epoch 0 or when the relay no longer has it.
        last_commit: Option<[u8; 32]>,
    },
    /// [relay → device] The device is no longer a member of `call`.
    Removed {
        /// The call.
        call: CallRef,
    },
    /// [relay → device] A request was refused.
    Error {
        /// Why.
        code: RelayErrorCode,
        /// The call it concerned, if any.
        call: Option<CallRef>,
    },
    /// [relay → device, version 2] The device proved its key, but the key is not registered
    /// to an account: send [`RelayMessage::Login`].
    LoginRequired,
    /// [device → relay, version 2] Register this device's key to `account`.
    Login {
        /// The account name (UTF-8, 1 to [`MAX_ACCOUNT_NAME`] bytes).
        account: String,
        /// The account's password (UTF-8, at most [`MAX_LOGIN_PASSWORD`] bytes); wiped on drop
        /// and never printed.
        password: Zeroizing<String>,
        /// The current one-time code (TOTP, 6 digits).
        code: String,
    },
    /// [relay → device, version 2] The login failed (which part is not said); the device may
    /// try again, after `retry_after_secs` if that is not 0.
    LoginFailed {
        /// Seconds before a new attempt can succeed (a lock-out), 0 if none.
        retry_after_secs: u32,
    },
}

impl std::fmt::Debug for RelayMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Lengths of the opaque blobs, not their bytes.
        match self {
            Self::Challenge { .. } => f.write_str("Challenge"),
            Self::Auth { identity, .. } => write!(f, "Auth({})", hex8(identity)),
            Self::AuthOk => f.write_str("AuthOk"),
            Self::PublishKeyPackages {
                packages,
                last_resort,
            } => write!(
                f,
                "PublishKeyPackages({}, last resort: {})",
                packages.len(),
                last_resort.is_some()
            ),
            Self::FetchKeyPackage { request, identity } => {
                write!(f, "FetchKeyPackage({request}, {})", hex8(identity))
            }
            Self::KeyPackage {
                request, package, ..
            } => write!(f, "KeyPackage({request}, {})", package.is_some()),
            Self::CreateCall { call } => write!(f, "CreateCall({})", hex8(&call.0)),
            Self::CallOpened { call, route, epoch } => {
                write!(
                    f,
                    "CallOpened({}, route {route}, epoch {epoch})",
                    hex8(&call.0)
                )
            }
            Self::Commit {
                call,
                epoch,
                added,
                removed,
                ..
            } => write!(
                f,
                "Commit({}, epoch {epoch}, +{} -{})",
                hex8(&call.0),
                added.len(),
                removed.len()
            ),
            Self::CommitResult {
                call,
                epoch,
                accepted,
            } => write!(
                f,
                "CommitResult({}, epoch {epoch}, {accepted})",
                hex8(&call.0)
            ),
            Self::Handshake { call, epoch, .. } => {
                write!(f, "Handshake({}, epoch {epoch})", hex8(&call.0))
            }
            Self::Welcome {
                call, route, epoch, ..
            } => write!(
                f,
                "Welcome({}, route {route}, epoch {epoch})",
                hex8(&call.0)
            ),
            Self::Ready { call, epoch } => write!(f, "Ready({}, {epoch})", hex8(&call.0)),
            Self::Switch { call, epoch } => write!(f, "Switch({}, {epoch})", hex8(&call.0)),
            Self::Leave { call } => write!(f, "Leave({})", hex8(&call.0)),
            Self::MemberGone { call, identity } => {
                write!(f, "MemberGone({}, {})", hex8(&call.0), hex8(identity))
            }
            Self::Removed { call } => write!(f, "Removed({})", hex8(&call.0)),
            Self::Rejoin { call } => write!(f, "Rejoin({})", hex8(&call.0)),
            Self::Rekey { call, epoch } => write!(f, "Rekey({}, {epoch})", hex8(&call.0)),
            Self::CallStatus { call, epoch, .. } => {
                write!(f, "CallStatus({}, {epoch})", hex8(&call.0))
            }
            Self::Readd { call, identity } => {
                write!(f, "Readd({}, {})", hex8(&call.0), hex8(identity))
            }
            Self::LoginRequired => f.write_str("LoginRequired"),
            Self::Login { account, .. } => write!(f, "Login({account:?}, ***)"),
            Self::LoginFailed { retry_after_secs } => write!(f, "LoginFailed({retry_after_secs})"),
            Self::Error { code, call } => write!(
                f,
                "Error({code:?}, {})",
                call.map(|c| hex8(&c.0)).unwrap_or_default()
            ),
        }
    }
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

mod tag {
    pub(super) const CHALLENGE: u8 = 0x01;
    pub(super) const AUTH: u8 = 0x02;
    pub(super) const AUTH_OK: u8 = 0x03;
    pub(super) const PUBLISH: u8 = 0x04;
    pub(super) const FETCH: u8 = 0x05;
    pub(super) const KEY_PACKAGE: u8 = 0x06;
    pub(super) const CREATE: u8 = 0x07;
    pub(super) const OPENED: u8 = 0x08;
    pub(super) const COMMIT: u8 = 0x09;
    pub(super) const COMMIT_RESULT: u8 = 0x0a;
    pub(super) const HANDSHAKE: u8 = 0x0b;
    pub(super) const WELCOME: u8 = 0x0c;
    pub(super) const READY: u8 = 0x0d;
    pub(super) const SWITCH: u8 = 0x0e;
    pub(super) const LEAVE: u8 = 0x0f;
    pub(super) const MEMBER_GONE: u8 = 0x10;
    pub(super) const REMOVED: u8 = 0x11;
    pub(super) const ERROR: u8 = 0x12;
    pub(super) const REJOIN: u8 = 0x13;
    pub(super) const READD: u8 = 0x14;
    pub(super) const LOGIN_REQUIRED: u8 = 0x15;
    pub(super) const LOGIN: u8 = 0x16;
    pub(super) const LOGIN_FAILED: u8 = 0x17;
    pub(super) const REKEY: u8 = 0x18;
    pub(super) const CALL_STATUS: u8 = 0x19;
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn put_keys(out: &mut Vec<u8>, keys: &[DeviceKey]) {
    out.extend_from_slice(&(keys.len() as u16).to_be_bytes());
    for k in keys {
        out.extend_from_slice(k);
    }
}

fn bytes(r: &mut Reader<'_>) -> Result<Vec<u8>, ProtoError> {
    let len = r.u32()? as usize;
    if len > MAX_BYTES {
        return Err(ProtoError::TooLarge {
            what: "relay byte string",
            len,
            max: MAX_BYTES,
        });
    }
    Ok(r.take(len)?.to_vec())
}

fn opt(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, ProtoError> {
    match r.u8()? {
        0 => Ok(None),
        1 => bytes(r).map(Some),
        v => Err(ProtoError::InvalidField {
            field: "option flag",
            value: u64::from(v),
        }),
    }
}

fn count(r: &mut Reader<'_>) -> Result<usize, ProtoError> {
    let n = usize::from(r.u16()?);
    if n > MAX_LIST {
        return Err(ProtoError::TooLarge {
            what: "relay list",
            len: n,
            max: MAX_LIST,
        });
    }
    Ok(n)
}

fn keys(r: &mut Reader<'_>) -> Result<Vec<DeviceKey>, ProtoError> {
    let n = count(r)?;
    (0..n).map(|_| r.array()).collect()
}

fn check_len(what: &'static str, len: usize, min: usize, max: usize) -> Result<(), ProtoError> {
    if len > max {
        return Err(ProtoError::TooLarge { what, len, max });
    }
    if len < min {
        return Err(ProtoError::InvalidField {
            field: what,
            value: len as u64,
        });
    }
    Ok(())
}

/// A UTF-8 byte string of `min` to `max` bytes; the bytes of one that is not UTF-8 are wiped.
fn text(
    r: &mut Reader<'_>,
    what: &'static str,
    min: usize,
    max: usize,
) -> Result<String, ProtoError> {
    let len = r.u32()? as usize;
    check_len(what, len, min, max)?;
    String::from_utf8(r.take(len)?.to_vec()).map_err(|e| {
        zeroize::Zeroize::zeroize(&mut e.into_bytes());
        ProtoError::InvalidField {
            field: what,
            value: len as u64,
        }
    })
}

fn flag(r: &mut Reader<'_>, field: &'static str) -> Result<bool, ProtoError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(ProtoError::InvalidField {
            field,
            value: u64::from(v),
        }),
    }
}

impl RelayMessage {
    /// The message as one frame (length prefix included).
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let mut out = vec![0u8; 4];
        match self {
            Self::Challenge { nonce } => {
                out.push(tag::CHALLENGE);
                out.extend_from_slice(nonce);
            }
            Self::Auth {
                identity,
                signature,
            } => {
                out.push(tag::AUTH);
                out.extend_from_slice(identity);
                out.extend_from_slice(signature);
            }
            Self::AuthOk => out.push(tag::AUTH_OK),
            Self::PublishKeyPackages {
                packages,
                last_resort,
            } => {
                if packages.len() > MAX_LIST {
                    return Err(ProtoError::TooLarge {
                        what: "relay list",
                        len: packages.len(),
                        max: MAX_LIST,
                    });
                }
                out.push(tag::PUBLISH);
                out.extend_from_slice(&(packages.len() as u16).to_be_bytes());
                for p in packages {
                    put_bytes(&mut out, p);
                }
                put_opt(&mut out, last_resort.as_deref());
            }
            Self::FetchKeyPackage { request, identity } => {
                out.push(tag::FETCH);
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(identity);
            }
            Self::KeyPackage {
                request,
                identity,
                package,
            } => {
                out.push(tag::KEY_PACKAGE);
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(identity);
                put_opt(&mut out, package.as_deref());
            }
            Self::CreateCall { call } => {
                out.push(tag::CREATE);
                out.extend_from_slice(&call.0);
            }
            Self::CallOpened { call, route, epoch } => {
                out.push(tag::OPENED);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&route.to_be_bytes());
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            Self::Commit {
                call,
                epoch,
                commit,
                welcome,
                added,
                removed,
            } => {
                if added.len() > MAX_LIST || removed.len() > MAX_LIST {
                    return Err(ProtoError::TooLarge {
                        what: "relay list",
                        len: added.len().max(removed.len()),
                        max: MAX_LIST,
                    });
                }
                out.push(tag::COMMIT);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&epoch.to_be_bytes());
                put_bytes(&mut out, commit);
                put_opt(&mut out, welcome.as_deref());
                put_keys(&mut out, added);
                put_keys(&mut out, removed);
            }
            Self::CommitResult {
                call,
                epoch,
                accepted,
            } => {
                out.push(tag::COMMIT_RESULT);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.push(u8::from(*accepted));
            }
            Self::Handshake {
                call,
                epoch,
                message,
            } => {
                out.push(tag::HANDSHAKE);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&epoch.to_be_bytes());
                put_bytes(&mut out, message);
            }
            Self::Welcome {
                call,
                route,
                epoch,
                welcome,
            } => {
                out.push(tag::WELCOME);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&route.to_be_bytes());
                out.extend_from_slice(&epoch.to_be_bytes());
                put_bytes(&mut out, welcome);
            }
            Self::Ready { call, epoch } => {
                out.push(tag::READY);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            Self::Switch { call, epoch } => {
                out.push(tag::SWITCH);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            Self::Leave { call } => {
                out.push(tag::LEAVE);
                out.extend_from_slice(&call.0);
            }
            Self::MemberGone { call, identity } => {
                out.push(tag::MEMBER_GONE);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(identity);
            }
            Self::Removed { call } => {
                out.push(tag::REMOVED);
                out.extend_from_slice(&call.0);
            }
            Self::Rejoin { call } => {
                out.push(tag::REJOIN);
                out.extend_from_slice(&call.0);
            }
            Self::Rekey { call, epoch } => {
                out.push(tag::REKEY);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            Self::CallStatus {
                call,
                epoch,
                last_commit,
            } => {
                out.push(tag::CALL_STATUS);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(&epoch.to_be_bytes());
                put_opt(&mut out, last_commit.as_ref().map(|h| &h[..]));
            }
            Self::Readd { call, identity } => {
                out.push(tag::READD);
                out.extend_from_slice(&call.0);
                out.extend_from_slice(identity);
            }
            Self::Error { code, call } => {
                out.push(tag::ERROR);
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                put_opt(&mut out, call.as_ref().map(|c| &c.0[..]));
            }
            Self::LoginRequired => out.push(tag::LOGIN_REQUIRED),
            Self::Login {
                account,
                password,
                code,
            } => {
                check_len("account name", account.len(), 1, MAX_ACCOUNT_NAME)?;
                check_len("password", password.len(), 0, MAX_LOGIN_PASSWORD)?;
                check_len("one-time code", code.len(), 0, MAX_LOGIN_CODE)?;
                out.push(tag::LOGIN);
                put_bytes(&mut out, account.as_bytes());
                put_bytes(&mut out, password.as_bytes());
                put_bytes(&mut out, code.as_bytes());
            }
            Self::LoginFailed { retry_after_secs } => {
                out.push(tag::LOGIN_FAILED);
                out.extend_from_slice(&retry_after_secs.to_be_bytes());
            }
        }
        let len = out.len() - 4;
        if len > MAX_RELAY_FRAME {
            return Err(ProtoError::TooLarge {
                what: "relay frame",
                len,
                max: MAX_RELAY_FRAME,
            });
        }
        out[..4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(out)
    }

    /// Decodes one frame's type and body (without its length prefix).
    pub fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(frame, "relay message");
        let call = |r: &mut Reader<'_>| r.array().map(CallRef);
        let message =
            match r.u8()? {
                tag::CHALLENGE => Self::Challenge { nonce: r.array()? },
                tag::AUTH => Self::Auth {
                    identity: r.array()?,
                    signature: r.array()?,
                },
                tag::AUTH_OK => Self::AuthOk,
                tag::PUBLISH => {
                    let n = count(&mut r)?;
                    let packages = (0..n).map(|_| bytes(&mut r)).collect::<Result<_, _>>()?;
                    Self::PublishKeyPackages {
                        packages,
                        last_resort: opt(&mut r)?,
                    }
                }
                tag::FETCH => Self::FetchKeyPackage {
                    request: r.u32()?,
                    identity: r.array()?,
                },
                tag::KEY_PACKAGE => Self::KeyPackage {
                    request: r.u32()?,
                    identity: r.array()?,
                    package: opt(&mut r)?,
                },
                tag::CREATE => Self::CreateCall {
                    call: call(&mut r)?,
                },
                tag::OPENED => Self::CallOpened {
                    call: call(&mut r)?,
                    route: r.u32()?,
                    epoch: r.u64()?,
                },
                tag::COMMIT => Self::Commit {
                    call: call(&mut r)?,
                    epoch: r.u64()?,
                    commit: bytes(&mut r)?,
                    welcome: opt(&mut r)?,
                    added: keys(&mut r)?,
                    removed: keys(&mut r)?,
                },
                tag::COMMIT_RESULT => Self::CommitResult {
                    call: call(&mut r)?,
                    epoch: r.u64()?,
                    accepted: flag(&mut r, "accepted")?,
                },
                tag::HANDSHAKE => Self::Handshake {
                    call: call(&mut r)?,
                    epoch: r.u64()?,
                    message: bytes(&mut r)?,
                },
                tag::WELCOME => Self::Welcome {
                    call: call(&mut r)?,
                    route: r.u32()?,
                    epoch: r.u64()?,
                    welcome: bytes(&mut r)?,
                },
                tag::READY => Self::Ready {
                    call: call(&mut r)?,
                    epoch: r.u64()?,
                },
                tag::SWITCH => Self::Switch {
                    call: call(&mut r)?,
                    epoch: r.u64()?,
                },
                tag::LEAVE => Self::Leave {
                    call: call(&mut r)?,
                },
                tag::MEMBER_GONE => Self::MemberGone {
                    call: call(&mut r)?,
                    identity: r.array()?,
                },
                tag::REMOVED => Self::Removed {
                    call: call(&mut r)?,
                },
                tag::REJOIN => Self::Rejoin {
                    call: call(&mut r)?,
                },
                tag::REKEY => Self::Rekey {
                    call: call(&mut r)?,
                    epoch: r.u64()?,
                },
                tag::CALL_STATUS => {
                    let call = call(&mut r)?;
                    let epoch = r.u64()?;
                    let last_commit =
                        match opt(&mut r)? {
                            None => None,
                            Some(b) => Some(b.try_into().map_err(|b: Vec<u8>| {
                                ProtoError::InvalidField {
                                    field: "last_commit",
                                    value: b.len() as u64,
                                }
                            })?),
                        };
                    Self::CallStatus {
                        call,
                        epoch,
                        last_commit,
                    }
                }
                tag::READD => Self::Readd {
                    call: call(&mut r)?,
                    identity: r.array()?,
                },
                tag::ERROR => {
                    let code = RelayErrorCode::from_u16(r.u16()?);
                    let call = match opt(&mut r)? {
                        None => None,
                        Some(b) => Some(CallRef(b.try_into().map_err(|b: Vec<u8>| {
                            ProtoError::InvalidField {
                                field: "call",
                                value: b.len() as u64,
                            }
                        })?)),
                    };
                    Self::Error { code, call }
                }
                tag::LOGIN_REQUIRED => Self::LoginRequired,
                tag::LOGIN => {
                    let account = text(&mut r, "account name", 1, MAX_ACCOUNT_NAME)?;
                    let password = Zeroizing::new(text(&mut r, "password", 0, MAX_LOGIN_PASSWORD)?);
                    let code = text(&mut r, "one-time code", 0, MAX_LOGIN_CODE)?;
                    Self::Login {
                        account,
                        password,
                        code,
                    }
                }
                tag::LOGIN_FAILED => Self::LoginFailed {
                    retry_after_secs: r.u32()?,
                },
                other => {
                    return Err(ProtoError::InvalidField {
                        field: "relay message type",
                        value: u64::from(other),
                    });
                }
            };
        if !r.rest().is_empty() {
            return Err(ProtoError::InvalidField {
                field: "relay message trailing bytes",
                value: 0,
            });
        }
        Ok(message)
    }
}

/// Reassembles relay frames from a stream's chunks. A frame longer than
/// [`MAX_RELAY_FRAME`] breaks the stream ([`ProtoError::StreamFailed`] from then on); a frame
/// whose body does not decode is an error for that frame only.
#[derive(Debug, Default)]
pub struct RelayDecoder {
    buf: Vec<u8>,
    failed: bool,
}

impl RelayDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Whether the framing broke.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<RelayMessage>, ProtoError> {
        if self.failed {
            return Err(ProtoError::StreamFailed);
        }
        let Some(prefix) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_RELAY_FRAME || len == 0 {
            self.failed = true;
            self.buf = Vec::new();
            return Err(ProtoError::TooLarge {
                what: "relay frame",
                len,
                max: MAX_RELAY_FRAME,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        RelayMessage::decode(&frame).map(Some)
    }
}

/// The routing prefix of a group call's media datagram: the call's route as a QUIC
/// variable-length integer (RFC 9000 §16), 1 byte below 64, 2 below 16384, 4 below 2^30.
pub fn encode_route(route: u32, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    match route {
        0..=63 => out.push(route as u8),
        64..=16383 => out.extend_from_slice(&((route as u16) | 0x4000).to_be_bytes()),
        16384..=0x3fff_ffff => out.extend_from_slice(&(route | 0x8000_0000).to_be_bytes()),
        _ => {
            return Err(ProtoError::InvalidField {
                field: "route",
                value: u64::from(route),
            });
        }
    }
    Ok(())
}

/// Splits a group media datagram into its route and the SFrame frame after it.
pub fn decode_route(datagram: &[u8]) -> Result<(u32, &[u8]), ProtoError> {
    let first = *datagram.first().ok_or(ProtoError::Truncated {
        what: "route",
        needed: 1,
        available: 0,
    })?;
    let len = 1usize << (first >> 6);
    if len > 4 {
        return Err(ProtoError::InvalidField {
            field: "route length",
            value: len as u64,
        });
    }
    let Some((head, rest)) = datagram.split_at_checked(len) else {
        return Err(ProtoError::Truncated {
            what: "route",
            needed: len,
            available: datagram.len(),
        });
    };
    let mut value = u32::from(first & 0x3f);
    for &b in &head[1..] {
        value = (value << 8) | u32::from(b);
    }
    Ok((value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<RelayMessage> {
        let call = CallRef([7; 16]);
        vec![
            RelayMessage::Challenge { nonce: [1; 32] },
            RelayMessage::Auth {
                identity: [2; 32],
                signature: [3; 64],
            },
            RelayMessage::AuthOk,
            RelayMessage::PublishKeyPackages {
                packages: vec![vec![1, 2, 3], vec![]],
                last_resort: Some(vec![9; 40]),
            },
            RelayMessage::FetchKeyPackage {
                request: 5,
                identity: [4; 32],
            },
            RelayMessage::KeyPackage {
                request: 5,
                identity: [4; 32],
                package: None,
            },
            RelayMessage::CreateCall { call },
            RelayMessage::CallOpened {
                call,
                route: 3,
                epoch: 0,
            },
            RelayMessage::Commit {
                call,
                epoch: 4,
                commit: vec![5; 100],
                welcome: Some(vec![6; 7]),
                added: vec![[8; 32]],
                removed: vec![[9; 32], [10; 32]],
            },
            RelayMessage::CommitResult {
                call,
                epoch: 4,
                accepted: true,
            },
            RelayMessage::Handshake {
                call,
                epoch: 4,
                message: vec![1; 3],
            },
            RelayMessage::Welcome {
                call,
                route: 70000,
                epoch: 5,
                welcome: vec![2; 9],
            },
            RelayMessage::Ready { call, epoch: 5 },
            RelayMessage::Switch { call, epoch: 5 },
            RelayMessage::Leave { call },
            RelayMessage::MemberGone {
                call,
                identity: [3; 32],
            },
            RelayMessage::Removed { call },
            RelayMessage::Rejoin { call },
            RelayMessage::Readd {
                call,
                identity: [5; 32],
            },
            RelayMessage::Rekey { call, epoch: 9 },
            RelayMessage::CallStatus {
                call,
                epoch: 9,
                last_commit: Some([6; 32]),
            },
            RelayMessage::CallStatus {
                call,
                epoch: 0,
                last_commit: None,
            },
            RelayMessage::Error {
                code: RelayErrorCode::NotMember,
                call: Some(call),
            },
            RelayMessage::Error {
                code: RelayErrorCode::Other(999),
                call: None,
            },
            RelayMessage::Error {
                code: RelayErrorCode::Forbidden,
                call: Some(call),
            },
            RelayMessage::LoginRequired,
            RelayMessage::Login {
                account: "alice".into(),
                password: Zeroizing::new("correct horse battery staple".into()),
                code: "123456".into(),
            },
            RelayMessage::LoginFailed {
                retry_after_secs: 8,
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_the_decoder_in_any_chunking() {
        let messages = samples();
        let stream: Vec<u8> = messages.iter().flat_map(|m| m.encode().unwrap()).collect();
        for chunk in [1, 3, 64, stream.len()] {
            let mut d = RelayDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, messages, "chunks of {chunk}");
        }
    }

    #[test]
    fn layouts_are_pinned() {
        let m = RelayMessage::Ready {
            call: CallRef([0xaa; 16]),
            epoch: 0x0102,
        };
        let mut expected = vec![0, 0, 0, 25, 0x0d];
        expected.extend_from_slice(&[0xaa; 16]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(m.encode().unwrap(), expected);
    }

    #[test]
    fn login_layout_is_pinned_and_its_password_is_not_printed() {
        let m = RelayMessage::Login {
            account: "al".into(),
            password: Zeroizing::new("pw".into()),
            code: "1".into(),
        };
        assert_eq!(
            m.encode().unwrap(),
            [
                &[0, 0, 0, 18, 0x16][..],
                &[0, 0, 0, 2],
                b"al",
                &[0, 0, 0, 2],
                b"pw",
                &[0, 0, 0, 1],
                b"1"
            ]
            .concat()
        );
        assert_eq!(format!("{m:?}"), "Login(\"al\", ***)");
        let failed = RelayMessage::LoginFailed {
            retry_after_secs: 0x0102,
        };
        assert_eq!(failed.encode().unwrap(), [0, 0, 0, 5, 0x17, 0, 0, 1, 2]);
        let mut rekey = vec![0, 0, 0, 0x19, 0x18];
        rekey.extend_from_slice(&[0xaa; 16]);
        rekey.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(
            RelayMessage::Rekey {
                call: CallRef([0xaa; 16]),
                epoch: 0x0102
            }
            .encode()
            .unwrap(),
            rekey
        );
        assert_eq!(
            RelayMessage::LoginRequired.encode().unwrap(),
            [0, 0, 0, 1, 0x15]
        );
        let mut status = vec![0, 0, 0, 0x3e, 0x19];
        status.extend_from_slice(&[0xaa; 16]);
        status.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        status.extend_from_slice(&[1, 0, 0, 0, 0x20]);
        status.extend_from_slice(&[0xbb; 32]);
        assert_eq!(
            RelayMessage::CallStatus {
                call: CallRef([0xaa; 16]),
                epoch: 3,
                last_commit: Some([0xbb; 32]),
            }
            .encode()
            .unwrap(),
            status
        );
        // A hash of any other length is refused.
        let mut short = vec![0x19];
        short.extend_from_slice(&[0xaa; 16]);
        short.extend_from_slice(&[0; 8]);
        short.extend_from_slice(&[1, 0, 0, 0, 2, 1, 2]);
        assert!(RelayMessage::decode(&short).is_err());
    }

    #[test]
    fn bad_logins_are_typed_errors() {
        let login = |account: &[u8], password: &[u8]| {
            let mut f = vec![0x16];
            for b in [account, password, b"123456"] {
                f.extend_from_slice(&(b.len() as u32).to_be_bytes());
                f.extend_from_slice(b);
            }
            RelayMessage::decode(&f)
        };
        assert!(login(b"alice", b"pw").is_ok());
        assert!(login(b"", b"pw").is_err(), "an empty account name");
        assert!(login(&[b'a'; 65], b"pw").is_err(), "a long account name");
        assert!(
            login(b"alice", &[0xff, 0xfe]).is_err(),
            "a password not UTF-8"
        );
        assert!(login(b"alice", &[b'p'; 1025]).is_err(), "a long password");
        let too_long = RelayMessage::Login {
            account: "a".repeat(65),
            password: Zeroizing::new(String::new()),
            code: String::new(),
        };
        assert!(too_long.encode().is_err());
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        // Unknown type, truncated body, trailing bytes, a bad flag.
        for frame in [&[0x7f][..], &[0x01, 1, 2], &[0x03, 0], &[0x0a, 0, 0]] {
            assert!(RelayMessage::decode(frame).is_err(), "{frame:?}");
        }
        let mut d = RelayDecoder::new();
        d.push(&(MAX_RELAY_FRAME as u32 + 1).to_be_bytes());
        assert!(matches!(d.next_message(), Err(ProtoError::TooLarge { .. })));
        assert_eq!(d.next_message(), Err(ProtoError::StreamFailed));
        // A bad body spoils only its own frame.
        let mut d = RelayDecoder::new();
        d.push(&[0, 0, 0, 1, 0x7f]);
        d.push(&RelayMessage::AuthOk.encode().unwrap());
        assert!(d.next_message().is_err());
        assert_eq!(d.next_message().unwrap(), Some(RelayMessage::AuthOk));
    }

    #[test]
    fn routes_are_quic_varints() {
        for (route, len) in [
            (0u32, 1),
            (63, 1),
            (64, 2),
            (16383, 2),
            (16384, 4),
            (0x3fff_ffff, 4),
        ] {
            let mut out = Vec::new();
            encode_route(route, &mut out).unwrap();
            assert_eq!(out.len(), len, "{route}");
            out.extend_from_slice(b"frame");
            assert_eq!(decode_route(&out).unwrap(), (route, &b"frame"[..]));
        }
        let mut out = Vec::new();
        assert!(encode_route(0x4000_0000, &mut out).is_err());
        assert_eq!(
            {
                let mut v = Vec::new();
                encode_route(300, &mut v).unwrap();
                v
            },
            vec![0x41, 0x2c]
        );
        assert!(decode_route(&[]).is_err());
        assert!(
            decode_route(&[0xc0, 1, 2, 3, 4, 5, 6, 7]).is_err(),
            "8-byte routes"
        );
        assert!(decode_route(&[0x80, 1]).is_err(), "truncated");
    }
}
