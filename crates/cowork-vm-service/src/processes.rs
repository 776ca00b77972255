//! Client process ids and what they refer to.
//!
//! Ids are chosen by the client. An id moves `Starting -> Running -> Exited`
//! (or straight to `Exited` when the process ends before `spawn` returns).
//! Exited entries are kept (the most recent [`EXITED_KEPT`]) so
//! `isProcessRunning` can report the exit code and `kill` of a process that
//! just ended is a harmless no-op rather than "unknown id".

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use cowork_protocol::params::ProcessRunning;

/// How many exited processes are remembered.
pub const EXITED_KEPT: usize = 4096;

/// Controls one running process, wherever it runs.
#[async_trait]
pub trait ProcessControl: Send + Sync {
    /// Sends `signal` to the process's group.
    async fn signal(&self, signal: i32) -> Result<(), ControlError>;
    /// Writes to stdin, then closes it if `eof`.
    async fn write_stdin(&self, data: String, eof: bool) -> Result<(), ControlError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("stdin of process {0} is closed")]
    StdinClosed(String),
    #[error("cannot signal process {id}: {reason}")]
    Signal { id: String, reason: String },
    #[error("the sandbox of process {0} is gone")]
    SandboxGone(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("Unknown process id: {0}")]
    Unknown(String),
    #[error("Process {0} is already running; process ids must be unique")]
    AlreadyRunning(String),
    #[error("Process {0} is still starting")]
    Starting(String),
    #[error("Process {0} is not running (it has exited)")]
    Exited(String),
}

enum Entry {
    Starting {
        session: String,
    },
    Running {
        session: String,
        control: Arc<dyn ProcessControl>,
    },
    Exited {
        session: String,
        code: Option<i32>,
    },
}

impl Entry {
    fn session(&self) -> &str {
        match self {
            Entry::Starting { session }
            | Entry::Running { session, .. }
            | Entry::Exited { session, .. } => session,
        }
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    exited: VecDeque<String>,
}

#[derive(Clone, Default)]
pub struct ProcessTable {
    state: Arc<Mutex<State>>,
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single insert), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `id` for a new process of `session`. An exited id may be reused.
    pub fn reserve(&self, id: &str, session: &str) -> Result<(), TableError> {
        let mut state = self.lock();
        match state.entries.get(id) {
            Some(Entry::Starting { .. } | Entry::Running { .. }) => {
                Err(TableError::AlreadyRunning(id.into()))
            }
            _ => {
                state.exited.retain(|e| e != id);
                state.entries.insert(
                    id.into(),
                    Entry::Starting {
                        session: session.into(),
                    },
                );
                Ok(())
            }
        }
    }

    /// Marks a reserved id as running. If the process already exited (its
    /// exit raced the spawn reply) the exit is kept.
    pub fn attach(&self, id: &str, control: Arc<dyn ProcessControl>) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(id)
            && let Entry::Starting { session } = entry
        {
            let session = std::mem::take(session);
            *entry = Entry::Running { session, control };
        }
    }

    /// Forgets a reservation whose spawn failed before a process existed.
    pub fn release(&self, id: &str) {
        let mut state = self.lock();
        if matches!(state.entries.get(id), Some(Entry::Starting { .. })) {
            state.entries.remove(id);
        }
    }

    /// Records an exit.
    pub fn mark_exited(&self, id: &str, code: Option<i32>) {
        let mut state = self.lock();
        let session = state
            .entries
            .get(id)
            .map(|e| e.session().to_string())
            .unwrap_or_default();
        state
            .entries
            .insert(id.into(), Entry::Exited { session, code });
        state.exited.push_back(id.into());
        while state.exited.len() > EXITED_KEPT {
            if let Some(old) = state.exited.pop_front()
                && matches!(state.entries.get(&old), Some(Entry::Exited { .. }))
            {
                state.entries.remove(&old);
            }
        }
    }

    /// The control handle of a running process.
    pub fn control(&self, id: &str) -> Result<Arc<dyn ProcessControl>, TableError> {
        match self.lock().entries.get(id) {
            Some(Entry::Running { control, .. }) => Ok(control.clone()),
            Some(Entry::Starting { .. }) => Err(TableError::Starting(id.into())),
            Some(Entry::Exited { .. }) => Err(TableError::Exited(id.into())),
            None => Err(TableError::Unknown(id.into())),
        }
    }

    /// Whether `id` is a process that has ended.
    pub fn has_exited(&self, id: &str) -> bool {
        matches!(self.lock().entries.get(id), Some(Entry::Exited { .. }))
    }

    pub fn status(&self, id: &str) -> ProcessRunning {
        match self.lock().entries.get(id) {
            Some(Entry::Starting { .. } | Entry::Running { .. }) => ProcessRunning {
                running: true,
                exit_code: None,
            },
            Some(Entry::Exited { code, .. }) => ProcessRunning {
                running: false,
                exit_code: *code,
            },
            None => ProcessRunning {
                running: false,
                exit_code: None,
            },
        }
    }

    /// The session a process id belongs (or belonged) to.
    pub fn session_of(&self, id: &str) -> Option<String> {
        self.lock().entries.get(id).map(|e| e.session().to_string())
    }

    /// Sessions with at least one starting or running process.
    pub fn active_sessions(&self) -> HashSet<String> {
        self.lock()
            .entries
            .values()
            .filter_map(|e| match e {
                Entry::Starting { session } | Entry::Running { session, .. } => {
                    Some(session.clone())
                }
                Entry::Exited { .. } => None,
            })
            .collect()
    }

    /// Control handles of every running process.
    pub fn running(&self) -> Vec<(String, Arc<dyn ProcessControl>)> {
        self.lock()
            .entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Running { control, .. } => Some((id.clone(), control.clone())),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    #[async_trait]
    impl ProcessControl for Nothing {
        async fn signal(&self, _signal: i32) -> Result<(), ControlError> {
            Ok(())
        }
        async fn write_stdin(&self, _data: String, _eof: bool) -> Result<(), ControlError> {
            Ok(())
        }
    }

    #[test]
    fn lifecycle_of_an_id() {
        let t = ProcessTable::new();
        t.reserve("p", "s").unwrap();
        assert_eq!(
            t.reserve("p", "s"),
            Err(TableError::AlreadyRunning("p".into()))
        );
        assert!(matches!(t.control("p"), Err(TableError::Starting(_))));
        t.attach("p", Arc::new(Nothing));
        assert!(t.control("p").is_ok());
        assert!(t.status("p").running);
        assert_eq!(t.active_sessions().len(), 1);
        t.mark_exited("p", Some(3));
        assert_eq!(t.status("p").exit_code, Some(3));
        assert!(matches!(t.control("p"), Err(TableError::Exited(_))));
        assert!(matches!(t.control("q"), Err(TableError::Unknown(_))));
        assert!(t.active_sessions().is_empty());
        assert_eq!(t.session_of("p").as_deref(), Some("s"));
        t.reserve("p", "s").unwrap();
    }

    #[test]
    fn exit_before_attach_wins() {
        let t = ProcessTable::new();
        t.reserve("p", "s").unwrap();
        t.mark_exited("p", Some(0));
        t.attach("p", Arc::new(Nothing));
        assert!(!t.status("p").running);
    }

    #[test]
    fn exited_entries_are_bounded() {
        let t = ProcessTable::new();
        for i in 0..EXITED_KEPT + 10 {
            let id = format!("p{i}");
            t.reserve(&id, "s").unwrap();
            t.mark_exited(&id, Some(0));
        }
        assert!(!t.has_exited("p0"));
        assert!(t.has_exited(&format!("p{}", EXITED_KEPT + 9)));
    }
}
