//! Putting a backup back (ADR 8): [`restore`] loads an archive checked by
//! `sentia_backup_ops::verify` into the four services' databases and matches what it wrote to
//! the manifest; [`drill`] restores one into scratch databases, runs the four services on them
//! in this process and reads every secret version back through gRPC.
//!
//! This half of `sentia backup` needs the services' own crates (their migrations, their
//! `run`), so it is apart from `sentia-backup-ops`, which rotation-scheduler uses.
#![forbid(unsafe_code)]

mod drill;
mod restore;

pub use drill::{DRILL_IDENTITY, DrillReport, InProcess, drill, drill_with, record};
pub use restore::{Restored, Targets, restore, restore_with};
