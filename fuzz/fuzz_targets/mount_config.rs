//! The mount configuration file (`preferences.coworkBwrapMounts` of
//! `claude_desktop_linux_config.json`) through
//! `bwrap_config::load_bwrap_mounts` on a fake filesystem with symlinks
//! into forbidden trees, then the bwrap argument merge.
//!
//! Invariants: every accepted bind is absolute and outside `/proc`, `/dev`
//! and `/sys` (also through symlinks); every read-write source is inside
//! `$HOME` (by real path); no critical default mount is ever disabled; the
//! merged argument list keeps the critical defaults.
#![no_main]

use cowork_policy::bwrap_config::{CRITICAL, load_bwrap_mounts, merge_bwrap_args};
use cowork_policy::fs_view::{FakeFs, FsView};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn fs() -> FakeFs {
    cowork_fuzz::make_fake_fs()
        .symlink("/home/u/proc-link", "/proc/self")
        .symlink("/home/u/dev-link", "/dev")
        .symlink("/opt/tools", "/home/u/proj")
        .dir("/dev/shm")
        .dir("/sys/kernel")
}

fn forbidden(p: &Path) -> bool {
    p == Path::new("/") || ["/proc", "/dev", "/sys"].iter().any(|f| p.starts_with(f))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    static FS: std::sync::LazyLock<FakeFs> = std::sync::LazyLock::new(fs);
    let fs = &*FS;
    let home = Path::new("/home/u");
    let Ok((config, _warnings)) = load_bwrap_mounts(Some(text), home, fs) else {
        return;
    };
    let binds = config.ro_binds.iter().map(|b| (b, false));
    let binds = binds.chain(config.rw_binds.iter().map(|b| (b, true)));
    for (bind, read_write) in binds {
        for (path, is_src) in [(bind.src(), true), (bind.dst(), false)] {
            assert!(path.starts_with('/'), "{path:?}");
            let normal = cowork_policy::paths::normalize(Path::new(path));
            assert!(!forbidden(&normal), "{path:?} accepted");
            if let Some(real) = fs.canonicalize(&normal) {
                assert!(!forbidden(&real), "{path:?} -> {real:?} accepted");
                if read_write && is_src {
                    assert!(
                        real.starts_with(home),
                        "rw {path:?} -> {real:?} outside $HOME"
                    );
                }
            } else if read_write && is_src {
                assert!(normal.starts_with(home), "rw {path:?} outside $HOME");
            }
        }
    }
    for d in &config.disabled {
        assert!(
            d.starts_with('/') && !CRITICAL.contains(&d.as_str()),
            "{d:?}"
        );
    }
    let defaults: Vec<String> = [
        "--ro-bind",
        "/usr",
        "/usr",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--bind",
        "/home/u/proj",
        "/home/u/proj",
        "--ro-bind",
        "/",
        "/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let merged = merge_bwrap_args(&defaults, &config);
    for critical in ["--dev", "--proc"] {
        assert!(merged.iter().any(|a| a == critical), "{critical} dropped");
    }
    assert!(
        merged
            .windows(3)
            .any(|w| w[0] == "--ro-bind" && w[1] == "/" && w[2] == "/")
    );
});
