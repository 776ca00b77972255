//! The agent as init of the `kvm` backend's microVM (`/init` of its
//! initramfs, pid 1).
//!
//! It does what bubblewrap does for a sandbox's agent, then serves:
//!
//! 1. mounts `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/shm` and `/run`;
//! 2. loads the virtio modules the initramfs carries (`/cowork/modules`,
//!    in the order of `/cowork/modules/order`: the daemon resolved their
//!    dependencies), with `finit_module`;
//! 3. opens the `cowork.agent` port (found by name in sysfs) and reads the
//!    daemon's first frame, the [`GuestSetup`]: the virtiofs shares (the
//!    host's `/usr` and `/etc` read-only, the session's `/tmp`, each
//!    session mount) and the unprivileged user;
//! 4. mounts the shares (`nosuid,nodev`; read-only ones also `ro`, besides
//!    their virtiofsd's `--readonly`), brings `lo` up;
//! 5. forks the agent proper, which drops to the unprivileged user (no
//!    capabilities, `no_new_privs`, the confinement plan) and serves the
//!    channel as a sandbox's agent does (`super::serve_guest`); a second
//!    child carries proxy connections over `cowork.net`;
//! 6. reaps whatever is re-parented to pid 1 and, when the agent ends (its
//!    channel closed: `stopVM`, a new generation, or the daemon's death),
//!    powers the guest off (returning would panic the kernel).
//!
//! Everything before the fork is synchronous and single-threaded. Errors
//! are printed on the console (the daemon keeps its log) and power the
//! guest off.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cowork_policy::qemu_argv::{AGENT_PORT, NET_PORT};
use cowork_protocol::agent::{GuestSetup, ToAgent, method};

use super::port::{PORTS_DIR, find_port};

/// Where the initramfs keeps the modules.
const MODULES_DIR: &str = "/cowork/modules";
/// How long the ports may take to appear.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// Whether this process is the VM's init: pid 1 started as `/init`.
pub fn is_guest_init(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0.is_some_and(|a| a == "/init") && rustix::process::getpid().is_init()
}

/// Entry point of pid 1. Never returns to the caller's exit path unless
/// powering off failed.
pub fn main() -> ExitCode {
    let started = Instant::now();
    let outcome = boot();
    match outcome {
        Ok(agent) => {
            eprintln!(
                "cowork-vm-service init: agent serving ({} ms after init)",
                started.elapsed().as_millis()
            );
            reap_until(agent);
        }
        Err(e) => eprintln!("cowork-vm-service init: {e}"),
    }
    power_off()
}

/// Set-up up to the fork of the agent; returns the agent's pid.
fn boot() -> Result<rustix::process::Pid, String> {
    mount_kernel_filesystems()?;
    load_modules()?;
    let agent_port = open_port(AGENT_PORT)?;
    let setup = read_setup(&agent_port)?;
    mount_shares(&setup)?;
    if let Err(e) = loopback_up() {
        eprintln!("cowork-vm-service init: lo: {e}");
    }
    if !setup.hostname.is_empty() {
        let _ = rustix::system::sethostname(setup.hostname.as_bytes());
    }
    let net_port = find_port(Path::new(PORTS_DIR), NET_PORT).and_then(|dev| open_device(&dev).ok());
    // SAFETY: pid 1 is single-threaded here (no runtime, no threads were
    // started), so the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(format!("fork: {}", io::Error::last_os_error())),
        0 => {
            let code = super::serve_guest(agent_port, net_port, &setup);
            // Never return into pid 1's code.
            std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
        }
        child => {
            drop(agent_port);
            drop(net_port);
            rustix::process::Pid::from_raw(child).ok_or_else(|| "fork gave no pid".to_string())
        }
    }
}

fn c_string(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// `mount(2)`; `data` may be empty.
fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    let (src, tgt, fs) = (c_string(source)?, c_string(target)?, c_string(fstype)?);
    // SAFETY: the strings are NUL-terminated and live across the call; a
    // NULL data pointer means no options.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "mount {fstype} {source} on {target}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn mount_kernel_filesystems() -> Result<(), String> {
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", hardened)?;
    mount("sysfs", "/sys", "sysfs", hardened)?;
    mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
    )?;
    mount(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
    )?;
    mount("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV)?;
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
    )?;
    Ok(())
}

/// Loads the modules in `/cowork/modules/order` (already-loaded or
/// built-in ones are fine).
fn load_modules() -> Result<(), String> {
    let order = std::fs::read_to_string(Path::new(MODULES_DIR).join("order"))
        .map_err(|e| format!("{MODULES_DIR}/order: {e}"))?;
    let params = c_string("")?;
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(MODULES_DIR).join(format!("{name}.ko"));
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: finit_module reads the open module file; the parameter
        // string is NUL-terminated and outlives the call.
        let r =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("loading module {name}: {e}"));
            }
        }
    }
    Ok(())
}

fn open_device(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )?;
    Ok(fd)
}

/// Waits for the port named `name` and opens it.
fn open_port(name: &str) -> Result<OwnedFd, String> {
    let start = Instant::now();
    loop {
        if let Some(dev) = find_port(Path::new(PORTS_DIR), name) {
            // The device node can lag the sysfs entry by a moment.
            match open_device(&dev) {
                Ok(fd) => return Ok(fd),
                Err(e) if start.elapsed() > PORT_WAIT => {
                    return Err(format!("opening {}: {e}", dev.display()));
                }
                Err(_) => {}
            }
        } else if start.elapsed() > PORT_WAIT {
            return Err(format!("no virtio-serial port named {name}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads the daemon's first frame (blocking), which must be the set-up.
fn read_setup(port: &OwnedFd) -> Result<GuestSetup, String> {
    let mut file = File::from(port.try_clone().map_err(|e| format!("port: {e}"))?);
    let mut header = [0u8; 4];
    file.read_exact(&mut header)
        .map_err(|e| format!("reading the set-up frame: {e}"))?;
    let len = u32::from_be_bytes(header) as usize;
    if len > cowork_protocol::frame::MAX_FRAME_LEN {
        return Err(format!("set-up frame of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    file.read_exact(&mut body)
        .map_err(|e| format!("reading the set-up frame: {e}"))?;
    match serde_json::from_slice::<ToAgent>(&body) {
        Ok(ToAgent::Notification {
            method: name,
            params,
        }) if name == method::GUEST_SETUP => {
            serde_json::from_value(params).map_err(|e| format!("set-up frame: {e}"))
        }
        Ok(_) => Err("the first frame is not the guest set-up".into()),
        Err(e) => Err(format!("set-up frame: {e}")),
    }
}

fn mount_shares(setup: &GuestSetup) -> Result<(), String> {
    for dir in &setup.dirs {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    }
    for share in &setup.shares {
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if share.read_only {
            flags |= libc::MS_RDONLY;
        }
        mount(&share.tag, &share.path, "virtiofs", flags)?;
        for p in &share.protect {
            protect_in_place(&share.path, p)?;
        }
    }
    // An empty home of the user's, as bwrap gives (a tmpfs directory).
    if !setup.home.is_empty() && !Path::new(&setup.home).exists() {
        std::fs::create_dir_all(&setup.home).map_err(|e| format!("mkdir {}: {e}", setup.home))?;
        rustix::fs::chown(
            setup.home.as_str(),
            Some(rustix::process::Uid::from_raw(setup.uid)),
            Some(rustix::process::Gid::from_raw(setup.gid)),
        )
        .map_err(|e| format!("chown {}: {e}", setup.home))?;
    }
    Ok(())
}

/// Binds a path of a share onto itself, read-only when asked: what bwrap's
/// protection binds do (the folders leading to a protected path are bound
/// first, so none can be renamed away). Runs before any process of the
/// guest exists; the path was found on the host without following links.
fn protect_in_place(share: &str, p: &cowork_protocol::agent::GuestProtect) -> Result<(), String> {
    let Some(rel) = cowork_policy::protect::plain_relative(Path::new(&p.rel)) else {
        return Err(format!(
            "protected path {:?}: not a plain relative path",
            p.rel
        ));
    };
    let target = c_string(&Path::new(share).join(rel).to_string_lossy())?;
    let bind = |flags: libc::c_ulong| {
        // SAFETY: `target` is NUL-terminated and outlives the call; a NULL
        // filesystem type and data are what a bind (remount) takes.
        let r = unsafe {
            libc::mount(
                target.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(format!(
                "binding {share}/{}: {}",
                p.rel,
                io::Error::last_os_error()
            ))
        }
    };
    bind(libc::MS_BIND)?;
    if p.read_only {
        bind(
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        )?;
    }
    Ok(())
}

/// `ip link set lo up`: the proxy endpoints listen on 127.0.0.1.
fn loopback_up() -> io::Result<()> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `req`,
    // which is a valid ifreq for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union's flags member was just written by the kernel.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps every child of pid 1 until `agent` exits.
fn reap_until(agent: rustix::process::Pid) {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid == agent => {
                eprintln!("cowork-vm-service init: agent ended ({status:?}); powering off");
                return;
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                eprintln!("cowork-vm-service init: wait: {e}");
                return;
            }
        }
    }
}

fn power_off() -> ExitCode {
    rustix::fs::sync();
    // SAFETY: reboot(2) with RB_POWER_OFF takes no pointers; as pid 1 with
    // CAP_SYS_BOOT it ends the VM (QEMU exits: -no-reboot).
    unsafe {
        libc::reboot(libc::RB_POWER_OFF);
    }
    eprintln!(
        "cowork-vm-service init: power off failed: {}",
        io::Error::last_os_error()
    );
    ExitCode::from(1)
}
