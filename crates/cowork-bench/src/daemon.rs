//! A daemon under test (ours or the reference) on a private HOME and
//! runtime directory, and a blocking client of its socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// How to start one daemon implementation.
#[derive(Debug, Clone)]
pub struct Target {
    pub label: &'static str,
    /// Program and leading arguments (`node /path/cowork-vm-service.js`).
    pub argv: Vec<String>,
}

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    home: PathBuf,
    _runtime: tempfile::TempDir,
    _root: tempfile::TempDir,
    /// Where the daemon's cgroup thread was at the last settle.
    last_spare_cgroup: std::cell::RefCell<Option<String>>,
}

impl Daemon {
    /// Starts `target` with `backend`; returns it and the time until it
    /// answered its first request.
    pub fn start(
        target: &Target,
        backend: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<(Self, Duration)> {
        let root = scratch_dir("cowork-bench-")?;
        let home = root.path().join("home");
        // The desktop client's config and log directory exists on any
        // machine that runs it; making it here keeps a first-ever start's
        // directory creation (0.4 ms per inode on some disks) out of the
        // start figure of both daemons.
        std::fs::create_dir_all(home.join(".config/Claude/logs"))?;
        // XDG_RUNTIME_DIR is a tmpfs (/run/user/UID) on desktop systems:
        // /dev/shm when it is usable, else the scratch directory.
        let runtime = tempfile::Builder::new()
            .prefix("cowork-bench-rt-")
            .tempdir_in("/dev/shm")
            .or_else(|_| {
                tempfile::Builder::new()
                    .prefix("rt")
                    .tempdir_in(root.path())
            })?;
        std::fs::set_permissions(
            runtime.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let socket = runtime.path().join("cowork-vm-service.sock");
        let mut cmd = Command::new(&target.argv[0]);
        cmd.args(&target.argv[1..])
            .env_clear()
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .env("COWORK_VM_BACKEND", backend)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", target.argv.join(" ")))?;
        let mut daemon = Daemon {
            last_spare_cgroup: std::cell::RefCell::new(None),
            child,
            socket,
            home,
            _runtime: runtime,
            _root: root,
        };
        loop {
            if let Ok(reply) = daemon.one_shot("isRunning", json!({})) {
                if reply.get("success") == Some(&Value::Bool(true)) {
                    return Ok((daemon, started.elapsed()));
                }
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!("{} exited during start: {status}", target.label);
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("{} did not answer within 20 s", target.label);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Waits (up to 100 ms, spinning so the CPUs stay awake) until our
    /// daemon has remade its spare session directory: that after-work of a
    /// new session must not be timed as part of the next measurement.
    /// Returns at once for a daemon without one (the reference).
    ///
    /// Likewise, where session limits are enforced (root on cgroup v1),
    /// until its cgroup thread sits in a new spare session cgroup (up to
    /// 100 ms more): new sessions start seconds apart in real use, and
    /// that move costs the kernel an RCU grace period.
    pub fn settle_after_new_session(&self) {
        let spare = self
            .home
            .join(".local/share/cowork-vm-service/spare-session/tmp");
        let t = Instant::now();
        while !spare.is_dir() && t.elapsed() < Duration::from_millis(100) {
            std::thread::yield_now();
        }
        let mut last = self.last_spare_cgroup.borrow_mut();
        let t = Instant::now();
        loop {
            let now = self.spawner_cgroup();
            if now.is_none() || now != *last || t.elapsed() > Duration::from_millis(100) {
                *last = now;
                return;
            }
            std::thread::yield_now();
        }
    }

    /// The memory cgroup of our daemon's cgroup thread, if it has one.
    fn spawner_cgroup(&self) -> Option<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).ok()?;
        tasks.flatten().find_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            if comm.trim() != "cowork-cgroups" {
                return None;
            }
            let cgroup = std::fs::read_to_string(t.path().join("cgroup")).ok()?;
            cgroup
                .lines()
                .find(|l| l.contains(":memory:"))
                .map(String::from)
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS missing")
    }

    /// Open descriptors.
    pub fn fd_count(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Threads.
    pub fn threads(&self) -> Result<usize> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .context("Threads missing")
    }

    /// Processes below the daemon (children, grandchildren, ...).
    pub fn descendants(&self) -> Result<usize> {
        let mut parent_of = std::collections::HashMap::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may be gone by now: skip it.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parens.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.insert(pid, ppid);
            }
        }
        let root = self.pid();
        let below = |mut pid: u32| {
            // Bounded walk: pid numbers can be reused into a cycle mid-scan.
            for _ in 0..64 {
                match parent_of.get(&pid) {
                    Some(&p) if p == root => return true,
                    Some(&p) if p > 1 => pid = p,
                    _ => return false,
                }
            }
            false
        };
        Ok(parent_of.keys().filter(|&&pid| below(pid)).count())
    }

    pub fn connect(&self) -> Result<Client> {
        Client::connect(&self.socket)
    }

    /// A request without id on a fresh connection, as the 3.x client sends.
    pub fn one_shot(&self, method: &str, params: Value) -> Result<Value> {
        let mut c = self.connect()?;
        c.send(&json!({"method": method, "params": params}))?;
        c.stream.shutdown(std::net::Shutdown::Write)?;
        c.recv()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(mut c) = self.connect() {
            let _ = c.call("stopVM", json!({}));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub stream: UnixStream,
    next_id: u64,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Self {
            stream,
            next_id: 0,
            buf: Vec::new(),
        })
    }

    pub fn frame(v: &Value) -> Result<Vec<u8>> {
        let body = serde_json::to_vec(v)?;
        let mut out = u32::try_from(body.len())?.to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn send(&mut self, v: &Value) -> Result<()> {
        self.stream.write_all(&Self::frame(v)?)?;
        Ok(())
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Next frame's body, parsed.
    pub fn recv(&mut self) -> Result<Value> {
        Ok(serde_json::from_slice(self.recv_raw()?)?)
    }

    /// The next frame's body, unparsed.
    pub fn recv_raw(&mut self) -> Result<&[u8]> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        self.buf.resize(len, 0);
        self.stream.read_exact(&mut self.buf)?;
        Ok(&self.buf)
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A request with an id; frames for other ids are skipped.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id();
        self.send(&json!({"method": method, "params": params, "id": id}))?;
        loop {
            let reply = self.recv()?;
            if reply.get("id") == Some(&json!(id)) {
                if reply.get("success") != Some(&Value::Bool(true)) {
                    bail!("{method} failed: {reply}");
                }
                return Ok(reply);
            }
        }
    }

    /// Turns this connection into an event stream.
    pub fn subscribe(&mut self) -> Result<()> {
        self.send(&json!({"method": "subscribeEvents", "params": {"userDataName": "bench"}}))?;
        self.recv()?;
        Ok(())
    }
}

/// A scratch directory outside `/tmp`, for the daemons' `$HOME`.
///
/// A desktop's `$HOME` is not under `/tmp`. Inside a sandbox `/tmp` is the
/// session's own directory on disk, so a `$HOME` under it would make every
/// new sandbox create it there (`--dir $HOME`), an inode creation (about
/// 0.45 ms on the CI machine's disk) that no real session pays. `/var/tmp`
/// is the usual place; the system temp dir is the fallback.
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let builder = tempfile::Builder::new().prefix(prefix).clone();
    builder
        .tempdir_in("/var/tmp")
        .or_else(|_| builder.tempdir())
        .context("creating a scratch directory")
}
