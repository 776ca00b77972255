//! Black-box probe of a sandbox's confinement: calls every syscall the
//! seccomp list refuses, raw (`libc::syscall`), and prints one line each,
//! `NAME ERRNO` (`0` when the call succeeded), then `ptrace-child ok|fail`,
//! `spawn ok|fail`, and the `Seccomp`, `Seccomp_filters`, `NoNewPrivs` and
//! `CapEff` lines of `/proc/self/status`.
//!
//! ```text
//! cargo build --example syscall_probe          # built by `cargo test` too
//! target/debug/examples/syscall_probe          # run it inside a sandbox
//! syscall_probe --confine-self                 # confine itself first, as the agent does
//! syscall_probe --confine-self --exec sh -c '…' # confine, then exec a command instead of probing
//! ```
//!
//! Inside a session sandbox every line reads `EPERM`, except `clone3` and
//! `x32-getpid` (`ENOSYS`) and `personality-query` (`0`).
//!
//! It runs as an unprivileged user, so every call passes arguments that
//! make the kernel fail early and harmlessly (a bad descriptor, a NULL or
//! invalid pointer, an invalid flag) when the filter does NOT stop it: the
//! answer is then EBADF, EFAULT, EINVAL, E2BIG... and never a change to the
//! system. A few syscalls check a capability before anything else, so the
//! kernel itself answers EPERM to an unprivileged caller and their line
//! cannot tell the filter from the kernel; they are marked "kernel EPERM
//! first" below. Compare with a run outside the sandbox (same user) to see
//! which lines the filter changed.
//!
//! `--confine-self` applies a `ConfinePlan` with the agent's own code
//! (`src/agent/confine.rs`, compiled into this example): the plan from
//! `$COWORK_CONFINE_PLAN` when set, else one built from this host's layout
//! with `$HOME` and `/tmp` writable. It then prints `confine <summary>`
//! and the measured costs as `time <what>-us N` lines.

use std::io;
use std::process::ExitCode;
use std::time::Instant;

use cowork_policy::bwrap_argv::host_layout;
use cowork_policy::bwrap_config::BwrapMountsConfig;
use cowork_policy::confine::landlock::LandlockInputs;
use cowork_policy::confine::seccomp::{SeccompArch, compile_sandbox_filters};
use cowork_policy::confine::{CONFINE_PLAN_ENV, ConfinePlan};
use cowork_policy::mounts::MountMap;
use cowork_vm_service::real_fs::RealFs;

#[path = "../src/agent/confine.rs"]
mod confine;

const CLONE_NEWUSER: i64 = 0x1000_0000;
const CLONE_FS: i64 = 0x200;
const HIGH_BIT: i64 = 1 << 32;
const TIOCSTI: i64 = 0x5412;
const TIOCLINUX: i64 = 0x541c;
const TIOCSETD: i64 = 0x5423;
const AF_VSOCK: i64 = 40;
const SOCK_STREAM: i64 = 1;
const READ_IMPLIES_EXEC: i64 = 0x0040_0000;
const MMAP_PAGE_ZERO: i64 = 0x0010_0000;

/// One call: the line's name, the syscall's name, its arguments.
/// Pointers are 0 (NULL) or 1 (invalid), descriptors -1.
struct Probe {
    line: &'static str,
    syscall: &'static str,
    args: [i64; 6],
}

const fn p(line: &'static str, syscall: &'static str, args: [i64; 6]) -> Probe {
    Probe {
        line,
        syscall,
        args,
    }
}

/// Why each answer is harmless when the filter lets the call through:
const PROBES: &[Probe] = &[
    // entries = 0, params = NULL: EFAULT/EINVAL.
    p("io_uring_setup", "io_uring_setup", [0, 0, 0, 0, 0, 0]),
    // fd -1: EBADF.
    p("io_uring_enter", "io_uring_enter", [-1, 0, 0, 0, 0, 0]),
    // fd -1: EBADF.
    p(
        "io_uring_register",
        "io_uring_register",
        [-1, 0, 0, 0, 0, 0],
    ),
    // size 64 KiB > PAGE_SIZE: E2BIG, checked before any command.
    p("bpf", "bpf", [0, 0, 0x10000, 0, 0, 0]),
    // flags ~0: EINVAL before the attribute is read.
    p(
        "perf_event_open",
        "perf_event_open",
        [0, 0, -1, -1, 0xffff_ffff, 0],
    ),
    // UFFD_USER_MODE_ONLY | an unknown flag: EINVAL.
    p("userfaultfd", "userfaultfd", [3, 0, 0, 0, 0, 0]),
    // kernel EPERM first (CAP_SYS_BOOT); NULL segments otherwise.
    p("kexec_load", "kexec_load", [0, 0, 0, 0xffff_ffff, 0, 0]),
    // kernel EPERM first (CAP_SYS_BOOT); bad fds and flags otherwise.
    p(
        "kexec_file_load",
        "kexec_file_load",
        [-1, -1, 0, 0, 0xffff_ffff, 0],
    ),
    // kernel EPERM first (CAP_SYS_MODULE); NULL image otherwise.
    p("init_module", "init_module", [0, 0, 0, 0, 0, 0]),
    // kernel EPERM first (CAP_SYS_MODULE); fd -1 otherwise.
    p(
        "finit_module",
        "finit_module",
        [-1, 0, 0xffff_ffff, 0, 0, 0],
    ),
    // kernel EPERM first (CAP_SYS_MODULE); NULL name otherwise.
    p("delete_module", "delete_module", [0, 0, 0, 0, 0, 0]),
    // operation 9999 does not exist: EOPNOTSUPP.
    p("keyctl", "keyctl", [9999, 0, 0, 0, 0, 0]),
    // NULL type: EFAULT.
    p("add_key", "add_key", [0, 0, 0, 0, -1, 0]),
    // NULL type: EFAULT.
    p("request_key", "request_key", [0, 0, 0, 0, 0, 0]),
    // target pointer 1: EFAULT in the path lookup.
    p("mount", "mount", [0, 1, 0, 0, 0, 0]),
    // unknown flag 0x80000000: EINVAL.
    p("umount2", "umount2", [1, 0x8000_0000, 0, 0, 0, 0]),
    // kernel EPERM first (may_mount); bad pointers otherwise.
    p("pivot_root", "pivot_root", [1, 1, 0, 0, 0, 0]),
    // bad fds, NULL paths, unknown flags: EINVAL or kernel EPERM.
    p("move_mount", "move_mount", [-1, 0, -1, 0, 0xffff_ffff, 0]),
    // unknown flag: EINVAL.
    p("open_tree", "open_tree", [-1, 0, 0x8000_0000, 0, 0, 0]),
    // unknown flag: EINVAL (ENOSYS before 6.15).
    p(
        "open_tree_attr",
        "open_tree_attr",
        [-1, 0, 0x8000_0000, 0, 0, 0],
    ),
    // kernel EPERM first (CAP_SYS_ADMIN); NULL name otherwise.
    p("fsopen", "fsopen", [0, 0xffff_ffff, 0, 0, 0, 0]),
    // fd -1: EINVAL.
    p("fsconfig", "fsconfig", [-1, 0xffff, 0, 0, 0, 0]),
    // kernel EPERM first (may_mount); fd -1 otherwise.
    p("fsmount", "fsmount", [-1, 0xffff_ffff, 0, 0, 0, 0]),
    // kernel EPERM first (may_mount); fd -1 otherwise.
    p("fspick", "fspick", [-1, 0, 0xffff_ffff, 0, 0, 0]),
    // unknown flag: EINVAL.
    p(
        "mount_setattr",
        "mount_setattr",
        [-1, 0, 0x8000_0000, 0, 0, 0],
    ),
    // CLONE_NEWUSER with CSIGNAL bits, which unshare refuses: EINVAL.
    p("unshare", "unshare", [CLONE_NEWUSER | 1, 0, 0, 0, 0, 0]),
    // The same with a bit above 32 set (the filter compares 32 bits).
    p(
        "unshare-hi",
        "unshare",
        [HIGH_BIT | CLONE_NEWUSER | 1, 0, 0, 0, 0, 0],
    ),
    // CLONE_NEWUSER | CLONE_FS is refused by copy_process: EINVAL, no child.
    p("clone", "clone", [CLONE_NEWUSER | CLONE_FS, 0, 0, 0, 0, 0]),
    // The same with a bit above 32 set (the kernel ignores those).
    p(
        "clone-hi",
        "clone",
        [HIGH_BIT | CLONE_NEWUSER | CLONE_FS, 0, 0, 0, 0, 0],
    ),
    // NULL args of size 0: EINVAL; the filter answers ENOSYS.
    p("clone3", "clone3", [0, 0, 0, 0, 0, 0]),
    // fd -1: EBADF.
    p("setns", "setns", [-1, 0, 0, 0, 0, 0]),
    // EAFNOSUPPORT without vsock, else a socket that is closed at once.
    p(
        "socket-vsock",
        "socket",
        [AF_VSOCK, SOCK_STREAM, 0, 0, 0, 0],
    ),
    // The domain with a bit above 32 set (the kernel takes an int).
    p(
        "socket-vsock-hi",
        "socket",
        [HIGH_BIT | AF_VSOCK, SOCK_STREAM, 0, 0, 0, 0],
    ),
    // fd -1: EBADF.
    p("ioctl-tiocsti", "ioctl", [-1, TIOCSTI, 0, 0, 0, 0]),
    // The request with a bit above 32 set (the kernel takes 32 bits).
    p(
        "ioctl-tiocsti-hi",
        "ioctl",
        [-1, HIGH_BIT | TIOCSTI, 0, 0, 0, 0],
    ),
    // fd -1: EBADF.
    p("ioctl-tioclinux", "ioctl", [-1, TIOCLINUX, 0, 0, 0, 0]),
    // fd -1: EBADF.
    p("ioctl-tiocsetd", "ioctl", [-1, TIOCSETD, 0, 0, 0, 0]),
    // fd -1: EBADF (or kernel EPERM, CAP_DAC_READ_SEARCH, on older kernels).
    p(
        "open_by_handle_at",
        "open_by_handle_at",
        [-1, 0, 0, 0, 0, 0],
    ),
    // unknown flag: EINVAL.
    p(
        "name_to_handle_at",
        "name_to_handle_at",
        [-1, 0, 0, 0, 0x8000_0000, 0],
    ),
    // kernel EPERM first (CAP_SYS_PACCT); NULL turns accounting off otherwise.
    p("acct", "acct", [0, 0, 0, 0, 0, 0]),
    // unknown flags: EINVAL before the capability check.
    p("swapon", "swapon", [0, 0xffff_ffff, 0, 0, 0, 0]),
    // kernel EPERM first (CAP_SYS_ADMIN); NULL path otherwise.
    p("swapoff", "swapoff", [0, 0, 0, 0, 0, 0]),
    // kernel EPERM first (CAP_SYS_BOOT); bad magic numbers otherwise.
    p("reboot", "reboot", [0, 0, 0, 0, 0, 0]),
    // SYSLOG_ACTION_SIZE_BUFFER: reads a size, or kernel EPERM with dmesg_restrict.
    p("syslog", "syslog", [10, 0, 0, 0, 0, 0]),
    // quota type 255 does not exist: EINVAL.
    p("quotactl", "quotactl", [0xff, 0, 0, 0, 0, 0]),
    // fd -1 / type 255: EBADF or EINVAL.
    p("quotactl_fd", "quotactl_fd", [-1, 0xff, 0, 0, 0, 0]),
    // gone since 5.12: ENOSYS.
    p("lookup_dcookie", "lookup_dcookie", [0, 0, 0, 0, 0, 0]),
    // the read-only query, which must stay allowed: 0.
    p(
        "personality-query",
        "personality",
        [0xffff_ffff, 0, 0, 0, 0, 0],
    ),
    // timeval pointer 1: EFAULT.
    p("settimeofday", "settimeofday", [1, 0, 0, 0, 0, 0]),
    // clock 9999 does not exist: EINVAL.
    p("clock_settime", "clock_settime", [9999, 0, 0, 0, 0, 0]),
    // level 4 > 3: EINVAL (x86_64 only).
    p("iopl", "iopl", [4, 0, 0, 0, 0, 0]),
    // port range past 65536: EINVAL (x86_64 only).
    p("ioperm", "ioperm", [0x10000, 1, 1, 0, 0, 0]),
    // NULL path: EFAULT, or ENOSYS where removed (x86_64 only).
    p("uselib", "uselib", [0, 0, 0, 0, 0, 0]),
    // removed in 5.5: ENOSYS (x86_64 only).
    p("_sysctl", "_sysctl", [0, 0, 0, 0, 0, 0]),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch = match SeccompArch::native() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("syscall_probe: {e}");
            return ExitCode::from(2);
        }
    };
    if args.iter().any(|a| a == "--confine-self")
        && let Err(e) = confine_self(arch)
    {
        eprintln!("syscall_probe: {e}");
        return ExitCode::from(2);
    }
    if let Some(at) = args.iter().position(|a| a == "--exec") {
        let Some((program, rest)) = args[at + 1..].split_first() else {
            eprintln!("syscall_probe: --exec needs a command");
            return ExitCode::from(2);
        };
        let e = std::os::unix::process::CommandExt::exec(
            std::process::Command::new(program).args(rest),
        );
        eprintln!("syscall_probe: {program}: {e}");
        return ExitCode::from(127);
    }
    for probe in PROBES {
        let Some(nr) = arch.syscall_number(probe.syscall) else {
            println!("{} absent", probe.line);
            continue;
        };
        let result = call(nr, probe.args);
        if let (Ok(fd), "socket") = (result, probe.syscall) {
            // SAFETY: the descriptor was just created by this call.
            unsafe { libc::close(fd as i32) };
        }
        println!("{} {}", probe.line, outcome(result));
    }
    personality_flag("personality-read-implies-exec", arch, READ_IMPLIES_EXEC);
    personality_flag("personality-mmap-page-zero", arch, MMAP_PAGE_ZERO);
    if arch == SeccompArch::X86_64 {
        // getpid through the x32 ABI: ENOSYS on kernels without x32 and
        // from our filter; a pid only if both are missing.
        let x32_getpid = 0x4000_0000 | 39;
        println!("x32-getpid {}", outcome(call(x32_getpid, [0; 6])));
    }
    println!("ptrace-child {}", ptrace_child());
    let spawned = std::process::Command::new("/usr/bin/true")
        .status()
        .is_ok_and(|s| s.success());
    println!("spawn {}", if spawned { "ok" } else { "fail" });
    print_status_lines();
    ExitCode::SUCCESS
}

/// Applies a plan with the agent's code and prints what it cost.
fn confine_self(arch: SeccompArch) -> Result<(), String> {
    let plan = match std::env::var(CONFINE_PLAN_ENV) {
        Ok(json) => {
            ConfinePlan::from_json(&json).map_err(|e| format!("{CONFINE_PLAN_ENV}: {e}"))?
        }
        Err(_) => host_plan(),
    };
    let start = Instant::now();
    compile_sandbox_filters(arch).map_err(|e| e.to_string())?;
    let compile_json_us = start.elapsed().as_micros();
    let start = Instant::now();
    let report = confine::apply(&plan).map_err(|e| e.to_string())?;
    let total_us = start.elapsed().as_micros();
    println!("confine {}", report.summary());
    println!("time landlock-us {}", report.landlock.micros);
    println!("time seccomp-us {}", report.seccomp.micros);
    println!("time apply-total-us {total_us}");
    println!("time seccomp-compile-from-json-us {compile_json_us}");
    Ok(())
}

/// A plan for running the probe outside a session: this host's system
/// directories, `$HOME` and `/tmp` writable.
fn host_plan() -> ConfinePlan {
    let layout = host_layout(&RealFs);
    let home = std::env::var("HOME").unwrap_or_else(|_| "/nonexistent".into());
    let mounts = MountMap::new();
    let config = BwrapMountsConfig::default();
    ConfinePlan::for_sandbox(&LandlockInputs {
        layout: &layout,
        home: std::path::Path::new(&home),
        sdk_dir: None,
        session: "probe",
        mounts: &mounts,
        config: &config,
    })
}

/// A raw syscall: its return value, or the errno.
fn call(nr: i64, a: [i64; 6]) -> Result<i64, i32> {
    // SAFETY: every probe passes only integers, NULL or the invalid
    // address 1 as pointers, and descriptors that are not open: the kernel
    // validates all of them and touches none of our memory.
    let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if ret == -1 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret)
    }
}

fn outcome(result: Result<i64, i32>) -> String {
    match result {
        Ok(_) => "0".into(),
        Err(e) => errno_name(e),
    }
}

/// Sets a personality flag and, if that worked, restores the old value.
fn personality_flag(line: &str, arch: SeccompArch, flag: i64) {
    let Some(nr) = arch.syscall_number("personality") else {
        println!("{line} absent");
        return;
    };
    let Ok(current) = call(nr, [0xffff_ffff, 0, 0, 0, 0, 0]) else {
        println!("{line} query-failed");
        return;
    };
    let set = call(nr, [current | flag, 0, 0, 0, 0, 0]);
    if set.is_ok() {
        let _ = call(nr, [current, 0, 0, 0, 0, 0]);
    }
    println!("{line} {}", outcome(set));
}

/// Attaches to a child with PTRACE_ATTACH, as a debugger does.
fn ptrace_child() -> &'static str {
    // SAFETY: the probe is single-threaded; the child only sleeps until it
    // is killed, calling nothing but async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return "fail";
    }
    if pid == 0 {
        loop {
            // SAFETY: pause() has no arguments.
            unsafe { libc::pause() };
        }
    }
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace on our own child with no data pointers.
    let attached = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, null, null) } == 0;
    let mut status = 0;
    let stopped = attached && {
        // SAFETY: waits for our own child; `status` is a valid int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        r == pid && libc::WIFSTOPPED(status)
    };
    // SAFETY: signals and reaps our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, libc::__WALL);
    }
    if stopped { "ok" } else { "fail" }
}

fn print_status_lines() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        let key = line.split(':').next().unwrap_or("");
        if ["Seccomp", "Seccomp_filters", "NoNewPrivs", "CapEff"].contains(&key) {
            println!("{line}");
        }
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EUSERS => "EUSERS",
        libc::ENOKEY => "ENOKEY",
        libc::ENXIO => "ENXIO",
        other => return format!("E{other}"),
    };
    name.to_string()
}
