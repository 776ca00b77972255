//! `cowork-vm-service run`, black-box: the built binary started from a
//! shell the way a user starts it, as the unprivileged test account when
//! the suite runs as root.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use super::harness::{TestUser, command_as, require_unprivileged_user};

/// A user's shell: a private HOME with a project folder to run in.
struct Shell {
    _root: tempfile::TempDir,
    home: PathBuf,
    project: PathBuf,
    user: Option<TestUser>,
}

impl Shell {
    fn new() -> Self {
        let user = require_unprivileged_user();
        let root = tempfile::Builder::new()
            .prefix("cowork-run-test-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = root.path().join("home");
        let project = home.join("project");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::create_dir_all(home.join("ref")).unwrap();
        std::fs::write(home.join("ref/readme.txt"), "reference\n").unwrap();
        if let Some(u) = &user {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", u.uid, u.gid))
                .arg(&home)
                .status()
                .unwrap();
            assert!(status.success());
        }
        Shell {
            _root: root,
            home,
            project,
            user,
        }
    }

    /// `cowork-vm-service run ARGS...` in `dir`.
    fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = command_as(self.user.as_ref());
        c.arg("run")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("COWORK_VM_BACKEND", "bwrap");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(&self.project, args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `run` on a command that prints `ready` once it runs.
    fn start_until_ready(&self, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
        let mut child = self
            .command(&self.project, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n", "{:?}", child.wait_with_output());
        (child, stdout)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn interrupt(child: &Child) {
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::INT).unwrap();
}

fn wait_code(mut child: Child) -> Option<i32> {
    for _ in 0..1000 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!("run did not exit within 10 s");
}

#[test]
fn run_exits_with_the_commands_status() {
    let sh = Shell::new();
    let ok = sh.run(&["--", "true"]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let seven = sh.run(&["--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(seven.status.code(), Some(7), "{seven:?}");
    assert_eq!(text(&seven.stdout), "out\n");
    assert!(text(&seven.stderr).contains("err\n"));
}

#[test]
fn run_dash_c_runs_a_shell_command_line() {
    let sh = Shell::new();
    let out = sh.run(&["-c", "echo one two | wc -w; pwd"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "2\n/sessions/cli/mnt/project\n");
}

#[test]
fn run_pipes_stdin_through() {
    let sh = Shell::new();
    let mut child = sh
        .command(&sh.project, &["--", "sh", "-c", "tr a-z A-Z; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "HELLO\nWORLD\nend\n");
}

#[test]
fn run_ctrl_c_gives_130_and_a_second_one_137() {
    let sh = Shell::new();
    let (child, _out) = sh.start_until_ready(&["--", "sh", "-c", "echo ready; exec sleep 30"]);
    interrupt(&child);
    assert_eq!(wait_code(child), Some(130), "SIGINT reached the command");

    // A command that ignores SIGINT: the second Ctrl-C kills it.
    let (child, _out) = sh.start_until_ready(&[
        "--",
        "sh",
        "-c",
        "trap '' INT; echo ready; sleep 30; echo survived",
    ]);
    interrupt(&child);
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&child);
    assert_eq!(wait_code(child), Some(137));
}

#[test]
fn run_read_only_mount_is_not_writable() {
    let sh = Shell::new();
    let refdir = sh.home.join("ref");
    let mount = format!("{}:ref:ro", refdir.display());
    let out = sh.run(&[
        "--mount",
        &mount,
        "--",
        "sh",
        "-c",
        "cat /sessions/cli/mnt/ref/readme.txt; echo x > /sessions/cli/mnt/ref/new && echo WROTE",
    ]);
    assert_eq!(text(&out.stdout), "reference\n", "{out:?}");
    assert_ne!(out.status.code(), Some(0));
    assert!(!refdir.join("new").exists());
}

#[test]
fn run_refuses_mounts_it_cannot_give_with_exit_2_and_the_reason() {
    let sh = Shell::new();
    let cases: [(&[&str], &str); 4] = [
        (&["--mount", "/etc:ro", "--", "true"], "/etc"),
        (
            &["--mount", "/no/such/folder", "--", "true"],
            "No such file",
        ),
        (
            &[
                "--mount",
                &format!("{}:bad/name", sh.project.display()),
                "--",
                "true",
            ],
            "bad/name",
        ),
        (&["--mount", "/usr", "--", "true"], "system path"),
    ];
    for (args, reason) in cases {
        let out = sh.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(reason), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "nothing ran: {args:?}");
    }
    // The default mount (the current directory) is refused the same way.
    for dir in ["/", "/etc"] {
        let out = sh
            .command(Path::new(dir), &["--", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "from {dir}: {out:?}");
        assert!(text(&out.stderr).contains("current directory"), "{out:?}");
    }
}

#[test]
fn run_without_a_command_reports_the_backend_and_what_to_try() {
    let sh = Shell::new();
    let out = sh.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = text(&out.stdout);
    assert!(
        report.contains("backend:   bwrap (isolated"),
        "names the backend and isolation: {report}"
    );
    assert!(
        report.contains("cwd:       /sessions/cli/mnt/project"),
        "{report}"
    );
    assert!(report.contains("cowork-vm-service run -- bash"), "{report}");
    assert!(report.contains("--doctor"), "{report}");
}

#[test]
fn run_on_the_host_backend_says_so_in_one_line_first() {
    let sh = Shell::new();
    let out = sh.run(&["--backend", "host", "--", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "hi\n");
    let err = text(&out.stderr);
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("NOT ISOLATED")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(notices[0].contains("host backend"), "{err}");
    // Unknown backends are refused by the command line itself.
    let bad = sh.run(&["--backend", "docker", "--", "true"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("possible values"), "{bad:?}");
}

#[test]
fn run_prints_each_error_cause_once() {
    let sh = Shell::new();
    let out = sh.run(&["--socket", "/nonexistent/dir/x.sock", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
