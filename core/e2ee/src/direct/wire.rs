//! Byte layouts of the four handshake messages (see `docs/protocol-handshake.md`).
//!
//! Parsing is total: every input either yields a message or a [`HandshakeError::Malformed`] /
//! [`HandshakeError::UnexpectedMessage`]-ready type, never a panic.

use super::{HandshakeError, MalformedReason, MessageType};
use crate::identity::{PUBLIC_KEY_LEN, PublicIdentity, SIGNATURE_LEN};

/// First four bytes of every handshake message.
pub(crate) const MAGIC: [u8; 4] = *b"VSKH";
/// Most versions or suites one offer may list.
pub(crate) const MAX_OFFER_ENTRIES: usize = 8;
/// Length of X25519 public keys, nonces, commitments, hashes and MACs.
pub(crate) const LEN32: usize = 32;

const HEADER_LEN: usize = MAGIC.len() + 1;

/// The versions and suites an initiator offers, with their exact encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    /// Protocol versions, in the order sent.
    pub(crate) versions: Vec<u16>,
    /// Cipher suite wire ids, most preferred first.
    pub(crate) suites: Vec<u16>,
}

impl Offer {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for list in [&self.versions, &self.suites] {
            // Offers are built from validated configs of at most MAX_OFFER_ENTRIES entries.
            out.push(u8::try_from(list.len()).unwrap_or(u8::MAX));
            for entry in list {
                out.extend_from_slice(&entry.to_be_bytes());
            }
        }
    }

    fn parse(reader: &mut Reader<'_>) -> Result<Self, HandshakeError> {
        let versions = parse_list(reader)?;
        let suites = parse_list(reader)?;
        Ok(Self { versions, suites })
    }
}

fn parse_list(reader: &mut Reader<'_>) -> Result<Vec<u16>, HandshakeError> {
    let count = usize::from(reader.u8()?);
    if count == 0 {
        return Err(HandshakeError::Malformed(MalformedReason::EmptyList));
    }
    if count > MAX_OFFER_ENTRIES {
        return Err(HandshakeError::Malformed(MalformedReason::ListTooLong));
    }
    (0..count).map(|_| reader.u16()).collect()
}

/// Message 1, initiator to responder.
#[derive(Debug, Clone)]
pub(crate) struct Init {
    pub(crate) offer: Offer,
    pub(crate) ephemeral: [u8; LEN32],
    pub(crate) identity: PublicIdentity,
    pub(crate) nonce: [u8; LEN32],
    pub(crate) sas_commitment: [u8; LEN32],
}

impl Init {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = header(MessageType::Init);
        self.offer.encode(&mut out);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.sas_commitment);
        out
    }

    fn parse(reader: &mut Reader<'_>) -> Result<Self, HandshakeError> {
        Ok(Self {
            offer: Offer::parse(reader)?,
            ephemeral: reader.array()?,
            identity: reader.identity()?,
            nonce: reader.array()?,
            sas_commitment: reader.array()?,
        })
    }
}

/// Message 2, responder to initiator.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) version: u16,
    pub(crate) suite: u16,
    /// The offer as the responder received it.
    pub(crate) offer_echo: Offer,
    pub(crate) ephemeral: [u8; LEN32],
    pub(crate) identity: PublicIdentity,
    /// Commitment to the responder's SAS nonce, revealed in message 4.
    pub(crate) sas_commitment: [u8; LEN32],
    pub(crate) signature: [u8; SIGNATURE_LEN],
    pub(crate) confirmation: [u8; LEN32],
}

impl Response {
    /// Everything before the signature: the part of message 2 the transcript covers.
    pub(crate) fn encode_body(&self) -> Vec<u8> {
        let mut out = header(MessageType::Response);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.suite.to_be_bytes());
        self.offer_echo.encode(&mut out);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.sas_commitment);
        out
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_body();
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.confirmation);
        out
    }

    fn parse(reader: &mut Reader<'_>) -> Result<Self, HandshakeError> {
        Ok(Self {
            version: reader.u16()?,
            suite: reader.u16()?,
            offer_echo: Offer::parse(reader)?,
            ephemeral: reader.array()?,
            identity: reader.identity()?,
            sas_commitment: reader.array()?,
            signature: reader.array()?,
            confirmation: reader.array()?,
        })
    }
}

/// Message 3, initiator to responder.
#[derive(Debug, Clone)]
pub(crate) struct Finish {
    pub(crate) sas_nonce: [u8; LEN32],
    pub(crate) signature: [u8; SIGNATURE_LEN],
    pub(crate) confirmation: [u8; LEN32],
}

impl Finish {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = header(MessageType::Finish);
        out.extend_from_slice(&self.sas_nonce);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.confirmation);
        out
    }

    fn parse(reader: &mut Reader<'_>) -> Result<Self, HandshakeError> {
        Ok(Self {
            sas_nonce: reader.array()?,
            signature: reader.array()?,
            confirmation: reader.array()?,
        })
    }
}

/// Message 4, responder to initiator: the responder's SAS nonce, sent only once the
/// responder's application has been told of the call.
#[derive(Debug, Clone)]
pub(crate) struct Reveal {
    pub(crate) sas_nonce: [u8; LEN32],
}

impl Reveal {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = header(MessageType::Reveal);
        out.extend_from_slice(&self.sas_nonce);
        out
    }

    fn parse(reader: &mut Reader<'_>) -> Result<Self, HandshakeError> {
        Ok(Self {
            sas_nonce: reader.array()?,
        })
    }
}

/// A parsed handshake message of any type.
#[derive(Debug, Clone)]
pub(crate) enum Message {
    Init(Init),
    Response(Response),
    Finish(Finish),
    Reveal(Reveal),
}

impl Message {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let message_type = parse_type(bytes)?;
        let mut reader = Reader {
            rest: bytes.get(HEADER_LEN..).unwrap_or_default(),
        };
        let message = match message_type {
            MessageType::Init => Message::Init(Init::parse(&mut reader)?),
            MessageType::Response => Message::Response(Response::parse(&mut reader)?),
            MessageType::Finish => Message::Finish(Finish::parse(&mut reader)?),
            MessageType::Reveal => Message::Reveal(Reveal::parse(&mut reader)?),
        };
        if !reader.rest.is_empty() {
            return Err(HandshakeError::Malformed(MalformedReason::TrailingBytes));
        }
        Ok(message)
    }

    pub(crate) fn message_type(&self) -> MessageType {
        match self {
            Message::Init(_) => MessageType::Init,
            Message::Response(_) => MessageType::Response,
            Message::Finish(_) => MessageType::Finish,
            Message::Reveal(_) => MessageType::Reveal,
        }
    }
}

/// Checks the magic and reads the type byte.
pub(crate) fn parse_type(bytes: &[u8]) -> Result<MessageType, HandshakeError> {
    let mut reader = Reader { rest: bytes };
    let magic: [u8; 4] = reader.array()?;
    if magic != MAGIC {
        return Err(HandshakeError::Malformed(MalformedReason::BadMagic));
    }
    match reader.u8()? {
        1 => Ok(MessageType::Init),
        2 => Ok(MessageType::Response),
        3 => Ok(MessageType::Finish),
        4 => Ok(MessageType::Reveal),
        other => Err(HandshakeError::Malformed(
            MalformedReason::UnknownMessageType(other),
        )),
    }
}

fn header(message_type: MessageType) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.push(message_type as u8);
    out
}

/// A cursor over untrusted bytes whose reads fail instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], HandshakeError> {
        if self.rest.len() < len {
            return Err(HandshakeError::Malformed(MalformedReason::Truncated));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HandshakeError> {
        self.take(N)?
            .try_into()
            .map_err(|_| HandshakeError::Malformed(MalformedReason::Truncated))
    }

    fn u8(&mut self) -> Result<u8, HandshakeError> {
        let [byte] = self.array()?;
        Ok(byte)
    }

    fn u16(&mut self) -> Result<u16, HandshakeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn identity(&mut self) -> Result<PublicIdentity, HandshakeError> {
        let bytes: [u8; PUBLIC_KEY_LEN] = self.array()?;
        PublicIdentity::from_bytes(&bytes)
            .map_err(|_| HandshakeError::Malformed(MalformedReason::InvalidIdentityKey))
    }
}
