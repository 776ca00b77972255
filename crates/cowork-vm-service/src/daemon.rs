//! The daemon process: start-up, serving, signals, shutdown.
//!
//! Lifecycle lines (always logged): `startup pid=<pid> sock=<path>`,
//! `listening <path>`, `SIGTERM received` / `SIGINT received`, `panic ...`,
//! `exit code=<n>`. `Service started on <path>` goes to stdout once the
//! socket is listening (the 3.x client logs it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use cowork_policy::env::EnvMap;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::backend::netns::EgressSettings;
use crate::backend::probe::RealProbe;
use crate::dirs::Dirs;
use crate::logging::{self, LIFECYCLE, LogControl};
use crate::server;
use crate::service::{Service, ServiceConfig};
use crate::socket;

/// The daemon's environment as children inherit it (non-UTF-8 entries are
/// skipped).
pub fn daemon_env() -> EnvMap {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Logs panics as lifecycle lines (the reference's `uncaughtException`).
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(target: LIFECYCLE, "panic {info}");
        previous(info);
    }));
}

/// A runtime sized for a daemon: a few workers, never one per core of a
/// large machine.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get().clamp(1, 4))
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

/// A running in-process server (the daemon, or `run`'s embedded one).
pub struct Server {
    pub service: Arc<Service>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves an already bound listener. Must be called inside the runtime.
    pub fn start(
        listener: std::os::unix::net::UnixListener,
        dirs: Dirs,
        log: LogControl,
        probe: RealProbe,
        socket: PathBuf,
        egress: EgressSettings,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(listener)?;
        let service = Service::new(ServiceConfig {
            dirs,
            log,
            probe,
            daemon_env: daemon_env(),
            socket,
            egress,
        });
        // Select the backend now, in the background: the first request
        // does not wait for the bwrap probe unless it needs the backend.
        // Then make the spare session directory for the first session.
        let warm = service.clone();
        tokio::spawn(async move {
            warm.backend().await;
            warm.prepare_spare_session();
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve(listener, service.clone(), shutdown.clone()));
        Ok(Self {
            service,
            shutdown,
            task,
        })
    }

    /// Stops every process and the accept loop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.service.shutdown().await;
        let _ = self.task.await;
    }
}

pub fn main(socket_arg: Option<PathBuf>) -> ExitCode {
    let dirs = Dirs::from_env();
    let log = logging::init(&dirs.log_file(), logging::debug_from_env(), true);
    install_panic_hook();
    let nofile = crate::sys::fds::raise_nofile_limit();
    tracing::debug!("open-file limit {nofile}");
    let socket_path = socket_arg.unwrap_or_else(|| dirs.default_socket());
    tracing::info!(
        target: LIFECYCLE,
        "startup pid={} sock={}",
        std::process::id(),
        socket_path.display()
    );
    let code = match serve_until_signal(dirs, log, &socket_path) {
        Ok(()) => 0,
        Err(e) => {
            // Errors are echoed on stderr by the logger.
            tracing::error!("{}", crate::cli::error_chain(&e));
            1
        }
    };
    tracing::info!(target: LIFECYCLE, "exit code={code}");
    ExitCode::from(code)
}

fn serve_until_signal(dirs: Dirs, log: LogControl, socket_path: &Path) -> anyhow::Result<()> {
    // Bind before any thread exists: binding briefly changes the umask.
    let listener = socket::bind(socket_path)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let server = Server::start(
            listener,
            dirs,
            log,
            RealProbe::from_env(),
            socket_path.to_path_buf(),
            EgressSettings::default(),
        )?;
        println!(
            "[cowork-vm-service] Service started on {}",
            socket_path.display()
        );
        tracing::info!(target: LIFECYCLE, "listening {}", socket_path.display());
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(target: LIFECYCLE, "{name} received");
        server.stop().await;
        socket::unlink(socket_path);
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
