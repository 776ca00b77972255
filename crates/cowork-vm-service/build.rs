//! Link-time choices that make exec'ing this binary cheaper.
//!
//! Why: the binary is exec'd as pid 1 of every new sandbox (`agent`), so
//! the dynamic loader's work is paid on every session's first command. On
//! the CI machine (a VM where page faults and CPUID exits are slow), each
//! of these measured about 0.06-0.1 ms of that exec:
//!
//! 1. **The unwinder is linked statically** instead of loading
//!    `libgcc_s.so.1` (whose constructor probes the CPU). std asks for
//!    `-lgcc_s` on `*-linux-gnu` unless crt-static is on, and a static glibc
//!    is not an option (std then starts processes with fork instead of
//!    posix_spawn). The linker looks `-l` names up in `-L` directories in
//!    order, ours first, so a linker script named `libgcc_s.so` there that
//!    names gcc's `libgcc_eh.a` (the same unwinder as an archive: what
//!    `gcc -static-libgcc` and crt-static builds use) takes its place. Rust's
//!    Android target used the same kind of script when the NDK dropped libgcc.
//! 2. **Relative relocations are packed** (`DT_RELR`, glibc 2.36+): the
//!    loader reads about 1 KiB of relocations instead of about 100 KiB.
//!
//! `libm` is kept out by `src/lean_linking.rs`. Each step applies only where
//! it is known to work (a native `*-linux-gnu` build, `libgcc_eh.a` found,
//! glibc new enough) and says so otherwise; `COWORK_PLAIN_LINK=1` turns both
//! off.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    println!("cargo:rerun-if-env-changed=COWORK_PLAIN_LINK");
    if env::var_os("COWORK_PLAIN_LINK").is_some() || !native_linux_gnu() {
        return;
    }
    link_unwinder_statically();
    if glibc_version().is_some_and(|v| v >= (2, 36)) {
        // Binaries only: the test harnesses gain nothing from it.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    } else {
        println!("cargo:warning=glibc older than 2.36: relative relocations stay unpacked");
    }
}

/// A dynamically linked glibc target built on (and for) this machine; the
/// probes below ask this machine's tools.
fn native_linux_gnu() -> bool {
    let cfg = |key: &str| env::var(key).unwrap_or_default();
    let crt_static = cfg("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    cfg("CARGO_CFG_TARGET_OS") == "linux"
        && cfg("CARGO_CFG_TARGET_ENV") == "gnu"
        && !crt_static
        && (cfg("TARGET") == cfg("HOST") || env::var_os("RUSTC_LINKER").is_some())
}

fn link_unwinder_statically() {
    let linker = env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_owned());
    let Some(archive) = static_unwinder(&linker) else {
        println!(
            "cargo:warning=libgcc_eh.a not found through `{linker} -print-file-name`; \
             the binary will load libgcc_s.so.1 (slower sandbox start)"
        );
        return;
    };
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let dir = out_dir.join("static-unwinder");
    let script = format!("INPUT({})\n", archive.display());
    if let Err(e) =
        fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join("libgcc_s.so"), script))
    {
        println!("cargo:warning=could not write the libgcc_s linker script: {e}");
        return;
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
}

/// The absolute path of `libgcc_eh.a` as the linker driver resolves it.
fn static_unwinder(linker: &str) -> Option<PathBuf> {
    let out = Command::new(linker)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let printed = String::from_utf8(out.stdout).ok()?;
    let path = Path::new(printed.trim());
    // Not found, the driver echoes the bare name back.
    (out.status.success() && path.is_absolute() && path.is_file()).then(|| path.to_path_buf())
}

/// This machine's glibc as (major, minor), from `getconf GNU_LIBC_VERSION`
/// ("glibc 2.36").
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let printed = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = printed.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
