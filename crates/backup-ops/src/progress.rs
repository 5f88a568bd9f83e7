//! How far a long backup operation is: the CLI draws bars from it, anything else may log it.

use std::io::Read;

/// Receives the stages of a create, verify, restore or drill and how far each got.
pub trait Progress: Send + Sync {
    /// A new stage: what it does and, when known, how many units (bytes, rows, versions) it
    /// has.
    fn stage(&self, what: &str, total: Option<u64>);
    /// `n` more units of the current stage are done.
    fn advance(&self, n: u64);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

/// A reader that reports the bytes read through it.
pub(crate) struct Counting<'a, R> {
    pub(crate) inner: R,
    pub(crate) progress: &'a dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
