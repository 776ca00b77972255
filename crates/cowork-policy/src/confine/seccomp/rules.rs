//! The seccomp rules as data and their compilation with seccompiler:
//! parsing `resources/seccomp/sandbox.json`, resolving syscall names per
//! architecture, grouping entries by errno, and one `SeccompFilter` per
//! errno. Pure, and self-contained (only external crates) because the
//! crate's build script compiles it too (`build.rs`, `#[path]`), to turn
//! the rules into BPF once, at build time.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;

/// The reviewed rules, embedded at build time.
pub const SANDBOX_RULES_JSON: &str = include_str!("../../../../../resources/seccomp/sandbox.json");

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

    /// seccompiler's name for it.
    pub fn target(self) -> TargetArch {
        match self {
            SeccompArch::X86_64 => TargetArch::x86_64,
            SeccompArch::Aarch64 => TargetArch::aarch64,
        }
    }

    /// `AUDIT_ARCH_*`: `EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
    pub fn audit_arch(self) -> u32 {
        let machine = match self {
            SeccompArch::X86_64 => 62,
            SeccompArch::Aarch64 => 183,
        };
        machine | 0x8000_0000 | 0x4000_0000
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
    #[error("seccomp rules: argument index {index} of {syscall} (0 to 5)")]
    ArgIndex { syscall: String, index: u8 },
    #[error("seccomp rules: {0}")]
    Seccompiler(#[from] seccompiler::BackendError),
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

pub(crate) fn errno_value(name: &str) -> Option<u32> {
    ERRNOS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The name of an errno of [`ERRNOS`] (the label of its filter).
fn errno_name(value: u32) -> &'static str {
    ERRNOS
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("errno", |(n, _)| n)
}

/// How much of an argument is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgWidth {
    /// The low 32 bits only (upper bits cannot dodge the rule).
    Dword,
    /// All 64 bits.
    Qword,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

/// One condition on a syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCheck {
    /// 0 to 5.
    pub index: u8,
    pub width: ArgWidth,
    pub op: CmpOp,
    pub value: u64,
}

impl ArgCheck {
    /// seccompiler's form of the check.
    fn condition(&self, syscall: &str) -> Result<SeccompCondition, SeccompPlanError> {
        let width = match self.width {
            ArgWidth::Dword => SeccompCmpArgLen::Dword,
            ArgWidth::Qword => SeccompCmpArgLen::Qword,
        };
        let op = match self.op {
            CmpOp::Eq => SeccompCmpOp::Eq,
            CmpOp::Ne => SeccompCmpOp::Ne,
            CmpOp::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
        };
        SeccompCondition::new(self.index, width, op, self.value).map_err(|_| {
            SeccompPlanError::ArgIndex {
                syscall: syscall.to_string(),
                index: self.index,
            }
        })
    }
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

fn condition(syscall: &str, c: &ArgCondition) -> Result<ArgCheck, SeccompPlanError> {
    let bad = |what: String| SeccompPlanError::BadCondition {
        syscall: syscall.to_string(),
        what,
    };
    let width = match c.width.as_str() {
        "dword" => ArgWidth::Dword,
        "qword" => ArgWidth::Qword,
        other => return Err(bad(format!("type {other:?} (dword or qword)"))),
    };
    let op = match (c.op.as_str(), &c.mask) {
        ("eq", None) => CmpOp::Eq,
        ("ne", None) => CmpOp::Ne,
        ("masked_eq", Some(mask)) => CmpOp::MaskedEq(mask.get(syscall)?),
        ("masked_eq", None) => return Err(bad("masked_eq needs a mask".into())),
        (op, Some(_)) if op == "eq" || op == "ne" => {
            return Err(bad(format!("{op} takes no mask")));
        }
        (other, _) => return Err(bad(format!("op {other:?} (eq, ne or masked_eq)"))),
    };
    if c.index > 5 {
        return Err(bad(format!("argument index {} (0 to 5)", c.index)));
    }
    Ok(ArgCheck {
        index: c.index,
        width,
        op,
        value: c.val.get(syscall)?,
    })
}

/// One denied syscall on one architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSyscall {
    pub name: String,
    pub errno: u32,
    /// Each alternative is a list of conditions that must all hold; empty
    /// when `unconditional`.
    pub alternatives: Vec<Vec<ArgCheck>>,
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
    /// For logs and errors: the errno of a rules filter (`"EPERM"`,
    /// `"ENOSYS"`), or `"x32"`.
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

    /// Compiles with seccompiler: one `SeccompFilter` per errno (the
    /// action of a filter is fixed), default allow, in errno order (EPERM,
    /// the long one, first). Each program starts with seccompiler's
    /// architecture check (anything else is killed), then compares the
    /// syscall number with each entry in turn.
    pub fn compile(&self) -> Result<CompiledFilters, SeccompPlanError> {
        let mut by_errno: BTreeMap<u32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for (nr, s) in &self.syscalls {
            let rules = s
                .alternatives
                .iter()
                .map(|alternative| {
                    let conditions = alternative
                        .iter()
                        .map(|c| c.condition(&s.name))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(SeccompRule::new(conditions)?)
                })
                .collect::<Result<Vec<_>, SeccompPlanError>>()?;
            by_errno.entry(s.errno).or_default().insert(*nr, rules);
        }
        let programs = by_errno
            .into_iter()
            .map(|(errno, rules)| {
                let filter = SeccompFilter::new(
                    rules,
                    SeccompAction::Allow,
                    SeccompAction::Errno(errno),
                    self.arch.target(),
                )?;
                Ok(SeccompProgram {
                    label: errno_name(errno).to_string(),
                    bpf: filter.try_into()?,
                })
            })
            .collect::<Result<_, SeccompPlanError>>()?;
        Ok(CompiledFilters {
            arch: self.arch,
            programs,
        })
    }
}

/// Compiles the embedded rules for `arch` (parse, resolve, compile): about
/// 80 us in a fresh process, mostly the JSON, which is why the build
/// script does it once (see `sandbox_filters`).
pub fn compile_sandbox_filters(arch: SeccompArch) -> Result<CompiledFilters, SeccompPlanError> {
    RuleFile::parse(SANDBOX_RULES_JSON)?.plan(arch)?.compile()
}
