//! The container log, written without ever blocking the writer.
//!
//! The sidecar's lines and PostgreSQL's output go to the container's stdout, a pipe that the container
//! runtime drains. When the runtime stops reading it (a restarted or wedged containerd; containerd's
//! issues #9342 and #11511), the pipe fills and every `write` to it blocks: with a plain writer, the HA
//! loop's next log line stops the loop (no renewal, no fencing) and a tokio worker with it, so the REST
//! API accepts connections and never answers; PostgreSQL's processes block on their next log line.
//! Here one thread writes to stdout; everyone else hands it whole lines through a bounded queue, and a
//! line that finds the queue full is dropped ([`dropped`] counts them). Losing log lines is the price of
//! an HA loop that keeps deciding while the runtime does not read.

use std::{io::Write, sync::OnceLock};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines held while stdout is not drained: a few hundred KiB at most, then lines are dropped.
const QUEUED_LINES: usize = 2048;

static SINK: OnceLock<(NonBlocking, ErrorCounter)> = OnceLock::new();

/// Installs the process's log writer over `out` (stdout in the sidecar). The guard flushes what is
/// queued when dropped: hold it for the process's life. Call it once: a second writer is returned but
/// children's output and [`dropped`] keep using the first.
pub fn install<W: Write + Send + 'static>(out: W) -> (NonBlocking, WorkerGuard) {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log-writer")
        .finish(out);
    let _ = SINK.set((writer.clone(), writer.error_counter()));
    (writer, guard)
}

/// The installed writer; `None` in processes that did not install one (tests), whose children inherit
/// stdout instead.
pub fn writer() -> Option<NonBlocking> {
    SINK.get().map(|(w, _)| w.clone())
}

/// Lines dropped because stdout was not drained.
pub fn dropped() -> usize {
    SINK.get().map_or(0, |(_, e)| e.dropped_lines())
}

/// Copies `from` (a child's stdout or stderr) to `to` line by line until it closes. A line is handed over
/// whole, so the sidecar's and the server's lines do not interleave inside a line.
pub async fn forward<R: AsyncRead + Unpin>(from: R, mut to: impl Write) {
    let mut from = BufReader::new(from);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                // The non-blocking writer never fails a write; a dropped line is counted by it.
                let _ = to.write_all(&line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records each `write` call: one per forwarded line.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_child_s_output_is_handed_over_one_whole_line_at_a_time() {
        let calls = Calls::default();
        let input: &[u8] = b"first line\nsecond\n\nlast without newline";
        forward(input, calls.clone()).await;
        let got = calls.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let want: Vec<&[u8]> = vec![b"first line\n", b"second\n", b"\n", b"last without newline"];
        assert_eq!(got, want);
    }
}
