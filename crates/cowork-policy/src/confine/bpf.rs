//! Classic-BPF generation for the seccomp deny list: one program, with a
//! binary search over syscall numbers.
//!
//! Why not seccompiler's generator: it emits one linear chain per filter
//! (every syscall compared in turn) and one filter per action. Installing
//! a filter makes the kernel emulate it for every syscall number to build
//! its allow cache, so the linear chain of our ~50 entries cost 220 us at
//! `seccomp()` on the project's machine, plus ~20 us per extra filter;
//! this layout costs about a third of that. seccompiler stays the
//! reference: a test compares both programs' verdicts for every syscall
//! number and many argument values, and seccompiler installs the program.
//!
//! Layout:
//!
//! ```text
//! ld arch; jeq AUDIT_ARCH ? +1 : kill_process
//! ld nr
//! [x86_64] jset 0x40000000 ? ret ENOSYS      (x32 ABI)
//! jge pivot ? right : left                     (binary search)
//!   left/right: groups of at most GROUP syscalls:
//!     jeq nr ? <leaf> : next;  ...;  ret ALLOW
//! leaf: ret ERRNO, or per alternative the argument checks (any failing
//!       check skips to the next alternative), ret ERRNO; then ret ALLOW
//! ```

use seccompiler::{BpfProgram, sock_filter};

/// Syscalls compared linearly at the bottom of the search tree.
const GROUP: usize = 4;
/// The kernel's limit on a program's length.
const MAX_LEN: usize = 4096;

// Classic BPF opcodes (linux/bpf_common.h).
/// `BPF_LD | BPF_W | BPF_ABS`.
const LD_W_ABS: u16 = 0x20;
/// `BPF_ALU | BPF_AND | BPF_K`.
const ALU_AND_K: u16 = 0x54;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE_K: u16 = 0x35;
/// `BPF_JMP | BPF_JSET | BPF_K`.
const JSET_K: u16 = 0x45;
/// `BPF_RET | BPF_K`.
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data` (little-endian arguments).
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;

pub(super) const RET_ALLOW: u32 = 0x7fff_0000;
pub(super) const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub(super) const RET_ERRNO: u32 = 0x0005_0000;
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

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

/// What one syscall number gets.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaf<'a> {
    pub errno: u32,
    /// Each alternative's checks must all hold; empty: unconditional.
    pub alternatives: &'a [Vec<ArgCheck>],
}

/// Why generation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BpfError {
    #[error("a jump of {0} instructions does not fit classic BPF's 8-bit offsets")]
    JumpTooFar(usize),
    #[error("{0} instructions exceed the kernel's limit of 4096")]
    TooLong(usize),
    #[error("argument index {0} (0 to 5)")]
    ArgIndex(u8),
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: usize, jf: usize) -> Result<sock_filter, BpfError> {
    let short = |n: usize| u8::try_from(n).map_err(|_| BpfError::JumpTooFar(n));
    Ok(sock_filter {
        code,
        jt: short(jt)?,
        jf: short(jf)?,
        k,
    })
}

fn ret_errno(errno: u32) -> sock_filter {
    stmt(RET_K, RET_ERRNO | (errno & 0xffff))
}

/// The program: `audit_arch` is the only architecture allowed (others
/// are killed); `x32` adds the x32 guard; `entries` are sorted by number.
pub(super) fn generate(
    audit_arch: u32,
    x32: bool,
    entries: &[(u32, Leaf<'_>)],
) -> Result<BpfProgram, BpfError> {
    let mut out = vec![
        stmt(LD_W_ABS, ARCH_OFFSET),
        jump(JEQ_K, audit_arch, 1, 0)?,
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR_OFFSET),
    ];
    if x32 {
        out.push(jump(JSET_K, X32_SYSCALL_BIT, 0, 1)?);
        out.push(ret_errno(libc::ENOSYS as u32));
    }
    let leaves = entries
        .iter()
        .map(|(nr, leaf)| Ok((*nr, leaf_code(leaf)?)))
        .collect::<Result<Vec<_>, BpfError>>()?;
    out.extend(tree(&leaves)?);
    if out.len() > MAX_LEN {
        return Err(BpfError::TooLong(out.len()));
    }
    Ok(out)
}

/// Binary search down to groups of [`GROUP`] compared in turn. Every path
/// ends in a `ret`, so blocks never fall into each other.
fn tree(entries: &[(u32, Vec<sock_filter>)]) -> Result<Vec<sock_filter>, BpfError> {
    if entries.len() <= GROUP {
        let mut out = Vec::new();
        for (nr, leaf) in entries {
            out.push(jump(JEQ_K, *nr, 0, leaf.len())?);
            out.extend_from_slice(leaf);
        }
        out.push(stmt(RET_K, RET_ALLOW));
        return Ok(out);
    }
    let mid = entries.len() / 2;
    let left = tree(&entries[..mid])?;
    let right = tree(&entries[mid..])?;
    let mut out = Vec::with_capacity(1 + left.len() + right.len());
    out.push(jump(JGE_K, entries[mid].0, left.len(), 0)?);
    out.extend(left);
    out.extend(right);
    Ok(out)
}

/// A failing check's jump, patched once the alternative's length is known.
const FAIL: u8 = u8::MAX;

fn leaf_code(leaf: &Leaf<'_>) -> Result<Vec<sock_filter>, BpfError> {
    if leaf.alternatives.is_empty() {
        return Ok(vec![ret_errno(leaf.errno)]);
    }
    let mut out = Vec::new();
    for alternative in leaf.alternatives {
        // (instruction, which offset means "fail")
        let mut code: Vec<(sock_filter, Option<bool>)> = Vec::new();
        for check in alternative {
            checks(check, &mut code)?;
        }
        code.push((ret_errno(leaf.errno), None));
        let len = code.len();
        for (pc, (insn, fail)) in code.iter_mut().enumerate() {
            // Past this alternative's `ret` = the next alternative.
            let to_end = len - pc - 1;
            match fail {
                Some(true) => insn.jt = jump(JEQ_K, 0, to_end, 0)?.jt,
                Some(false) => insn.jf = jump(JEQ_K, 0, 0, to_end)?.jf,
                None => {}
            }
        }
        out.extend(code.into_iter().map(|(insn, _)| insn));
    }
    out.push(stmt(RET_K, RET_ALLOW));
    Ok(out)
}

/// Appends the instructions of one check; `Some(true)` marks a jump whose
/// `jt` means "fail", `Some(false)` one whose `jf` does.
fn checks(check: &ArgCheck, code: &mut Vec<(sock_filter, Option<bool>)>) -> Result<(), BpfError> {
    if check.index > 5 {
        return Err(BpfError::ArgIndex(check.index));
    }
    let lo_offset = ARGS_OFFSET + 8 * u32::from(check.index);
    let hi_offset = lo_offset + 4;
    let (hi, lo) = ((check.value >> 32) as u32, check.value as u32);
    let fail_if_different = |code: &mut Vec<_>, offset, mask: Option<u32>, value| {
        code.push((stmt(LD_W_ABS, offset), None));
        if let Some(mask) = mask {
            code.push((stmt(ALU_AND_K, mask), None));
        }
        code.push((
            sock_filter {
                code: JEQ_K,
                jt: 0,
                jf: FAIL,
                k: value,
            },
            Some(false),
        ));
    };
    match (check.op, check.width) {
        (CmpOp::Eq, ArgWidth::Dword) => fail_if_different(code, lo_offset, None, lo),
        (CmpOp::Eq, ArgWidth::Qword) => {
            fail_if_different(code, hi_offset, None, hi);
            fail_if_different(code, lo_offset, None, lo);
        }
        (CmpOp::MaskedEq(mask), ArgWidth::Dword) => {
            fail_if_different(code, lo_offset, Some(mask as u32), lo)
        }
        (CmpOp::MaskedEq(mask), ArgWidth::Qword) => {
            fail_if_different(code, hi_offset, Some((mask >> 32) as u32), hi);
            fail_if_different(code, lo_offset, Some(mask as u32), lo);
        }
        (CmpOp::Ne, width) => {
            if width == ArgWidth::Qword {
                // Different high words: the check holds, skip the low one.
                code.push((stmt(LD_W_ABS, hi_offset), None));
                code.push((jump(JEQ_K, hi, 0, 2)?, None));
            }
            code.push((stmt(LD_W_ABS, lo_offset), None));
            code.push((
                sock_filter {
                    code: JEQ_K,
                    jt: FAIL,
                    jf: 0,
                    k: lo,
                },
                Some(true),
            ));
        }
    }
    Ok(())
}
