//! Where archives are kept: a local directory (the embedded default; a mounted disk in
//! production) or an S3-compatible bucket, behind one `object_store` interface. Archives are
//! uploaded whole and only after they verified, so every archive a destination lists is a
//! complete, good one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::BackupError;

/// Bytes per upload part (S3 needs at least 5 MiB but the last).
const PART: usize = 8 << 20;

/// A place archives are copied to: `s3://bucket/prefix` (credentials, region and endpoint from
/// the standard `AWS_*` variables) or a directory path.
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    label: String,
    /// The directory, for a local destination: an archive can be written in it directly.
    dir: Option<std::path::PathBuf>,
}

/// One archive a destination holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its file name.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// When the backup began, from the name (ms since the epoch).
    pub created_ms: Option<i64>,
}

fn storage(label: &str) -> impl FnOnce(object_store::Error) -> BackupError + '_ {
    move |e| BackupError::Storage(format!("{label}: {e}"))
}

impl Destination {
    /// Parses a destination; a directory is created when missing.
    pub fn parse(spec: &str) -> Result<Self, BackupError> {
        Self::parse_with(spec, &[])
    }

    /// [`Destination::parse`], with S3 options (`aws_endpoint`, `aws_allow_http`, ...) that
    /// win over the `AWS_*` variables: how a caller without those variables reaches a bucket.
    pub fn parse_with(spec: &str, s3_options: &[(String, String)]) -> Result<Self, BackupError> {
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BackupError::Storage(format!(
                    "{spec}: name a bucket (s3://BUCKET/PREFIX)"
                )));
            }
            // reqwest's rustls is built without a provider: ring, as everywhere in Sentia (an
            // error means one is installed already).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = object_store::aws::AmazonS3Builder::from_env();
            for (key, value) in s3_options {
                let key = key
                    .parse()
                    .map_err(|e: object_store::Error| BackupError::Storage(e.to_string()))?;
                builder = builder.with_config(key, value);
            }
            let store = builder
                .with_bucket_name(bucket)
                .build()
                .map_err(storage(spec))?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: ObjectPath::from(prefix.trim_matches('/')),
                label: spec.to_string(),
                dir: None,
            });
        }
        let dir = spec.strip_prefix("file://").unwrap_or(spec);
        create_private_dir(Path::new(dir))?;
        let store =
            object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(storage(spec))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: ObjectPath::default(),
            label: dir.to_string(),
            dir: Some(dir.into()),
        })
    }

    /// How it was given, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The directory, when this is a local destination.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Where an archive called `name` is kept here, for messages and listings.
    pub fn place_of(&self, name: &str) -> String {
        format!("{}/{name}", self.label.trim_end_matches('/'))
    }

    fn location(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    /// Copies the archive at `local` here under its file name, in parts; an interrupted
    /// upload leaves no object behind.
    pub async fn upload(&self, local: &Path) -> Result<(), BackupError> {
        let name = local
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| BackupError::Storage(format!("{}: no file name", local.display())))?;
        let upload = self
            .store
            .put_multipart(&self.location(name))
            .await
            .map_err(storage(&self.label))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file = tokio::fs::File::open(local).await?;
        let mut buf = vec![0u8; PART];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(2).await {
                let _ = writer.abort().await;
                return Err(storage(&self.label)(e));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(storage(&self.label))?;
        Ok(())
    }

    /// The archives here, newest first (those whose names give no time last).
    pub async fn list(&self) -> Result<Vec<Stored>, BackupError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut listing = self.store.list(prefix);
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(storage(&self.label))?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if !name.ends_with(".sbk") || meta.location.prefix_match(&self.prefix).is_none() {
                continue;
            }
            out.push(Stored {
                name: name.to_string(),
                bytes: meta.size,
                created_ms: created_ms(name),
            });
        }
        out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.name.cmp(&a.name)));
        Ok(out)
    }

    /// Copies the archive `name` from here to the file `to`.
    pub async fn download(&self, name: &str, to: &Path) -> Result<(), BackupError> {
        let got = self
            .store
            .get(&self.location(name))
            .await
            .map_err(storage(&self.label))?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::File::create(to).await?;
        while let Some(piece) = stream.next().await {
            file.write_all(&piece.map_err(storage(&self.label))?)
                .await?;
        }
        file.sync_all().await?;
        Ok(())
    }

    /// Deletes the archive `name`.
    pub async fn delete(&self, name: &str) -> Result<(), BackupError> {
        self.store
            .delete(&self.location(name))
            .await
            .map_err(storage(&self.label))
    }

    /// Deletes archives older than `retention` at `now_ms`, never the newest one; returns what
    /// it deleted. Files whose names are not Sentia archive names are left alone.
    pub async fn prune(
        &self,
        retention: Duration,
        now_ms: i64,
    ) -> Result<Vec<String>, BackupError> {
        let doomed = expired(&self.list().await?, retention, now_ms);
        for name in &doomed {
            self.delete(name).await?;
        }
        Ok(doomed)
    }
}

/// Creates `dir` (and missing parents) if it does not exist, owner-only (0700 on Unix) from
/// creation: archives are sealed, but their names and sizes are nobody else's business. An
/// existing directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Which of `stored` (newest first) are past `retention`: all but the newest archive.
pub fn expired(stored: &[Stored], retention: Duration, now_ms: i64) -> Vec<String> {
    let cutoff = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let newest = stored
        .iter()
        .filter(|s| s.created_ms.is_some())
        .max_by_key(|s| s.created_ms);
    stored
        .iter()
        .filter(|s| s.created_ms.is_some_and(|t| t < cutoff))
        .filter(|s| Some(*s) != newest)
        .map(|s| s.name.clone())
        .collect()
}

/// The time in a name made by [`crate::file_name`]: `sentia-backup-YYYYMMDDTHHMMSSZ-…`.
pub fn created_ms(name: &str) -> Option<i64> {
    let t = name.strip_prefix("sentia-backup-")?.get(..16)?;
    let digits = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    if t.as_bytes().get(8) != Some(&b'T') || t.as_bytes().get(15) != Some(&b'Z') {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hh, mm, ss) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = sentia_proto::wkt::days_from_civil(y, m, d);
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_missing_directory_destination_is_created_owner_only_and_an_existing_one_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = std::env::temp_dir().join(format!(
            "sentia-destination-{}",
            hex::encode(sentia_crypto::random_bytes(6))
        ));
        let dir = root.join("a").join("backups");
        Destination::parse(dir.to_str().unwrap()).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        Destination::parse(dir.to_str().unwrap()).unwrap();
        assert_eq!(mode(&dir), 0o750, "an operator's choice is kept");
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn stored(name: &str) -> Stored {
        Stored {
            name: name.into(),
            bytes: 1,
            created_ms: created_ms(name),
        }
    }

    #[test]
    fn names_give_back_the_time_they_were_made_from() {
        for ms in [0i64, 951_782_400_000, 1_795_900_805_000] {
            let name = crate::file_name(ms, "0123456789abcdef");
            assert_eq!(created_ms(&name), Some(ms), "{name}");
        }
        assert_eq!(created_ms("notes.sbk"), None);
        assert_eq!(created_ms("sentia-backup-20261399T000000Z-x.sbk"), None);
    }

    #[test]
    fn retention_deletes_old_archives_but_never_the_newest() {
        let day = 86_400_000i64;
        let now = 100 * day;
        let name = |d: i64| crate::file_name(d * day, &format!("{d:08}"));
        let mut all: Vec<Stored> = [99, 50, 9, 5].iter().map(|d| stored(&name(*d))).collect();
        all.push(stored("someone-elses.sbk"));
        let retention = Duration::from_secs(90 * 86_400);
        assert_eq!(expired(&all, retention, now), [name(9), name(5)]);
        // All past retention: the newest stays.
        assert_eq!(
            expired(&all, retention, 1000 * day),
            [name(50), name(9), name(5)]
        );
        assert!(expired(&[], retention, now).is_empty());
    }
}
