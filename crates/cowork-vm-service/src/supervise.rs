//! Streaming a child's output and reporting its exit. Shared by the host
//! backend (children of the daemon) and the agent (children of pid 1 in a
//! sandbox), which differ only in how they learn of the exit.
//!
//! Output is decoded with a streaming UTF-8 decoder so a character split
//! across reads arrives whole. The exit is reported after both pipes reach
//! end-of-file, or [`DRAIN_GRACE`] after the process exited if a background
//! grandchild still holds a pipe open (its later output is not waited for).

use std::future::Future;
use std::time::Duration;

use cowork_policy::signal::signal_name;
use cowork_protocol::event::Stream;
use cowork_protocol::text::Utf8Stream;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::child_setup::grow_pipe;

/// First read size; doubled while reads fill the buffer, up to [`MAX_CHUNK`].
const FIRST_CHUNK: usize = 8 * 1024;
/// Largest read, and so the largest output event.
pub const MAX_CHUNK: usize = 256 * 1024;
/// How long output is still drained after the process itself exited.
pub const DRAIN_GRACE: Duration = Duration::from_millis(300);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }

    /// `SIGTERM` and the like, for exit events.
    pub fn signal_name(&self) -> Option<String> {
        self.signal.map(signal_name)
    }

    /// The shell convention: the code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        self.code.or(self.signal.map(|s| 128 + s)).unwrap_or(1)
    }
}

/// A child's output pipe.
pub trait OutputPipe: AsyncRead + Unpin {
    /// Enlarges the pipe once the child is seen to write faster than we
    /// read. Done lazily: most commands print little, and growing a pipe
    /// allocates its ring, a cost every short command would pay.
    fn grow(&self) {}
}

impl OutputPipe for tokio::process::ChildStdout {
    fn grow(&self) {
        grow_pipe(self);
    }
}

impl OutputPipe for tokio::process::ChildStderr {
    fn grow(&self) {
        grow_pipe(self);
    }
}

impl OutputPipe for tokio::net::unix::pipe::Receiver {
    fn grow(&self) {
        grow_pipe(self);
    }
}

/// Where a supervised process's output and exit go.
pub trait OutputSink: Clone + Send + Sync + 'static {
    fn output(&self, id: &str, stream: Stream, data: String) -> impl Future<Output = ()> + Send;
    fn exited(&self, id: &str, exit: ExitInfo) -> impl Future<Output = ()> + Send;
}

async fn pump<R, S>(mut reader: R, id: &str, stream: Stream, sink: &S)
where
    R: OutputPipe,
    S: OutputSink,
{
    let mut buf = vec![0u8; FIRST_CHUNK];
    let mut decoder = Utf8Stream::new();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = decoder.decode(&buf[..n]);
        if !text.is_empty() {
            sink.output(id, stream, text).await;
        }
        if n == buf.len() && buf.len() < MAX_CHUNK {
            if buf.len() == FIRST_CHUNK {
                reader.grow();
            }
            buf.resize(buf.len() * 2, 0);
        }
    }
    let tail = decoder.finish();
    if !tail.is_empty() {
        sink.output(id, stream, tail).await;
    }
}

/// Streams `stdout` and `stderr` to `sink` until they close, waits for
/// `wait`, and reports the exit (see the module docs for the drain rule).
pub async fn supervise<O, E, W, S>(
    id: String,
    stdout: Option<O>,
    stderr: Option<E>,
    wait: W,
    sink: S,
) where
    O: OutputPipe,
    E: OutputPipe,
    W: Future<Output = ExitInfo>,
    S: OutputSink,
{
    let out = async {
        if let Some(o) = stdout {
            pump(o, &id, Stream::Stdout, &sink).await;
        }
    };
    let err = async {
        if let Some(e) = stderr {
            pump(e, &id, Stream::Stderr, &sink).await;
        }
    };
    let pumps = futures::future::join(out, err);
    tokio::pin!(pumps);
    tokio::pin!(wait);
    let mut drained = false;
    let exit = tokio::select! {
        exit = &mut wait => exit,
        _ = &mut pumps => {
            drained = true;
            (&mut wait).await
        }
    };
    if !drained && tokio::time::timeout(DRAIN_GRACE, &mut pumps).await.is_err() {
        tracing::debug!(
            "process {id}: output still open {DRAIN_GRACE:?} after exit; stopped reading"
        );
    }
    sink.exited(&id, exit).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    impl OutputPipe for tokio::io::DuplexStream {}
    impl OutputPipe for tokio::io::Empty {}

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl OutputSink for Recorder {
        async fn output(&self, _id: &str, stream: Stream, data: String) {
            self.0.lock().unwrap().push(format!("{stream:?}:{data}"));
        }
        async fn exited(&self, _id: &str, exit: ExitInfo) {
            self.0.lock().unwrap().push(format!("exit:{:?}", exit.code));
        }
    }

    #[tokio::test]
    async fn output_precedes_exit_and_split_characters_arrive_whole() {
        let (mut w, r) = tokio::io::duplex(64);
        let rec = Recorder::default();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(b"a\xe2\x82").await.unwrap();
            w.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            w.write_all(b"\xac").await.unwrap();
        });
        let exit = async {
            writer.await.unwrap();
            ExitInfo {
                code: Some(0),
                signal: None,
            }
        };
        supervise(
            "p".into(),
            Some(r),
            None::<tokio::io::Empty>,
            exit,
            rec.clone(),
        )
        .await;
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got, ["Stdout:a", "Stdout:€", "exit:Some(0)"]);
    }

    #[tokio::test(start_paused = true)]
    async fn exit_is_reported_after_the_grace_when_a_pipe_stays_open() {
        let (_held_open, r) = tokio::io::duplex(64);
        let rec = Recorder::default();
        let exit = async {
            ExitInfo {
                code: Some(0),
                signal: None,
            }
        };
        let started = tokio::time::Instant::now();
        supervise(
            "p".into(),
            Some(r),
            None::<tokio::io::Empty>,
            exit,
            rec.clone(),
        )
        .await;
        assert!(started.elapsed() >= DRAIN_GRACE);
        assert_eq!(rec.0.lock().unwrap().clone(), ["exit:Some(0)"]);
    }

    #[test]
    fn shell_codes() {
        let by_signal = ExitInfo {
            code: None,
            signal: Some(15),
        };
        assert_eq!(by_signal.shell_code(), 143);
        assert_eq!(by_signal.signal_name().as_deref(), Some("SIGTERM"));
    }
}
