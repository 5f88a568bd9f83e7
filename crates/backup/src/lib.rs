//! The backup archive (ADR 8): named entries (the services' snapshots and the manifest)
//! encrypted as one chunked AES-256-GCM stream under a key of the archive's own, which the
//! header keeps twice — under a key derived from the master in force, and escrowed to the
//! offline recovery public key — so a backup opens with either, without any server.
//!
//! Layout: `SBK1 ‖ u32 header length ‖ header ‖ chunks`, each chunk `u8 last ‖ u32 length ‖
//! ciphertext`. Chunk `i` is sealed with nonce `i` and authenticates the archive id, `i`, the
//! last flag and (chunk 0) the whole header, so a changed header, a moved, dropped or
//! duplicated chunk and a cut-off end are all refused, naming where. Inside, the plaintext is a
//! sequence of entries `'E' ‖ u16 name length ‖ name ‖ segments ‖ u32 0`, each segment `u32
//! length ‖ bytes`, then `'Z'`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};

use sentia_crypto::{
    ChunkPosition, CryptoError, Envelope, MasterKey, RecoveryPrivateKey, RecoveryPublicKey,
    SecretKey, derive_secret_key, escrow_key, open, open_chunk, open_escrowed_key, seal,
    seal_chunk,
};
use zeroize::Zeroizing;

/// The first bytes of every archive of this format.
pub const MAGIC: &[u8; 4] = b"SBK1";
/// Plaintext bytes per chunk (the last one may hold fewer).
pub const CHUNK: usize = 1 << 20;
/// Purpose of the master-derived key that wraps archive keys (`HKDF(master, purpose, version)`).
pub const MASTER_PURPOSE: &str = "sentia-backup";
/// Largest header accepted (wraps and ids; a few hundred bytes in practice).
const MAX_HEADER: usize = 64 * 1024;
/// Longest entry name.
pub const MAX_NAME: usize = 255;
const TAG: usize = sentia_crypto::TAG_LEN;

/// What is wrong with an archive, or with the key offered for it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file does not start like an archive.
    #[error("not a Sentia backup archive (it does not start with SBK1)")]
    NotAnArchive,
    /// The header cannot be read.
    #[error("archive header: {0}")]
    Header(String),
    /// A chunk failed authentication.
    #[error(
        "chunk {0} fails authentication: the archive was altered there (or chunks were \
         reordered, or it belongs to another archive)"
    )]
    Chunk(u64),
    /// The file ends before the last chunk.
    #[error("the archive is truncated: it ends after {0} chunk(s) without its last chunk")]
    Truncated(u64),
    /// Bytes follow the last chunk.
    #[error("the archive has data after its last chunk")]
    Trailing,
    /// Neither the master nor the recovery key offered opens the archive key.
    #[error("the archive key does not open: {0}")]
    Key(String),
    /// The decrypted content is not a sequence of entries (a writer bug, never tampering:
    /// tampering fails authentication first).
    #[error("archive content: {0}")]
    Content(String),
    /// An entry name is empty or too long.
    #[error("entry name must be 1-{MAX_NAME} bytes")]
    Name,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What an archive is and how its key is kept. Authenticated with the first chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Random id, bound into every chunk and both key wraps.
    pub archive_id: [u8; 16],
    /// When the backup began (ms since the epoch).
    pub created_ms: i64,
    /// The master version whose derived key wraps the archive key.
    pub master_version: u32,
    /// The archive key under `HKDF(master, MASTER_PURPOSE, master_version)`.
    pub under_master: Vec<u8>,
    /// The archive key escrowed to the recovery public key, when one is configured.
    pub to_recovery: Option<Vec<u8>>,
}

impl Header {
    /// A header for a new archive, with its key wrapped under `master` (version
    /// `master_version`) and, when given, escrowed to `recovery`.
    pub fn new(
        key: &ArchiveKey,
        created_ms: i64,
        master: &MasterKey,
        master_version: u32,
        recovery: Option<&RecoveryPublicKey>,
    ) -> Result<Self, CryptoError> {
        let wrapping = wrapping_key(master, master_version);
        Self::under(key, created_ms, &wrapping, master_version, recovery)
    }

    /// As [`Header::new`], given the master-derived [`wrapping_key`] instead of the master:
    /// how key-service makes headers without keeping the master itself in memory.
    pub fn under(
        key: &ArchiveKey,
        created_ms: i64,
        wrapping: &SecretKey,
        master_version: u32,
        recovery: Option<&RecoveryPublicKey>,
    ) -> Result<Self, CryptoError> {
        let archive_id = new_archive_id();
        let under_master = seal(
            wrapping,
            MASTER_PURPOSE,
            master_version.max(1),
            &archive_id,
            key.0.expose(),
        )?;
        let to_recovery = recovery
            .map(|r| escrow_key(&key.0, r, &archive_id))
            .transpose()?;
        Ok(Self {
            archive_id,
            created_ms,
            master_version,
            under_master,
            to_recovery,
        })
    }

    /// A header whose key only `recipient`'s private key opens (no master wrap, master
    /// version 0): how secrets are exported to another store without its master.
    pub fn for_recipient(
        key: &ArchiveKey,
        created_ms: i64,
        recipient: &RecoveryPublicKey,
    ) -> Result<Self, CryptoError> {
        let archive_id = new_archive_id();
        Ok(Self {
            archive_id,
            created_ms,
            master_version: 0,
            under_master: Vec::new(),
            to_recovery: Some(escrow_key(&key.0, recipient, &archive_id)?),
        })
    }

    /// The header as it is stored (and handed from key-service to the writer).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }

    /// A header from [`Header::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ArchiveError> {
        Self::decode(bytes)
    }

    /// The archive id in hex, as names and reports show it.
    pub fn id_hex(&self) -> String {
        self.archive_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.archive_id);
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.master_version.to_be_bytes());
        put_bytes(&mut out, &self.under_master);
        put_bytes(&mut out, self.to_recovery.as_deref().unwrap_or_default());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, ArchiveError> {
        let mut r = Cursor(bytes);
        let archive_id = r.array::<16>("archive id")?;
        let created_ms = i64::from_be_bytes(r.array::<8>("creation time")?);
        let master_version = u32::from_be_bytes(r.array::<4>("master version")?);
        let under_master = r.bytes("master wrap")?.to_vec();
        let to_recovery = Some(r.bytes("recovery escrow")?.to_vec()).filter(|b| !b.is_empty());
        if !r.0.is_empty() {
            return Err(ArchiveError::Header(
                "unexpected bytes after its fields".into(),
            ));
        }
        Ok(Self {
            archive_id,
            created_ms,
            master_version,
            under_master,
            to_recovery,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ArchiveError> {
        if self.0.len() < n {
            return Err(ArchiveError::Header(format!("{what} is cut short")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ArchiveError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], ArchiveError> {
        let n = u32::from_be_bytes(self.array::<4>(what)?) as usize;
        self.take(n, what)
    }
}

fn new_archive_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&sentia_crypto::random_bytes(16));
    id
}

/// The key that wraps archive keys for master version `version`: `HKDF(master,
/// MASTER_PURPOSE, version)`, the same in key-service and in an offline restore.
pub fn wrapping_key(master: &MasterKey, version: u32) -> SecretKey {
    derive_secret_key(master.key(), MASTER_PURPOSE, version)
}

/// The key of one archive. Never stored in clear: the header keeps it wrapped.
pub struct ArchiveKey(SecretKey);

impl std::fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveKey(..)")
    }
}

impl ArchiveKey {
    /// A fresh random key for a new archive.
    pub fn generate() -> Self {
        Self(SecretKey::generate())
    }

    /// A key made elsewhere (key-service's BeginBackup), 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ArchiveError> {
        SecretKey::from_slice(bytes)
            .map(Self)
            .map_err(|e| ArchiveError::Key(e.to_string()))
    }

    /// The raw key, for key-service to hand to the admin making the backup.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// A key for `purpose` derived from this archive's key (HKDF), e.g. to MAC a manifest's
    /// digests so they are no oracle for anyone without the archive key.
    pub fn derive(&self, purpose: &str) -> SecretKey {
        derive_secret_key(&self.0, purpose, 1)
    }

    /// Opens `header`'s key with the master that was in force when the backup began.
    pub fn with_master(header: &Header, master: &MasterKey) -> Result<Self, ArchiveError> {
        Self::with_wrapping_key(header, &wrapping_key(master, header.master_version))
    }

    /// Opens `header`'s key with the [`wrapping_key`] of its master version (key-service
    /// keeps that key, not the master, at hand).
    pub fn with_wrapping_key(header: &Header, wrapping: &SecretKey) -> Result<Self, ArchiveError> {
        if header.under_master.is_empty() {
            return Err(ArchiveError::Key(
                "this archive is sealed to a recipient key only; give its private key".into(),
            ));
        }
        let envelope = Envelope::parse(&header.under_master)
            .map_err(|e| ArchiveError::Header(format!("master wrap: {e}")))?;
        let key = open(wrapping, &envelope, &header.archive_id).map_err(|_| {
            ArchiveError::Key(format!(
                "this is not master version {} (the one in force when the backup began); \
                 give that master, or the recovery private key",
                header.master_version
            ))
        })?;
        SecretKey::from_slice(&key)
            .map(Self)
            .map_err(|e| ArchiveError::Key(e.to_string()))
    }

    /// Opens `header`'s key with the offline recovery private key.
    pub fn with_recovery(
        header: &Header,
        private: &RecoveryPrivateKey,
    ) -> Result<Self, ArchiveError> {
        let escrow = header.to_recovery.as_ref().ok_or_else(|| {
            ArchiveError::Key(
                "the archive has no recovery escrow (no recovery public key was configured); \
                 give the master"
                    .into(),
            )
        })?;
        open_escrowed_key(escrow, private, &header.archive_id)
            .map(Self)
            .map_err(|_| {
                ArchiveError::Key(
                    "the recovery private key given is not the one this archive was escrowed to"
                        .into(),
                )
            })
    }
}

/// One archive's chunk cipher, shared by the writer and the reader: chunk `index` is sealed
/// at its position, and chunk 0 also authenticates the encoded header.
struct Chunks {
    key: ArchiveKey,
    archive_id: [u8; 16],
    header: Vec<u8>,
    index: u64,
}

impl Chunks {
    fn extra(&self) -> &[u8] {
        if self.index == 0 { &self.header } else { &[] }
    }

    fn position(&self, last: bool) -> ChunkPosition<'_> {
        ChunkPosition {
            stream_id: &self.archive_id,
            index: self.index,
            last,
        }
    }

    /// Seals the next chunk.
    fn seal(&mut self, plain: &[u8], last: bool) -> Vec<u8> {
        let sealed = seal_chunk(&self.key.0, self.position(last), self.extra(), plain);
        self.index += 1;
        sealed
    }

    /// Opens the next chunk, or names it.
    fn open(&mut self, sealed: &[u8], last: bool) -> Result<Zeroizing<Vec<u8>>, ArchiveError> {
        let plain = open_chunk(&self.key.0, self.position(last), self.extra(), sealed)
            .map_err(|_| ArchiveError::Chunk(self.index))?;
        self.index += 1;
        Ok(plain)
    }
}

/// Writes an archive: entries in, encrypted chunks out.
pub struct Writer<W: Write> {
    out: W,
    chunks: Chunks,
    chunk: usize,
    buf: Zeroizing<Vec<u8>>,
    in_entry: bool,
}

impl<W: Write> Writer<W> {
    /// Starts an archive on `out` with `header` (made with `key`).
    pub fn new(out: W, header: &Header, key: ArchiveKey) -> Result<Self, ArchiveError> {
        Self::with_chunk_size(out, header, key, CHUNK)
    }

    fn with_chunk_size(
        mut out: W,
        header: &Header,
        key: ArchiveKey,
        chunk: usize,
    ) -> Result<Self, ArchiveError> {
        let encoded = header.encode();
        out.write_all(MAGIC)?;
        out.write_all(&(encoded.len() as u32).to_be_bytes())?;
        out.write_all(&encoded)?;
        Ok(Self {
            out,
            chunks: Chunks {
                key,
                archive_id: header.archive_id,
                header: encoded,
                index: 0,
            },
            chunk,
            buf: Zeroizing::new(Vec::with_capacity(chunk)),
            in_entry: false,
        })
    }

    /// Starts an entry called `name`; its bytes follow through [`Writer::write`].
    pub fn begin(&mut self, name: &str) -> Result<(), ArchiveError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(ArchiveError::Name);
        }
        self.end()?;
        let mut frame = vec![b'E'];
        frame.extend_from_slice(&(name.len() as u16).to_be_bytes());
        frame.extend_from_slice(name.as_bytes());
        self.push(&frame)?;
        self.in_entry = true;
        Ok(())
    }

    /// Appends `data` to the current entry.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        if !self.in_entry {
            return Err(ArchiveError::Content("write before begin".into()));
        }
        for piece in data.chunks(u32::MAX as usize) {
            if piece.is_empty() {
                continue;
            }
            self.push(&(piece.len() as u32).to_be_bytes())?;
            self.push(piece)?;
        }
        Ok(())
    }

    /// Ends the current entry (if any).
    pub fn end(&mut self) -> Result<(), ArchiveError> {
        if self.in_entry {
            self.push(&0u32.to_be_bytes())?;
            self.in_entry = false;
        }
        Ok(())
    }

    /// Writes `name` with `data` as one entry.
    pub fn entry(&mut self, name: &str, data: &[u8]) -> Result<(), ArchiveError> {
        self.begin(name)?;
        self.write(data)?;
        self.end()
    }

    /// Ends the archive (the last chunk) and hands back the output.
    pub fn finish(mut self) -> Result<W, ArchiveError> {
        self.end()?;
        // `push` leaves less than a chunk buffered, so the end marker always goes out in the
        // last chunk, which the reader requires.
        self.buf.push(b'Z');
        let rest = Zeroizing::new(std::mem::take(&mut *self.buf));
        self.emit(&rest, true)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<(), ArchiveError> {
        while !bytes.is_empty() {
            let room = self.chunk - self.buf.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = later;
            if self.buf.len() == self.chunk {
                let full = std::mem::replace(&mut *self.buf, Vec::with_capacity(self.chunk));
                let full = Zeroizing::new(full);
                self.emit(&full, false)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, plain: &[u8], last: bool) -> Result<(), ArchiveError> {
        let sealed = self.chunks.seal(plain, last);
        self.out.write_all(&[u8::from(last)])?;
        self.out.write_all(&(sealed.len() as u32).to_be_bytes())?;
        self.out.write_all(&sealed)?;
        Ok(())
    }
}

/// Reads the header of an archive; [`Reader::open`] then decrypts it.
pub fn read_header(input: &mut impl Read) -> Result<(Header, Vec<u8>), ArchiveError> {
    let mut magic = [0u8; 4];
    input
        .read_exact(&mut magic)
        .map_err(|_| ArchiveError::NotAnArchive)?;
    if &magic != MAGIC {
        return Err(ArchiveError::NotAnArchive);
    }
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .map_err(|_| ArchiveError::Header("cut short".into()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(ArchiveError::Header(format!(
            "{len} bytes long; at most {MAX_HEADER} are accepted"
        )));
    }
    let mut encoded = vec![0u8; len];
    input
        .read_exact(&mut encoded)
        .map_err(|_| ArchiveError::Header("cut short".into()))?;
    Ok((Header::decode(&encoded)?, encoded))
}

/// One entry read back: its name and its bytes (zeroized when dropped).
pub type Entry = (String, Zeroizing<Vec<u8>>);

/// Reads an archive's entries, authenticating every chunk before any of its bytes is used.
pub struct Reader<R: Read> {
    input: R,
    chunks: Chunks,
    chunk: usize,
    plain: Zeroizing<Vec<u8>>,
    at: usize,
    ended: bool,
    in_entry: bool,
}

impl<R: Read> Reader<R> {
    /// Reads the header of `input` and decrypts the rest with the key `open` makes of it (see
    /// [`ArchiveKey::with_master`], [`ArchiveKey::with_recovery`]).
    pub fn open(
        mut input: R,
        open: impl FnOnce(&Header) -> Result<ArchiveKey, ArchiveError>,
    ) -> Result<(Header, Self), ArchiveError> {
        let (header, encoded) = read_header(&mut input)?;
        let key = open(&header)?;
        let reader = Self {
            input,
            chunks: Chunks {
                key,
                archive_id: header.archive_id,
                header: encoded,
                index: 0,
            },
            chunk: CHUNK,
            plain: Zeroizing::new(Vec::new()),
            at: 0,
            ended: false,
            in_entry: false,
        };
        Ok((header, reader))
    }

    /// The next entry, whole (`None` after the last); checks that nothing follows the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ArchiveError> {
        let Some(name) = self.next_name()? else {
            return Ok(None);
        };
        let mut data = Zeroizing::new(Vec::new());
        self.read_entry(|piece| {
            data.extend_from_slice(piece);
            Ok::<_, ArchiveError>(())
        })?;
        Ok(Some((name, data)))
    }

    /// The name of the next entry (`None` after the last, once nothing follows the end); its
    /// bytes come through [`Reader::read_entry`], and are skipped if they are not asked for.
    pub fn next_name(&mut self) -> Result<Option<String>, ArchiveError> {
        if self.in_entry {
            self.read_entry(|_| Ok::<_, ArchiveError>(()))?;
        }
        match self.byte()? {
            b'Z' => {
                if !self.ended || self.at != self.plain.len() {
                    return Err(ArchiveError::Content("data after the end marker".into()));
                }
                let mut probe = [0u8; 1];
                if self.input.read(&mut probe)? != 0 {
                    return Err(ArchiveError::Trailing);
                }
                Ok(None)
            }
            b'E' => {
                let n = u16::from_be_bytes(self.array::<2>()?) as usize;
                let name = String::from_utf8(self.take(n)?.to_vec())
                    .map_err(|_| ArchiveError::Content("an entry name is not UTF-8".into()))?;
                self.in_entry = true;
                Ok(Some(name))
            }
            other => Err(ArchiveError::Content(format!(
                "unexpected frame byte {other:#04x}"
            ))),
        }
    }

    /// Hands the current entry's bytes to `sink` as each chunk is authenticated and
    /// decrypted, at most a chunk at a time: how an entry larger than memory is checked.
    pub fn read_entry<E: From<ArchiveError>>(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.in_entry {
            return Err(ArchiveError::Content("read_entry before next_name".into()).into());
        }
        loop {
            let mut left = u32::from_be_bytes(self.array::<4>()?) as usize;
            if left == 0 {
                break;
            }
            while left > 0 {
                if self.at == self.plain.len() {
                    if self.ended {
                        return Err(ArchiveError::Content(
                            "an entry runs past the end of the archive".into(),
                        )
                        .into());
                    }
                    self.next_chunk()?;
                    continue;
                }
                let want = left.min(self.plain.len() - self.at);
                sink(&self.plain[self.at..self.at + want])?;
                self.at += want;
                left -= want;
            }
        }
        self.in_entry = false;
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, ArchiveError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ArchiveError> {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.take(N)?);
        Ok(a)
    }

    fn take(&mut self, n: usize) -> Result<Zeroizing<Vec<u8>>, ArchiveError> {
        let mut out = Zeroizing::new(Vec::with_capacity(n.min(self.chunk)));
        while out.len() < n {
            if self.at == self.plain.len() {
                if self.ended {
                    return Err(ArchiveError::Content(
                        "an entry runs past the end of the archive".into(),
                    ));
                }
                self.next_chunk()?;
                continue;
            }
            let want = (n - out.len()).min(self.plain.len() - self.at);
            out.extend_from_slice(&self.plain[self.at..self.at + want]);
            self.at += want;
        }
        Ok(out)
    }

    fn next_chunk(&mut self) -> Result<(), ArchiveError> {
        let mut frame = [0u8; 5];
        if !read_full(&mut self.input, &mut frame)? {
            return Err(ArchiveError::Truncated(self.chunks.index));
        }
        let last = match frame[0] {
            0 => false,
            1 => true,
            _ => return Err(ArchiveError::Chunk(self.chunks.index)),
        };
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        if !(TAG..=self.chunk + TAG).contains(&len) {
            return Err(ArchiveError::Chunk(self.chunks.index));
        }
        let mut sealed = vec![0u8; len];
        if !read_full(&mut self.input, &mut sealed)? {
            return Err(ArchiveError::Truncated(self.chunks.index));
        }
        self.plain = self.chunks.open(&sealed, last)?;
        self.at = 0;
        self.ended = last;
        Ok(())
    }
}

/// Fills `buf`; false when the input ends first.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<bool, ArchiveError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
