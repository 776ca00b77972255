//! Where process output and exits go in the daemon: the process table is
//! updated first (so a client that sees `exit` and asks `isProcessRunning`
//! gets `false`), then the event is published to subscribers.

use cowork_protocol::event::{Event, Stream};

use crate::events::EventHub;
use crate::processes::ProcessTable;
use crate::supervise::{ExitInfo, OutputSink};

#[derive(Clone)]
pub struct ProcessEvents {
    hub: EventHub,
    table: ProcessTable,
}

impl ProcessEvents {
    pub fn new(hub: EventHub, table: ProcessTable) -> Self {
        Self { hub, table }
    }

    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    /// An `error` event for process `id`.
    pub async fn error(&self, id: &str, message: String) {
        self.hub
            .publish(&Event::Error {
                id: id.to_string(),
                message,
                fatal: None,
            })
            .await;
    }

    /// A process that could not be started: its stderr says why, an `error`
    /// event carries the message, and it exits with `code` (127: command
    /// not found, 126: could not execute), as a shell would.
    pub async fn failed_to_start(&self, id: &str, message: &str, code: i32) {
        self.hub
            .publish(&Event::output(
                Stream::Stderr,
                id.to_string(),
                format!("Error: {message}\n"),
            ))
            .await;
        if code != 127 {
            self.hub
                .publish(&Event::Error {
                    id: id.to_string(),
                    message: message.to_string(),
                    fatal: None,
                })
                .await;
        }
        self.exited(
            id,
            ExitInfo {
                code: Some(code),
                signal: None,
            },
        )
        .await;
    }
}

impl ProcessEvents {
    /// An exit after the session's OOM killer fired `oom_kills` times during
    /// the process's life (the client reads `oomKillCount`).
    pub async fn exited_after_oom(&self, id: &str, exit: ExitInfo, oom_kills: u64) {
        self.table.mark_exited(id, exit.code);
        tracing::info!(
            "process {id} exited: code={:?} signal={:?}, {oom_kills} OOM kill(s) in its session",
            exit.code,
            exit.signal_name()
        );
        let mut event = Event::exit(id.to_string(), exit.code, exit.signal_name());
        if let Event::Exit { oom_kill_count, .. } = &mut event {
            *oom_kill_count = Some(oom_kills);
        }
        self.hub.publish(&event).await;
    }
}

impl OutputSink for ProcessEvents {
    async fn output(&self, id: &str, stream: Stream, data: String) {
        self.hub
            .publish(&Event::output(stream, id.to_string(), data))
            .await;
    }

    async fn exited(&self, id: &str, exit: ExitInfo) {
        self.table.mark_exited(id, exit.code);
        tracing::debug!(
            "process {id} exited: code={:?} signal={:?}",
            exit.code,
            exit.signal_name()
        );
        self.hub
            .publish(&Event::exit(id.to_string(), exit.code, exit.signal_name()))
            .await;
    }
}
