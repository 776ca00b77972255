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
//! one round trip to the manager (about 3 ms here), [`TIMEOUT`] at most.

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
    #[error("the systemd user manager did not answer within {} s", TIMEOUT.as_secs())]
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
    no_bus_socket()?;
    let own = own.to_string();
    on_own_thread(async move {
        let conn = Connection::session().await.map_err(ScopeError::Bus)?;
        let manager = manager_cgroup(&conn).await?;
        match scope_decision(&own, &manager) {
            ScopeDecision::Ask => Ok(manager),
            ScopeDecision::Refuse(why) => Err(ScopeError::Refused(why)),
        }
    })
}

/// Moves this process into a new transient scope with `Delegate=yes`;
/// returns its unit name once the manager's job is done. `own` is the
/// daemon's current v2 cgroup path.
pub fn move_self(own: &str) -> Result<String, ScopeError> {
    no_bus_socket()?;
    let own = own.to_string();
    on_own_thread(async move {
        let conn = Connection::session().await.map_err(ScopeError::Bus)?;
        let manager = manager_cgroup(&conn).await?;
        if let ScopeDecision::Refuse(why) = scope_decision(&own, &manager) {
            return Err(ScopeError::Refused(why));
        }
        let pid = std::process::id();
        let unit = scope_unit(pid);
        // Listen before asking: the job may end before the reply arrives.
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .sender(DEST)
            .interface(MANAGER)
            .member("JobRemoved")
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

/// Fails at once, without a thread or a connection, when the session bus
/// has plainly no socket (no desktop session, as on a build machine).
fn no_bus_socket() -> Result<(), ScopeError> {
    let var = |name: &str| std::env::var(name).ok();
    let paths = bus_socket_paths(
        var("DBUS_SESSION_BUS_ADDRESS").as_deref(),
        var("XDG_RUNTIME_DIR").as_deref(),
        rustix::process::geteuid().as_raw(),
    );
    match paths {
        Some(paths) if !paths.iter().any(|p| p.exists()) => {
            let listed: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            Err(ScopeError::NoBus(listed.join(", ")))
        }
        _ => Ok(()),
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
                runtime.block_on(async {
                    tokio::time::timeout(TIMEOUT, work)
                        .await
                        .unwrap_or(Err(ScopeError::Timeout))
                })
            })
            .map_err(ScopeError::Thread)?;
        worker.join().unwrap_or_else(|_| {
            Err(ScopeError::Thread(std::io::Error::other(
                "the D-Bus thread panicked",
            )))
        })
    })
}
