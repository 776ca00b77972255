//! A directory made ahead of time and renamed into place when needed.
//!
//! Making a directory allocates an inode, which costs about 0.4 ms of CPU
//! on some disks (this project's CI machine: ext4 on a virtual disk) and
//! would sit on the path of every new session's first command; a rename is
//! one cheap metadata update. The spare is remade by a janitor thread at
//! `SCHED_IDLE` priority, so it never competes with the sandbox start or
//! the command it is making room for.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

/// `mkdir -p` with mode 0700.
pub fn private_dirs() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
}

#[derive(Debug, Default)]
struct State {
    /// The spare exists, complete and empty.
    ready: bool,
    /// The janitor was asked to make it.
    making: bool,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    /// Made inside the spare: `tmp`, or `tmp/<home>` for a `$HOME` under `/tmp` (see `SessionStore::new`).
    inner: PathBuf,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Two flags; a poisoned lock still holds consistent values.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn make(&self) {
        let made = private_dirs().create(self.path.join(&self.inner));
        if let Err(e) = &made {
            tracing::debug!("spare directory {}: {e}", self.path.display());
        }
        let mut state = self.state();
        state.making = false;
        state.ready = made.is_ok();
    }
}

#[derive(Debug, Clone)]
pub struct SpareDir {
    shared: Arc<Shared>,
    janitor: Arc<Mutex<Option<SyncSender<()>>>>,
}

impl SpareDir {
    /// A spare at `path` with `inner` (relative) inside it. Nothing is made
    /// until [`Self::prepare`].
    pub fn new(path: PathBuf, inner: impl Into<PathBuf>) -> Self {
        Self {
            shared: Arc::new(Shared {
                path,
                inner: inner.into(),
                state: Mutex::default(),
            }),
            janitor: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether a spare is there to take.
    pub fn is_ready(&self) -> bool {
        self.shared.state().ready
    }

    /// Renames the spare to `dest` (whose parent must exist). False when
    /// there is no spare or the rename fails (`dest` appeared meanwhile with
    /// content); the caller then makes `dest` itself.
    pub fn take_into(&self, dest: &Path) -> bool {
        let mut state = self.shared.state();
        if !state.ready {
            return false;
        }
        state.ready = false;
        std::fs::rename(&self.shared.path, dest).is_ok()
    }

    /// Asks the janitor to make the spare unless it exists or is being made.
    pub fn prepare(&self) {
        {
            let mut state = self.shared.state();
            if state.ready || state.making {
                return;
            }
            state.making = true;
        }
        if let Err(e) = self.wake_janitor() {
            tracing::debug!("spare directory janitor: {e}; making it inline");
            self.shared.make();
        }
    }

    fn wake_janitor(&self) -> io::Result<()> {
        let mut janitor = self.janitor.lock().unwrap_or_else(|p| p.into_inner());
        if janitor.is_none() {
            // One pending wake-up is enough: the janitor makes the spare
            // once per wake-up and `making` stops further requests.
            let (tx, rx) = sync_channel(1);
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("cowork-janitor".into())
                .spawn(move || janitor_loop(&shared, &rx))?;
            *janitor = Some(tx);
        }
        match janitor.as_ref().map(|tx| tx.try_send(())) {
            Some(Ok(())) | Some(Err(TrySendError::Full(()))) => Ok(()),
            Some(Err(TrySendError::Disconnected(()))) | None => {
                *janitor = None;
                Err(io::Error::other("the janitor thread is gone"))
            }
        }
    }
}

/// Runs until every [`SpareDir`] handle is dropped.
fn janitor_loop(shared: &Shared, wake: &Receiver<()>) {
    lower_own_priority();
    while wake.recv().is_ok() {
        shared.make();
    }
}

/// `SCHED_IDLE` for the calling thread: it runs only when a CPU would
/// otherwise be idle. Failure only means normal priority.
fn lower_own_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // (SCHED_IDLE requires priority 0).
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(
            "janitor thread keeps normal priority: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    pub(crate) fn wait_ready(spare: &SpareDir) {
        let t = Instant::now();
        while !spare.is_ready() {
            assert!(t.elapsed() < Duration::from_secs(10), "spare never made");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn the_spare_is_made_in_the_background_and_renamed_into_place() {
        let t = tempfile::tempdir().unwrap();
        let spare = SpareDir::new(t.path().join("spare"), "tmp");
        let dest = t.path().join("taken");
        assert!(!spare.take_into(&dest), "nothing to take yet");
        spare.prepare();
        wait_ready(&spare);
        let inode = std::fs::metadata(spare.path()).unwrap().ino();
        assert!(spare.take_into(&dest));
        assert_eq!(std::fs::metadata(&dest).unwrap().ino(), inode);
        assert!(dest.join("tmp").is_dir());
        assert_eq!(
            std::fs::metadata(dest.join("tmp")).unwrap().mode() & 0o777,
            0o700
        );
        assert!(!spare.take_into(&t.path().join("again")), "used up");
        spare.prepare();
        wait_ready(&spare);
        assert_ne!(std::fs::metadata(spare.path()).unwrap().ino(), inode);
    }

    #[test]
    fn a_destination_with_content_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let spare = SpareDir::new(t.path().join("spare"), "tmp");
        spare.prepare();
        wait_ready(&spare);
        let dest = t.path().join("busy");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("keep"), b"x").unwrap();
        assert!(!spare.take_into(&dest));
        assert!(dest.join("keep").exists());
    }

    #[test]
    fn a_spare_that_cannot_be_made_is_never_ready() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("spare"), b"a file").unwrap();
        let spare = SpareDir::new(t.path().join("spare"), "tmp");
        spare.prepare();
        let t0 = Instant::now();
        while spare.shared.state().making && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(!spare.take_into(&t.path().join("dest")));
    }
}
