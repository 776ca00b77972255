//! The seccomp deny list of a session sandbox, from reviewed data.
//!
//! The rules are `resources/seccomp/sandbox.json` at the repository root
//! (one entry per syscall, or per syscall + argument condition, each with
//! its errno and a reason), embedded with `include_str!`. This module
//! turns them into BPF programs for one architecture: pure computation,
//! nothing is installed here (the agent does that, `agent/confine.rs`).
//!
//! Why our own schema and not seccompiler's JSON frontend: that format
//! gives one action per filter (we need EPERM for most entries and ENOSYS
//! for `clone3`), is specific to one architecture per file (`iopl` exists
//! only on x86_64) and has optional comments (we require a reason). The
//! syscall numbers come from the `syscalls` crate (tables of both
//! architectures, whatever the build target); the BPF from seccompiler's
//! backend, which starts every program with an architecture check that
//! kills the process on a foreign `AUDIT_ARCH` (so the i386 `int 0x80`
//! entry cannot bypass the numbers).
//!
//! The x32 ABI: on x86_64, x32 syscalls arrive with `AUDIT_ARCH_X86_64`
//! and `nr | 0x40000000`, which seccompiler's number-keyed rules never
//! match, so a default-allow list would let every x32 alias through. A
//! hand-written four-instruction program ([`x32_guard`]) answers ENOSYS to
//! any number with that bit, exactly what a kernel without x32 does.
//!
//! Result: one program per distinct errno (EPERM, ENOSYS) plus the x32
//! guard on x86_64. Stacked filters are all evaluated and the strictest
//! verdict wins; no syscall matches in two of ours. Syscalls that every
//! program allows unconditionally land in the kernel's per-filter
//! allow cache (5.11+), so they cost nothing after installation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};
use serde::Deserialize;

/// The reviewed rules, embedded at build time.
pub const SANDBOX_RULES_JSON: &str = include_str!("../../../../resources/seccomp/sandbox.json");

/// Architectures the filter is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeccompArch {
    X86_64,
    Aarch64,
}

impl SeccompArch {
    /// Every supported architecture.
    pub const ALL: [SeccompArch; 2] = [SeccompArch::X86_64, SeccompArch::Aarch64];

    /// The architecture of this build, or the refusal for any other.
    pub fn native() -> Result<Self, SeccompPlanError> {
        std::env::consts::ARCH.parse()
    }

    /// The name used in the data file and by `std::env::consts::ARCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            SeccompArch::X86_64 => "x86_64",
            SeccompArch::Aarch64 => "aarch64",
        }
    }

    /// The syscall number of `name` on this architecture.
    pub fn syscall_number(self, name: &str) -> Option<i64> {
        match self {
            SeccompArch::X86_64 => syscalls::x86_64::Sysno::from_str(name)
                .ok()
                .map(|s| i64::from(s.id())),
            SeccompArch::Aarch64 => syscalls::aarch64::Sysno::from_str(name)
                .ok()
                .map(|s| i64::from(s.id())),
        }
    }

    fn target(self) -> TargetArch {
        match self {
            SeccompArch::X86_64 => TargetArch::x86_64,
            SeccompArch::Aarch64 => TargetArch::aarch64,
        }
    }
}

impl FromStr for SeccompArch {
    type Err = SeccompPlanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" => Ok(SeccompArch::X86_64),
            "aarch64" => Ok(SeccompArch::Aarch64),
            other => Err(SeccompPlanError::UnsupportedArch(other.to_string())),
        }
    }
}

impl fmt::Display for SeccompArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the rules could not become programs.
#[derive(Debug, thiserror::Error)]
pub enum SeccompPlanError {
    #[error("seccomp: architecture {0} is not supported (x86_64 and aarch64 are)")]
    UnsupportedArch(String),
    #[error("seccomp rules: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("seccomp rules: the default action must be \"allow\" (this is a deny list), not {0:?}")]
    DefaultAction(String),
    #[error("seccomp rules: unknown syscall {name:?} on {arch}")]
    UnknownSyscall { name: String, arch: SeccompArch },
    #[error("seccomp rules: {syscall}: unknown errno {errno:?}")]
    UnknownErrno { syscall: String, errno: String },
    #[error("seccomp rules: {0}: the reason is empty")]
    EmptyReason(String),
    #[error("seccomp rules: {syscall}: bad value {value:?}")]
    BadValue { syscall: String, value: String },
    #[error("seccomp rules: {syscall}: {what}")]
    BadCondition { syscall: String, what: String },
    #[error(
        "seccomp rules: {0}: entries must all have conditions (or be a single unconditional entry) and share one errno"
    )]
    Conflict(String),
    #[error("seccomp rules: {0}")]
    Backend(#[from] seccompiler::BackendError),
}

/// The data file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Free text for reviewers.
    #[serde(default)]
    pub comment: String,
    pub default_action: String,
    pub rules: Vec<RuleEntry>,
}

/// One entry: a syscall (with optional argument conditions, all of which
/// must hold) answered with `errno`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    pub syscall: String,
    /// Limits the entry to these architectures (absent: all).
    #[serde(default)]
    pub arch: Option<Vec<String>>,
    #[serde(default)]
    pub args: Vec<ArgCondition>,
    pub errno: String,
    pub reason: String,
}

/// A condition on one argument.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgCondition {
    pub index: u8,
    /// `dword` (low 32 bits) or `qword`.
    #[serde(rename = "type")]
    pub width: String,
    /// `eq`, `ne` or `masked_eq` (`(arg & mask) == val`).
    pub op: String,
    #[serde(default)]
    pub mask: Option<Value>,
    pub val: Value,
    #[serde(default)]
    pub comment: Option<String>,
}

/// A number, written as a JSON number or a `"0x..."` string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Number(u64),
    Text(String),
}

impl Value {
    fn get(&self, syscall: &str) -> Result<u64, SeccompPlanError> {
        match self {
            Value::Number(n) => Ok(*n),
            Value::Text(s) => {
                let parsed = match s.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => s.parse().ok(),
                };
                parsed.ok_or_else(|| SeccompPlanError::BadValue {
                    syscall: syscall.to_string(),
                    value: s.clone(),
                })
            }
        }
    }
}

/// The errno names an entry may use.
const ERRNOS: [(&str, u32); 4] = [
    ("EPERM", libc::EPERM as u32),
    ("EACCES", libc::EACCES as u32),
    ("ENOSYS", libc::ENOSYS as u32),
    ("EINVAL", libc::EINVAL as u32),
];

fn errno_value(name: &str) -> Option<u32> {
    ERRNOS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

impl RuleFile {
    /// Parses and checks the file (names are checked per architecture by
    /// [`RuleFile::plan`]).
    pub fn parse(json: &str) -> Result<Self, SeccompPlanError> {
        let file: RuleFile = serde_json::from_str(json)?;
        if file.default_action != "allow" {
            return Err(SeccompPlanError::DefaultAction(file.default_action));
        }
        for entry in &file.rules {
            if entry.reason.trim().is_empty() {
                return Err(SeccompPlanError::EmptyReason(entry.syscall.clone()));
            }
            if errno_value(&entry.errno).is_none() {
                return Err(SeccompPlanError::UnknownErrno {
                    syscall: entry.syscall.clone(),
                    errno: entry.errno.clone(),
                });
            }
            for arch in entry.arch.iter().flatten() {
                arch.parse::<SeccompArch>()?;
            }
        }
        Ok(file)
    }

    /// The entries that apply on `arch`.
    pub fn entries_for(&self, arch: SeccompArch) -> impl Iterator<Item = &RuleEntry> {
        self.rules.iter().filter(move |e| match &e.arch {
            None => true,
            Some(list) => list.iter().any(|a| a == arch.as_str()),
        })
    }

    /// The plan for `arch`: syscall numbers resolved, entries grouped by
    /// errno.
    pub fn plan(&self, arch: SeccompArch) -> Result<SeccompPlan, SeccompPlanError> {
        let mut by_syscall: BTreeMap<i64, PlannedSyscall> = BTreeMap::new();
        for entry in self.entries_for(arch) {
            let nr = arch.syscall_number(&entry.syscall).ok_or_else(|| {
                SeccompPlanError::UnknownSyscall {
                    name: entry.syscall.clone(),
                    arch,
                }
            })?;
            let errno =
                errno_value(&entry.errno).ok_or_else(|| SeccompPlanError::UnknownErrno {
                    syscall: entry.syscall.clone(),
                    errno: entry.errno.clone(),
                })?;
            let conditions = entry
                .args
                .iter()
                .map(|c| condition(&entry.syscall, c))
                .collect::<Result<Vec<_>, _>>()?;
            let planned = by_syscall.entry(nr).or_insert_with(|| PlannedSyscall {
                name: entry.syscall.clone(),
                errno,
                alternatives: Vec::new(),
                unconditional: false,
            });
            let conflict = planned.errno != errno
                || planned.unconditional
                || (conditions.is_empty() && !planned.alternatives.is_empty());
            if conflict {
                return Err(SeccompPlanError::Conflict(entry.syscall.clone()));
            }
            if conditions.is_empty() {
                planned.unconditional = true;
            } else {
                planned.alternatives.push(conditions);
            }
        }
        Ok(SeccompPlan {
            arch,
            syscalls: by_syscall,
        })
    }
}

fn condition(syscall: &str, c: &ArgCondition) -> Result<SeccompCondition, SeccompPlanError> {
    let bad = |what: String| SeccompPlanError::BadCondition {
        syscall: syscall.to_string(),
        what,
    };
    let width = match c.width.as_str() {
        "dword" => SeccompCmpArgLen::Dword,
        "qword" => SeccompCmpArgLen::Qword,
        other => return Err(bad(format!("type {other:?} (dword or qword)"))),
    };
    let op = match (c.op.as_str(), &c.mask) {
        ("eq", None) => SeccompCmpOp::Eq,
        ("ne", None) => SeccompCmpOp::Ne,
        ("masked_eq", Some(mask)) => SeccompCmpOp::MaskedEq(mask.get(syscall)?),
        ("masked_eq", None) => return Err(bad("masked_eq needs a mask".into())),
        (op, Some(_)) if op == "eq" || op == "ne" => {
            return Err(bad(format!("{op} takes no mask")));
        }
        (other, _) => return Err(bad(format!("op {other:?} (eq, ne or masked_eq)"))),
    };
    Ok(SeccompCondition::new(
        c.index,
        width,
        op,
        c.val.get(syscall)?,
    )?)
}

/// One denied syscall on one architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSyscall {
    pub name: String,
    pub errno: u32,
    /// Each alternative is a list of conditions that must all hold; empty
    /// when `unconditional`.
    pub alternatives: Vec<Vec<SeccompCondition>>,
    pub unconditional: bool,
}

/// The deny list for one architecture, keyed by syscall number.
#[derive(Debug, Clone, PartialEq)]
pub struct SeccompPlan {
    pub arch: SeccompArch,
    pub syscalls: BTreeMap<i64, PlannedSyscall>,
}

/// One BPF program and what it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct SeccompProgram {
    /// `"EPERM"`, `"ENOSYS"`, `"x32"`: for logs and tests.
    pub label: String,
    pub bpf: BpfProgram,
}

/// Every program to install, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledFilters {
    pub arch: SeccompArch,
    pub programs: Vec<SeccompProgram>,
}

impl CompiledFilters {
    /// Total instructions, for reports.
    pub fn instructions(&self) -> usize {
        self.programs.iter().map(|p| p.bpf.len()).sum()
    }
}

impl SeccompPlan {
    /// The planned entry of the syscall called `name`, if denied.
    pub fn get(&self, name: &str) -> Option<&PlannedSyscall> {
        self.syscalls.values().find(|s| s.name == name)
    }

    /// Compiles to BPF: one program per errno, then the x32 guard on x86_64.
    pub fn compile(&self) -> Result<CompiledFilters, SeccompPlanError> {
        let mut by_errno: BTreeMap<u32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for (nr, s) in &self.syscalls {
            let rules = s
                .alternatives
                .iter()
                .map(|conds| SeccompRule::new(conds.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            by_errno.entry(s.errno).or_default().insert(*nr, rules);
        }
        let mut programs = Vec::with_capacity(by_errno.len() + 1);
        for (errno, rules) in by_errno {
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno),
                self.arch.target(),
            )?;
            let label = ERRNOS
                .iter()
                .find(|(_, v)| *v == errno)
                .map_or_else(|| errno.to_string(), |(n, _)| (*n).to_string());
            programs.push(SeccompProgram {
                label,
                bpf: filter.try_into()?,
            });
        }
        if self.arch == SeccompArch::X86_64 {
            programs.push(SeccompProgram {
                label: "x32".into(),
                bpf: x32_guard(),
            });
        }
        Ok(CompiledFilters {
            arch: self.arch,
            programs,
        })
    }
}

/// Compiles the embedded rules for `arch` (parse, resolve, generate):
/// about 150 us on a cold process, 50 us warm, so the agent uses the
/// precompiled [`sandbox_filters`] instead.
pub fn compile_sandbox_filters(arch: SeccompArch) -> Result<CompiledFilters, SeccompPlanError> {
    RuleFile::parse(SANDBOX_RULES_JSON)?.plan(arch)?.compile()
}

// The output of `compile_sandbox_filters` for both architectures, as Rust
// data: generated, checked by the `precompiled_filters_match_the_rules`
// test, regenerated with `COWORK_REGEN_SECCOMP=1 cargo test -p
// cowork-policy precompiled`.
#[path = "seccomp_bpf.rs"]
mod precompiled;

/// Instructions as `(code, jt, jf, k)`.
type RawProgram = (&'static str, &'static [(u16, u8, u8, u32)]);

/// The sandbox filters for `arch`: the embedded rules compiled at
/// development time (a copy of constant data, about a microsecond).
/// Identical to [`compile_sandbox_filters`] (a test checks it).
pub fn sandbox_filters(arch: SeccompArch) -> CompiledFilters {
    let raw: &[RawProgram] = match arch {
        SeccompArch::X86_64 => precompiled::X86_64,
        SeccompArch::Aarch64 => precompiled::AARCH64,
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

/// The text of `seccomp_bpf.rs` for the given compiled filters.
#[cfg(test)]
fn precompiled_source(all: &[CompiledFilters]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "// @generated by `COWORK_REGEN_SECCOMP=1 cargo test -p cowork-policy precompiled`\n\
         // from resources/seccomp/sandbox.json. Do not edit: edit the rules and regenerate.\n\n\
         use super::RawProgram;\n",
    );
    for compiled in all {
        let name = compiled.arch.as_str().to_ascii_uppercase();
        let _ = write!(
            out,
            "\n#[rustfmt::skip]\npub(super) const {name}: &[RawProgram] = &[\n"
        );
        for p in &compiled.programs {
            let _ = writeln!(out, "    (\"{}\", &[", p.label);
            for i in &p.bpf {
                let _ = writeln!(
                    out,
                    "        ({:#06x}, {}, {}, {:#010x}),",
                    i.code, i.jt, i.jf, i.k
                );
            }
            out.push_str("    ]),\n");
        }
        out.push_str("];\n");
    }
    out
}

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (linux/bpf_common.h).
/// `BPF_LD | BPF_W | BPF_ABS` (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// On x86_64, ENOSYS for every x32 syscall (`nr & 0x40000000`), allow the
/// rest. A foreign architecture is allowed here: the rule programs kill it.
pub fn x32_guard() -> BpfProgram {
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        stmt(BPF_LD_W_ABS, ARCH_OFFSET),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
        stmt(BPF_LD_W_ABS, NR_OFFSET),
        jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let want: &[&str] = match arch {
                SeccompArch::X86_64 => &["EPERM", "ENOSYS", "x32"],
                SeccompArch::Aarch64 => &["EPERM", "ENOSYS"],
            };
            assert_eq!(labels, want, "{arch}");
            for p in &compiled.programs {
                assert!(
                    !p.bpf.is_empty() && p.bpf.len() < 4096,
                    "{arch} {}",
                    p.label
                );
            }
        }
        for other in ["riscv64", "x86", "arm", "powerpc64", "s390x", ""] {
            assert!(
                matches!(other.parse::<SeccompArch>(), Err(SeccompPlanError::UnsupportedArch(a)) if a == other),
                "{other}"
            );
        }
    }

    #[test]
    fn precompiled_filters_match_the_rules() {
        let compiled: Vec<_> = SeccompArch::ALL
            .iter()
            .map(|a| compile_sandbox_filters(*a).unwrap())
            .collect();
        if std::env::var_os("COWORK_REGEN_SECCOMP").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/confine/seccomp_bpf.rs");
            std::fs::write(path, precompiled_source(&compiled)).unwrap();
            return;
        }
        for c in &compiled {
            assert!(
                sandbox_filters(c.arch) == *c,
                "resources/seccomp/sandbox.json changed: run \
                 COWORK_REGEN_SECCOMP=1 cargo test -p cowork-policy precompiled"
            );
        }
    }

    /// A tiny classic-BPF interpreter for the instructions our programs
    /// use, to check verdicts without installing anything.
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
            let class = i.code & 0x07;
            match class {
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

    #[test]
    fn verdicts_table() {
        let x86 = sandbox_filters(SeccompArch::X86_64);
        let arm = sandbox_filters(SeccompArch::Aarch64);
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
