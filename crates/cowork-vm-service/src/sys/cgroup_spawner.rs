//! Starting a sandbox inside a fresh session cgroup without paying for the
//! move on the way.
//!
//! On cgroup v1 the kernel serializes every move of a task between cgroups
//! behind a lock whose first writer after a quiet moment waits for an RCU
//! grace period: moving the spawning thread into a session's cgroups cost
//! 10-18 ms on the project's machine, on every new session's first
//! command (and 0.05 ms when repeated right away). So one thread of ours
//! lives in a spare session cgroup, made and entered ahead of time; it
//! starts the next sandbox there (bubblewrap and everything in it are born
//! in the cgroup), hands the cgroup over to that session, and only then
//! moves into a new spare, off the path of any command.

use std::sync::Arc;
use std::sync::mpsc;

use cowork_policy::confine::limits::SessionLimits;

use super::cgroup::{CgroupError, CgroupManager, SessionCgroup};

/// Something to start, on the spawner thread.
type Spawn<T> = Box<dyn FnOnce() -> std::io::Result<T> + Send>;

struct Job {
    limits: SessionLimits,
    run: Box<dyn FnOnce(Result<SessionCgroup, CgroupError>) + Send>,
}

/// The spawner thread's handle.
pub struct CgroupSpawner {
    manager: Arc<CgroupManager>,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    /// The thread holds a private session keyring (see `sys::keyring`).
    private_keyring: bool,
}

impl std::fmt::Debug for CgroupSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupSpawner")
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

/// The spare the thread sits in, and how many were made (for names).
struct Spare {
    cgroup: Option<SessionCgroup>,
    made: u64,
}

impl Spare {
    /// Makes a spare and moves the calling thread into it.
    fn refill(&mut self, manager: &CgroupManager, limits: &SessionLimits) {
        self.made += 1;
        let made = manager
            .create("spare", self.made, limits)
            .and_then(|cg| cg.adopt_current_thread().map(|()| cg));
        match made {
            Ok(cg) => self.cgroup = Some(cg),
            Err(e) => tracing::warn!("cannot prepare a session cgroup ahead of time: {e}"),
        }
    }
}

impl CgroupSpawner {
    /// Starts the thread (inside the tokio runtime: spawned children are
    /// registered with it). `limits` are the defaults the first spare gets.
    pub fn start(manager: CgroupManager, limits: SessionLimits) -> std::io::Result<Self> {
        let manager = Arc::new(manager);
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = mpsc::channel::<Job>();
        let thread_manager = manager.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("cowork-cgroups".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                let joined = super::keyring::join_for_sandboxes();
                let _ = ready_tx.send(joined);
                let mut spare = Spare {
                    cgroup: None,
                    made: 0,
                };
                spare.refill(&thread_manager, &limits);
                while let Ok(job) = rx.recv() {
                    let taken = match spare.cgroup.take() {
                        Some(cg) => thread_manager.set_limits(&cg, &job.limits).map(|()| cg),
                        // No spare (making one failed): one made now, the
                        // slow way.
                        None => {
                            spare.refill(&thread_manager, &job.limits);
                            spare
                                .cgroup
                                .take()
                                .ok_or(CgroupError::ThreadCgroup("spare"))
                        }
                    };
                    (job.run)(taken);
                    // The session owns that cgroup now; sit in a new spare
                    // (the slow move happens here, after the spawn).
                    spare.refill(&thread_manager, &job.limits);
                }
            })?;
        let private_keyring = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the cgroup spawner thread is gone"))?;
        Ok(CgroupSpawner {
            manager,
            jobs: std::sync::Mutex::new(tx),
            private_keyring,
        })
    }

    /// Whether sandboxes it starts inherit its private keyring.
    pub fn private_keyring(&self) -> bool {
        self.private_keyring
    }

    pub fn manager(&self) -> &CgroupManager {
        &self.manager
    }

    /// Runs `spawn` on the spawner thread, inside a session cgroup with
    /// `limits`; returns the cgroup (now the session's) and what `spawn`
    /// returned. Blocks the caller for the spawn only.
    pub fn spawn_in_session<T: Send + 'static>(
        &self,
        limits: SessionLimits,
        spawn: Spawn<T>,
    ) -> Result<(SessionCgroup, T), std::io::Error> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let job = Job {
            limits,
            run: Box::new(move |cgroup| {
                let outcome = match cgroup {
                    Ok(cg) => spawn().map(|spawned| (cg, spawned)),
                    Err(e) => Err(std::io::Error::other(e)),
                };
                let _ = reply_tx.send(outcome);
            }),
        };
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| std::io::Error::other("the cgroup spawner thread is gone"))?;
        reply_rx
            .recv()
            .map_err(|_| std::io::Error::other("the cgroup spawner thread is gone"))?
    }
}
