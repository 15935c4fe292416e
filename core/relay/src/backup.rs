//! The relay's encrypted backup format (`docs/relay-storage.md`): a header, then the archive
//! of the data directory sealed in chunks with XChaCha20-Poly1305 under a key derived from a
//! passphrase with Argon2id.
//!
//! ```text
//! header (57 bytes):
//!   magic "VSKRLBAK" (8) | version 1 (1) | m_kib (u32) | t (u32) | p (u32) | salt (16)
//!   | nonce prefix (16) | chunk size (u32)
//! chunks: chunk i = XChaCha20-Poly1305(key, nonce = prefix || i (u64),
//!                                      aad = header || i (u64) || final (u8), plaintext)
//!   every chunk but the last holds exactly `chunk size` plaintext bytes, the last fewer
//!   (possibly none) and final = 1
//! ```
//!
//! The plaintext of the chunks, one stream, is the archive: entries `name length (u8, 1..=32)
//! | name | data length (u64) | data`, then one zero byte. Integers are big-endian.
//!
//! This module depends on nothing but the AEAD, the password crate and `zeroize` (no SQLite),
//! so the fuzz target builds it alone. Randomness (salt, nonce prefix) comes from the caller.
use std::fmt;
use std::io::{Read, Write};

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use viska_passwords::{HashParams, derive_key};
use zeroize::Zeroizing;

/// The first bytes of every relay backup.
pub const MAGIC: &[u8; 8] = b"VSKRLBAK";
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Bytes of the salt of the key derivation.
pub const SALT_LEN: usize = 16;
/// Bytes of the random nonce prefix (the last 8 bytes of a nonce are the chunk's index).
pub const PREFIX_LEN: usize = 16;
/// Bytes of the header.
pub const HEADER_LEN: usize = 8 + 1 + 4 + 4 + 4 + SALT_LEN + PREFIX_LEN + 4;
/// Bytes of a chunk's authentication tag.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk this build writes.
pub const CHUNK_SIZE: u32 = 64 * 1024;
/// Smallest and largest chunk size a reader accepts (memory stays bounded by the largest).
pub const CHUNK_RANGE: std::ops::RangeInclusive<u32> = 1024..=(1 << 20);
/// Largest Argon2 memory a reader accepts (KiB): 1 GiB.
pub const MAX_M_KIB: u32 = 1 << 20;
/// Largest Argon2 pass count a reader accepts.
pub const MAX_T: u32 = 16;
/// Largest Argon2 lane count a reader accepts.
pub const MAX_P: u32 = 8;
/// Longest entry name.
pub const MAX_NAME: usize = 32;

/// Why a backup was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupError {
    /// Not a relay backup (no magic, or shorter than a header and one chunk).
    NotABackup,
    /// A format version this build does not read.
    Version(u8),
    /// Argon2 parameters or a chunk size outside what a reader accepts.
    Params,
    /// A chunk failed authentication: a wrong passphrase, or a changed, reordered or
    /// truncated backup (the first chunk failing is most often the passphrase).
    Authentication {
        /// The chunk's index.
        chunk: u64,
    },
    /// The backup ends before its final chunk.
    Truncated,
    /// Bytes after the final chunk.
    TrailingData,
    /// The archive inside is malformed (only possible with a backup written by a broken
    /// writer: its bytes were authenticated).
    Archive(String),
    /// The key derivation failed.
    Kdf(String),
    /// Reading or writing failed.
    Io(String),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotABackup => f.write_str("not a relay backup"),
            Self::Version(v) => write!(f, "backup format version {v} (this build reads {VERSION})"),
            Self::Params => f.write_str("backup parameters out of range"),
            Self::Authentication { chunk: 0 } => f.write_str(
                "the backup does not decrypt: wrong passphrase, or the backup was changed",
            ),
            Self::Authentication { chunk } => write!(
                f,
                "chunk {chunk} of the backup does not authenticate: it was changed, reordered or cut"
            ),
            Self::Truncated => f.write_str("the backup is truncated"),
            Self::TrailingData => f.write_str("bytes after the backup's final chunk"),
            Self::Archive(what) => write!(f, "backup archive: {what}"),
            Self::Kdf(what) => write!(f, "deriving the backup key: {what}"),
            Self::Io(what) => write!(f, "backup io: {what}"),
        }
    }
}

impl std::error::Error for BackupError {}

fn io(e: std::io::Error) -> BackupError {
    BackupError::Io(e.to_string())
}

/// A parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Argon2id parameters of the key.
    pub params: HashParams,
    /// Salt of the key.
    pub salt: [u8; SALT_LEN],
    /// First 16 bytes of every chunk's nonce.
    pub prefix: [u8; PREFIX_LEN],
    /// Plaintext bytes per chunk (the last fewer).
    pub chunk_size: u32,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Header {
    /// The header's bytes (associated data of every chunk).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8] = VERSION;
        out[9..13].copy_from_slice(&self.params.m_kib.to_be_bytes());
        out[13..17].copy_from_slice(&self.params.t.to_be_bytes());
        out[17..21].copy_from_slice(&self.params.p.to_be_bytes());
        out[21..37].copy_from_slice(&self.salt);
        out[37..53].copy_from_slice(&self.prefix);
        out[53..57].copy_from_slice(&self.chunk_size.to_be_bytes());
        out
    }

    /// Parses (and bounds) a header from the first [`HEADER_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, BackupError> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        if bytes[8] != VERSION {
            return Err(BackupError::Version(bytes[8]));
        }
        let params = HashParams {
            m_kib: be32(&bytes[9..13]),
            t: be32(&bytes[13..17]),
            p: be32(&bytes[17..21]),
        };
        let chunk_size = be32(&bytes[53..57]);
        // Lanes first: Argon2's memory floor is 8 KiB per lane, computed only for a bounded p.
        if !(1..=MAX_P).contains(&params.p)
            || !(8 * params.p..=MAX_M_KIB).contains(&params.m_kib)
            || !(1..=MAX_T).contains(&params.t)
            || !CHUNK_RANGE.contains(&chunk_size)
        {
            return Err(BackupError::Params);
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[21..37]);
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&bytes[37..53]);
        Ok(Self {
            params,
            salt,
            prefix,
            chunk_size,
        })
    }
}

const _: () = assert!(HEADER_LEN == 57);

fn nonce(prefix: &[u8; PREFIX_LEN], index: u64) -> [u8; 24] {
    let mut n = [0u8; 24];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..].copy_from_slice(&index.to_be_bytes());
    n
}

fn aad(header: &[u8; HEADER_LEN], index: u64, last: bool) -> [u8; HEADER_LEN + 9] {
    let mut a = [0u8; HEADER_LEN + 9];
    a[..HEADER_LEN].copy_from_slice(header);
    a[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&index.to_be_bytes());
    a[HEADER_LEN + 8] = u8::from(last);
    a
}

/// Writes a backup: the header at once, then chunks as plaintext comes
/// ([`Sealer::write_all`]), the final chunk at [`Sealer::finish`]. Holds one chunk in memory.
pub struct Sealer<W: Write> {
    out: W,
    cipher: XChaCha20Poly1305,
    header: Header,
    encoded: [u8; HEADER_LEN],
    buf: Zeroizing<Vec<u8>>,
    index: u64,
}

impl<W: Write> fmt::Debug for Sealer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Sealer<W> {
    /// Derives the key from `passphrase` (not checked here: see
    /// [`viska_passwords::check_password`]) with `params` over `salt`, and writes the header.
    pub fn new(
        mut out: W,
        passphrase: &[u8],
        params: HashParams,
        salt: [u8; SALT_LEN],
        prefix: [u8; PREFIX_LEN],
    ) -> Result<Self, BackupError> {
        let header = Header {
            params,
            salt,
            prefix,
            chunk_size: CHUNK_SIZE,
        };
        let key =
            derive_key(passphrase, &salt, params).map_err(|e| BackupError::Kdf(e.to_string()))?;
        let encoded = header.encode();
        out.write_all(&encoded).map_err(io)?;
        Ok(Self {
            out,
            cipher: XChaCha20Poly1305::new((&*key).into()),
            header,
            encoded,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK_SIZE as usize + TAG_LEN)),
            index: 0,
        })
    }

    fn seal(&mut self, last: bool) -> Result<(), BackupError> {
        let tag = self
            .cipher
            .encrypt_inout_detached(
                (&nonce(&self.header.prefix, self.index)).into(),
                &aad(&self.encoded, self.index, last),
                self.buf.as_mut_slice().into(),
            )
            .map_err(|_| BackupError::Io("sealing a chunk".into()))?;
        self.out.write_all(&self.buf).map_err(io)?;
        self.out.write_all(&tag).map_err(io)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Appends plaintext.
    pub fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), BackupError> {
        let size = self.header.chunk_size as usize;
        while !bytes.is_empty() {
            let take = (size - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            // A full chunk is sealed only once more plaintext comes: the final chunk is
            // always shorter than a full one (an empty one when the stream fills them all).
            if self.buf.len() == size && !bytes.is_empty() {
                self.seal(false)?;
            }
        }
        if self.buf.len() == size {
            self.seal(false)?;
        }
        Ok(())
    }

    /// Seals the final chunk and returns the writer.
    pub fn finish(mut self) -> Result<W, BackupError> {
        self.seal(true)?;
        self.out.flush().map_err(io)?;
        Ok(self.out)
    }
}

/// A stream of plaintext bytes the archive is read from.
pub trait Source {
    /// Fills `buf` entirely, or fails ([`BackupError::Truncated`] at the end).
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError>;
    /// Whether the stream has ended (nothing more to read), after its final chunk.
    fn at_end(&mut self) -> Result<bool, BackupError>;
}

/// Reads a backup: checks the header, derives the key, and decrypts and authenticates one
/// chunk at a time. Bytes come out only from chunks that authenticated, in order.
pub struct Opener<R: Read> {
    input: R,
    cipher: XChaCha20Poly1305,
    header: Header,
    encoded: [u8; HEADER_LEN],
    chunk: Zeroizing<Vec<u8>>,
    pos: usize,
    index: u64,
    done: bool,
}

impl<R: Read> fmt::Debug for Opener<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("index", &self.index)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, BackupError> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(n)
}

impl<R: Read> Opener<R> {
    /// Reads the header and derives the key from `passphrase`.
    pub fn new(input: R, passphrase: &[u8]) -> Result<Self, BackupError> {
        Self::open(input, |header| {
            derive_key(passphrase, &header.salt, header.params)
                .map_err(|e| BackupError::Kdf(e.to_string()))
        })
    }

    /// Reads the header and uses `key` as the derived key, skipping Argon2 (the fuzz target).
    #[doc(hidden)]
    pub fn with_key(input: R, key: [u8; 32]) -> Result<Self, BackupError> {
        Self::open(input, |_| Ok(Zeroizing::new(key)))
    }

    fn open(
        mut input: R,
        key: impl FnOnce(&Header) -> Result<Zeroizing<[u8; 32]>, BackupError>,
    ) -> Result<Self, BackupError> {
        let mut encoded = [0u8; HEADER_LEN];
        if fill(&mut input, &mut encoded)? < HEADER_LEN {
            return Err(BackupError::NotABackup);
        }
        let header = Header::parse(&encoded)?;
        let key = key(&header)?;
        Ok(Self {
            input,
            cipher: XChaCha20Poly1305::new((&*key).into()),
            chunk: Zeroizing::new(Vec::with_capacity(header.chunk_size as usize + TAG_LEN)),
            header,
            encoded,
            pos: 0,
            index: 0,
            done: false,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads and opens the next chunk into `self.chunk`.
    fn next_chunk(&mut self) -> Result<(), BackupError> {
        let full = self.header.chunk_size as usize + TAG_LEN;
        self.chunk.resize(full, 0);
        let n = fill(&mut self.input, &mut self.chunk)?;
        let last = n < full;
        if n < TAG_LEN {
            return Err(BackupError::Truncated);
        }
        self.chunk.truncate(n);
        let tag: [u8; TAG_LEN] = self.chunk[n - TAG_LEN..]
            .try_into()
            .map_err(|_| BackupError::Truncated)?;
        self.chunk.truncate(n - TAG_LEN);
        self.cipher
            .decrypt_inout_detached(
                (&nonce(&self.header.prefix, self.index)).into(),
                &aad(&self.encoded, self.index, last),
                self.chunk.as_mut_slice().into(),
                (&tag).into(),
            )
            .map_err(|_| {
                if last && self.index > 0 {
                    // A chunk sealed as not final and now the last one read: cut short.
                    BackupError::Truncated
                } else {
                    BackupError::Authentication { chunk: self.index }
                }
            })?;
        self.index += 1;
        self.pos = 0;
        self.done = last;
        Ok(())
    }

    /// Checks that the backup ended right after the archive: the final chunk was read, and
    /// the input holds nothing more.
    pub fn finish(mut self) -> Result<(), BackupError> {
        if !self.at_end()? {
            return Err(BackupError::Archive(
                "data after the end of the archive".into(),
            ));
        }
        let mut probe = [0u8; 1];
        if fill(&mut self.input, &mut probe)? != 0 {
            return Err(BackupError::TrailingData);
        }
        Ok(())
    }
}

impl<R: Read> Source for Opener<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        let mut n = 0;
        while n < buf.len() {
            if self.pos == self.chunk.len() {
                if self.done {
                    return Err(BackupError::Archive("the archive ends early".into()));
                }
                self.next_chunk()?;
                continue;
            }
            let take = (self.chunk.len() - self.pos).min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&self.chunk[self.pos..self.pos + take]);
            self.pos += take;
            n += take;
        }
        Ok(())
    }

    fn at_end(&mut self) -> Result<bool, BackupError> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(true);
            }
            self.next_chunk()?;
        }
        Ok(false)
    }
}

/// Plaintext bytes as a [`Source`] (tests and the fuzz target).
#[derive(Debug)]
pub struct SliceSource<'a>(pub &'a [u8]);

impl Source for SliceSource<'_> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        if self.0.len() < buf.len() {
            return Err(BackupError::Archive("the archive ends early".into()));
        }
        let (head, rest) = self.0.split_at(buf.len());
        buf.copy_from_slice(head);
        self.0 = rest;
        Ok(())
    }

    fn at_end(&mut self) -> Result<bool, BackupError> {
        Ok(self.0.is_empty())
    }
}

/// Writes one archive entry's head: its name and its data's length (the data follows).
pub fn entry_head(name: &str, len: u64) -> Result<Vec<u8>, BackupError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(BackupError::Archive(format!("entry name {name:?}")));
    }
    let mut out = Vec::with_capacity(1 + name.len() + 8);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// The byte that ends an archive.
pub const ARCHIVE_END: u8 = 0;

/// Reads the archive from `src`: the next entry's name and data length, or `None` at the
/// archive's end marker (after which the source must be at its end). The caller then reads
/// exactly that many data bytes from `src`.
pub fn next_entry(src: &mut impl Source) -> Result<Option<(String, u64)>, BackupError> {
    let mut len = [0u8; 1];
    src.read_exact(&mut len)?;
    if len[0] == ARCHIVE_END {
        if !src.at_end()? {
            return Err(BackupError::Archive(
                "data after the end of the archive".into(),
            ));
        }
        return Ok(None);
    }
    let n = usize::from(len[0]);
    if n > MAX_NAME {
        return Err(BackupError::Archive(format!("an entry name of {n} bytes")));
    }
    let mut name = vec![0u8; n];
    src.read_exact(&mut name)?;
    let name = String::from_utf8(name)
        .map_err(|_| BackupError::Archive("an entry name not UTF-8".into()))?;
    let mut size = [0u8; 8];
    src.read_exact(&mut size)?;
    Ok(Some((name, u64::from_be_bytes(size))))
}

/// Parses `bytes` as a backup opened with a fixed key (chunks split, authenticated and
/// refused), then as an archive's plaintext (entries read in bounded pieces): for the fuzz
/// target, which runs no Argon2 per input.
pub fn fuzz_parse(bytes: &[u8]) {
    if let Ok(mut opener) = Opener::with_key(bytes, [0x42; 32]) {
        let mut piece = [0u8; 1000];
        while let Ok(false) = opener.at_end() {
            if opener.read_exact(&mut piece[..1]).is_err() || opener.read_exact(&mut piece).is_err()
            {
                break;
            }
        }
    }
    let mut src = SliceSource(bytes);
    let mut scratch = [0u8; 4096];
    while let Ok(Some((_, mut len))) = next_entry(&mut src) {
        while len > 0 {
            let take = len.min(scratch.len() as u64) as usize;
            if src.read_exact(&mut scratch[..take]).is_err() {
                return;
            }
            len -= take as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &[u8] = b"correct horse battery staple";

    fn seal(plain: &[u8]) -> Vec<u8> {
        let mut s = Sealer::new(Vec::new(), PASS, HashParams::TEST, [7; 16], [9; 16]).unwrap();
        // In uneven pieces, to cross chunk boundaries mid-write.
        for piece in plain.chunks(1000) {
            s.write_all(piece).unwrap();
        }
        s.finish().unwrap()
    }

    fn open(backup: &[u8], pass: &[u8]) -> Result<Vec<u8>, BackupError> {
        let mut o = Opener::new(backup, pass)?;
        let mut out = Vec::new();
        while !o.at_end()? {
            let mut b = [0u8; 1];
            o.read_exact(&mut b)?;
            out.push(b[0]);
        }
        o.finish()?;
        Ok(out)
    }

    fn plain(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_and_around_chunk_boundaries() {
        let size = CHUNK_SIZE as usize;
        for len in [0, 1, size - 1, size, size + 1, 2 * size, 2 * size + 5] {
            let p = plain(len);
            let b = seal(&p);
            // A header, full chunks, and a final chunk shorter than a full one.
            let chunks = len / size + 1;
            assert_eq!(b.len(), HEADER_LEN + len + chunks * TAG_LEN, "len {len}");
            assert_eq!(open(&b, PASS).unwrap(), p, "len {len}");
        }
    }

    #[test]
    fn wrong_passphrase_tampering_truncation_reordering_are_refused() {
        let size = CHUNK_SIZE as usize;
        let p = plain(3 * size + 10);
        let b = seal(&p);
        assert_eq!(
            open(&b, b"another passphrase entirely"),
            Err(BackupError::Authentication { chunk: 0 })
        );
        // A flipped bit in a chunk, in the header (bound as associated data).
        let mut t = b.clone();
        t[HEADER_LEN + size + TAG_LEN + 3] ^= 1;
        assert_eq!(
            open(&t, PASS),
            Err(BackupError::Authentication { chunk: 1 })
        );
        let mut t = b.clone();
        t[40] ^= 1; // the nonce prefix
        assert_eq!(
            open(&t, PASS),
            Err(BackupError::Authentication { chunk: 0 })
        );
        // Cut at a chunk boundary (the last full chunk was not sealed as final), or inside.
        let full = size + TAG_LEN;
        for cut in [HEADER_LEN + 2 * full, HEADER_LEN + full + 100, b.len() - 1] {
            assert!(
                matches!(
                    open(&b[..cut], PASS),
                    Err(BackupError::Truncated | BackupError::Authentication { .. })
                ),
                "cut at {cut}"
            );
        }
        assert_eq!(
            open(&b[..HEADER_LEN + 2 * full], PASS),
            Err(BackupError::Truncated)
        );
        // Chunks 1 and 2 swapped.
        let mut r = b[..HEADER_LEN + full].to_vec();
        r.extend_from_slice(&b[HEADER_LEN + 2 * full..HEADER_LEN + 3 * full]);
        r.extend_from_slice(&b[HEADER_LEN + full..HEADER_LEN + 2 * full]);
        r.extend_from_slice(&b[HEADER_LEN + 3 * full..]);
        assert_eq!(r.len(), b.len());
        assert_eq!(
            open(&r, PASS),
            Err(BackupError::Authentication { chunk: 1 })
        );
        // Appended bytes.
        let mut a = b.clone();
        a.push(0);
        assert!(open(&a, PASS).is_err());
    }

    #[test]
    fn headers_out_of_bounds_are_refused_before_any_key_derivation() {
        let b = seal(b"x");
        assert_eq!(
            Header::parse(&b[..HEADER_LEN - 1]),
            Err(BackupError::NotABackup)
        );
        let mut v = b.clone();
        v[8] = 2;
        assert_eq!(Header::parse(&v), Err(BackupError::Version(2)));
        for (at, value) in [(9, u32::MAX), (13, 0), (17, 99), (53, 1)] {
            let mut h = b.clone();
            h[at..at + 4].copy_from_slice(&value.to_be_bytes());
            assert_eq!(Header::parse(&h), Err(BackupError::Params), "at {at}");
        }
    }

    #[test]
    fn archives_parse_and_malformed_ones_are_typed_errors() {
        let mut a = entry_head("relay-cert.der", 3).unwrap();
        a.extend_from_slice(b"abc");
        a.push(ARCHIVE_END);
        let mut src = SliceSource(&a);
        assert_eq!(
            next_entry(&mut src).unwrap(),
            Some(("relay-cert.der".to_string(), 3))
        );
        let mut data = [0u8; 3];
        src.read_exact(&mut data).unwrap();
        assert_eq!(&data, b"abc");
        assert_eq!(next_entry(&mut src).unwrap(), None);
        // Trailing bytes after the end marker, a name too long, a cut entry.
        let mut t = a.clone();
        t.push(1);
        let mut src = SliceSource(&t[1 + 14 + 8 + 3..]);
        assert!(matches!(next_entry(&mut src), Err(BackupError::Archive(_))));
        assert!(next_entry(&mut SliceSource(&[33u8; 40])).is_err());
        assert!(next_entry(&mut SliceSource(&a[..5])).is_err());
        assert!(entry_head("", 0).is_err());
        fuzz_parse(&a);
        fuzz_parse(&[]);
    }
}
