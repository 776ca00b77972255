//! The seccomp deny list of a session sandbox, from reviewed data,
//! compiled with seccompiler.
//!
//! The rules are `resources/seccomp/sandbox.json` at the repository root
//! (one entry per syscall, or per syscall + argument condition, each with
//! its errno and a reason), embedded with `include_str!`. [`rules`] parses
//! them, resolves syscall names for one architecture and compiles them:
//! pure computation, nothing is installed here (the agent does that,
//! `agent/confine.rs`).
//!
//! Why our own schema and not seccompiler's JSON frontend: that format is
//! specific to one architecture per file (`iopl` exists only on x86_64),
//! has optional comments (we require a reason) and names its actions per
//! filter. The syscall numbers come from the `syscalls` crate (tables of
//! both architectures, whatever the build target).
//!
//! # The programs
//!
//! seccompiler's backend compiles the plan: one `SeccompFilter` per action
//! (a filter has one match action), default allow:
//!
//! 1. `EPERM`: every entry but one (273 instructions on x86_64);
//! 2. `ENOSYS`: `clone3`, whose flags live in memory a filter cannot read
//!    (glibc then falls back to `clone`, whose flags the first filter checks);
//! 3. on x86_64 only, [`x32_guard`] (7 instructions, below).
//!
//! Each starts with seccompiler's architecture check, which kills the
//! process on a foreign `AUDIT_ARCH` (so the i386 `int 0x80` entry cannot
//! bypass the numbers). The kernel runs every filter and the strictest
//! verdict wins; the filters deny disjoint sets, so the order is free.
//!
//! The build script (`build.rs`, which compiles [`rules`] too) runs this
//! for both architectures and embeds the BPF, so the agent's
//! [`sandbox_filters`] is a copy of constant data (about a microsecond)
//! instead of the ~80 us of parsing the JSON in a fresh process; a test
//! checks that the embedded programs equal a compilation at test time.
//!
//! # The x32 ABI
//!
//! On x86_64, x32 syscalls arrive with `AUDIT_ARCH_X86_64` and `nr |
//! 0x40000000` (and x32 has numbers of its own from 512, `ioctl` among
//! them), which number-keyed rules never match, so a default-allow list
//! would let every x32 alias through. seccompiler cannot say "any number
//! with that bit": its rules compare the syscall number for equality and
//! conditions look only at arguments, so it would take one rule per x32
//! number (about 550) and multiply the cost below. [`x32_guard`] is that
//! one test as a minimal program of its own: architecture check, then
//! `ENOSYS` for any number with the bit, which is what a kernel built
//! without x32 answers anyway.
//!
//! # Cost of installing
//!
//! Installing a filter makes the kernel emulate it once per syscall
//! number (about 460 per architecture) to fill its allow cache
//! (`seccomp_cache_prepare`, 5.11+), and seccompiler's programs compare
//! the number with every entry in turn: each allowed number walks two
//! instructions per entry (about 100 steps here). Measured with
//! `syscall_probe --confine-self --exec true` (release build, 6.18 kernel,
//! the `seccomp-us` line, p50 of 100 runs, the two builds interleaved, on
//! the host and inside bwrap alike):
//!
//! | programs | install |
//! | --- | --- |
//! | before: one hand-written binary-search program (165 instructions) | 66-67 us |
//! | seccompiler: EPERM + ENOSYS + x32 guard (273 + 10 + 7) | 235-241 us |
//!
//! Of that, about 20 us is the first filter's fixed cost and 10-12 us each
//! further filter's (a one-instruction program costs that much); the rest
//! is the emulation, proportional to entries x allowed numbers, so neither
//! the order of the entries nor splitting them into more filters changes
//! it (tried: two EPERM filters cost the same plus one filter's overhead).
//! It is paid once per sandbox, by the agent, before the first command;
//! after that, syscalls the filters allow regardless of arguments are
//! answered from the cache and cost nothing, and the five argument-checked
//! ones (`clone`, `unshare`, `socket`, `ioctl`, `personality`) run the
//! JIT-compiled programs.

pub mod rules;

pub use rules::*;
use seccompiler::sock_filter;

/// Instructions as `(code, jt, jf, k)`, with the program's label.
type RawProgram = (&'static str, &'static [(u16, u8, u8, u32)]);

// `X86_64` and `AARCH64`: `compile_sandbox_filters` of each architecture,
// run by the build script.
include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// The sandbox filters for `arch`: the embedded rules compiled at build
/// time (a copy of constant data). Identical to [`compile_sandbox_filters`]
/// (a test checks it). Without the x32 guard, which is [`x32_guard`].
pub fn sandbox_filters(arch: SeccompArch) -> CompiledFilters {
    let raw: &[RawProgram] = match arch {
        SeccompArch::X86_64 => X86_64,
        SeccompArch::Aarch64 => AARCH64,
    };
    CompiledFilters {
        arch,
        programs: raw
            .iter()
            .map(|(label, insns)| SeccompProgram {
                label: (*label).to_string(),
                bpf: insns
                    .iter()
                    .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
                    .collect(),
            })
            .collect(),
    }
}

/// `nr` bit of the x32 ABI (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF (linux/bpf_common.h, linux/seccomp.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// The program refusing the x32 ABI on x86_64 (`None` elsewhere): what
/// seccompiler cannot express (see the module doc).
///
/// ```text
/// ld  [arch]
/// jeq AUDIT_ARCH_X86_64, +1, +0
/// ret KILL_PROCESS                 ; as seccompiler's programs begin
/// ld  [nr]
/// jset 0x40000000, +0, +1
/// ret ERRNO(ENOSYS)
/// ret ALLOW
/// ```
pub fn x32_guard(arch: SeccompArch) -> Option<SeccompProgram> {
    if arch != SeccompArch::X86_64 {
        return None;
    }
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    Some(SeccompProgram {
        label: "x32".into(),
        bpf: vec![
            stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
            jump(BPF_JEQ_K, arch.audit_arch(), 1, 0),
            stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
            stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
            jump(BPF_JSET_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
            stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        ],
    })
}

/// Every program the sandbox installs on `arch`, in order: the rules'
/// filters, then the x32 guard where there is one.
pub fn sandbox_programs(arch: SeccompArch) -> CompiledFilters {
    let mut filters = sandbox_filters(arch);
    filters.programs.extend(x32_guard(arch));
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

    /// What the brief requires the filter to refuse, with the errno.
    const REQUIRED: [(&str, &str); 30] = [
        ("io_uring_setup", "EPERM"),
        ("io_uring_enter", "EPERM"),
        ("io_uring_register", "EPERM"),
        ("bpf", "EPERM"),
        ("perf_event_open", "EPERM"),
        ("userfaultfd", "EPERM"),
        ("kexec_load", "EPERM"),
        ("kexec_file_load", "EPERM"),
        ("init_module", "EPERM"),
        ("finit_module", "EPERM"),
        ("delete_module", "EPERM"),
        ("keyctl", "EPERM"),
        ("add_key", "EPERM"),
        ("request_key", "EPERM"),
        ("mount", "EPERM"),
        ("umount2", "EPERM"),
        ("pivot_root", "EPERM"),
        ("move_mount", "EPERM"),
        ("open_tree", "EPERM"),
        ("fsopen", "EPERM"),
        ("fsconfig", "EPERM"),
        ("fsmount", "EPERM"),
        ("fspick", "EPERM"),
        ("mount_setattr", "EPERM"),
        ("unshare", "EPERM"),
        ("clone", "EPERM"),
        ("setns", "EPERM"),
        ("socket", "EPERM"),
        ("ioctl", "EPERM"),
        ("clone3", "ENOSYS"),
    ];

    fn file() -> RuleFile {
        RuleFile::parse(SANDBOX_RULES_JSON).unwrap()
    }

    #[test]
    fn every_required_syscall_is_denied_on_both_arches() {
        for arch in SeccompArch::ALL {
            let plan = file().plan(arch).unwrap();
            for (name, errno) in REQUIRED {
                let planned = plan
                    .get(name)
                    .unwrap_or_else(|| panic!("{name} missing on {arch}"));
                assert_eq!(
                    planned.errno,
                    errno_value(errno).unwrap(),
                    "{name} on {arch}"
                );
                let nr = arch.syscall_number(name).unwrap();
                assert!(
                    plan.syscalls.contains_key(&nr),
                    "{name} keyed by its number"
                );
            }
        }
    }

    #[test]
    fn argument_rules_are_conditional_and_32_bit() {
        let plan = file().plan(SeccompArch::X86_64).unwrap();
        // (syscall, alternatives): these must never be denied outright.
        for (name, alternatives) in [
            ("unshare", 1),
            ("clone", 1),
            ("socket", 1),
            ("ioctl", 3),
            ("personality", 2),
        ] {
            let s = plan.get(name).unwrap();
            assert!(!s.unconditional, "{name} is conditional");
            assert_eq!(s.alternatives.len(), alternatives, "{name}");
        }
        for entry in file().rules.iter().filter(|e| !e.args.is_empty()) {
            for c in &entry.args {
                assert_eq!(
                    c.width, "dword",
                    "{}: compare the low 32 bits",
                    entry.syscall
                );
            }
        }
    }

    #[test]
    fn debugging_and_spawning_stay_allowed() {
        for arch in SeccompArch::ALL {
            let plan = file().plan(arch).unwrap();
            for name in [
                "ptrace",
                "process_vm_readv",
                "wait4",
                "waitid",
                "kill",
                "signalfd4",
                "execve",
                "pidfd_open",
                "sendmsg",
                "epoll_pwait",
                "vmsplice",
                "landlock_restrict_self",
                "seccomp",
            ] {
                assert!(
                    plan.get(name).is_none(),
                    "{name} must stay allowed on {arch}"
                );
            }
        }
    }

    #[test]
    fn every_entry_has_a_reason_and_a_known_errno() {
        for entry in &file().rules {
            assert!(entry.reason.trim().len() > 10, "{}", entry.syscall);
            assert!(errno_value(&entry.errno).is_some(), "{}", entry.syscall);
        }
        let empty = r#"{"default_action":"allow","rules":[{"syscall":"bpf","errno":"EPERM","reason":" "}]}"#;
        assert!(matches!(
            RuleFile::parse(empty),
            Err(SeccompPlanError::EmptyReason(s)) if s == "bpf"
        ));
        let no_reason = r#"{"default_action":"allow","rules":[{"syscall":"bpf","errno":"EPERM"}]}"#;
        assert!(matches!(
            RuleFile::parse(no_reason),
            Err(SeccompPlanError::Parse(_))
        ));
    }

    #[test]
    fn bad_data_is_an_error() {
        let cases: [(&str, &str); 8] = [
            (
                "unknown syscall",
                r#"{"default_action":"allow","rules":[{"syscall":"no_such_call","errno":"EPERM","reason":"r"}]}"#,
            ),
            (
                "x86-only name on every arch",
                r#"{"default_action":"allow","rules":[{"syscall":"iopl","errno":"EPERM","reason":"r"}]}"#,
            ),
            (
                "unknown errno",
                r#"{"default_action":"allow","rules":[{"syscall":"bpf","errno":"EWHAT","reason":"r"}]}"#,
            ),
            (
                "typo in a field",
                r#"{"default_action":"allow","rules":[{"sycall":"bpf","errno":"EPERM","reason":"r"}]}"#,
            ),
            ("allow list", r#"{"default_action":"kill","rules":[]}"#),
            (
                "unconditional and conditional",
                r#"{"default_action":"allow","rules":[
                    {"syscall":"socket","errno":"EPERM","reason":"r"},
                    {"syscall":"socket","errno":"EPERM","reason":"r","args":[{"index":0,"type":"dword","op":"eq","val":1}]}]}"#,
            ),
            (
                "masked_eq without a mask",
                r#"{"default_action":"allow","rules":[{"syscall":"clone","errno":"EPERM","reason":"r","args":[{"index":0,"type":"dword","op":"masked_eq","val":1}]}]}"#,
            ),
            (
                "bad hex",
                r#"{"default_action":"allow","rules":[{"syscall":"ioctl","errno":"EPERM","reason":"r","args":[{"index":1,"type":"dword","op":"eq","val":"0xZZ"}]}]}"#,
            ),
        ];
        for (what, json) in cases {
            let outcome = RuleFile::parse(json).and_then(|f| f.plan(SeccompArch::Aarch64));
            assert!(outcome.is_err(), "{what}");
        }
        let unknown = RuleFile::parse(cases[0].1)
            .unwrap()
            .plan(SeccompArch::X86_64)
            .unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "seccomp rules: unknown syscall \"no_such_call\" on x86_64"
        );
    }

    #[test]
    fn arch_only_entries_apply_to_their_arch() {
        let x86 = file().plan(SeccompArch::X86_64).unwrap();
        let arm = file().plan(SeccompArch::Aarch64).unwrap();
        for name in ["iopl", "ioperm"] {
            assert!(x86.get(name).is_some(), "{name} on x86_64");
            assert!(arm.get(name).is_none(), "{name} does not exist on aarch64");
        }
        assert_eq!(x86.get("bpf").map(|_| ()), Some(()));
        assert_eq!(SeccompArch::X86_64.syscall_number("bpf"), Some(321));
        assert_eq!(SeccompArch::Aarch64.syscall_number("bpf"), Some(280));
    }

    #[test]
    fn compiles_for_both_arches_and_refuses_others() {
        for arch in SeccompArch::ALL {
            let compiled = compile_sandbox_filters(arch).unwrap();
            let labels: Vec<_> = compiled.programs.iter().map(|p| p.label.as_str()).collect();
            assert_eq!(labels, ["EPERM", "ENOSYS"], "{arch}");
            for p in &compiled.programs {
                assert!(
                    !p.bpf.is_empty() && p.bpf.len() < 4096,
                    "{arch} {}",
                    p.label
                );
            }
            let all = sandbox_programs(arch);
            let want = if arch == SeccompArch::X86_64 { 3 } else { 2 };
            assert_eq!(all.programs.len(), want, "{arch}");
        }
        for other in ["riscv64", "x86", "arm", "powerpc64", "s390x", ""] {
            assert!(
                matches!(other.parse::<SeccompArch>(), Err(SeccompPlanError::UnsupportedArch(a)) if a == other),
                "{other}"
            );
        }
    }

    #[test]
    fn embedded_filters_are_the_rules_compiled_by_seccompiler() {
        // What the build script embedded is what compiling the data file
        // gives now, instruction for instruction.
        for arch in SeccompArch::ALL {
            assert_eq!(
                sandbox_filters(arch),
                compile_sandbox_filters(arch).unwrap(),
                "{arch}"
            );
        }
    }

    /// A tiny classic-BPF interpreter for the instructions seccompiler and
    /// the guard use, to check verdicts without installing anything.
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                o if (16..64).contains(&o) => {
                    let arg = args[((o - 16) / 8) as usize];
                    if (o - 16) % 8 == 0 {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => panic!("load at {off}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            match i.code & 0x07 {
                0x00 => acc = word(i.k),
                0x04 => acc &= i.k,
                0x05 => {
                    let taken = match i.code & 0xf0 {
                        0x00 => {
                            pc += 1 + i.k as usize;
                            continue;
                        }
                        0x10 => acc == i.k,
                        0x20 => acc > i.k,
                        0x30 => acc >= i.k,
                        0x40 => acc & i.k != 0,
                        op => panic!("jump op {op:#x}"),
                    };
                    pc += 1 + if taken { i.jt } else { i.jf } as usize;
                    continue;
                }
                0x06 => return i.k,
                c => panic!("class {c:#x}"),
            }
            pc += 1;
        }
    }

    /// The strictest verdict of all programs, as the kernel combines them.
    fn verdict(compiled: &CompiledFilters, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        compiled
            .programs
            .iter()
            .map(|p| run(&p.bpf, arch, nr, args))
            .min_by_key(|v| {
                // Precedence: KILL_PROCESS > ... > ERRNO > ... > ALLOW.
                match v & 0xffff_0000 {
                    0x8000_0000 => 0,
                    0x0000_0000 => 1,
                    0x0003_0000 => 2,
                    0x0005_0000 => 3,
                    0x7ff0_0000 => 4,
                    0x7ffc_0000 => 5,
                    _ => 6,
                }
            })
            .unwrap()
    }

    const ALLOW: u32 = 0x7fff_0000;
    const fn errno(e: i32) -> u32 {
        0x0005_0000 | e as u32
    }

    /// What the plan says about one call, computed from the plan alone.
    fn planned_verdict(plan: &SeccompPlan, nr: u32, args: &[u64; 6]) -> u32 {
        let Some(s) = plan.syscalls.get(&i64::from(nr)) else {
            return ALLOW;
        };
        let holds = |c: &ArgCheck| {
            let (mut arg, mut value) = (args[usize::from(c.index)], c.value);
            if let CmpOp::MaskedEq(mask) = c.op {
                (arg, value) = (arg & mask, value & mask);
            }
            if c.width == ArgWidth::Dword {
                (arg, value) = (arg & 0xffff_ffff, value & 0xffff_ffff);
            }
            match c.op {
                CmpOp::Ne => arg != value,
                CmpOp::Eq | CmpOp::MaskedEq(_) => arg == value,
            }
        };
        let denied = s.unconditional || s.alternatives.iter().any(|alt| alt.iter().all(holds));
        if denied { 0x0005_0000 | s.errno } else { ALLOW }
    }

    #[test]
    fn every_syscall_number_gets_the_planned_verdict() {
        const HI: u64 = 1 << 32;
        for arch in SeccompArch::ALL {
            let plan = file().plan(arch).unwrap();
            let programs = sandbox_programs(arch);
            // Argument vectors: zeros, ones, every value a rule compares
            // (alone, with the mask, with high bits), in every position.
            let mut values = vec![0u64, 1, u64::MAX, 0xffff_ffff, HI];
            for s in plan.syscalls.values() {
                for c in s.alternatives.iter().flatten() {
                    values.extend([c.value, c.value | HI, c.value ^ 1, !c.value]);
                    if let CmpOp::MaskedEq(m) = c.op {
                        values.extend([m, m | 0x11, !m]);
                    }
                }
            }
            values.sort_unstable();
            values.dedup();
            let audit = arch.audit_arch();
            let max = *plan.syscalls.keys().max().unwrap() as u32 + 8;
            let mut checked = 0;
            for nr in 0..=max {
                for (i, v) in values.iter().enumerate() {
                    let w = values[(i * 7 + 3) % values.len()];
                    for args in [
                        [*v, *v, 0, 0, 0, 0],
                        [*v, w, *v, w, *v, w],
                        [w, *v, 0, 0, 0, 0],
                    ] {
                        assert_eq!(
                            verdict(&programs, audit, nr, args),
                            planned_verdict(&plan, nr, &args),
                            "{arch} nr {nr} args {args:x?}"
                        );
                        checked += 1;
                    }
                }
            }
            assert!(checked > 10_000);
            // i386 and 32-bit ARM (EM_386, EM_ARM with __AUDIT_ARCH_LE):
            // killed by every program.
            for foreign in [3 | 0x4000_0000, 40 | 0x4000_0000] {
                for p in &programs.programs {
                    assert_eq!(
                        run(&p.bpf, foreign, 0, [0; 6]),
                        libc::SECCOMP_RET_KILL_PROCESS,
                        "{arch} {}",
                        p.label
                    );
                }
            }
        }
    }

    #[test]
    fn the_x32_guard_refuses_x32_numbers_only() {
        assert!(x32_guard(SeccompArch::Aarch64).is_none());
        let guard = x32_guard(SeccompArch::X86_64).unwrap();
        assert_eq!(guard.bpf.len(), 7);
        for nr in [0, 16, 39, 321, 435, 511, 0x3fff_ffff] {
            assert_eq!(
                run(&guard.bpf, AUDIT_ARCH_X86_64, nr, [0; 6]),
                ALLOW,
                "{nr}"
            );
        }
        for nr in [0, 16, 39, 321, 512, 514, 547] {
            assert_eq!(
                run(&guard.bpf, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | nr, [0; 6]),
                errno(libc::ENOSYS),
                "x32 {nr}"
            );
        }
        assert_eq!(
            run(&guard.bpf, 3 | 0x4000_0000, 20, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn verdicts_table() {
        let x86 = sandbox_programs(SeccompArch::X86_64);
        let arm = sandbox_programs(SeccompArch::Aarch64);
        let x86_arch = AUDIT_ARCH_X86_64;
        let arm_arch = 183 | 0x8000_0000 | 0x4000_0000;
        let n = |arch: SeccompArch, name: &str| arch.syscall_number(name).unwrap() as u32;
        const NEWUSER: u64 = 0x1000_0000;
        const HI: u64 = 1 << 32;
        type Case = (&'static str, &'static str, [u64; 6], u32);
        let cases: [Case; 22] = [
            ("bpf", "bpf", [0; 6], errno(libc::EPERM)),
            (
                "io_uring",
                "io_uring_setup",
                [1, 0, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            ("clone3", "clone3", [0; 6], errno(libc::ENOSYS)),
            ("ptrace", "ptrace", [16, 1, 0, 0, 0, 0], ALLOW),
            ("fork-like clone", "clone", [0x11, 0, 0, 0, 0, 0], ALLOW),
            ("posix_spawn clone", "clone", [0x4111, 0, 0, 0, 0, 0], ALLOW),
            (
                "clone NEWUSER",
                "clone",
                [NEWUSER | 0x11, 0, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            (
                "clone NEWUSER + high bits",
                "clone",
                [HI | NEWUSER, 0, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            ("unshare NEWNS", "unshare", [0x20000, 0, 0, 0, 0, 0], ALLOW),
            (
                "unshare NEWUSER|NEWNS",
                "unshare",
                [NEWUSER | 0x20000, 0, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            ("socket AF_INET", "socket", [2, 1, 0, 0, 0, 0], ALLOW),
            ("socket AF_UNIX", "socket", [1, 1, 0, 0, 0, 0], ALLOW),
            (
                "socket AF_VSOCK",
                "socket",
                [40, 1, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            (
                "socket AF_VSOCK + high bits",
                "socket",
                [HI | 40, 1, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            ("ioctl TCGETS", "ioctl", [0, 0x5401, 0, 0, 0, 0], ALLOW),
            (
                "ioctl TIOCSTI",
                "ioctl",
                [0, 0x5412, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            (
                "ioctl TIOCSTI + high bits",
                "ioctl",
                [0, HI | 0x5412, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            (
                "ioctl TIOCLINUX",
                "ioctl",
                [0, 0x541c, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            (
                "personality query",
                "personality",
                [0xffff_ffff, 0, 0, 0, 0, 0],
                ALLOW,
            ),
            (
                "personality ADDR_NO_RANDOMIZE",
                "personality",
                [0x0040000, 0, 0, 0, 0, 0],
                ALLOW,
            ),
            (
                "personality READ_IMPLIES_EXEC",
                "personality",
                [0x0400000, 0, 0, 0, 0, 0],
                errno(libc::EPERM),
            ),
            ("read", "read", [0, 0, 0, 0, 0, 0], ALLOW),
        ];
        for (what, name, args, want) in cases {
            assert_eq!(
                verdict(&x86, x86_arch, n(SeccompArch::X86_64, name), args),
                want,
                "x86_64 {what}"
            );
            assert_eq!(
                verdict(&arm, arm_arch, n(SeccompArch::Aarch64, name), args),
                want,
                "aarch64 {what}"
            );
        }
        // x32 aliases and foreign architectures.
        let x32_bpf = X32_SYSCALL_BIT | n(SeccompArch::X86_64, "bpf");
        assert_eq!(
            verdict(&x86, x86_arch, x32_bpf, [0; 6]),
            errno(libc::ENOSYS)
        );
        assert_eq!(
            verdict(&x86, x86_arch, X32_SYSCALL_BIT | 39, [0; 6]),
            errno(libc::ENOSYS)
        );
        let i386 = 3 | 0x4000_0000;
        assert_eq!(
            verdict(&x86, i386, 20, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(
            verdict(&arm, x86_arch, 0, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }
}
