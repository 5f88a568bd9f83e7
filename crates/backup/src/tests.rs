#![allow(clippy::unwrap_used)]

use super::*;

struct Made {
    bytes: Vec<u8>,
    master: MasterKey,
    recovery: RecoveryPrivateKey,
}

/// An archive of `entries` in chunks of `chunk` bytes, under master version 3.
fn archive(entries: &[(&str, Vec<u8>)], chunk: usize) -> Made {
    let master = MasterKey::generate();
    let recovery = RecoveryPrivateKey::generate();
    let key = ArchiveKey::generate();
    let header = Header::new(
        &key,
        1_700_000_000_000,
        &master,
        3,
        Some(&recovery.public()),
    )
    .unwrap();
    let mut w = Writer::with_chunk_size(Vec::new(), &header, key, chunk).unwrap();
    for (name, data) in entries {
        w.entry(name, data).unwrap();
    }
    Made {
        bytes: w.finish().unwrap(),
        master,
        recovery,
    }
}

fn read_all(bytes: &[u8], master: &MasterKey) -> Result<Vec<(String, Vec<u8>)>, ArchiveError> {
    let (_, mut r) = Reader::open(bytes, |h| ArchiveKey::with_master(h, master))?;
    let mut out = Vec::new();
    while let Some((name, data)) = r.next_entry()? {
        out.push((name, data.to_vec()));
    }
    Ok(out)
}

fn entries() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("manifest.json", b"{\"v\":1}".to_vec()),
        (
            "vault.snapshot",
            (0..5000u32).flat_map(|i| i.to_be_bytes()).collect(),
        ),
        ("empty", Vec::new()),
        ("keys.snapshot", b"sealed keyring rows".to_vec()),
    ]
}

#[test]
fn entries_come_back_in_order_across_many_chunks() {
    let want = entries();
    let made = archive(&want, 64);
    let got = read_all(&made.bytes, &made.master).unwrap();
    let want: Vec<(String, Vec<u8>)> = want.into_iter().map(|(n, d)| (n.into(), d)).collect();
    assert_eq!(got, want);
    assert!(
        made.bytes.len() > 20_000 / 64 * 64,
        "many chunks were written"
    );
}

#[test]
fn an_entry_streams_out_a_chunk_at_a_time_and_one_not_asked_for_is_skipped() {
    let made = archive(&entries(), 64);
    let (_, mut r) = Reader::open(made.bytes.as_slice(), |h| {
        ArchiveKey::with_master(h, &made.master)
    })
    .unwrap();
    assert_eq!(r.next_name().unwrap().as_deref(), Some("manifest.json"));
    assert_eq!(r.next_name().unwrap().as_deref(), Some("vault.snapshot"));
    let (mut data, mut largest, mut pieces) = (Vec::new(), 0, 0);
    r.read_entry(|piece| {
        data.extend_from_slice(piece);
        largest = largest.max(piece.len());
        pieces += 1;
        Ok::<_, ArchiveError>(())
    })
    .unwrap();
    assert_eq!(data, entries()[1].1);
    assert!(largest <= 64, "no piece is larger than a chunk ({largest})");
    assert!(pieces > 300, "the entry came in many pieces ({pieces})");
    assert_eq!(r.next_name().unwrap().as_deref(), Some("empty"));
    assert_eq!(r.next_name().unwrap().as_deref(), Some("keys.snapshot"));
    assert_eq!(r.next_name().unwrap(), None);
}

#[test]
fn the_archive_key_opens_with_the_master_or_the_recovery_key_and_nothing_else() {
    let made = archive(&entries(), 1024);
    let (_, mut r) = Reader::open(made.bytes.as_slice(), |h| {
        ArchiveKey::with_recovery(h, &made.recovery)
    })
    .unwrap();
    assert_eq!(r.next_entry().unwrap().unwrap().0, "manifest.json");

    let err = read_all(&made.bytes, &MasterKey::generate()).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Key(m) if m.contains("master version 3")),
        "{err}"
    );
    let err = Reader::open(made.bytes.as_slice(), |h| {
        ArchiveKey::with_recovery(h, &RecoveryPrivateKey::generate())
    })
    .err()
    .unwrap();
    assert!(matches!(err, ArchiveError::Key(_)), "{err}");
}

#[test]
fn every_altered_byte_is_refused_and_a_chunk_is_named() {
    // 31 bytes of entry and the end marker fill two 16-byte chunks exactly: the end marker
    // must still travel in the chunk marked last.
    let made = archive(&entries()[..1], 16);
    assert_eq!(read_all(&made.bytes, &made.master).unwrap().len(), 1);
    let (_, header) = read_header(&mut made.bytes.as_slice()).unwrap();
    let body_start = 8 + header.len();
    for i in 0..made.bytes.len() {
        let mut bad = made.bytes.clone();
        bad[i] ^= 0x01;
        let err = read_all(&bad, &made.master).expect_err("an altered byte was accepted");
        if i >= body_start {
            assert!(
                matches!(
                    err,
                    ArchiveError::Chunk(_) | ArchiveError::Truncated(_) | ArchiveError::Trailing
                ),
                "byte {i}: {err}"
            );
        }
    }
}

#[test]
fn a_cut_reordered_or_extended_archive_is_refused() {
    let made = archive(&entries(), 256);
    let (_, header) = read_header(&mut made.bytes.as_slice()).unwrap();
    let body = 8 + header.len();
    // Chunks on the wire: 1 + 4 + ciphertext (256 + 16 for a full one).
    let frame = 1 + 4 + 256 + TAG;
    for cut in [body, body + frame, body + 3 * frame, made.bytes.len() - 1] {
        let err = read_all(&made.bytes[..cut], &made.master).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Truncated(_)),
            "cut at {cut}: {err}"
        );
    }
    let mut swapped = made.bytes.clone();
    let (a, b) = (body + frame, body + 2 * frame);
    let second = made.bytes[a..b].to_vec();
    swapped[a..b].copy_from_slice(&made.bytes[b..b + frame]);
    swapped[b..b + frame].copy_from_slice(&second);
    assert!(matches!(
        read_all(&swapped, &made.master),
        Err(ArchiveError::Chunk(1))
    ));
    let mut dropped = made.bytes[..a].to_vec();
    dropped.extend_from_slice(&made.bytes[b..]);
    assert!(matches!(
        read_all(&dropped, &made.master),
        Err(ArchiveError::Chunk(1))
    ));
    let mut extended = made.bytes.clone();
    extended.push(0);
    assert!(matches!(
        read_all(&extended, &made.master),
        Err(ArchiveError::Trailing)
    ));
}

#[test]
fn a_chunk_from_another_archive_under_the_same_master_is_refused() {
    let one = archive(&entries(), 128);
    let key = ArchiveKey::with_master(
        &read_header(&mut one.bytes.as_slice()).unwrap().0,
        &one.master,
    )
    .unwrap();
    // A second archive written with the same key but its own id.
    let mut header = read_header(&mut one.bytes.as_slice()).unwrap().0;
    header.archive_id = [7u8; 16];
    let mut w = Writer::with_chunk_size(Vec::new(), &header, key, 128).unwrap();
    for (name, data) in entries() {
        w.entry(name, &data).unwrap();
    }
    let two = w.finish().unwrap();
    let h1 = 8 + read_header(&mut one.bytes.as_slice()).unwrap().1.len();
    let h2 = 8 + read_header(&mut two.as_slice()).unwrap().1.len();
    let frame = 1 + 4 + 128 + TAG;
    let mut mixed = one.bytes[..h1 + frame].to_vec();
    mixed.extend_from_slice(&two[h2 + frame..]);
    assert!(matches!(
        read_all(&mixed, &one.master),
        Err(ArchiveError::Chunk(1))
    ));
}

#[test]
fn not_an_archive_and_bad_names_are_refused_by_name() {
    assert!(matches!(
        read_all(b"PK\x03\x04 a zip", &MasterKey::generate()),
        Err(ArchiveError::NotAnArchive)
    ));
    let master = MasterKey::generate();
    let key = ArchiveKey::generate();
    let header = Header::new(&key, 0, &master, 1, None).unwrap();
    let mut w = Writer::new(Vec::new(), &header, key).unwrap();
    assert!(matches!(w.entry("", b"x"), Err(ArchiveError::Name)));
    assert!(matches!(
        w.entry(&"n".repeat(MAX_NAME + 1), b"x"),
        Err(ArchiveError::Name)
    ));
    let bytes = w.finish().unwrap();
    assert!(read_all(&bytes, &master).unwrap().is_empty());
    let err = Reader::open(bytes.as_slice(), |h| {
        ArchiveKey::with_recovery(h, &RecoveryPrivateKey::generate())
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("no recovery escrow"), "{err}");
}

#[test]
fn no_key_material_appears_in_the_archive_or_in_debug_output() {
    let master = MasterKey::generate();
    let key = ArchiveKey::generate();
    let raw = key.0.expose().to_vec();
    let header = Header::new(&key, 0, &master, 1, None).unwrap();
    let debug = format!("{key:?} {header:?}");
    assert!(!debug.contains(&format!("{:?}", &raw[..8])), "{debug}");
    let mut w = Writer::new(Vec::new(), &header, key).unwrap();
    w.entry("secret", b"PLAINTEXT-CANARY-backup").unwrap();
    let bytes = w.finish().unwrap();
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!find(&raw), "the archive key is in the archive");
    assert!(!find(master.key().expose()), "the master is in the archive");
    assert!(!find(b"PLAINTEXT-CANARY"), "an entry is in clear");
}

#[test]
fn an_archive_for_a_recipient_opens_with_its_private_key_only() {
    let recipient = RecoveryPrivateKey::generate();
    let key = ArchiveKey::generate();
    let header = Header::for_recipient(&key, 1_700_000_000_000, &recipient.public()).unwrap();
    let mut w = Writer::new(Vec::new(), &header, key).unwrap();
    w.entry("export.jsonl", b"{}").unwrap();
    let bytes = w.finish().unwrap();
    let (_, mut r) = Reader::open(bytes.as_slice(), |h| {
        ArchiveKey::with_recovery(h, &recipient)
    })
    .unwrap();
    assert_eq!(r.next_entry().unwrap().unwrap().0, "export.jsonl");
    let err = Reader::open(bytes.as_slice(), |h| {
        ArchiveKey::with_master(h, &MasterKey::generate())
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("recipient key only"), "{err}");
    let stranger = RecoveryPrivateKey::generate();
    assert!(
        Reader::open(bytes.as_slice(), |h| ArchiveKey::with_recovery(
            h, &stranger
        ))
        .is_err()
    );
}
