//! Starting the real daemon on a private socket and talking to it like the
//! desktop client does.
//!
//! Each [`Daemon`] gets its own temporary `HOME` and `XDG_RUNTIME_DIR`.
//! When the tests run as root, [`Daemon::start_as_user`] runs the daemon
//! as an unprivileged account (`COWORK_TEST_USER`, default `cowork-test`)
//! and [`Daemon::connect`] connects with that uid, so sandbox tests run the
//! way users run the daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_cowork-vm-service");

/// An unprivileged account to run daemons as when the suite runs as root.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The unprivileged account, when running as root and it exists.
pub fn test_user() -> Option<TestUser> {
    if !is_root() {
        return None;
    }
    let name = std::env::var("COWORK_TEST_USER").unwrap_or_else(|_| "cowork-test".into());
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() <= 3 || f[0] != name {
            return None;
        }
        Some(TestUser {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
        })
    })
}

/// A test that must run unprivileged: when root without the test account,
/// this fails loudly (CI creates the account) instead of silently passing.
pub fn require_unprivileged_user() -> Option<TestUser> {
    if !is_root() {
        return None;
    }
    match test_user() {
        Some(u) => Some(u),
        None => panic!(
            "running as root but the unprivileged test account is missing; \
             create it (useradd -m cowork-test) or set COWORK_TEST_USER"
        ),
    }
}

/// The binary as `user` can run it: the build directory may sit under a
/// private home (`/root`), so a copy is staged once per build in a
/// world-readable directory.
pub fn binary_for(user: Option<&TestUser>) -> PathBuf {
    if user.is_none() {
        return PathBuf::from(BIN);
    }
    let meta = std::fs::metadata(BIN).expect("test binary");
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = PathBuf::from(format!("/tmp/cowork-test-bin/{}-{modified}", meta.len()));
    let staged = dir.join("cowork-vm-service");
    if !staged.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        for d in [Path::new("/tmp/cowork-test-bin"), dir.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // One name per thread: the tests of one process stage concurrently.
        let partial = dir.join(format!(
            "partial-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::copy(BIN, &partial).unwrap();
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Never replace a copy another test process staged meanwhile: a
        // daemon may already run from it (its /proc/self/exe would then
        // be "(deleted)").
        match std::fs::hard_link(&partial, &staged) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("staging the binary: {e}"),
        }
        let _ = std::fs::remove_file(&partial);
    }
    staged
}

/// The binary, run as `user` (via setpriv) or as ourselves.
pub fn command_as(user: Option<&TestUser>) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("/usr/bin/setpriv");
            c.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--clear-groups")
                .arg("--")
                .arg(binary_for(Some(u)));
            c
        }
        None => Command::new(BIN),
    }
}

/// Options for [`Daemon::start_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub backend: Option<&'static str>,
    pub user: Option<TestUser>,
    pub env: Vec<(String, String)>,
    /// Files to create in HOME before start (relative path, content).
    pub files: Vec<(String, String)>,
    /// Replace the default socket path.
    pub socket: Option<PathBuf>,
    /// A file the daemon inherits open at descriptor 7, not close-on-exec
    /// (a launcher's leak).
    pub leaked_fd7: Option<PathBuf>,
    /// A key (description, secret) added to the daemon's session keyring
    /// before it starts.
    pub session_key: Option<(String, String)>,
    /// The daemon's open-file limit (soft, hard), set with prlimit.
    pub nofile: Option<(u64, u64)>,
    /// A cgroup v2 directory the daemon starts in (its own cgroup).
    pub cgroup: Option<PathBuf>,
}

/// Runs `cmd` through python3, which first adds a `user` key to the
/// session keyring (as a login session would hold one); the daemon
/// inherits that keyring.
fn with_session_key(cmd: Command, description: &str, secret: &str) -> Command {
    let mut wrapped = Command::new("/usr/bin/python3");
    wrapped
        .arg("-c")
        .arg(
            "import ctypes, os, sys\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             libc.syscall.restype = ctypes.c_long\n\
             nr = {'x86_64': 248, 'aarch64': 217}[os.uname().machine]\n\
             d, s = sys.argv[1].encode(), sys.argv[2].encode()\n\
             if libc.syscall(nr, b'user', d, s, len(s), -3) < 0:\n\
             \x20   sys.exit('add_key: errno %d' % ctypes.get_errno())\n\
             os.execv(sys.argv[3], sys.argv[3:])\n",
        )
        .arg(description)
        .arg(secret)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}

pub struct Daemon {
    pub child: Child,
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    pub socket: PathBuf,
    pub user: Option<TestUser>,
    /// Kept open so the daemon never writes to a closed stdout.
    _stdout: BufReader<std::process::ChildStdout>,
}

fn chown_tree(path: &Path, user: &TestUser) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

/// `(key, value)` pairs as the owned pairs of [`Options::env`].
pub fn env_pairs(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Daemon {
    /// A bwrap daemon as `user` (see [`require_unprivileged_user`]) with
    /// extra environment.
    pub fn bwrap_as(user: Option<TestUser>, env: &[(&str, &str)]) -> Self {
        Self::start_with(Options {
            backend: Some("bwrap"),
            user,
            env: env_pairs(env),
            ..Default::default()
        })
    }

    pub fn start(backend: &'static str) -> Self {
        Self::start_with(Options {
            backend: Some(backend),
            ..Default::default()
        })
    }

    pub fn start_as_user(backend: &'static str) -> Self {
        Self::start_with(Options {
            backend: Some(backend),
            user: require_unprivileged_user(),
            ..Default::default()
        })
    }

    pub fn start_with(opts: Options) -> Self {
        let root = tempfile::Builder::new()
            .prefix("cowork-test-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = root.path().join("home/u");
        let runtime = root.path().join("run");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        for (rel, content) in &opts.files {
            let p = home.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        if let Some(u) = &opts.user {
            chown_tree(&root.path().join("home"), u);
            chown_tree(&runtime, u);
        }
        let socket = opts
            .socket
            .clone()
            .unwrap_or_else(|| runtime.join("cowork-vm-service.sock"));
        let mut cmd = command_as(opts.user.as_ref());
        if let Some((description, secret)) = &opts.session_key {
            cmd = with_session_key(cmd, description, secret);
        }
        if let Some((soft, hard)) = opts.nofile {
            let mut limited = Command::new("prlimit");
            limited
                .arg(format!("--nofile={soft}:{hard}"))
                .arg("--")
                .arg(cmd.get_program())
                .args(cmd.get_args());
            cmd = limited;
        }
        if let Some(dir) = &opts.cgroup {
            // setpriv execs, so the daemon is the process moved here.
            let mut placed = Command::new("/bin/sh");
            placed
                .arg("-c")
                .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                .arg(dir)
                .arg(cmd.get_program())
                .args(cmd.get_args());
            cmd = placed;
        }
        cmd.arg("/opt/claude/resources/cowork-vm-service.js")
            .arg("-socket")
            .arg(&socket)
            .env_clear()
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("COWORK_VM_DEBUG", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(b) = opts.backend {
            cmd.env("COWORK_VM_BACKEND", b);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(path) = &opts.leaked_fd7 {
            let file = std::fs::File::open(path).expect("file to leak");
            let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: between fork and exec only dup2 runs (async-signal
            // safe); `file` stays open in the parent until spawn returns.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::dup2(raw, 7) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("start daemon");
            drop(file);
            return Self::finish_start(child, root, home, socket, opts.user);
        }
        let child = cmd.spawn().expect("start daemon");
        Self::finish_start(child, root, home, socket, opts.user)
    }

    fn finish_start(
        mut child: Child,
        root: tempfile::TempDir,
        home: PathBuf,
        socket: PathBuf,
        user: Option<TestUser>,
    ) -> Self {
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("daemon stdout");
        assert!(
            line.contains("Service started on"),
            "daemon did not start: {line:?} (exit {:?})",
            child.try_wait()
        );
        Daemon {
            child,
            root,
            home,
            socket,
            user,
            _stdout: stdout,
        }
    }

    /// Connects as the daemon's user.
    pub fn connect(&self) -> Client {
        Client::connect_as(&self.socket, self.user.as_ref())
    }

    /// One-shot request (no id), as the 3.x client's one-shot mode.
    pub fn one_shot(&self, method: &str, params: Value) -> Value {
        let mut c = self.connect();
        c.send(&json!({"method": method, "params": params}));
        c.shutdown_write();
        c.recv()
    }

    /// `call` on a fresh connection; returns `result`, panics on failure.
    pub fn call(&self, method: &str, params: Value) -> Value {
        self.connect().call(method, params)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join(".config/Claude/logs/cowork_vm_daemon.log"))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Signals the daemon (setpriv execs, so its pid is the child's).
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// A directory in HOME owned by the daemon's user.
    pub fn home_dir(&self, rel: &str) -> PathBuf {
        let p = self.home.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        if let Some(u) = &self.user {
            chown_tree(&self.home, u);
        }
        p
    }

    /// Writes a file in HOME owned by the daemon's user.
    pub fn home_file(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.home.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        if let Some(u) = &self.user {
            chown_tree(&p, u);
        }
        p
    }

    /// `home/u/...` as the client encodes folders (root-relative).
    pub fn subpath(&self, rel: &str) -> String {
        let p = self.home.join(rel);
        p.to_string_lossy().trim_start_matches('/').to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking client speaking the framed protocol.
pub struct Client {
    pub stream: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect_as(socket: &Path, user: Option<&TestUser>) -> Self {
        let stream = match user {
            None => UnixStream::connect(socket).expect("connect"),
            Some(u) => {
                // Credentials are per thread in the kernel: drop them on a
                // throwaway thread, connect there (SO_PEERCRED records them),
                // and hand the socket back.
                let (uid, gid) = (u.uid, u.gid);
                let socket = socket.to_path_buf();
                std::thread::spawn(move || {
                    use rustix::thread::{set_thread_res_gid, set_thread_res_uid};
                    let gid = rustix::process::Gid::from_raw(gid);
                    let uid = rustix::process::Uid::from_raw(uid);
                    set_thread_res_gid(gid, gid, gid).expect("setresgid");
                    set_thread_res_uid(uid, uid, uid).expect("setresuid");
                    UnixStream::connect(&socket).expect("connect as test user")
                })
                .join()
                .unwrap()
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client { stream, next_id: 0 }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// For a connection the daemon may already have closed (refused or
    /// dropped it): a failed write (EPIPE) is returned, not a panic.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, v: &Value) {
        self.send_raw(&Self::frame(v));
    }

    /// [`Self::try_send_raw`] of a request.
    pub fn try_send(&mut self, v: &Value) -> std::io::Result<()> {
        self.try_send_raw(&Self::frame(v))
    }

    fn frame(v: &Value) -> Vec<u8> {
        let body = serde_json::to_vec(v).unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }

    /// Next frame, or None at end of stream / timeout.
    pub fn try_recv(&mut self) -> Option<Value> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(serde_json::from_slice(&body).expect("reply is JSON"))
    }

    pub fn recv(&mut self) -> Value {
        self.try_recv().expect("a reply frame")
    }

    /// Sends a request with a fresh numeric id and waits for its reply
    /// (skipping events and other replies).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"method": method, "params": params, "id": id}));
        loop {
            let reply = self.recv();
            if reply.get("id") == Some(&json!(id)) {
                return reply;
            }
        }
    }

    /// `request`, asserting success; returns `result`.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let reply = self.request(method, params.clone());
        assert_eq!(reply["success"], true, "{method} {params} failed: {reply}");
        reply["result"].clone()
    }

    /// Subscribes; returns the ack.
    pub fn subscribe(&mut self) -> Value {
        self.send(&json!({"method": "subscribeEvents", "params": {"userDataName": "t"}}));
        self.recv()
    }

    /// Reads events until `pred` matches one (panics after the timeout).
    pub fn wait_event(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(e) = self.try_recv() {
                if pred(&e) {
                    return e;
                }
            }
        }
        panic!("no matching event within {timeout:?}");
    }
}

/// Everything one process printed, and how it ended.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i64>,
    pub signal: Option<String>,
    pub stdout_events: usize,
}

/// Runs `/bin/cat` in session `s`, writes `chunks` to its stdin (closing it
/// with the last one) and returns what it printed.
pub fn cat_with_stdin(d: &Daemon, chunks: &[&str]) -> Outcome {
    let mut events = d.connect();
    events.subscribe();
    d.call(
        "spawn",
        json!({"id": "cat", "name": "s", "command": "/bin/cat", "args": []}),
    );
    for (i, data) in chunks.iter().enumerate() {
        let eof = i + 1 == chunks.len();
        d.call("writeStdin", json!({"id": "cat", "data": data, "eof": eof}));
    }
    collect(&mut events, "cat", Duration::from_secs(10))
}

/// Collects the events of process `id` from a subscribed client until exit.
pub fn collect(events: &mut Client, id: &str, timeout: Duration) -> Outcome {
    let mut out = Outcome::default();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < timeout,
            "process {id} did not exit within {timeout:?}: {out:?}"
        );
        let Some(e) = events.try_recv() else {
            panic!("event stream ended or timed out waiting for {id}: {out:?}");
        };
        if e["id"] != id {
            continue;
        }
        match e["type"].as_str() {
            Some("stdout") => {
                out.stdout.push_str(e["data"].as_str().unwrap());
                out.stdout_events += 1;
            }
            Some("stderr") => out.stderr.push_str(e["data"].as_str().unwrap()),
            Some("exit") => {
                out.exit_code = e["exitCode"].as_i64();
                out.signal = e["signal"].as_str().map(String::from);
                return out;
            }
            _ => {}
        }
    }
}

/// Spawns `argv` in session `session` and collects its outcome, using a
/// fresh subscription.
pub fn run_in(d: &Daemon, session: &str, id: &str, argv: &[&str], extra: Value) -> Outcome {
    run_in_within(d, session, id, argv, extra, None)
}

/// [`run_in`], the spawn call allowed `call_timeout` (a microVM boots on a
/// session's first spawn).
pub fn run_in_within(
    d: &Daemon,
    session: &str,
    id: &str,
    argv: &[&str],
    extra: Value,
    call_timeout: Option<Duration>,
) -> Outcome {
    let mut events = d.connect();
    events.subscribe();
    let mut params = json!({
        "id": id,
        "name": session,
        "command": argv[0],
        "args": argv[1..],
        "isResume": false,
    });
    if let (Value::Object(p), Value::Object(x)) = (&mut params, extra) {
        p.extend(x);
    }
    let mut c = d.connect();
    if let Some(t) = call_timeout {
        c.stream.set_read_timeout(Some(t)).expect("read timeout");
    }
    c.call("spawn", params);
    collect(&mut events, id, Duration::from_secs(30))
}

/// A sleep duration no other test uses (`sleep <it>` finds our processes).
pub fn unique_duration() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "3{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Pids of processes whose command line (arguments joined by spaces) is
/// exactly `argv`.
pub fn pids_with(argv: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .trim_end()
                == argv
            {
                found.push(pid);
            }
        }
    }
    found
}

/// Waits until `cond` holds (polling), or panics with `what`.
pub fn eventually(timeout: Duration, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// An HTTP server on the host answering every request with `body`
/// (closing after each response); returns its address.
pub fn http_upstream(ip: &str, body: &'static str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
    addr
}
