//! Log lines captured in memory, for tests that assert on what a `tracing` subscriber wrote.

use std::sync::{Arc, Mutex, PoisonError};

/// An in-memory log sink. Give a subscriber clones of it as its writer
/// (`.with_writer(move || logs.clone())`) and read what it wrote with [`CapturedLogs::text`].
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
