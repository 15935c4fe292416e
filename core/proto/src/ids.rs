//! Identifiers carried on the wire.

use std::fmt;

/// Identifies one call end to end; chosen at random by the caller and carried in `Invite`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub [u8; 16]);

impl CallId {
    /// Length of a call id on the wire.
    pub const LEN: usize = 16;

    /// The id as bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl From<u128> for CallId {
    fn from(value: u128) -> Self {
        Self(value.to_be_bytes())
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({self})")
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Identifies one participant's media sender within a call (the SFrame key id's sender part).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u32);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "participant {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_id_displays_as_hex_big_endian() {
        let id = CallId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10_u128);
        assert_eq!(id.to_string(), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(id.as_bytes()[0], 1);
        assert_eq!(id.as_bytes()[15], 0x10);
    }
}
