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
//!
//! On cgroup v2 a thread cannot visit: the spare holds an exec stub
//! instead (`sys::exec_stub`), a process of ours started and moved into
//! the spare ahead of time, which execs the session's bwrap when asked.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use cowork_policy::confine::limits::SessionLimits;

use super::cgroup::{CgroupError, CgroupManager, CgroupVersion, SessionCgroup};
use super::exec_stub::Stub;
use super::spawn::ChildSpec;

type Started = std::io::Result<(SessionCgroup, tokio::process::Child)>;

struct Job {
    limits: SessionLimits,
    spec: ChildSpec,
    reply: mpsc::SyncSender<Started>,
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

/// The spare the thread sits in (v1) or whose stub waits (v2), and how
/// many were made (for names).
struct Spare {
    ready: Option<(SessionCgroup, Option<Stub>)>,
    made: u64,
    /// This executable, for v2's stubs.
    stub_binary: PathBuf,
}

impl Spare {
    /// Makes a spare and gets the calling thread (v1) or a new stub (v2)
    /// into it.
    fn refill(&mut self, manager: &CgroupManager, limits: &SessionLimits) {
        self.made += 1;
        let made =
            manager
                .create("spare", self.made, limits)
                .and_then(|cg| match manager.version() {
                    CgroupVersion::V1 => cg.adopt_current_thread().map(|()| (cg, None)),
                    CgroupVersion::V2 => {
                        let stub = Stub::spawn(&self.stub_binary).map_err(CgroupError::Stub)?;
                        let pid = stub.pid().ok_or_else(|| {
                            CgroupError::Stub(std::io::Error::other("the stub exited at once"))
                        })?;
                        cg.adopt_process(pid)?;
                        Ok((cg, Some(stub)))
                    }
                });
        match made {
            Ok(ready) => self.ready = Some(ready),
            Err(e) => tracing::warn!("cannot prepare a session cgroup ahead of time: {e}"),
        }
    }

    /// Starts `spec` in the spare (made now, the slow way, if there is
    /// none), which becomes the session's.
    fn start(&mut self, manager: &CgroupManager, job: Job) {
        if self.ready.is_none() {
            self.refill(manager, &job.limits);
        }
        let started = match self.ready.take() {
            None => Err(std::io::Error::other(
                "no session cgroup could be made (see the warning before)",
            )),
            Some((cg, stub)) => match manager.set_limits(&cg, &job.limits) {
                Err(e) => Err(std::io::Error::other(e)),
                Ok(()) => match stub {
                    Some(stub) => stub.exec(job.spec),
                    None => job.spec.spawn(),
                }
                .map(|child| (cg, child)),
            },
        };
        let _ = job.reply.send(started);
    }
}

impl CgroupSpawner {
    /// Starts the thread (inside the tokio runtime: spawned children are
    /// registered with it). `limits` are the defaults the first spare gets;
    /// `stub_binary` is this executable (cgroup v2's exec stubs).
    pub fn start(
        manager: CgroupManager,
        limits: SessionLimits,
        stub_binary: PathBuf,
    ) -> std::io::Result<Self> {
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
                    ready: None,
                    made: 0,
                    stub_binary,
                };
                spare.refill(&thread_manager, &limits);
                while let Ok(job) = rx.recv() {
                    let limits = job.limits;
                    spare.start(&thread_manager, job);
                    // The session owns that cgroup now; a new spare (the
                    // slow move happens here, after the spawn).
                    spare.refill(&thread_manager, &limits);
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

    /// Starts `spec` on the spawner thread, inside a session cgroup with
    /// `limits`; returns the cgroup (now the session's) and the child.
    /// Blocks the caller for the spawn only.
    pub fn spawn_in_session(&self, limits: SessionLimits, spec: ChildSpec) -> Started {
        let (reply, reply_rx) = mpsc::sync_channel(1);
        let job = Job {
            limits,
            spec,
            reply,
        };
        super::spawner::hand_over(&self.jobs, job, &reply_rx, "the cgroup spawner thread")
    }
}
