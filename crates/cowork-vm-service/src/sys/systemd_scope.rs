//! Asks the systemd user manager, over the session bus, for a transient
//! scope with `Delegate=yes` holding this daemon, when its own cgroup v2
//! is not a delegated subtree (it shares the desktop client's app scope).
//! What to ask and what the answers mean is pure, in
//! `cowork_policy::confine::systemd_scope`; this is the D-Bus.
//!
//! The call is `org.freedesktop.systemd1.Manager.StartTransientUnit`, the
//! one behind `systemd-run --user --scope`, with the daemon's own pid: the
//! manager moves the whole process (every thread; a cgroup v2 domain holds
//! processes, not threads) and the job's `JobRemoved` signal says when it
//! is done. The daemon then finds itself alone in a cgroup it may write,
//! and `sys::cgroup` goes on as for any delegated subtree.
//!
//! The daemon leaves the client's app scope for it. That changes nothing
//! the client relies on: it starts the daemon detached and stops it by pid
//! (SIGTERM from its quit handler), never by its scope.
//!
//! Runs on a thread of its own with a one-thread tokio runtime, so callers
//! may be synchronous or on the daemon's runtime alike; it blocks them for
//! a few round trips to the bus and the manager's job (about 3 ms here),
//! [`TIMEOUT`] at most.

use std::time::Duration;

use cowork_policy::confine::systemd_scope::{
    ScopeDecision, ScopeProperty, bus_socket_paths, job_outcome, scope_decision, scope_properties,
    scope_unit,
};
use futures::StreamExt;
use zbus::{
    Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, Variant, message::Type,
};

/// The longest the daemon waits for the user manager.
pub const TIMEOUT: Duration = Duration::from_secs(5);

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// Why the daemon did not get (or, for `--doctor`, would not get) a scope.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "no systemd user manager to ask for a delegated scope: cannot connect to the session bus \
         ({0}; DBUS_SESSION_BUS_ADDRESS or $XDG_RUNTIME_DIR/bus)"
    )]
    Bus(#[source] zbus::Error),
    #[error(
        "no systemd user manager to ask for a delegated scope: no session bus at {0} \
         (DBUS_SESSION_BUS_ADDRESS or $XDG_RUNTIME_DIR/bus)"
    )]
    NoBus(String),
    #[error("asking the systemd user manager for a delegated scope ({step}): {source}")]
    Call {
        step: &'static str,
        #[source]
        source: zbus::Error,
    },
    /// The manager cannot move the daemon, or said no; what to do instead.
    #[error("{0}")]
    Refused(String),
    #[error(
        "no answer on the session bus within {} s (the connection or the systemd user manager)",
        TIMEOUT.as_secs()
    )]
    Timeout,
    #[error("starting a thread for the D-Bus call to the systemd user manager: {0}")]
    Thread(#[source] std::io::Error),
}

fn call(step: &'static str) -> impl FnOnce(zbus::Error) -> ScopeError {
    move |source| ScopeError::Call { step, source }
}

/// What the user manager would do for a daemon in cgroup `own` (the v2
/// path of `/proc/self/cgroup`): `Ok` with the manager's own cgroup if it
/// can move the daemon into a delegated scope. Asks nothing to change; for
/// `--doctor`.
pub fn inspect(own: &str) -> Result<String, ScopeError> {
    let socket = bus_socket()?;
    let own = own.to_string();
    on_own_thread(async move { reach_manager(&socket, &own).await.map(|(_, m)| m) })
}

/// A connection to a user manager that can move a daemon in cgroup `own`,
/// and the manager's own cgroup; or why there is none.
async fn reach_manager(
    socket: &std::path::Path,
    own: &str,
) -> Result<(Connection, String), ScopeError> {
    let conn = connect(socket).await?;
    // The manager's name first: the bus queues calls to it while the
    // manager is still starting.
    let manager = manager_cgroup(&conn).await?;
    same_pid_namespace(&conn).await?;
    match scope_decision(own, &manager) {
        ScopeDecision::Ask => Ok((conn, manager)),
        ScopeDecision::Refuse(why) => Err(ScopeError::Refused(why)),
    }
}

/// Moves this process into a new transient scope with `Delegate=yes`;
/// returns its unit name once the manager's job is done. `own` is the
/// daemon's current v2 cgroup path.
pub fn move_self(own: &str) -> Result<String, ScopeError> {
    let socket = bus_socket()?;
    let own = own.to_string();
    on_own_thread(async move {
        let (conn, _) = reach_manager(&socket, &own).await?;
        let pid = std::process::id();
        // Random keys from the OS: the suffix keeps a leftover unit of a
        // reused pid from colliding.
        use std::hash::BuildHasher;
        let nonce = std::collections::hash_map::RandomState::new().hash_one(pid) as u32;
        let unit = scope_unit(pid, nonce);
        // Listen before asking: the job may end before the reply arrives.
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .sender(DEST)
            .interface(MANAGER)
            .member("JobRemoved")
            .arg(2, unit.as_str())
            .build()
            .map_err(call("matching JobRemoved"))?;
        let mut removed = MessageStream::for_match_rule(rule, &conn, None)
            .await
            .map_err(call("matching JobRemoved"))?;
        conn.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &())
            .await
            .map_err(call("Subscribe"))?;
        let properties: Vec<(&str, Variant<'_>)> = scope_properties(pid)
            .into_iter()
            .map(|(name, value)| (name, variant(value)))
            .collect();
        let aux: Vec<(&str, Vec<(&str, Variant<'_>)>)> = Vec::new();
        let reply = conn
            .call_method(
                Some(DEST),
                PATH,
                Some(MANAGER),
                "StartTransientUnit",
                &(unit.as_str(), "fail", properties, aux),
            )
            .await
            .map_err(call("StartTransientUnit"))?;
        let job: OwnedObjectPath = reply
            .body()
            .deserialize()
            .map_err(call("StartTransientUnit's reply"))?;
        while let Some(msg) = removed.next().await {
            let Ok(msg) = msg else { continue };
            let Ok((_id, path, _unit, result)) = msg
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if path == job {
                return job_outcome(&unit, &result)
                    .map(|()| unit)
                    .map_err(ScopeError::Refused);
            }
        }
        Err(ScopeError::Refused(format!(
            "the session bus closed before the systemd user manager finished starting {unit}"
        )))
    })
}

/// The session bus's socket: the first `unix:path=` socket of
/// `DBUS_SESSION_BUS_ADDRESS` (else `$XDG_RUNTIME_DIR/bus`) that exists
/// and belongs to this user. Nothing else is connected to: an address of
/// another kind (`tcp:`, `nonce-tcp:` with its file, `unix:abstract=`)
/// would take the daemon off the host or to a bus it cannot check, and a
/// root daemon never joins a user's manager (its sessions would then sit
/// in a subtree that user controls). Decided without a thread or a
/// connection, so a machine without a desktop session pays nothing.
fn bus_socket() -> Result<std::path::PathBuf, ScopeError> {
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        return Err(ScopeError::Refused(
            "a daemon running as root does not ask a user's systemd manager for a scope (its \
             sessions would sit in a cgroup that user controls); run it as a system service \
             with Delegate=yes"
                .into(),
        ));
    }
    let var = |name: &str| std::env::var(name).ok();
    let address = var("DBUS_SESSION_BUS_ADDRESS");
    let Some(paths) = bus_socket_paths(
        address.as_deref(),
        var("XDG_RUNTIME_DIR").as_deref(),
        euid.as_raw(),
    ) else {
        return Err(ScopeError::NoBus(format!(
            "{:?}, which is not a unix:path= socket (the only kind the daemon connects to)",
            address.unwrap_or_default()
        )));
    };
    let ours = |p: &std::path::Path| {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket() && m.uid() == euid.as_raw())
    };
    paths.iter().find(|p| ours(p)).cloned().ok_or_else(|| {
        let listed: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        ScopeError::NoBus(format!(
            "{} (no socket there that belongs to this user)",
            listed.join(", ")
        ))
    })
}

/// A bus connection over `socket`.
async fn connect(socket: &std::path::Path) -> Result<Connection, ScopeError> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| ScopeError::Bus(zbus::Error::InputOutput(e.into())))?;
    zbus::connection::Builder::unix_stream(stream)
        .build()
        .await
        .map_err(ScopeError::Bus)
}

/// Refuses a manager in another pid namespace: `PIDs` is read in the
/// manager's, so our pid number would name some other process there (a
/// daemon in a Flatpak reaching the host's bus, say).
async fn same_pid_namespace(conn: &Connection) -> Result<(), ScopeError> {
    let reply = conn
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetConnectionUnixProcessID",
            &(DEST,),
        )
        .await
        .map_err(call("finding the manager's pid"))?;
    let pid: u32 = reply
        .body()
        .deserialize()
        .map_err(call("finding the manager's pid"))?;
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if ns(&pid.to_string()).is_some()
        && ns(&pid.to_string()) == ns("self")
        && comm.trim() == "systemd"
    {
        Ok(())
    } else {
        Err(ScopeError::Refused(format!(
            "the systemd user manager on the session bus (pid {pid} as the bus sees it) is not \
             in this process's pid namespace, so it cannot be told which process to move"
        )))
    }
}

/// The manager's own cgroup (`ControlGroup`, e.g.
/// `/user.slice/user-1000.slice/user@1000.service`).
async fn manager_cgroup(conn: &Connection) -> Result<String, ScopeError> {
    let reply = conn
        .call_method(
            Some(DEST),
            PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(MANAGER, "ControlGroup"),
        )
        .await
        .map_err(call("reading the manager's ControlGroup"))?;
    let value: OwnedVariant = reply
        .body()
        .deserialize()
        .map_err(call("reading the manager's ControlGroup"))?;
    String::try_from(value).map_err(call("reading the manager's ControlGroup"))
}

fn variant(value: ScopeProperty) -> Variant<'static> {
    match value {
        ScopeProperty::Pids(pids) => Variant::from(pids),
        ScopeProperty::Bool(b) => Variant::from(b),
        ScopeProperty::Str(s) => Variant::from(s),
    }
}

/// Runs `work` on a new thread with a one-thread runtime, [`TIMEOUT`] at
/// most, and waits for it.
fn on_own_thread<T, F>(work: F) -> Result<T, ScopeError>
where
    T: Send,
    F: std::future::Future<Output = Result<T, ScopeError>> + Send,
{
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("systemd-scope".into())
            .spawn_scoped(s, || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ScopeError::Thread)?;
                let result = runtime.block_on(async {
                    tokio::time::timeout(TIMEOUT, work)
                        .await
                        .unwrap_or(Err(ScopeError::Timeout))
                });
                // Not a plain drop, which would wait without a limit for
                // blocking tasks the connection may have left.
                runtime.shutdown_background();
                result
            })
            .map_err(ScopeError::Thread)?;
        worker.join().unwrap_or_else(|_| {
            Err(ScopeError::Thread(std::io::Error::other(
                "the D-Bus thread panicked",
            )))
        })
    })
}
