//! The thread every sandbox is started from (when no cgroup thread does
//! it, see `cgroup_spawner`): it holds a private session keyring (see
//! `keyring`), which bubblewrap and everything in the sandbox inherit.

use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread's handle.
#[derive(Debug)]
pub struct SpawnerThread {
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    private_keyring: bool,
}

impl SpawnerThread {
    /// Starts the thread (inside the tokio runtime: children it spawns are
    /// registered with it).
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("cowork-sandboxes".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                let joined = super::keyring::join_for_sandboxes();
                let _ = ready_tx.send(joined);
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        let private_keyring = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the sandbox spawner thread is gone"))?;
        Ok(Self {
            jobs: std::sync::Mutex::new(tx),
            private_keyring,
        })
    }

    /// Whether sandboxes it starts inherit its private keyring.
    pub fn private_keyring(&self) -> bool {
        self.private_keyring
    }

    /// Runs `spawn` on the thread; blocks the caller for it only.
    pub fn run<T: Send + 'static>(
        &self,
        spawn: Box<dyn FnOnce() -> std::io::Result<T> + Send>,
    ) -> std::io::Result<T> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = reply_tx.send(spawn());
        });
        hand_over(&self.jobs, job, &reply_rx, "the sandbox spawner thread")
    }
}

/// Queues `job` for a spawner thread (`who`, for errors) and waits for its
/// reply.
pub(super) fn hand_over<J, T>(
    jobs: &std::sync::Mutex<mpsc::Sender<J>>,
    job: J,
    reply: &mpsc::Receiver<std::io::Result<T>>,
    who: &str,
) -> std::io::Result<T> {
    let gone = || std::io::Error::other(format!("{who} is gone"));
    jobs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| gone())?;
    reply.recv().map_err(|_| gone())?
}
