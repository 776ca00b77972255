//! Session cgroups on cgroup v2, for real on this host's v2 hierarchy
//! (the unified one of a hybrid host): a delegated subtree the daemon is
//! started in, and a transient scope of the systemd user manager that a
//! daemon sharing the client's app scope asks for.
//!
//! This host's v2 hierarchy has no memory/pids/cpu controller to give
//! (they are bound to v1), so these tests check where processes are and
//! that the daemon says which limits are not enforced; the limits
//! themselves are tested for real on v1 (`hardening`) and their v2 files
//! are table-tested (`v2_plan_table`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::hardening::{NOT_ENFORCED, spawn, start};
use super::harness::{
    Daemon, Options, TestUser, binary_for, env_pairs, is_root, require_unprivileged_user, run_in,
};

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup/unified` on a
/// hybrid host like this project's machines, `/sys/fs/cgroup` on v2 ones).
fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(point))
        })
        .expect("a cgroup2 hierarchy is mounted (the unified one of a hybrid host at least)")
}

/// The command lines of the processes in cgroup `dir`.
fn cgroup_members(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

/// Removes a cgroup tree (deepest first), waiting for its processes to go.
fn remove_cgroup_tree(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut dirs: Vec<PathBuf> = walkdir_dirs(dir);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let all_gone = dirs.iter().all(|d| std::fs::remove_dir(d).is_ok());
        if all_gone || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn walkdir_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            out.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    out
}

/// cgroup v2 delegation, for real: as root, the test makes a delegated
/// subtree on this host's cgroup v2 hierarchy (the three files `chown`ed,
/// as systemd's `Delegate=yes` does) and starts the unprivileged daemon in
/// it. The daemon must move itself into a leaf, and each session's
/// sandbox (bwrap, the agent, the commands) must be born in a cgroup of
/// its own, one per session, gone with the session. This host's v2
/// hierarchy has no memory/pids/cpu controller to give (they are bound
/// to v1), so the daemon must also say those limits are not enforced;
/// the limits themselves are tested for real on v1 above and their v2
/// files are table-tested (`v2_plan_table`). Not as root: the daemon's
/// own v2 cgroup is not delegated, and it must say so.
#[test]
fn sessions_land_in_their_own_cgroup_v2_cgroup_in_a_delegated_subtree() {
    if !is_root() {
        let d = start(&[]);
        let info = d.call("getDaemonInfo", json!({}));
        assert!(
            info["warnings"]
                .to_string()
                .contains("is not delegated to it"),
            "{info}"
        );
        return;
    }
    let user = require_unprivileged_user().expect("the test account");
    let delegated = cgroup2_mount().join(format!("cowork-test-v2-{}", std::process::id()));
    std::fs::create_dir(&delegated).unwrap();
    let _remove = RemoveCgroupTree(delegated.clone());
    delegate(&delegated, &user);
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: Some(user),
        cgroup: Some(delegated.clone()),
        ..Default::default()
    });
    let parent = delegated.join(format!("cowork-vm-service-{}", d.pid()));
    let info = d.call("getDaemonInfo", json!({}));
    let warnings = info["warnings"].to_string();
    assert!(
        warnings.contains("some session limits are not enforced")
            && warnings.contains("memory, pids, cpu controllers are not delegated"),
        "the missing controllers are named: {info}"
    );
    assert!(!warnings.contains(NOT_ENFORCED), "{info}");
    let leaf = std::fs::read_to_string(parent.join("daemon/cgroup.procs")).unwrap();
    assert!(
        leaf.lines().any(|p| p == d.pid().to_string()),
        "the daemon moved into its own leaf: {leaf:?}"
    );
    assert_eq!(
        std::fs::read_to_string(delegated.join("cgroup.procs")).unwrap(),
        "",
        "and left its cgroup (which gives the controllers) empty"
    );
    spawn(&d, "v2-one", "p1", &["/bin/sleep", "30.1"]);
    spawn(&d, "v2-two", "p2", &["/bin/sleep", "30.2"]);
    // Where each sleeper is (the spawn returns before its exec is seen).
    let find = |argv: &str| {
        walkdir_dirs(&parent)
            .into_iter()
            .find(|dir| cgroup_members(dir).iter().any(|c| c.trim_end() == argv))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (one, two) = loop {
        if let (Some(a), Some(b)) = (find("/bin/sleep 30.1"), find("/bin/sleep 30.2")) {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "sleepers not found under {}",
            parent.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(one, two, "one cgroup per session");
    for dir in [&one, &two] {
        assert_ne!(dir, &parent.join("daemon"));
        assert_eq!(dir.parent(), Some(parent.as_path()));
        let members = cgroup_members(dir);
        assert!(
            members.iter().any(|c| c.contains("bwrap")),
            "bwrap was born there too: {members:?}"
        );
        assert!(
            members.iter().any(|c| c.contains(" agent --fd")),
            "and the agent: {members:?}"
        );
    }
    // A stub waits in the next spare, off the path of the next session.
    assert!(
        walkdir_dirs(&parent).iter().any(|dir| cgroup_members(dir)
            .iter()
            .any(|c| c.contains(" exec-stub --fd "))),
        "a spare with its stub"
    );
    // Stopping the sessions removes their cgroups.
    d.call("stopVM", json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while one.exists() || two.exists() {
        assert!(
            Instant::now() < deadline,
            "session cgroups left after stopVM: {:?} {:?} {}",
            cgroup_members(&one),
            cgroup_members(&two),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(d);
}

/// Removes its cgroup tree when dropped (also when the test fails).
struct RemoveCgroupTree(PathBuf);

impl Drop for RemoveCgroupTree {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.0);
    }
}

/// The v2 path of process `pid` (its `0::` line).
fn v2_cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

/// Gives `dir` to `user` as systemd delegates a cgroup: the directory and
/// the files that move processes and enable controllers.
fn delegate(dir: &Path, user: &TestUser) {
    for f in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        std::os::unix::fs::chown(dir.join(f), Some(user.uid), Some(user.gid)).unwrap();
    }
}

/// `setpriv` to `user` (no supplementary groups), for the program and its
/// arguments to follow.
fn as_user(user: &TestUser) -> [String; 5] {
    [
        "/usr/bin/setpriv".into(),
        format!("--reuid={}", user.uid),
        format!("--regid={}", user.gid),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// A command that enters cgroup `dir` (as root, like systemd placing a
/// process) and then runs as `user`; add the program and its arguments.
fn in_cgroup_as(dir: &Path, user: &TestUser) -> std::process::Command {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(dir)
        .args(as_user(user));
    cmd
}

/// A systemd user manager of the test account, as a desktop session has
/// one: in a cgroup v2 tree delegated to the account (its
/// `user@UID.service`), with its session bus (dbus-daemon, started on
/// demand by the manager's `dbus.socket`) in a runtime directory of its
/// own. systemd runs a user instance only on a system booted with systemd
/// (`/run/systemd/system` exists); this machine's pid 1 is not systemd, so
/// the manager runs in a mount namespace of its own where that directory
/// is made. Everything it does to cgroups and processes is real.
struct UserManager {
    child: std::process::Child,
    /// The tree made for it, removed on drop.
    top: PathBuf,
    /// Its `user@UID.service` (its `ControlGroup`).
    cgroup: PathBuf,
    dir: tempfile::TempDir,
    user: TestUser,
}

impl UserManager {
    fn start(user: &TestUser) -> UserManager {
        let top = cgroup2_mount().join(format!("cowork-test-um-{}", std::process::id()));
        let cgroup = top.join(format!("user@{}.service", user.uid));
        std::fs::create_dir_all(&cgroup).unwrap();
        delegate(&cgroup, user);
        let dir = tempfile::Builder::new()
            .prefix("cowork-um-")
            .tempdir_in("/tmp")
            .unwrap();
        for sub in ["run", "home"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let systemd = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("systemd is installed (scripts/test.sh installs the systemd package)");
        let log = std::fs::File::create(dir.path().join("systemd.log")).unwrap();
        let child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
            .arg(
                r#"mkdir -p /run/systemd && mount -t tmpfs -o mode=0755 tmpfs /run/systemd \
                   && mkdir /run/systemd/system && echo $$ > "$0/cgroup.procs" && exec "$@""#,
            )
            .arg(&cgroup)
            .args(as_user(user))
            .args(["/usr/bin/env", "-i"])
            .arg(format!("HOME={}", dir.path().join("home").display()))
            .arg(format!(
                "XDG_RUNTIME_DIR={}",
                dir.path().join("run").display()
            ))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg(systemd)
            .arg("--user")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start systemd --user");
        let mut manager = UserManager {
            child,
            top,
            cgroup,
            dir,
            user: user.clone(),
        };
        let run = manager.dir.path().join("run");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(run.join("bus").exists() && run.join("systemd/private").exists()) {
            let exited = manager.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "systemd --user did not come up ({exited:?}): {}",
                manager.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        manager
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("systemd.log")).unwrap_or_default()
    }

    /// `DBUS_SESSION_BUS_ADDRESS` of the session.
    fn bus(&self) -> String {
        format!("unix:path={}/bus", self.dir.path().join("run").display())
    }

    /// A scope in the manager's `app.slice`, the user's as the scope of a
    /// desktop app is (`app-gnome-claude-1234.scope`, say).
    fn app_scope(&self, name: &str) -> PathBuf {
        let dir = self.cgroup.join("app.slice").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        delegate(&dir, &self.user);
        dir
    }

    /// `systemctl --user ARGS` as the account, on this session's bus.
    fn systemctl(&self, args: &[&str]) -> String {
        let [setpriv, ids @ ..] = as_user(&self.user);
        let out = std::process::Command::new(setpriv)
            .args(ids)
            .args(["/usr/bin/env", "-i"])
            .arg(format!("DBUS_SESSION_BUS_ADDRESS={}", self.bus()))
            .arg(format!(
                "XDG_RUNTIME_DIR={}",
                self.dir.path().join("run").display()
            ))
            .args(["systemctl", "--user"])
            .args(args)
            .output()
            .expect("systemctl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever it started (dbus-daemon) goes with its tree.
        let _ = std::fs::write(self.top.join("cgroup.kill"), "1");
        remove_cgroup_tree(&self.top);
    }
}

/// A process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The desktop case, for real: the client starts the daemon inside its own
/// app scope, which it shares with the client, so the daemon's cgroup
/// cannot hold session cgroups. The daemon must ask the systemd user
/// manager for a transient scope with `Delegate=yes` holding only itself,
/// leave the client where it is, put each session's sandbox in a cgroup
/// of that scope, and leave nothing behind when it ends. It is also
/// attacked: the session bus it used can start any command outside the
/// sandbox (`systemd-run --user`), so no sandboxed process may reach it.
/// Not as root there is no user manager to start: the daemon must say it
/// found none to ask.
#[test]
fn sessions_land_in_a_transient_systemd_scope_when_the_daemon_shares_the_clients_app_scope() {
    if !is_root() {
        let d = start(&[]);
        let info = d.call("getDaemonInfo", json!({}));
        assert!(
            info["warnings"]
                .to_string()
                .contains("no systemd user manager to ask for a delegated scope"),
            "{info}"
        );
        return;
    }
    let user = require_unprivileged_user().expect("the test account");
    let manager = UserManager::start(&user);
    let app = manager.app_scope("app-cowork-test-client.scope");
    // The client: a process of the app's scope, as the desktop app is.
    let client = in_cgroup_as(&app, &user)
        .args(["/bin/sleep", "300.5"])
        .spawn()
        .unwrap();
    let client = KillOnDrop(client);
    let bus = manager.bus();
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: Some(user.clone()),
        cgroup: Some(app.clone()),
        env: env_pairs(&[("DBUS_SESSION_BUS_ADDRESS", &bus)]),
        ..Default::default()
    });
    let pid = d.pid();
    // The backend (and with it the scope) is set up by the first request.
    let info = d.call("getDaemonInfo", json!({}));
    // `cowork-vm-service-<pid>-<random>.scope`, beside the client's.
    let unit = std::fs::read_dir(manager.cgroup.join("app.slice"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("cowork-vm-service-{pid}-")) && n.ends_with(".scope"))
        .unwrap_or_else(|| panic!("no scope of the daemon: {}\n{}", d.log(), manager.log()));
    let scope = manager.cgroup.join("app.slice").join(&unit);
    let warnings = info["warnings"].to_string();
    assert!(
        !warnings.contains(NOT_ENFORCED),
        "{info}\n{}\n{}",
        d.log(),
        manager.log()
    );
    assert!(
        warnings.contains("memory, pids, cpu controllers are not delegated"),
        "the controllers this host's v2 hierarchy lacks are named: {info}"
    );
    // systemd's own view of the scope.
    let shown = manager.systemctl(&["show", "-p", "Delegate", "-p", "ActiveState", &unit]);
    assert!(
        shown.contains("Delegate=yes") && shown.contains("ActiveState=active"),
        "{shown}"
    );
    let parent = scope.join(format!("cowork-vm-service-{pid}"));
    assert!(
        v2_cgroup_of(pid).ends_with(&format!("/app.slice/{unit}/cowork-vm-service-{pid}/daemon")),
        "the daemon is in its leaf of the scope: {}",
        v2_cgroup_of(pid)
    );
    let app_path = format!("/{}", app.strip_prefix(cgroup2_mount()).unwrap().display());
    assert_eq!(
        v2_cgroup_of(client.0.id() as i32),
        app_path,
        "the client stays in its app scope"
    );
    // `--doctor` from the same place reports what it would get and
    // changes nothing: it stays in the app scope and starts no unit.
    let doctor = in_cgroup_as(&app, &user)
        .args(["/usr/bin/env", "-i"])
        .arg(format!("DBUS_SESSION_BUS_ADDRESS={bus}"))
        .arg(format!("HOME={}", d.home.display()))
        .arg("PATH=/usr/bin:/bin")
        .arg(binary_for(Some(&user)))
        .arg("--doctor")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report
            .contains("in a transient systemd user scope with Delegate=yes, which the daemon asks"),
        "{report}"
    );
    let units = manager.systemctl(&["list-units", "--all", "--no-legend", "cowork-vm-service-*"]);
    assert_eq!(
        units.matches(".scope").count(),
        1,
        "only the daemon's: {units}"
    );
    spawn(&d, "scoped", "p1", &["/bin/sleep", "30.3"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = loop {
        let found = walkdir_dirs(&parent).into_iter().find(|dir| {
            cgroup_members(dir)
                .iter()
                .any(|c| c.trim_end() == "/bin/sleep 30.3")
        });
        if let Some(dir) = found {
            break dir;
        }
        assert!(
            Instant::now() < deadline,
            "sleeper not found under {}",
            parent.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(session.parent(), Some(parent.as_path()));
    let members = cgroup_members(&session);
    assert!(
        members.iter().any(|c| c.contains("bwrap"))
            && members.iter().any(|c| c.contains(" agent --fd")),
        "the whole sandbox is in the session's cgroup: {members:?}"
    );
    // The attack: the session bus starts commands outside any sandbox.
    let bus_path = bus.trim_start_matches("unix:path=");
    let probe = format!(
        "env | grep -c DBUS_SESSION_BUS_ADDRESS; test -e {bus_path} && echo BUS-VISIBLE; \
         systemd-run --user --quiet /bin/true 2>/dev/null && echo ESCAPED; \
         DBUS_SESSION_BUS_ADDRESS={bus} systemd-run --user --quiet /bin/true 2>/dev/null \
         && echo ESCAPED; echo done"
    );
    let out = run_in(
        &d,
        "scoped",
        "attack",
        &["/bin/sh", "-c", &probe],
        json!({}),
    );
    assert_eq!(out.stdout, "0\ndone\n", "{out:?}");
    d.call("stopVM", json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while session.exists() {
        assert!(
            Instant::now() < deadline,
            "session cgroup left after stopVM: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // When the daemon ends, the manager collects its scope.
    drop(d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while scope.exists() {
        assert!(
            Instant::now() < deadline,
            "{unit} left after the daemon ended: {}",
            manager.systemctl(&["status", &unit])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(app.exists(), "the client's scope is untouched");
}

/// A tricked daemon: the session bus address in its environment points off
/// the host (`tcp:`, or `nonce-tcp:` whose nonce file would be sent) or at
/// a socket another user owns. It must connect to neither and say why.
#[test]
fn daemon_never_connects_to_a_session_bus_off_host_or_of_another_user() {
    use std::os::unix::fs::PermissionsExt;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let dir = tempfile::Builder::new()
        .prefix("cowork-bus-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let foreign = dir.path().join("bus");
    let unix = std::os::unix::net::UnixListener::bind(&foreign).unwrap();
    unix.set_nonblocking(true).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cases = [
        (
            format!("tcp:host=127.0.0.1,port={port}"),
            "not a unix:path= socket",
        ),
        (
            format!("nonce-tcp:host=127.0.0.1,port={port},noncefile=/etc/passwd"),
            "not a unix:path= socket",
        ),
        (
            format!("unix:path={}", foreign.display()),
            "no socket there that belongs to this user",
        ),
    ];
    for (address, why) in cases {
        // The foreign socket is root's: only a daemon of another user tells.
        if why.contains("belongs") && !is_root() {
            continue;
        }
        let d = start(&[("DBUS_SESSION_BUS_ADDRESS", &address)]);
        let info = d.call("getDaemonInfo", json!({}));
        assert!(
            info["warnings"].to_string().contains(why),
            "{address}: {info}"
        );
        drop(d);
        assert!(
            tcp.accept().is_err(),
            "{address}: the daemon connected over TCP"
        );
        assert!(
            unix.accept().is_err(),
            "{address}: the daemon connected to root's socket"
        );
    }
}
