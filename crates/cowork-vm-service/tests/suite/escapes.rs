//! Attacks on the host from inside a session sandbox (or through a client
//! tricked into asking for something), each one a defect that was found
//! and closed. The daemon runs as the unprivileged test account unless a
//! test says otherwise.

use serde_json::{Value, json};

use super::harness::{Daemon, Options, Outcome, require_unprivileged_user, run_in};

fn start() -> Daemon {
    start_with_env(&[])
}

fn start_with_env(env: &[(&str, &str)]) -> Daemon {
    Daemon::bwrap_as(require_unprivileged_user(), env)
}

fn sh(d: &Daemon, session: &str, id: &str, script: &str, extra: Value) -> Outcome {
    run_in(d, session, id, &["/bin/sh", "-c", script], extra)
}

/// A python3 one-liner run inside the sandbox.
fn py(d: &Daemon, session: &str, id: &str, code: &str, extra: Value) -> Outcome {
    run_in(d, session, id, &["/usr/bin/python3", "-c", code], extra)
}

/// Nested directories `d/d/d/...` under the sandbox's /tmp, 16,000 deep
/// (deeper than any recursive walk survives). Landlock makes every access
/// cost a walk up to the root, so one 16,000-level loop would be
/// quadratic: sixteen 1,000-level chains are made near /tmp and moved to
/// the bottom of one another instead.
const DEEP_CHAIN: &str = "import os\n\
    tmp = os.open('/tmp', os.O_RDONLY)\n\
    def chain(name):\n\
    \x20   os.mkdir(name, dir_fd=tmp)\n\
    \x20   fd = os.open(name, os.O_RDONLY, dir_fd=tmp)\n\
    \x20   for _ in range(999):\n\
    \x20       os.mkdir('d', dir_fd=fd)\n\
    \x20       nfd = os.open('d', os.O_RDONLY, dir_fd=fd)\n\
    \x20       os.close(fd); fd = nfd\n\
    \x20   return fd\n\
    bottom = chain('deep')\n\
    for k in range(15):\n\
    \x20   nxt = chain('c%d' % k)\n\
    \x20   os.rename('c%d' % k, 'd', src_dir_fd=tmp, dst_dir_fd=bottom)\n\
    \x20   os.close(bottom); bottom = nxt\n\
    print('made')\n";

#[test]
fn sandbox_cannot_crash_the_daemon_with_a_deep_tree_in_tmp() {
    let d = start();
    let session_tmp = d
        .home
        .join(".local/share/cowork-vm-service/sessions/deep/tmp");
    let made = py(&d, "deep", "mk1", DEEP_CHAIN, json!({}));
    assert_eq!(made.stdout, "made\n", "{made:?}");
    // The client's janitor prunes idle sessions' tmp every 300 s.
    d.call("stopVM", json!({}));
    // Deleting 16,000 levels takes seconds on this disk: more patience than
    // the harness's usual 20 s per reply when the machine is busy.
    let slow = |method: &str, params: Value| {
        let mut c = d.connect();
        c.stream
            .set_read_timeout(Some(std::time::Duration::from_secs(120)))
            .unwrap();
        c.call(method, params)
    };
    let pruned = slow(
        "pruneSessionCaches",
        json!({"includeSessionTmp": true, "sessionTmpOlderThanSeconds": 0}),
    );
    assert_eq!(pruned["prunedSessions"], json!(["deep"]), "{pruned}");
    assert!(!session_tmp.join("deep").exists());
    // And deleting the session's directories copes too.
    d.call("startVM", json!({}));
    let made = py(&d, "deep", "mk2", DEEP_CHAIN, json!({}));
    assert_eq!(made.stdout, "made\n", "{made:?}");
    let deleted = slow("deleteSessionDirs", json!({"names": ["deep"]}));
    assert_eq!(deleted["deleted"], json!(["deep"]), "{deleted}");
    assert!(!session_tmp.exists());
    // Still serving.
    let out = sh(&d, "other", "alive", "echo alive", json!({}));
    assert_eq!(out.stdout, "alive\n");
}

#[test]
fn sandbox_blocks_reading_the_daemons_secrets_from_its_environment() {
    let d = start_with_env(&[
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
        ("GITHUB_TOKEN", "ghp_secret_value"),
        ("SSH_AUTH_SOCK", "/run/user/1000/ssh-agent.socket"),
        ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus"),
        ("LANG", "C.UTF-8"),
    ]);
    let out = sh(
        &d,
        "s",
        "env",
        "env",
        json!({"env": {"FROM_CLIENT": "yes"}}),
    );
    for leaked in [
        "aws-secret-value",
        "ghp_secret_value",
        "SSH_AUTH_SOCK",
        "DBUS_SESSION_BUS_ADDRESS",
        "XDG_RUNTIME_DIR",
        "COWORK_VM",
    ] {
        assert!(
            !out.stdout.contains(leaked),
            "{leaked} leaked: {}",
            out.stdout
        );
    }
    for kept in ["FROM_CLIENT=yes", "LANG=C.UTF-8", "PATH=", "HOME="] {
        assert!(out.stdout.contains(kept), "{kept} missing: {}", out.stdout);
    }
}

#[test]
fn sandbox_blocks_reading_a_descriptor_the_launcher_leaked() {
    let secret_dir = tempfile::tempdir().unwrap();
    let key = secret_dir.path().join("id_rsa");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        leaked_fd7: Some(key),
        ..Default::default()
    });
    let out = sh(
        &d,
        "s",
        "fd",
        "cat <&7 2>/dev/null; ls /proc/self/fd",
        json!({}),
    );
    assert!(!out.stdout.contains("PRIVATE KEY"), "{out:?}");
    let fds: Vec<&str> = out.stdout.split_whitespace().collect();
    assert!(
        fds.iter().all(|fd| ["0", "1", "2", "3"].contains(fd)),
        "only stdio (and ls's own directory) are open: {fds:?}"
    );
}

#[test]
fn sandbox_blocks_reading_the_daemons_session_keyring() {
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        session_key: Some(("cowork-test-key".into(), "keyring-secret".into())),
        ..Default::default()
    });
    let read = "import ctypes, os\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        libc.syscall.restype = ctypes.c_long\n\
        rk, kc = {'x86_64': (249, 250), 'aarch64': (218, 219)}[os.uname().machine]\n\
        key = libc.syscall(rk, b'user', b'cowork-test-key', None, 0)\n\
        if key < 0:\n\
        \x20   print('no key: errno', ctypes.get_errno())\n\
        else:\n\
        \x20   buf = ctypes.create_string_buffer(64)\n\
        \x20   n = libc.syscall(kc, 11, key, buf, 64)\n\
        \x20   print('read:', buf.raw[:max(n, 0)].decode(errors='replace'))\n";
    let out = py(&d, "s", "keys", read, json!({}));
    assert!(!out.stdout.contains("keyring-secret"), "{out:?}");
    assert!(out.stdout.starts_with("no key"), "{out:?}");
}

/// Keys the kernel counts for `uid` (`/proc/key-users`: "qnkeys/maxkeys").
fn keys_of(uid: u32) -> usize {
    let table = std::fs::read_to_string("/proc/key-users").unwrap_or_default();
    table
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{uid}:")))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|q| q.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Every live sandbox used to hold a key of its user's kernel quota (200 by
/// default, shared with every program of the user): 200 sessions and no
/// new sandbox starts, nor anything else of that user that needs a key.
/// They now share the daemon's one private keyring.
#[test]
fn sandboxes_do_not_each_take_a_key_of_the_users_quota() {
    let d = start();
    let Some(uid) = d.user.as_ref().map(|u| u.uid) else {
        eprintln!("not root: the test account's key count cannot be told apart; nothing checked");
        return;
    };
    assert_eq!(sh(&d, "first", "k0", "true", json!({})).exit_code, Some(0));
    let before = keys_of(uid);
    for i in 1..=6 {
        let out = sh(&d, &format!("keys{i}"), &format!("k{i}"), "true", json!({}));
        assert_eq!(out.exit_code, Some(0), "{out:?}");
    }
    let after = keys_of(uid);
    assert!(
        after <= before + 1,
        "6 more live sandboxes took {} more keys ({before} -> {after})",
        after.saturating_sub(before)
    );
}

#[test]
fn client_cannot_be_tricked_into_mounting_system_trees_or_other_homes() {
    let d = start();
    let me = d.subpath("");
    // An account made after the daemon started (or one the user database
    // file does not list: LDAP, SSSD): its home sits next to ours.
    for dir in [
        ".config/Claude/claude-code-vm",
        ".config/Claude/logs",
        ".cargo/bin",
    ] {
        d.home_dir(dir);
    }
    let bare = std::process::Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(d.home.join("store/foo.git"))
        .status()
        .unwrap();
    assert!(bare.success());
    d.home_dir("store");
    let newcomer = d.home.parent().unwrap().join("newcomer/proj");
    std::fs::create_dir_all(&newcomer).unwrap();
    let newcomer = newcomer
        .to_string_lossy()
        .trim_start_matches('/')
        .to_string();
    let cases = [
        ("usrbin", "usr/bin", "rw", "/usr"),
        ("usrlocal", "usr/local", "ro", "/usr"),
        ("varlog", "var/log", "ro", "/var"),
        ("varlib", "var/lib", "rw", "/var"),
        ("roothome", "root", "ro", "/root"),
        ("ssh", &format!("{me}/.ssh"), "ro", "credentials"),
        // The home itself, and folders holding credentials, the client's
        // and this daemon's configuration, or what the session runs.
        ("home", &me, "rw", "is your home folder"),
        (
            "dotconfig",
            &format!("{me}/.config"),
            "rw",
            "contains ~/.config/",
        ),
        ("legacy", ".config", "rw", "contains ~/.config/"),
        (
            "claudecfg",
            &format!("{me}/.config/Claude"),
            "rw",
            "contains ~/.config/Claude",
        ),
        (
            "gitcfg",
            &format!("{me}/.config/git"),
            "rw",
            "~/.config/git",
        ),
        (
            "state",
            &format!("{me}/.local/share/cowork-vm-service"),
            "ro",
            "~/.local/share/cowork-vm-service",
        ),
        ("newcomer", &newcomer, "ro", "another user's home folder"),
        (
            "dotgit",
            &format!("{me}/proj/.git"),
            "rw",
            "inside a git directory",
        ),
        (
            "sdkstore",
            &format!("{me}/.config/Claude/claude-code-vm"),
            "rw",
            "must not reach",
        ),
        (
            "claudelogs",
            &format!("{me}/.config/Claude/logs"),
            "rw",
            "must not reach",
        ),
        ("cargo", &format!("{me}/.cargo/bin"), "rw", "runs code from"),
        (
            "barehooks",
            &format!("{me}/store/foo.git/hooks"),
            "rw",
            "inside the git directory",
        ),
    ];
    for (name, path, mode, reason) in cases {
        let mounts = json!({ name: {"path": path, "mode": mode} });
        let out = sh(
            &d,
            "s",
            name,
            &format!("ls /sessions/s/mnt/{name} >/dev/null 2>&1 && echo MOUNTED"),
            json!({"additionalMounts": mounts}),
        );
        assert!(!out.stdout.contains("MOUNTED"), "{name}: {out:?}");
        assert!(
            out.stderr.contains(&format!("mount {name:?} refused")) && out.stderr.contains(reason),
            "{name}: the spawn's stderr says why: {out:?}"
        );
        assert!(d.log().contains("refused"), "{name}: logged");
    }
    // The client's own mounts keep working.
    d.home_dir("proj");
    let ok = sh(
        &d,
        "s",
        "legit",
        "ls -A /sessions/s/mnt",
        json!({"additionalMounts": {
            "proj": {"path": d.subpath("proj"), "mode": "rw"},
            ".claude": {"path": d.subpath(".claude"), "mode": "rw"},
            ".auto-memory": {"path": d.subpath(".auto-memory"), "mode": "rw"},
            "uploads": {"path": d.subpath("uploads"), "mode": "ro"},
            "outputs": {"path": d.subpath("outputs"), "mode": "rw"},
        }}),
    );
    assert_eq!(ok.exit_code, Some(0), "{ok:?}");
    for m in [".auto-memory", ".claude", "outputs", "proj", "uploads"] {
        assert!(ok.stdout.lines().any(|l| l == m), "{m}: {ok:?}");
    }
    assert_eq!(ok.stderr, "", "no refusals: {ok:?}");
}

/// `installSdk` names a folder that is bound into every sandbox: a client
/// tricked into naming `~/.config` (or another user's home) must not give
/// sandboxes the credentials in it.
#[test]
fn client_cannot_be_tricked_into_binding_credentials_as_the_sdk() {
    let d = start();
    d.home_file(".config/gh/hosts.yml", "oauth_token: gho_secret");
    d.home_file(".config/claude", "#!/bin/sh\necho fake sdk\n");
    let r = d.call(
        "installSdk",
        json!({"sdkSubpath": "", "version": ".config"}),
    );
    assert_eq!(r, json!({}), "answered as the reference does");
    // Every mount's source folder, as the sandbox's mount table has it.
    let out = sh(
        &d,
        "s",
        "look",
        "awk '{print $4}' /proc/self/mountinfo",
        json!({}),
    );
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(
        !out.stdout.lines().any(|root| root.ends_with("/.config")),
        "~/.config is bound into the sandbox: {out:?}"
    );
    assert!(d.log().contains("refused the SDK folder"), "{}", d.log());
}

/// A test about a root daemon: CI runs as root; elsewhere this says so
/// instead of passing without checking anything.
fn require_root() {
    assert!(
        super::harness::is_root(),
        "this test starts the daemon as root (CI runs the suite as root)"
    );
}

/// The checks of a sandbox whose daemon is root: what must hold whatever
/// the daemon's uid.
const ROOT_ATTACKS: &str = "grep CapEff /proc/self/status; \
    test -w /proc/sys/kernel/core_pattern && echo PROC-SYS-WRITABLE; \
    cat /etc/shadow 2>/dev/null | grep -q : && echo SHADOW-READABLE; \
    cat /proc/1/environ >/dev/null 2>&1 && echo PID1-READABLE; \
    python3 -c 'import ctypes,sys; l=ctypes.CDLL(None); sys.exit(0 if l.ptrace(16, 1, 0, 0) == 0 else 1)' \
      && echo PID1-PTRACEABLE; \
    echo written > proj-dir/from-root-sandbox && echo RW-WORKS; id -u";

/// [`ROOT_ATTACKS`] with the rw mount of `session`.
fn root_attacks(session: &str) -> String {
    ROOT_ATTACKS.replace("proj-dir", &format!("/sessions/{session}/mnt/proj"))
}

fn assert_root_attacks_fail(out: &Outcome) {
    assert!(out.stdout.contains("CapEff:\t0000000000000000"), "{out:?}");
    for escaped in [
        "PROC-SYS-WRITABLE",
        "SHADOW-READABLE",
        "PID1-READABLE",
        "PID1-PTRACEABLE",
    ] {
        assert!(!out.stdout.contains(escaped), "{escaped}: {out:?}");
    }
    assert!(out.stdout.contains("RW-WORKS"), "{out:?}");
}

#[test]
fn sandbox_of_a_root_daemon_gets_no_root_powers() {
    require_root();
    let d = Daemon::start("bwrap");
    d.home_dir("proj");
    let mounts = json!({"additionalMounts": {"proj": {"path": d.subpath("proj"), "mode": "rw"}}});
    let out = sh(&d, "s", "root", &root_attacks("s"), mounts);
    assert_root_attacks_fail(&out);
    assert!(
        out.stdout.ends_with("0\n"),
        "no invoking user: uid 0: {out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(d.home.join("proj/from-root-sandbox")).unwrap(),
        "written\n"
    );
    let info = d.call("getDaemonInfo", json!({}));
    assert!(
        info["warnings"].to_string().contains("runs as root"),
        "said in getDaemonInfo: {info}"
    );
    assert!(
        d.log().contains("the daemon runs as root"),
        "and in the log"
    );
}

#[test]
fn sudo_run_sandboxes_run_as_the_invoking_user() {
    require_root();
    let user = super::harness::test_user().expect("the cowork-test account (scripts/test.sh)");
    let root = tempfile::Builder::new()
        .prefix("cowork-sudo-")
        .tempdir_in("/tmp")
        .unwrap();
    let proj = root.path().join("proj");
    std::fs::create_dir(&proj).unwrap();
    std::os::unix::fs::chown(root.path(), Some(user.uid), Some(user.gid)).unwrap();
    std::os::unix::fs::chown(&proj, Some(user.uid), Some(user.gid)).unwrap();
    // What `sudo cowork-vm-service run ...` gets from sudo.
    let out = std::process::Command::new(super::harness::BIN)
        .args(["run", "--mount", &format!("{}:proj", proj.display()), "--"])
        .args(["sh", "-c", &root_attacks("cli")])
        .current_dir(&proj)
        .env_clear()
        .env("HOME", "/root")
        .env("PATH", "/usr/bin:/bin")
        .env("SUDO_UID", user.uid.to_string())
        .env("SUDO_GID", user.gid.to_string())
        .env("SUDO_USER", "cowork-test")
        .env("COWORK_VM_BACKEND", "bwrap")
        .output()
        .unwrap();
    let outcome = Outcome {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit_code: out.status.code().map(i64::from),
        ..Default::default()
    };
    assert_root_attacks_fail(&outcome);
    assert!(
        outcome.stdout.ends_with(&format!("{}\n", user.uid)),
        "runs as the invoking user: {outcome:?}"
    );
    assert!(
        outcome
            .stderr
            .contains("started by sudo: running as cowork-test"),
        "says so: {outcome:?}"
    );
    let written = proj.join("from-root-sandbox");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "written\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), user.uid);
}

#[test]
fn sandbox_cannot_make_the_next_mount_bind_a_folder_it_swapped_for_a_symlink() {
    let d = start();
    d.home_dir("proj/sub");
    d.home_file(".ssh/id_rsa", "PRIVATE KEY\n");
    d.home_file("proj/sub/readme.txt", "sub\n");
    let ssh = d.home.join(".ssh");
    let proj = json!({"proj": {"path": d.subpath("proj"), "mode": "rw"}});
    let out = sh(
        &d,
        "s",
        "swap",
        &format!(
            "cd /sessions/s/mnt/proj && rm -rf sub && ln -s {} sub && echo swapped",
            ssh.display()
        ),
        json!({"additionalMounts": proj}),
    );
    assert_eq!(out.stdout, "swapped\n", "{out:?}");
    // The client later mounts the subfolder (a new grant).
    let next = sh(
        &d,
        "s",
        "next",
        "cat /sessions/s/mnt/sub/id_rsa 2>/dev/null || echo not-there",
        json!({"additionalMounts": {"sub": {"path": d.subpath("proj/sub"), "mode": "ro"}}}),
    );
    assert!(!next.stdout.contains("PRIVATE KEY"), "{next:?}");
    assert!(
        next.stderr.contains("symlink"),
        "refused with the reason: {next:?}"
    );
    // readFile through the swapped folder, by guest and by host path.
    for path in [
        "/sessions/s/mnt/proj/sub/id_rsa".to_string(),
        format!("{}/proj/sub/id_rsa", d.home.display()),
    ] {
        let r = d.call("readFile", json!({"processName": "s", "filePath": path}));
        assert!(r.get("content").is_none(), "{path}: {r}");
    }
}

#[test]
fn client_read_file_never_leaves_the_sessions_mounts() {
    let d = start();
    d.home_dir("proj");
    d.home_file(".ssh/id_rsa", "PRIVATE KEY\n");
    d.home_file("proj/ok.txt", "ok\n");
    let mounts = json!({"additionalMounts": {"proj": {"path": d.subpath("proj"), "mode": "rw"}}});
    let out = sh(
        &d,
        "s",
        "plant",
        &format!(
            "ln -s {} /sessions/s/mnt/proj/innocent.txt && echo planted",
            d.home.join(".ssh/id_rsa").display()
        ),
        mounts,
    );
    assert_eq!(out.stdout, "planted\n", "{out:?}");
    let read = |path: String| d.call("readFile", json!({"processName": "s", "filePath": path}));
    let home = d.home.display();
    for path in [
        format!("{home}/.ssh/id_rsa"),
        format!("{home}/proj/innocent.txt"),
        "/sessions/s/mnt/proj/innocent.txt".to_string(),
    ] {
        let r = read(path.clone());
        assert!(r.get("content").is_none(), "{path}: {r}");
        assert!(r["error"].is_string(), "{path}: {r}");
    }
    let ok = read(format!("{home}/proj/ok.txt"));
    assert_eq!(
        ok["content"], "b2sK",
        "a host path inside a mount works: {ok}"
    );
}

/// Git with an identity and no global config of the user's.
const GIT: &str = "git -c user.name=t -c user.email=t@example.com -c init.defaultBranch=main";

#[test]
fn sandbox_cannot_plant_code_the_host_runs_in_the_project() {
    let d = start();
    let proj = d.home.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let git = |args: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{GIT} {args}"))
            .current_dir(&proj)
            .status()
            .unwrap();
        assert!(status.success(), "git {args}");
    };
    git("init -q .");
    std::fs::remove_dir_all(proj.join(".git/hooks")).unwrap();
    std::fs::create_dir_all(proj.join(".vscode")).unwrap();
    std::fs::write(proj.join(".vscode/tasks.json"), "{}").unwrap();
    std::fs::write(proj.join(".mcp.json"), "{}").unwrap();
    std::fs::write(proj.join(".envrc"), "").unwrap();
    // A submodule-style pointer file to a git dir kept in the main one.
    std::fs::create_dir_all(proj.join(".git/modules/lib")).unwrap();
    std::fs::write(proj.join(".git/modules/lib/config"), "[core]\n").unwrap();
    std::fs::create_dir_all(proj.join("lib")).unwrap();
    std::fs::write(proj.join("lib/.git"), "gitdir: ../.git/modules/lib\n").unwrap();
    d.home_dir("proj"); // gives the whole home to the daemon's user
    let config_before = std::fs::read_to_string(proj.join(".git/config")).unwrap();
    let mounts = json!({"additionalMounts": {"proj": {"path": d.subpath("proj"), "mode": "rw"}}});
    let attacks = format!(
        "cd /sessions/s/mnt/proj; \
         git config core.fsmonitor 'touch /tmp/pwned' 2>/dev/null && echo CONFIG-WRITTEN; \
         echo '[core] fsmonitor = x' >> .git/config 2>/dev/null && echo CONFIG-APPENDED; \
         echo x > .git/modules/lib/config 2>/dev/null && echo SUBMODULE-CONFIG-WRITTEN; \
         touch .git/hooks/post-checkout 2>/dev/null && echo HOOK-PLANTED; \
         mv .git .git-moved 2>/dev/null && echo GIT-DIR-MOVED; \
         rm -f .git/config 2>/dev/null; test -f .git/config || echo CONFIG-REMOVED; \
         rmdir .git/hooks 2>/dev/null && echo HOOKS-REMOVED; \
         echo '{{}}' > .mcp.json 2>/dev/null && echo MCP-WRITTEN; \
         echo x > .vscode/tasks.json 2>/dev/null && echo TASKS-WRITTEN; \
         echo 'curl evil' > .envrc 2>/dev/null && echo ENVRC-WRITTEN; \
         echo work > file.txt && {GIT} add file.txt && {GIT} commit -q -m one && echo COMMITTED; \
         {GIT} branch feature && echo BRANCHED; \
         mkdir fresh && cd fresh && {GIT} init -q . && echo hi > a && {GIT} add a && {GIT} commit -q -m a && echo NEW-REPO"
    );
    let out = sh(&d, "s", "plant", &attacks, mounts);
    for planted in [
        "CONFIG-WRITTEN",
        "CONFIG-APPENDED",
        "SUBMODULE-CONFIG-WRITTEN",
        "HOOK-PLANTED",
        "GIT-DIR-MOVED",
        "CONFIG-REMOVED",
        "HOOKS-REMOVED",
        "MCP-WRITTEN",
        "TASKS-WRITTEN",
        "ENVRC-WRITTEN",
    ] {
        assert!(!out.stdout.contains(planted), "{planted}: {out:?}");
    }
    for works in ["COMMITTED", "BRANCHED", "NEW-REPO"] {
        assert!(out.stdout.contains(works), "{works}: {out:?}");
    }
    assert_eq!(
        std::fs::read_to_string(proj.join(".git/config")).unwrap(),
        config_before
    );
    assert!(
        proj.join(".git/hooks").is_dir(),
        "the missing hooks/ was made"
    );
    assert_eq!(
        std::fs::read_dir(proj.join(".git/hooks")).unwrap().count(),
        0,
        "and stays empty"
    );
    assert!(!proj.join(".gitconfig").exists(), "no placeholder files");
}

/// Git takes its config and hooks from wherever a `.git` pointer file or a
/// worktree's `commondir` sends it: rewritten from inside, they would make
/// the user's next `git status` on the host run a command of the sandbox's
/// (red-team findings of 2026-12-01). Also repositories in hidden and build
/// folders, and the other project files tools run.
#[test]
fn sandbox_cannot_redirect_git_to_a_config_it_wrote() {
    let d = start();
    let proj = d.home.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let git = |dir: &std::path::Path, args: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{GIT} {args}"))
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success(), "git {args}");
    };
    git(
        &proj,
        "init -q . && echo a > a && git add a && git -c user.name=t -c user.email=t@e commit -q -m a",
    );
    git(&proj, "worktree add -q ../wt");
    for sub in ["build", ".tools"] {
        std::fs::create_dir_all(proj.join(sub)).unwrap();
        git(&proj.join(sub), "init -q .");
    }
    std::fs::create_dir_all(proj.join(".git/modules/lib")).unwrap();
    std::fs::write(proj.join(".git/modules/lib/config"), "[core]\n").unwrap();
    std::fs::create_dir_all(proj.join("lib")).unwrap();
    std::fs::write(proj.join("lib/.git"), "gitdir: ../.git/modules/lib\n").unwrap();
    for (file, content) in [
        (".claude/settings.json", "{}"),
        (".devcontainer/devcontainer.json", "{}"),
        (".pre-commit-config.yaml", "repos: []"),
        (".mise.toml", ""),
    ] {
        let path = proj.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    git(&d.home, "init -q --bare bare.git");
    // A submodule whose path has a slash keeps its git directory at
    // .git/modules/libs/foo; a bare repository and hooks/includes that the
    // (read-only) config names.
    std::fs::create_dir_all(proj.join(".git/modules/libs")).unwrap();
    std::fs::create_dir_all(proj.join("libs/foo")).unwrap();
    git(
        &proj,
        "init -q --separate-git-dir=.git/modules/libs/foo libs/foo",
    );
    git(&proj, "init -q --bare store.git");
    git(
        &proj,
        "config core.hooksPath .husky/_ && git config include.path config.local",
    );
    std::fs::create_dir_all(proj.join(".husky/_")).unwrap();
    std::fs::write(proj.join(".git/config.local"), "").unwrap();
    d.home_dir("proj");
    d.home_dir("wt");
    let mounts = json!({"additionalMounts": {
        "proj": {"path": d.subpath("proj"), "mode": "rw"},
        "wt": {"path": d.subpath("wt"), "mode": "rw"},
        "bare": {"path": d.subpath("bare.git"), "mode": "rw"},
    }});
    let attacks = "cd /sessions/s/mnt/proj; \
        echo 'gitdir: ../.git/modules/evil' > lib/.git 2>/dev/null && echo SUBMODULE-POINTER; \
        echo '[core]' >> build/.git/config 2>/dev/null && echo BUILD-REPO-CONFIG; \
        touch .tools/.git/hooks/post-checkout 2>/dev/null && echo HIDDEN-REPO-HOOK; \
        echo /tmp/evil > .git/worktrees/wt/commondir 2>/dev/null && echo COMMONDIR; \
        echo x > .git/worktrees/wt/gitdir 2>/dev/null && echo WORKTREE-GITDIR; \
        echo x > .claude/settings.json 2>/dev/null && echo CLAUDE-SETTINGS; \
        echo x > .devcontainer/devcontainer.json 2>/dev/null && echo DEVCONTAINER; \
        echo x > .pre-commit-config.yaml 2>/dev/null && echo PRE-COMMIT; \
        echo x > .mise.toml 2>/dev/null && echo MISE; \
        echo '[core]' >> .git/modules/libs/foo/config 2>/dev/null && echo SLASH-SUBMODULE-CONFIG; \
        echo 'gitdir: /tmp/x' > libs/foo/.git 2>/dev/null && echo SLASH-SUBMODULE-POINTER; \
        echo '[core]' >> store.git/config 2>/dev/null && echo BARE-SUBFOLDER-CONFIG; \
        touch store.git/hooks/post-receive 2>/dev/null && echo BARE-SUBFOLDER-HOOK; \
        touch .husky/_/pre-commit 2>/dev/null && echo HOOKS-PATH; \
        echo '[core]' >> .git/config.local 2>/dev/null && echo INCLUDED-CONFIG; \
        cd /sessions/s/mnt/wt; \
        echo 'gitdir: .y' > .git 2>/dev/null && echo WORKTREE-POINTER; \
        cd /sessions/s/mnt/bare; \
        echo '[core]' >> config 2>/dev/null && echo BARE-CONFIG; \
        touch hooks/post-receive 2>/dev/null && echo BARE-HOOK; \
        echo done";
    let out = sh(&d, "s", "redirect", attacks, mounts);
    assert!(out.stdout.contains("done"), "{out:?}");
    for planted in [
        "SUBMODULE-POINTER",
        "BUILD-REPO-CONFIG",
        "HIDDEN-REPO-HOOK",
        "COMMONDIR",
        "WORKTREE-GITDIR",
        "CLAUDE-SETTINGS",
        "DEVCONTAINER",
        "PRE-COMMIT",
        "MISE",
        "WORKTREE-POINTER",
        "BARE-CONFIG",
        "BARE-HOOK",
        "SLASH-SUBMODULE-CONFIG",
        "SLASH-SUBMODULE-POINTER",
        "BARE-SUBFOLDER-CONFIG",
        "BARE-SUBFOLDER-HOOK",
        "HOOKS-PATH",
        "INCLUDED-CONFIG",
    ] {
        assert!(!out.stdout.contains(planted), "{planted}: {out:?}");
    }
    assert_eq!(
        std::fs::read_to_string(proj.join("lib/.git")).unwrap(),
        "gitdir: ../.git/modules/lib\n"
    );
}

/// A sandbox can make folders in its project's git directory; the search
/// for what to protect is bounded, and used to stop quietly at the bound:
/// padded by one sandbox, the next one got the rest unprotected. Past the
/// bound the mount is now refused read-write, saying why.
#[test]
fn sandbox_cannot_pad_a_project_until_protection_stops() {
    let d = start();
    let proj = d.home.join("proj");
    std::fs::create_dir_all(proj.join(".git/hooks")).unwrap();
    std::fs::write(proj.join(".git/config"), "[core]\n").unwrap();
    for i in 0..600 {
        std::fs::create_dir_all(proj.join(format!(".git/worktrees/w{i}"))).unwrap();
    }
    std::fs::create_dir_all(proj.join("app/.git")).unwrap();
    std::fs::write(proj.join("app/.git/config"), "[core]\n").unwrap();
    d.home_dir("proj");
    let rw = json!({"additionalMounts": {"proj": {"path": d.subpath("proj"), "mode": "rw"}}});
    let out = sh(
        &d,
        "s",
        "padded",
        "echo '[core]' >> /sessions/s/mnt/proj/app/.git/config && echo WRITTEN",
        rw,
    );
    assert!(!out.stdout.contains("WRITTEN"), "{out:?}");
    assert!(
        out.stderr.contains("cannot all be kept read-only"),
        "says why: {out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(proj.join("app/.git/config")).unwrap(),
        "[core]\n"
    );
    let ro = json!({"additionalMounts": {"proj": {"path": d.subpath("proj"), "mode": "ro"}}});
    let out = sh(
        &d,
        "s2",
        "readonly",
        "cat /sessions/s2/mnt/proj/app/.git/config",
        ro,
    );
    assert_eq!(out.exit_code, Some(0), "read-only still works: {out:?}");
}

/// The SDK folder checked at `installSdk` and again at every spawn: swapped
/// for a symlink afterwards (to a folder holding credentials), it is not
/// bound into the next sandbox.
#[test]
fn sandbox_cannot_swap_the_sdk_folder_for_a_symlink() {
    let d = start();
    let store = ".config/Claude/claude-code-vm";
    d.home_file(&format!("{store}/2.1.0/claude"), "#!/bin/sh\necho sdk\n");
    d.home_file(".local/share/keyrings/login.keyring", "KEYRING-SECRET");
    d.home_file(".local/share/claude", "");
    d.home_dir(".local/share");
    let sdk = d.home.join(store).join("2.1.0/claude");
    std::fs::set_permissions(&sdk, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = d.call(
        "installSdk",
        json!({"sdkSubpath": d.subpath(store), "version": "2.1.0"}),
    );
    assert_eq!(r, json!({}));
    let mounted = |id: &str| {
        let out = sh(
            &d,
            id,
            id,
            "awk '{print $4}' /proc/self/mountinfo",
            json!({}),
        );
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        out.stdout
    };
    assert!(
        mounted("before").lines().any(|r| r.ends_with("/2.1.0")),
        "the SDK is bound"
    );
    let version = d.home.join(store).join("2.1.0");
    std::fs::rename(&version, d.home.join(store).join("kept")).unwrap();
    std::os::unix::fs::symlink(d.home.join(".local/share"), &version).unwrap();
    let after = mounted("after");
    assert!(
        !after.lines().any(|r| r.ends_with("/.local/share")),
        "{after}"
    );
    assert!(d.log().contains("the SDK folder is refused"), "{}", d.log());
}

#[test]
fn a_user_can_opt_a_protected_path_out() {
    let d = Daemon::start_with(Options {
        backend: Some("bwrap"),
        user: require_unprivileged_user(),
        files: vec![(
            ".config/Claude/claude_desktop_linux_config.json".into(),
            r#"{"preferences": {"coworkBwrapMounts": {"writableProtectedPaths": [".vscode"]}}}"#
                .into(),
        )],
        ..Default::default()
    });
    d.home_file("proj/.vscode/tasks.json", "{}");
    d.home_file("proj/.mcp.json", "{}");
    let mounts = json!({"additionalMounts": {"proj": {"path": d.subpath("proj"), "mode": "rw"}}});
    let out = sh(
        &d,
        "s",
        "optout",
        "cd /sessions/s/mnt/proj; echo t > .vscode/tasks.json && echo TASKS-WRITTEN; \
         echo m > .mcp.json 2>/dev/null && echo MCP-WRITTEN",
        mounts,
    );
    assert!(out.stdout.contains("TASKS-WRITTEN"), "opted out: {out:?}");
    assert!(
        !out.stdout.contains("MCP-WRITTEN"),
        "still protected: {out:?}"
    );
}
