//! The local audit journal of the `local-fsync` and `local` durabilities: events are appended
//! to a file (the same `u32 length | AuditEvent protobuf` records as the spool) and the caller
//! is answered once they are written — after an fsync in `local-fsync` — while a shipper sends
//! them to audit-service in order in the background. What was sent is recorded in a small
//! `.shipped` file beside the journal (the byte offset, replaced atomically); a crash between
//! sending and recording it re-sends a batch, which audit-service drops as replays. When
//! everything written has been shipped the journal is emptied, so it holds only the backlog.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;
use sentia_proto::audit::v1::AuditEvent;

/// Longest accepted record (a bound against reading garbage).
const MAX_RECORD: usize = 1 << 20;
/// Most bytes read for one shipment.
const MAX_READ: u64 = 4 << 20;

struct State {
    file: std::fs::File,
    /// Bytes of complete records written.
    len: u64,
    /// Bytes of them audit-service has accepted.
    shipped: u64,
}

/// An append-only journal with a shipped offset.
pub(crate) struct Journal {
    path: PathBuf,
    shipped_path: PathBuf,
    fsync: bool,
    state: Mutex<State>,
}

/// `events` as records: `u32 length | AuditEvent protobuf` each (the spool's format too).
pub(crate) fn encode(events: &[AuditEvent]) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in events {
        let bytes = e.encode_to_vec();
        buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        buf.extend_from_slice(&bytes);
    }
    buf
}

/// Complete records at the start of `bytes`, and how many bytes they take (a torn last
/// record is left out).
pub(crate) fn records(bytes: &[u8]) -> (Vec<AuditEvent>, u64) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 4 <= bytes.len() {
        let len =
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if len > MAX_RECORD || at + 4 + len > bytes.len() {
            break;
        }
        if let Ok(e) = AuditEvent::decode(&bytes[at + 4..at + 4 + len]) {
            out.push(e);
        }
        at += 4 + len;
    }
    (out, at as u64)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} the audit journal {}: {e}", path.display())
}

impl Journal {
    /// Opens (or creates, owner-only) the journal at `path`. A torn last record (a crash
    /// mid-write) is cut off, so later records are not written behind it.
    pub(crate) fn open(path: &Path, fsync: bool) -> Result<Self, String> {
        let mut file = crate::private_file::open(
            path,
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true),
        )
        .map_err(|e| io_err("cannot open", path, e))?;
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        let mut len = 0;
        if regular {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| io_err("cannot read", path, e))?;
            len = records(&bytes).1;
            if len < bytes.len() as u64 {
                file.set_len(len)
                    .map_err(|e| io_err("cannot repair", path, e))?;
            }
        }
        let shipped_path = PathBuf::from(format!("{}.shipped", path.display()));
        let shipped = std::fs::read_to_string(&shipped_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|s| *s <= len)
            .unwrap_or(0);
        Ok(Self {
            path: path.to_path_buf(),
            shipped_path,
            fsync,
            state: Mutex::new(State { file, len, shipped }),
        })
    }

    /// Appends `events` (and fsyncs in `local-fsync`): once this returns they survive a
    /// process kill, and with fsync a power loss.
    pub(crate) fn append(&self, events: &[AuditEvent]) -> Result<(), String> {
        let buf = encode(events);
        let mut s = self
            .state
            .lock()
            .map_err(|_| "the audit journal lock is poisoned".to_string())?;
        let at = s.len;
        let written = s
            .file
            .seek(SeekFrom::Start(at))
            .and_then(|_| s.file.write_all(&buf))
            .and_then(|()| {
                if self.fsync {
                    s.file.sync_data()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            // Leave no partial record behind the ones already written.
            let _ = s.file.set_len(at);
            return Err(io_err("cannot write", &self.path, e));
        }
        s.len = at + buf.len() as u64;
        Ok(())
    }

    /// The next events to ship (oldest first, at most ~4 MiB) and the offset that shipping
    /// them reaches; empty when everything is shipped.
    pub(crate) fn unshipped(&self) -> Result<(Vec<AuditEvent>, u64), String> {
        let (from, to) = {
            let s = self
                .state
                .lock()
                .map_err(|_| "the audit journal lock is poisoned".to_string())?;
            (s.shipped, s.len.min(s.shipped + MAX_READ))
        };
        if from >= to {
            return Ok((Vec::new(), from));
        }
        // Bytes below `len` are complete records and never rewritten while unshipped.
        let mut f =
            std::fs::File::open(&self.path).map_err(|e| io_err("cannot read", &self.path, e))?;
        let mut bytes = vec![0u8; (to - from) as usize];
        f.seek(SeekFrom::Start(from))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| io_err("cannot read", &self.path, e))?;
        let (events, used) = records(&bytes);
        if used == 0 {
            return Err(format!(
                "the audit journal {} holds a record it cannot read at byte {from}",
                self.path.display()
            ));
        }
        Ok((events, from + used))
    }

    /// Records that everything before `offset` was accepted; empties the journal when
    /// nothing is left to ship.
    pub(crate) fn shipped(&self, offset: u64) -> Result<(), String> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| "the audit journal lock is poisoned".to_string())?;
        s.shipped = offset.min(s.len);
        if s.shipped == s.len && s.len > 0 {
            s.file
                .set_len(0)
                .and_then(|()| {
                    if self.fsync {
                        s.file.sync_data()
                    } else {
                        Ok(())
                    }
                })
                .map_err(|e| io_err("cannot empty", &self.path, e))?;
            s.len = 0;
            s.shipped = 0;
        }
        let tmp = PathBuf::from(format!("{}.tmp", self.shipped_path.display()));
        let write = || -> std::io::Result<()> {
            let mut f = crate::private_file::open(
                &tmp,
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true),
            )?;
            f.write_all(s.shipped.to_string().as_bytes())?;
            if self.fsync {
                f.sync_data()?;
            }
            std::fs::rename(&tmp, &self.shipped_path)
        };
        write().map_err(|e| io_err("cannot record the shipped offset of", &self.path, e))
    }

    /// Bytes written and not yet shipped.
    pub(crate) fn backlog(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.len - s.shipped)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            event_type: "secret_access".into(),
            emitter_sequence: i,
            ..Default::default()
        }
    }

    fn seqs(events: &[AuditEvent]) -> Vec<u64> {
        events.iter().map(|e| e.emitter_sequence).collect()
    }

    #[test]
    fn the_journal_ships_in_order_survives_a_reopen_and_cuts_a_torn_tail() {
        let path = std::env::temp_dir().join(format!("sentia-journal-{}", uuid::Uuid::new_v4()));
        let j = Journal::open(&path, true).unwrap();
        j.append(&[event(1), event(2)]).unwrap();
        j.append(&[event(3)]).unwrap();
        let (first, _) = j.unshipped().unwrap();
        assert_eq!(seqs(&first), vec![1, 2, 3]);
        // Only the first two were accepted before a crash: the offset is kept on disk.
        let two = encode(&[event(1), event(2)]).len() as u64;
        j.shipped(two).unwrap();
        drop(j);
        // A crash mid-write left half a record.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0, 0, 0, 50, 1, 2])
            .unwrap();
        let j = Journal::open(&path, true).unwrap();
        j.append(&[event(4)]).unwrap();
        let (rest, end) = j.unshipped().unwrap();
        assert_eq!(
            seqs(&rest),
            vec![3, 4],
            "torn bytes cut, shipped ones skipped"
        );
        j.shipped(end).unwrap();
        assert_eq!(j.backlog(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied");
        assert!(j.unshipped().unwrap().0.is_empty());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(format!("{}.shipped", path.display()));
    }
}
