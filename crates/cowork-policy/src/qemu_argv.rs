//! The microVM of the `kvm` backend: its QEMU command line, its kernel
//! command line, and which host folders it shares (virtiofs, one
//! virtiofsd per share).
//!
//! Machine (measured in `shared/docs/microvm-lab.md`): `-M microvm` with
//! ACPI on (Debian kernels find virtio-mmio devices only through ACPI),
//! `virtio-mmio.force-legacy=false` (vhost-user refuses legacy virtio),
//! a PVH-bootable `vmlinux` (or a bzImage), a raw cpio initramfs holding
//! our agent as `/init`, no network device, no disk. Devices:
//!
//! ```text
//! virtio-serial-device            the controller (before its ports)
//!   virtserialport cowork.agent   the agent channel (a connected socketpair end, fd=N)
//!   virtserialport cowork.net     proxy streams (see cowork_protocol::mux)
//! vhost-user-fs-device tag=...    one per share, each served by its own virtiofsd
//! memory-backend-memfd share=on   vhost-user needs guest RAM in shared memory
//! ```
//!
//! Under TCG the guest is told the host's TSC frequency: without
//! `tsc_early_khz` + `tsc=reliable` a busy host made most boots hang in
//! timer calibration (the guest TSC ticks at the host's rate under TCG).
//!
//! Shares: the host's `/usr` and `/etc` read-only (the guest's root is a
//! tmpfs from the initramfs, never the host's `$HOME`), the session's
//! persistent `tmp/` read-write at `/tmp`, and each session mount on its
//! own at `/sessions/<s>/mnt/<name>`, read-only ones exported read-only
//! by their virtiofsd (`--readonly`), not only mounted so in the guest.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bwrap_argv::session_mnt;
use crate::mounts::MountMode;

/// Name of the agent's virtio-serial port.
pub const AGENT_PORT: &str = "cowork.agent";
/// Name of the port carrying proxy streams.
pub const NET_PORT: &str = "cowork.net";

/// How the guest's instructions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Size of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub memory_mib: u64,
    pub cpus: u32,
}

/// Smallest and largest memory the VM is given, in MiB.
pub const MIN_MEMORY_MIB: u64 = 256;
pub const MAX_MEMORY_MIB: u64 = 16 * 1024;
/// The default: enough for Claude Code and a build, small on an 8 GiB
/// laptop (host RSS of an idle 256 MiB guest is about 250 MiB).
pub const DEFAULT_MEMORY_MIB: u64 = 1024;

impl VmSize {
    /// From `configure` / `startVM` (MiB, then GiB; the later wins) and the
    /// host's core count: memory is clamped to
    /// [`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`]; CPUs default to 1 (a
    /// second vCPU under TCG costs a host core for about 0.4 s less boot)
    /// and never exceed the host's cores.
    pub fn from_requests(memory_mib: Option<u64>, cpus: Option<u32>, host_cpus: u32) -> Self {
        let memory_mib = memory_mib
            .unwrap_or(DEFAULT_MEMORY_MIB)
            .clamp(MIN_MEMORY_MIB, MAX_MEMORY_MIB);
        let cpus = cpus.unwrap_or(1).clamp(1, host_cpus.max(1));
        VmSize { memory_mib, cpus }
    }
}

/// One vhost-user-fs device and where the guest mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// virtiofs tag (at most 36 bytes: `usr`, `etc`, `tmp`, `m0`, ...).
    pub tag: String,
    /// Host directory served (a path virtiofsd opens; the daemon passes
    /// pinned folders as `/proc/self/fd/N`).
    pub host: PathBuf,
    /// Where the guest mounts it.
    pub guest: String,
    pub mode: MountMode,
}

/// A session mount as shared: its name and pinned host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    pub name: String,
    pub host: PathBuf,
    pub mode: MountMode,
}

/// The shares of a session's VM, in mount order.
pub fn plan_shares(session: &str, session_tmp: &Path, mounts: &[ShareMount]) -> Vec<Share> {
    let mut shares = vec![
        Share {
            tag: "usr".into(),
            host: PathBuf::from("/usr"),
            guest: "/usr".into(),
            mode: MountMode::ReadOnly,
        },
        Share {
            tag: "etc".into(),
            host: PathBuf::from("/etc"),
            guest: "/etc".into(),
            mode: MountMode::ReadOnly,
        },
        Share {
            tag: "tmp".into(),
            host: session_tmp.to_path_buf(),
            guest: "/tmp".into(),
            mode: MountMode::ReadWrite,
        },
    ];
    let mnt = session_mnt(session);
    for (i, m) in mounts.iter().enumerate() {
        shares.push(Share {
            tag: format!("m{i}"),
            host: m.host.clone(),
            guest: format!("{mnt}/{}", m.name),
            mode: m.mode,
        });
    }
    shares
}

/// The virtiofsd arguments for one share (without the program).
///
/// Sandbox: [`VirtiofsdSandbox::Namespace`] where the host lets it make a
/// user namespace (virtiofsd then pivots into the shared directory, so a
/// bug cannot reach the rest of the host), mapping only the daemon's own
/// ids; else `--sandbox none`: it still serves one directory it opened
/// itself, resolving every name beneath it without following links.
/// `--cache always` for read-only shares (measured: `auto` made repeated
/// execs slower), `auto` for writable ones so host-side changes show.
///
/// A folder the daemon pinned (`/proc/self/fd/N`) is served as
/// virtiofsd's working directory, `--shared-dir=.`: virtiofsd opens its
/// root with `O_NOFOLLOW`, which refuses the magic link itself, so the
/// caller starts it in that directory ([`pinned_cwd`]).
///
/// `owner` maps the guest user to the host owner of the session's files
/// (`(guest uid, host uid, guest gid, host gid)`), for a daemon running as
/// root whose guest user is not uid 0: it is applied to every share but
/// the system trees, whose root-owned files stay root's in the guest.
pub fn virtiofsd_argv(
    share: &Share,
    socket: &Path,
    owner: Option<(u32, u32, u32, u32)>,
    sandbox: VirtiofsdSandbox,
) -> Vec<String> {
    let dir = match pinned_cwd(share) {
        Some(_) => ".".to_string(),
        None => share.host.display().to_string(),
    };
    let mut out = vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={dir}"),
    ];
    match sandbox {
        VirtiofsdSandbox::None => out.push("--sandbox=none".into()),
        VirtiofsdSandbox::Namespace { uid, gid } => {
            out.push("--sandbox=namespace".into());
            out.push(format!("--uid-map=:{uid}:{uid}:1:"));
            out.push(format!("--gid-map=:{gid}:{gid}:1:"));
        }
    }
    out.push("--log-level=error".into());
    match share.mode {
        MountMode::ReadOnly => {
            out.push("--cache=always".into());
            out.push("--readonly".into());
        }
        MountMode::ReadWrite => out.push("--cache=auto".into()),
    }
    if let Some((guest_uid, host_uid, guest_gid, host_gid)) = owner
        && share.tag != "usr"
        && share.tag != "etc"
    {
        out.push(format!("--translate-uid=map:{guest_uid}:{host_uid}:1"));
        out.push(format!("--translate-gid=map:{guest_gid}:{host_gid}:1"));
    }
    out
}

/// How each virtiofsd is confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtiofsdSandbox {
    /// No namespace (the host allows no unprivileged user namespaces).
    None,
    /// Its own user and mount namespace, pivoted into the shared
    /// directory; `uid`/`gid` (the daemon's) are the only ids mapped.
    Namespace { uid: u32, gid: u32 },
}

/// The directory virtiofsd must be started in for a pinned share.
pub fn pinned_cwd(share: &Share) -> Option<&Path> {
    share
        .host
        .to_str()
        .is_some_and(|h| h.starts_with("/proc/self/fd/"))
        .then_some(share.host.as_path())
}

/// Everything the QEMU command line depends on.
#[derive(Debug, Clone)]
pub struct VmPlan<'a> {
    pub accel: Accel,
    pub size: VmSize,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// Host TSC frequency in kHz (given to the guest under TCG).
    pub tsc_khz: Option<u64>,
    /// Inherited descriptor of the agent channel (a connected socket).
    pub agent_fd: i32,
    /// Inherited descriptor of the proxy-stream channel.
    pub net_fd: Option<i32>,
    /// vhost-user sockets of the shares, in [`plan_shares`] order.
    pub shares: &'a [(Share, PathBuf)],
    /// Where the serial console goes (a file), or nowhere.
    pub console_log: Option<&'a Path>,
}

/// The guest kernel's command line.
pub fn kernel_cmdline(plan: &VmPlan<'_>) -> String {
    let mut words = vec![
        "quiet",
        "console=ttyS0",
        // A panic (init exiting) ends the VM at once, a reboot too (with
        // -no-reboot QEMU exits instead of restarting).
        "panic=-1",
        "reboot=t",
        // The crypto self-tests cost about 0.4 s of every TCG boot.
        "cryptomgr.notests",
        "rdinit=/init",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if plan.accel == Accel::Tcg
        && let Some(khz) = plan.tsc_khz
    {
        words.push(format!("tsc_early_khz={khz}"));
        words.push("tsc=reliable".into());
    }
    words.join(" ")
}

/// The QEMU arguments (without the program).
pub fn qemu_argv(plan: &VmPlan<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(64);
    let mut push = |args: &[&str]| out.extend(args.iter().map(|a| a.to_string()));
    push(&["-M", "microvm", "-global", "virtio-mmio.force-legacy=false"]);
    match plan.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // The translation cache defaults to 1 GiB and grows with every
        // new guest code path (measured: 207 MiB of anonymous memory
        // after 100 spawns); 64 MiB holds a small guest's working set.
        Accel::Tcg => push(&["-accel", "tcg,thread=multi,tb-size=64", "-cpu", "max"]),
    }
    let smp = plan.size.cpus.to_string();
    push(&["-smp", &smp]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    let serial = match plan.console_log {
        Some(log) => format!("file:{}", log.display()),
        None => "none".to_string(),
    };
    push(&["-serial", &serial]);
    let kernel = plan.kernel.display().to_string();
    let initrd = plan.initrd.display().to_string();
    let append = kernel_cmdline(plan);
    push(&["-kernel", &kernel, "-initrd", &initrd, "-append", &append]);
    push(&["-device", "virtio-serial-device,max_ports=4"]);
    let agent = format!("socket,id=agent,fd={}", plan.agent_fd);
    let agent_port = format!("virtserialport,chardev=agent,name={AGENT_PORT}");
    push(&["-chardev", &agent, "-device", &agent_port]);
    if let Some(fd) = plan.net_fd {
        let net = format!("socket,id=net,fd={fd}");
        let net_port = format!("virtserialport,chardev=net,name={NET_PORT}");
        push(&["-chardev", &net, "-device", &net_port]);
    }
    for (i, (share, socket)) in plan.shares.iter().enumerate() {
        let chardev = format!("socket,id=fs{i},path={}", socket.display());
        let device = format!("vhost-user-fs-device,chardev=fs{i},tag={}", share.tag);
        push(&["-chardev", &chardev, "-device", &device]);
    }
    let mem = format!("{}M", plan.size.memory_mib);
    if plan.shares.is_empty() {
        push(&["-m", &mem]);
    } else {
        let backend = format!("memory-backend-memfd,id=mem,size={mem},share=on");
        push(&["-object", &backend, "-numa", "node,memdev=mem", "-m", &mem]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn shares() -> Vec<Share> {
        plan_shares(
            "s1",
            Path::new("/home/u/.local/share/cowork-vm-service/sessions/s1/tmp"),
            &[
                ShareMount {
                    name: "proj".into(),
                    host: "/proc/self/fd/7".into(),
                    mode: MountMode::ReadWrite,
                },
                ShareMount {
                    name: ".skills".into(),
                    host: "/proc/self/fd/8".into(),
                    mode: MountMode::ReadOnly,
                },
            ],
        )
    }

    #[test]
    fn shares_are_system_trees_the_session_tmp_and_each_mount_on_its_own() {
        let got: Vec<(String, String, String, MountMode)> = shares()
            .into_iter()
            .map(|s| (s.tag, s.host.display().to_string(), s.guest, s.mode))
            .collect();
        let ro = MountMode::ReadOnly;
        let rw = MountMode::ReadWrite;
        let want = [
            ("usr", "/usr", "/usr", ro),
            ("etc", "/etc", "/etc", ro),
            (
                "tmp",
                "/home/u/.local/share/cowork-vm-service/sessions/s1/tmp",
                "/tmp",
                rw,
            ),
            ("m0", "/proc/self/fd/7", "/sessions/s1/mnt/proj", rw),
            ("m1", "/proc/self/fd/8", "/sessions/s1/mnt/.skills", ro),
        ]
        .map(|(t, h, g, m)| (t.to_string(), h.to_string(), g.to_string(), m));
        assert_eq!(got, want);
        // Never the whole home: every share is a system tree, the session
        // tmp, or one mount.
        assert!(shares().iter().all(|s| s.host != Path::new("/home/u")));
    }

    #[test]
    fn read_only_shares_are_read_only_in_virtiofsd_itself() {
        let s = shares();
        let sock = Path::new("/run/vm/fs.sock");
        assert_eq!(
            virtiofsd_argv(&s[4], sock, None, VirtiofsdSandbox::None),
            [
                "--socket-path=/run/vm/fs.sock",
                "--shared-dir=.",
                "--sandbox=none",
                "--log-level=error",
                "--cache=always",
                "--readonly"
            ]
        );
        assert_eq!(pinned_cwd(&s[4]), Some(Path::new("/proc/self/fd/8")));
        assert_eq!(pinned_cwd(&s[0]), None);
        assert!(
            virtiofsd_argv(&s[0], sock, None, VirtiofsdSandbox::None)
                .contains(&"--shared-dir=/usr".to_string())
        );
        let rw = virtiofsd_argv(&s[3], sock, None, VirtiofsdSandbox::None);
        assert!(!rw.contains(&"--readonly".to_string()), "{rw:?}");
        assert!(rw.contains(&"--cache=auto".to_string()));
        // A root daemon's guest user owns the session's files as root.
        let owned = virtiofsd_argv(
            &s[3],
            sock,
            Some((1000, 0, 1000, 0)),
            VirtiofsdSandbox::None,
        );
        assert!(owned.ends_with(&[
            "--translate-uid=map:1000:0:1".to_string(),
            "--translate-gid=map:1000:0:1".to_string()
        ]));
        let system = virtiofsd_argv(
            &s[0],
            sock,
            Some((1000, 0, 1000, 0)),
            VirtiofsdSandbox::None,
        );
        let boxed = virtiofsd_argv(
            &s[3],
            sock,
            None,
            VirtiofsdSandbox::Namespace {
                uid: 1001,
                gid: 1002,
            },
        );
        for want in [
            "--sandbox=namespace",
            "--uid-map=:1001:1001:1:",
            "--gid-map=:1002:1002:1:",
        ] {
            assert!(boxed.contains(&want.to_string()), "{boxed:?}");
        }
        assert!(!boxed.contains(&"--sandbox=none".to_string()));
        assert!(
            !system.iter().any(|a| a.starts_with("--translate")),
            "{system:?}"
        );
    }

    #[test]
    fn sizes_are_clamped_and_default_sanely() {
        let cases = [
            ((None, None, 2), (DEFAULT_MEMORY_MIB, 1)),
            ((Some(100), Some(8), 2), (MIN_MEMORY_MIB, 2)),
            ((Some(4096), Some(2), 8), (4096, 2)),
            ((Some(1 << 30), Some(0), 4), (MAX_MEMORY_MIB, 1)),
            ((Some(512), Some(3), 0), (512, 1)),
        ];
        for ((mem, cpus, host), (want_mem, want_cpus)) in cases {
            let got = VmSize::from_requests(mem, cpus, host);
            assert_eq!(
                (got.memory_mib, got.cpus),
                (want_mem, want_cpus),
                "{mem:?} {cpus:?} {host}"
            );
        }
    }

    fn plan<'a>(accel: Accel, shares: &'a [(Share, PathBuf)]) -> VmPlan<'a> {
        VmPlan {
            accel,
            size: VmSize {
                memory_mib: 256,
                cpus: 1,
            },
            kernel: Path::new("/c/vmlinux"),
            initrd: Path::new("/c/init.cpio"),
            tsc_khz: Some(2_100_000),
            agent_fd: 3,
            net_fd: Some(4),
            shares,
            console_log: Some(Path::new("/run/vm/console.log")),
        }
    }

    #[test]
    fn tcg_argv_is_the_measured_recipe() {
        let shares: Vec<(Share, PathBuf)> = shares()
            .into_iter()
            .take(1)
            .map(|s| (s, PathBuf::from("/run/vm/fs0.sock")))
            .collect();
        let argv = qemu_argv(&plan(Accel::Tcg, &shares));
        let want = [
            "-M",
            "microvm",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-accel",
            "tcg,thread=multi,tb-size=64",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "file:/run/vm/console.log",
            "-kernel",
            "/c/vmlinux",
            "-initrd",
            "/c/init.cpio",
            "-append",
            "quiet console=ttyS0 panic=-1 reboot=t cryptomgr.notests rdinit=/init \
             tsc_early_khz=2100000 tsc=reliable",
            "-device",
            "virtio-serial-device,max_ports=4",
            "-chardev",
            "socket,id=agent,fd=3",
            "-device",
            "virtserialport,chardev=agent,name=cowork.agent",
            "-chardev",
            "socket,id=net,fd=4",
            "-device",
            "virtserialport,chardev=net,name=cowork.net",
            "-chardev",
            "socket,id=fs0,path=/run/vm/fs0.sock",
            "-device",
            "vhost-user-fs-device,chardev=fs0,tag=usr",
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-numa",
            "node,memdev=mem",
            "-m",
            "256M",
        ];
        assert_eq!(argv, want);
    }

    #[test]
    fn kvm_gets_the_host_cpu_and_no_tsc_hint() {
        let argv = qemu_argv(&plan(Accel::Kvm, &[]));
        let joined = argv.join(" ");
        assert!(joined.contains("-accel kvm -cpu host"), "{joined}");
        assert!(!joined.contains("tsc_early_khz"), "{joined}");
        // No shares: plain memory, no memfd.
        assert!(joined.ends_with("-m 256M"), "{joined}");
        // The serial controller precedes its ports.
        let ctl = argv
            .iter()
            .position(|a| a.starts_with("virtio-serial-device"));
        let port = argv.iter().position(|a| a.starts_with("virtserialport"));
        assert!(ctl < port);
    }

    #[test]
    fn tcg_without_a_known_tsc_gets_no_hint() {
        let mut p = plan(Accel::Tcg, &[]);
        p.tsc_khz = None;
        assert!(!kernel_cmdline(&p).contains("tsc"));
    }
}
