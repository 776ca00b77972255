//! The guest's initramfs: a raw (uncompressed: decompressing under TCG
//! costs about 0.5 s) newc cpio archive holding
//!
//! ```text
//! /init                         this binary (the agent as init), stripped
//! /usr/lib/.../ld-linux*.so.2   its loader and libraries, at their real
//! /usr/lib/.../libc.so.6        paths (virtiofs replaces /usr later; the
//!                               running agent keeps its mappings)
//! /lib /lib64 /bin /sbin        the host's symlinks into /usr (merged /usr)
//! /dev/console                  so init's output reaches the serial console
//! /cowork/modules/*.ko, order   the virtio and virtiofs modules
//! /proc /sys /tmp /run ...      mount points
//! ```
//!
//! Built once per (binary, kernel) and cached next to the guest kernel.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::guest::{GuestError, GuestImage};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// A newc archive being written.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    paths: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        if !self.paths.insert(name.to_string()) {
            return;
        }
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            let _ = write!(self.buf, "{f:08x}");
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// A directory and its missing parents.
    pub fn dir(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            let p = prefix.clone();
            self.entry(&p, S_IFDIR | 0o755, (0, 0), &[]);
        }
    }

    fn parent_dirs(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
        {
            self.dir(parent);
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent_dirs(path);
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent_dirs(path);
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parent_dirs(path);
        self.entry(path, S_IFCHR | (mode & 0o7777), (major, minor), &[]);
    }

    /// Whether `path` is in the archive already.
    pub fn has(&self, path: &str) -> bool {
        self.paths.contains(path.trim_start_matches('/'))
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.paths.remove("TRAILER!!!");
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

/// Adds host file `path` at the same path, recreating each symlink on
/// the way (so `/lib64/ld-linux-x86-64.so.2` resolves in the guest as on
/// the host).
fn add_host_path(cpio: &mut Cpio, path: &Path) -> Result<(), GuestError> {
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut hops = 0;
    while let Some(p) = pending.pop() {
        hops += 1;
        if hops > 40 {
            return Err(GuestError::Setup(format!(
                "too many symlinks resolving {}",
                path.display()
            )));
        }
        let mut prefix = PathBuf::from("/");
        let parts: Vec<Component> = p.components().collect();
        for (i, part) in parts.iter().enumerate() {
            let Component::Normal(name) = part else {
                continue;
            };
            prefix.push(name);
            let meta =
                std::fs::symlink_metadata(&prefix).map_err(io(format!("{}", prefix.display())))?;
            let shown = prefix.to_string_lossy().into_owned();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&prefix).map_err(io(format!("reading {shown}")))?;
                cpio.symlink(&shown, &target.to_string_lossy());
                let mut next = match target.is_absolute() {
                    true => target,
                    false => prefix.parent().unwrap_or(Path::new("/")).join(target),
                };
                for rest in &parts[i + 1..] {
                    next.push(rest);
                }
                pending.push(next);
                break;
            }
            if meta.is_dir() {
                cpio.dir(&shown);
            } else if !cpio.has(&shown) {
                let data = std::fs::read(&prefix).map_err(io(format!("reading {shown}")))?;
                cpio.file(&shown, meta.mode(), &data);
            }
        }
    }
    Ok(())
}

/// The shared libraries `binary` loads, from `ldd` (the loader included).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, GuestError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io("running ldd"))?;
    if !out.status.success() {
        return Err(GuestError::Setup(format!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The paths in `ldd` output.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// This binary without symbols and debug information (a debug build is
/// about 90 MB, stripped 14 MB; every MB costs the guest about 45 ms to
/// unpack under TCG), or as it is when `strip` is missing.
fn stripped(binary: &Path, scratch: &Path) -> Result<Vec<u8>, GuestError> {
    let out = scratch.join("init.stripped");
    let ok = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .output()
        .is_ok_and(|o| o.status.success());
    let from = if ok { out.as_path() } else { binary };
    let data = std::fs::read(from).map_err(io(format!("reading {}", from.display())))?;
    let _ = std::fs::remove_file(&out);
    Ok(data)
}

/// Builds the archive for `agent` and `image`.
pub fn build(agent: &Path, image: &GuestImage, scratch: &Path) -> Result<Vec<u8>, GuestError> {
    let mut cpio = Cpio::default();
    for d in [
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/run",
        "/etc",
        "/sessions",
        "/root",
    ] {
        cpio.dir(d);
    }
    cpio.char_device("/dev/console", 0o600, 5, 1);
    for top in ["/lib", "/lib64", "/bin", "/sbin"] {
        if let Ok(target) = std::fs::read_link(top) {
            cpio.symlink(top, &target.to_string_lossy());
        }
    }
    for lib in libraries(agent)? {
        add_host_path(&mut cpio, &lib)?;
    }
    cpio.file("/init", 0o755, &stripped(agent, scratch)?);
    let mut order = String::new();
    for module in &image.modules {
        let name = module
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let data = std::fs::read(module).map_err(io(format!("reading {}", module.display())))?;
        cpio.file(&format!("/cowork/modules/{name}.ko"), 0o644, &data);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("/cowork/modules/order", 0o644, order.as_bytes());
    Ok(cpio.finish())
}

/// The initramfs of a daemon's VMs, found again at every boot: the cache
/// is shared by every daemon of the user's, and a daemon of another version
/// (an upgrade while the old one runs) removes the archives that are not
/// its own. The agent is read through `/proc/<pid>/exe`, which stays this
/// daemon's binary even after the file on disk is replaced.
#[derive(Debug, Clone)]
pub struct Initrd {
    pub agent: PathBuf,
    pub image: GuestImage,
    pub cache: PathBuf,
}

impl Initrd {
    /// This process's initramfs in `cache`.
    pub fn of_this_process(image: GuestImage, cache: PathBuf) -> Self {
        Self {
            agent: PathBuf::from(format!("/proc/{}/exe", std::process::id())),
            image,
            cache,
        }
    }

    /// The archive's path, rebuilt first if it is gone (a stat otherwise).
    pub fn path(&self) -> Result<PathBuf, GuestError> {
        cached(&self.agent, &self.image, &self.cache)
    }
}

/// The cached archive for `agent` and `image` in `cache`, built when
/// missing (older ones are removed).
pub fn cached(agent: &Path, image: &GuestImage, cache: &Path) -> Result<PathBuf, GuestError> {
    let meta = std::fs::metadata(agent).map_err(io(format!("{}", agent.display())))?;
    let key = format!(
        "init-{}-{}-{}-{}.cpio",
        image.version,
        meta.len(),
        meta.mtime(),
        meta.ino()
    );
    let path = cache.join(&key);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache).map_err(io(format!("creating {}", cache.display())))?;
    let scratch = tempfile::Builder::new()
        .prefix(".initramfs-")
        .tempdir_in(cache)
        .map_err(io("a scratch directory"))?;
    let data = build(agent, image, scratch.path())?;
    let partial = scratch.path().join("init.cpio");
    std::fs::write(&partial, data).map_err(io("writing the initramfs"))?;
    std::fs::rename(&partial, &path).map_err(io("installing the initramfs"))?;
    if let Ok(entries) = std::fs::read_dir(cache) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("init-") && name.ends_with(".cpio") && name != key {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn an_archive_another_daemon_removed_is_rebuilt_at_the_next_boot() {
        let cache = tempfile::tempdir().unwrap();
        let image = GuestImage {
            version: "6.1-test".into(),
            kernel: PathBuf::from("/nonexistent/vmlinux"),
            modules: Vec::new(),
        };
        let ours = Initrd {
            agent: PathBuf::from("/bin/true"),
            image: image.clone(),
            cache: cache.path().to_path_buf(),
        };
        let first = ours.path().unwrap();
        assert!(first.is_file());
        // A daemon of another version builds its own and removes ours.
        let other = Initrd {
            agent: PathBuf::from("/bin/false"),
            ..ours.clone()
        };
        other.path().unwrap();
        assert!(!first.exists(), "the other daemon's build removed ours");
        assert_eq!(ours.path().unwrap(), first);
        assert!(first.is_file(), "rebuilt for our next boot");
    }

    #[test]
    fn this_process_agent_is_its_running_binary() {
        use std::os::unix::fs::MetadataExt;
        let image = GuestImage {
            version: "v".into(),
            kernel: PathBuf::new(),
            modules: Vec::new(),
        };
        let initrd = Initrd::of_this_process(image, PathBuf::new());
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            std::fs::metadata(&initrd.agent).unwrap().ino(),
            std::fs::metadata(exe).unwrap().ino()
        );
    }

    /// (name, mode, data) of each entry.
    fn entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        while at < archive.len() {
            assert_eq!(&archive[at..at + 6], b"070701");
            let field = |i: usize| hex(&archive[at + 6 + i * 8..at + 14 + i * 8]);
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name_at = at + 110;
            let name =
                String::from_utf8(archive[name_at..name_at + namesize - 1].to_vec()).unwrap();
            let data_at = (name_at + namesize).next_multiple_of(4);
            let data = archive[data_at..data_at + size].to_vec();
            at = (data_at + size).next_multiple_of(4);
            out.push((name, mode, data));
        }
        out
    }

    #[test]
    fn archives_are_newc_with_parents_first_and_a_trailer() {
        let mut c = Cpio::default();
        c.file("/cowork/modules/order", 0o644, b"virtio\n");
        c.symlink("/lib64", "usr/lib64");
        c.char_device("/dev/console", 0o600, 5, 1);
        c.file("/cowork/modules/order", 0o644, b"twice is ignored");
        let got = entries(&c.finish());
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "cowork",
                "cowork/modules",
                "cowork/modules/order",
                "lib64",
                "dev",
                "dev/console",
                "TRAILER!!!"
            ]
        );
        assert_eq!(got[2].1, S_IFREG | 0o644);
        assert_eq!(got[2].2, b"virtio\n");
        assert_eq!(got[3].1 & 0o170000, S_IFLNK);
        assert_eq!(got[3].2, b"usr/lib64");
        assert_eq!(got[5].1, S_IFCHR | 0o600);
    }

    #[test]
    fn ldd_output_gives_the_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn host_paths_keep_their_symlinks() {
        let mut c = Cpio::default();
        add_host_path(&mut c, Path::new("/lib64/ld-linux-x86-64.so.2")).unwrap();
        let got = entries(&c.finish());
        // Whatever the host's chain, the loader's real file is in, and
        // every symlink on the way is recreated.
        assert!(
            got.iter()
                .any(|(n, m, d)| n.ends_with("ld-linux-x86-64.so.2")
                    && m & 0o170000 == S_IFREG
                    && !d.is_empty())
        );
        if std::fs::read_link("/lib64").is_ok() {
            assert!(
                got.iter()
                    .any(|(n, m, _)| n == "lib64" && m & 0o170000 == S_IFLNK)
            );
        }
    }
}
