//! The guest's kernel: a distribution kernel, prepared once without root.
//!
//! `cowork-vm-service setup-vm` fetches the distribution's VM kernel
//! package with the package tool (`apt-get download linux-image-cloud-amd64`'s
//! versioned package, no root needed), unpacks it (`dpkg-deb -x`) into a
//! temporary directory and keeps only what a boot needs, in
//! `${XDG_CACHE_HOME:-~/.cache}/cowork-vm-service/guest/<version>/`:
//!
//! * `vmlinux`: the bzImage's payload decompressed once (LZ4 for the
//!   Debian cloud kernel), which QEMU boots through its PVH entry point,
//!   skipping the set-up code and the in-guest decompressor (about 0.7 s
//!   of every TCG boot); a kernel whose payload is not LZ4 is kept as
//!   `vmlinuz` and booted as a bzImage;
//! * `modules/`: the virtio and virtiofs modules (the Debian kernels build
//!   them as modules) with their dependencies, read from each module's
//!   `.modinfo` (the package ships no `modules.dep`; `depmod` may be
//!   absent), and `modules/order`, the load order.
//!
//! `<dir>/current` names the version in use. `COWORK_VM_GUEST_DIR` points
//! the daemon at another prepared directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The package whose dependency is the current cloud kernel.
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// Modules the guest needs (dependencies are added).
pub const WANTED_MODULES: [&str; 4] = ["virtio_mmio", "virtio_console", "fuse", "virtiofs"];
/// Overrides where the prepared guest is looked for.
pub const GUEST_DIR_ENV: &str = "COWORK_VM_GUEST_DIR";

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(
        "no guest kernel in {dir}: run `cowork-vm-service setup-vm` (it fetches the {KERNEL_PACKAGE} \
         package with apt-get, no root needed)"
    )]
    Missing { dir: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("the kernel image is not a bzImage or its payload is damaged: {0}")]
    Kernel(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

/// A prepared guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub version: String,
    /// `vmlinux` (PVH) or `vmlinuz` (bzImage).
    pub kernel: PathBuf,
    /// In load order.
    pub modules: Vec<PathBuf>,
}

/// `${XDG_CACHE_HOME:-~/.cache}/cowork-vm-service/guest`.
pub fn default_dir(home: &Path) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".cache"));
    cache.join("cowork-vm-service").join("guest")
}

/// Where the daemon looks: `COWORK_VM_GUEST_DIR`, else [`default_dir`].
pub fn guest_dir(home: &Path) -> PathBuf {
    std::env::var_os(GUEST_DIR_ENV)
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| default_dir(home))
}

/// The prepared guest in `dir`.
pub fn locate(dir: &Path) -> Result<GuestImage, GuestError> {
    let missing = || GuestError::Missing {
        dir: dir.to_path_buf(),
    };
    let version = std::fs::read_to_string(dir.join("current")).map_err(|_| missing())?;
    let version = version.trim().to_string();
    let base = dir.join(&version);
    let kernel = ["vmlinux", "vmlinuz"]
        .iter()
        .map(|k| base.join(k))
        .find(|p| p.is_file())
        .ok_or_else(missing)?;
    let order = std::fs::read_to_string(base.join("modules/order")).map_err(|_| missing())?;
    let modules: Vec<PathBuf> = order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|m| base.join("modules").join(format!("{m}.ko")))
        .collect();
    if let Some(absent) = modules.iter().find(|m| !m.is_file()) {
        return Err(GuestError::Setup(format!(
            "{} is missing: run `cowork-vm-service setup-vm` again",
            absent.display()
        )));
    }
    Ok(GuestImage {
        version,
        kernel,
        modules,
    })
}

/// Prepares the guest in `dir` unless it is there; `say` gets progress
/// lines.
pub fn setup(dir: &Path, say: &mut dyn FnMut(&str)) -> Result<GuestImage, GuestError> {
    if let Ok(image) = locate(dir) {
        say(&format!(
            "guest kernel {} already prepared in {}",
            image.version,
            dir.display()
        ));
        return Ok(image);
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let work = tempfile::Builder::new()
        .prefix(".setup-")
        .tempdir_in(dir)
        .map_err(io("a work directory"))?;
    let package = kernel_package()?;
    say(&format!("fetching {package} with apt-get download"));
    run(Command::new("apt-get")
        .arg("download")
        .arg(&package)
        .current_dir(work.path()))?;
    let deb = std::fs::read_dir(work.path())
        .map_err(io("the download"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| GuestError::Setup("apt-get download left no .deb".into()))?;
    let unpacked = work.path().join("x");
    say(&format!("unpacking {}", deb.display()));
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let image = install_from_tree(&unpacked, dir, say)?;
    say(&format!(
        "guest kernel {} ready in {}",
        image.version,
        dir.display()
    ));
    Ok(image)
}

/// The versioned package `linux-image-cloud-amd64` depends on.
fn kernel_package() -> Result<String, GuestError> {
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_PACKAGE])
        .output()
        .map_err(io(
            "running apt-cache (setup-vm needs Debian's package tools)",
        ))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(String::from)
        .ok_or_else(|| {
            GuestError::Setup(format!(
                "apt-cache knows no {KERNEL_PACKAGE} (is this Debian or a derivative, with `apt-get \
                 update` done?)"
            ))
        })
}

fn run(cmd: &mut Command) -> Result<(), GuestError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(io(format!("running {shown}")))?;
    if !out.status.success() {
        return Err(GuestError::Setup(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Installs kernel and modules from an unpacked kernel package (`root`
/// holds `boot/vmlinuz-*` and `lib/modules/<version>/`) into `dir`.
pub fn install_from_tree(
    root: &Path,
    dir: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<GuestImage, GuestError> {
    let modroot = root.join("lib/modules");
    let version = std::fs::read_dir(&modroot)
        .map_err(io(format!("reading {}", modroot.display())))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| GuestError::Setup("the package has no modules".into()))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    let bz = std::fs::read(&vmlinuz).map_err(io(format!("reading {}", vmlinuz.display())))?;
    let target = dir.join(&version);
    let staging = dir.join(format!(".{version}.partial"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("modules")).map_err(io("creating the guest directory"))?;
    match extract_vmlinux(&bz) {
        Ok(elf) => {
            say(&format!(
                "decompressed the kernel ({} MB ELF, booted through PVH)",
                elf.len() >> 20
            ));
            std::fs::write(staging.join("vmlinux"), elf).map_err(io("writing vmlinux"))?;
        }
        Err(e) => {
            say(&format!("keeping the bzImage ({e})"));
            std::fs::write(staging.join("vmlinuz"), &bz).map_err(io("writing vmlinuz"))?;
        }
    }
    let found = index_modules(&modroot.join(&version))?;
    let order = module_order(&WANTED_MODULES, &|name| {
        let path = found.iter().find(|(n, _)| n == name).map(|(_, p)| p)?;
        let bytes = std::fs::read(path).ok()?;
        Some(modinfo_depends(&bytes))
    })
    .map_err(GuestError::Setup)?;
    for name in &order {
        let (_, path) = found
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| GuestError::Setup(format!("module {name} not in the package")))?;
        std::fs::copy(path, staging.join("modules").join(format!("{name}.ko")))
            .map_err(io(format!("copying {name}")))?;
    }
    std::fs::write(staging.join("modules/order"), order.join("\n") + "\n")
        .map_err(io("writing the module order"))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target).map_err(io("installing the guest directory"))?;
    std::fs::write(dir.join("current"), format!("{version}\n")).map_err(io("writing current"))?;
    locate(dir)
}

/// `(name, path)` of every `.ko` below `dir` (names with `-` as `_`).
fn index_modules(dir: &Path) -> Result<Vec<(String, PathBuf)>, GuestError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(format!("reading {}", d.display())))? {
            let entry = entry.map_err(io("reading the modules"))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.push((name.replace('-', "_"), path));
            }
        }
    }
    Ok(out)
}

/// Load order of `wanted` and their dependencies (dependencies first);
/// `depends` gives a module's `depends=` list, `None` if it is not there.
pub fn module_order(
    wanted: &[&str],
    depends: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Vec<String>, String> {
    fn visit(
        name: &str,
        depends: &dyn Fn(&str) -> Option<Vec<String>>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if order.iter().any(|m| m == name) {
            return Ok(());
        }
        if path.iter().any(|m| m == name) {
            return Err(format!("module dependency cycle through {name}"));
        }
        let deps = depends(name).ok_or_else(|| format!("module {name} not found"))?;
        path.push(name.to_string());
        for d in deps {
            visit(&d, depends, order, path)?;
        }
        path.pop();
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for w in wanted {
        visit(w, depends, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The `.modinfo` section of an ELF64 module.
fn modinfo(ko: &[u8]) -> Option<&[u8]> {
    if ko.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let shoff = usize::try_from(le_u64(ko, 0x28)?).ok()?;
    let shentsize = le_u16(ko, 0x3a)? as usize;
    let shnum = le_u16(ko, 0x3c)? as usize;
    let shstrndx = le_u16(ko, 0x3e)? as usize;
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            le_u32(ko, h)?,
            usize::try_from(le_u64(ko, h + 0x18)?).ok()?,
            usize::try_from(le_u64(ko, h + 0x20)?).ok()?,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let names = ko.get(stroff..stroff.checked_add(strsize)?)?;
    (0..shnum).find_map(|i| {
        let (name, off, size) = section(i)?;
        let name = names.get(name as usize..)?;
        let end = name.iter().position(|&c| c == 0)?;
        (&name[..end] == b".modinfo").then(|| ko.get(off..off.checked_add(size)?))?
    })
}

/// A module's `depends=` entries (empty when it has none or no modinfo).
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    let Some(info) = modinfo(ko) else {
        return Vec::new();
    };
    info.split(|&c| c == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|&c| c == b','))
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).replace('-', "_"))
        .collect()
}

/// The uncompressed kernel ELF inside a bzImage whose payload is LZ4
/// (legacy frame format, as the kernel build writes it).
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>, GuestError> {
    let bad = |why: &str| GuestError::Kernel(why.to_string());
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no HdrS setup header"));
    }
    let setup_sects = match bz.get(0x1f1).copied().ok_or_else(|| bad("short image"))? {
        0 => 4,
        n => n as usize,
    };
    let payload_offset = le_u32(bz, 0x248).ok_or_else(|| bad("no payload offset"))? as usize;
    let payload_length = le_u32(bz, 0x24c).ok_or_else(|| bad("no payload length"))? as usize;
    let start = (setup_sects + 1) * 512 + payload_offset;
    let payload = bz
        .get(start..start.saturating_add(payload_length))
        .ok_or_else(|| bad("payload out of bounds"))?;
    let elf = decompress_lz4_legacy(payload)?;
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err(bad("the payload is not an ELF image"));
    }
    Ok(elf)
}

/// LZ4's legacy frame: a magic number, then blocks of (u32 LE compressed
/// size, data), each at most 8 MiB uncompressed; the kernel appends the
/// uncompressed size (4 bytes), which ends the walk.
fn decompress_lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, GuestError> {
    const MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
    const BLOCK: usize = 8 << 20;
    if payload.get(..4) != Some(&MAGIC) {
        return Err(GuestError::Kernel(
            "the payload is not LZ4 (only LZ4, the cloud kernel's, is decompressed)".into(),
        ));
    }
    let mut out = Vec::new();
    let mut at = 4;
    let mut block = vec![0u8; BLOCK];
    while at + 4 < payload.len() {
        let size = le_u32(payload, at).unwrap_or(0) as usize;
        if size == u32::from_le_bytes(MAGIC) as usize {
            // A concatenated frame: its magic again.
            at += 4;
            continue;
        }
        let data = match payload.get(at + 4..at + 4 + size) {
            Some(d) if size > 0 => d,
            // The trailing uncompressed size, or the end.
            _ => break,
        };
        let n = lz4_flex::block::decompress_into(data, &mut block)
            .map_err(|e| GuestError::Kernel(format!("LZ4 block at {at}: {e}")))?;
        out.extend_from_slice(&block[..n]);
        at += 4 + size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn modules_load_after_their_dependencies() {
        let deps = |name: &str| -> Option<Vec<String>> {
            let d: &[&str] = match name {
                "virtio_ring" | "fuse" => &[],
                "virtio" => &["virtio_ring"],
                "virtio_mmio" | "virtio_console" => &["virtio", "virtio_ring"],
                "virtiofs" => &["fuse", "virtio", "virtio_ring"],
                _ => return None,
            };
            Some(d.iter().map(|s| s.to_string()).collect())
        };
        assert_eq!(
            module_order(&WANTED_MODULES, &deps).unwrap(),
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_console",
                "fuse",
                "virtiofs"
            ]
        );
        assert!(module_order(&["nope"], &deps).is_err());
        let cyclic = |n: &str| Some(vec![if n == "a" { "b" } else { "a" }.to_string()]);
        assert!(module_order(&["a"], &cyclic).unwrap_err().contains("cycle"));
    }

    #[test]
    fn lz4_legacy_frames_decompress_block_by_block() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut payload = vec![0x02, 0x21, 0x4c, 0x18];
        for chunk in data.chunks(300_000) {
            let c = lz4_flex::block::compress(chunk);
            payload.extend((c.len() as u32).to_le_bytes());
            payload.extend(c);
        }
        payload.extend((data.len() as u32).to_le_bytes());
        assert_eq!(decompress_lz4_legacy(&payload).unwrap(), data);
        assert!(decompress_lz4_legacy(b"\x1f\x8b\x08\0gzip").is_err());
    }

    #[test]
    fn a_bzimage_without_a_setup_header_is_refused() {
        assert!(extract_vmlinux(&[0u8; 4096]).is_err());
        assert!(extract_vmlinux(b"short").is_err());
    }

    #[test]
    fn modinfo_of_garbage_is_empty() {
        assert!(modinfo_depends(b"not an elf").is_empty());
        assert!(modinfo_depends(b"\x7fELF\x02\x01\x01").is_empty());
    }
}
