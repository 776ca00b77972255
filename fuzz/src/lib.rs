//! Helpers shared by the fuzz targets: a deterministic chunker that splits
//! a byte stream the way the first input byte says, a JSON comparison that
//! tolerates the last-bit float drift of serde_json's default float parser,
//! the method -> parameter-type table of the daemon's dispatcher, and a
//! small fake filesystem for the path policies.

use cowork_policy::fs_view::FakeFs;
use cowork_policy::mounts::{Mount, MountMap, MountMode, MountRules};
use cowork_protocol::params;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::LazyLock;

/// Splits `stream` into chunks whose sizes follow from `seed`: `0` is the
/// whole stream at once, any other value a xorshift sequence of sizes from
/// 1 to `seed` (so small seeds mean byte-by-byte feeding).
pub fn chunks(seed: u8, stream: &[u8]) -> Vec<&[u8]> {
    if seed == 0 || stream.is_empty() {
        return vec![stream];
    }
    let mut state = u32::from(seed).wrapping_mul(0x9e37_79b9) | 1;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (state % u32::from(seed)) as usize + 1;
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// JSON equality where two numbers that are not both integers compare as
/// `f64` within a relative 1e-15: serde_json's default (not
/// `float_roundtrip`) parser may land one bit off on long mantissas, which
/// is not a bug of ours.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Parses `params` as the dispatcher does for `method` (the same types,
/// through [`params::parse`]) and runs the pure policy the daemon applies
/// to a parsed spawn or kill. `None` for a method the daemon does not
/// know.
pub fn dispatch_params(method: &str, value: Value) -> Option<Result<(), String>> {
    use params::*;
    fn typed<T: for<'de> serde::Deserialize<'de>>(method: &str, v: Value) -> Result<T, String> {
        let parsed = parse::<T>(method, v);
        if let Err(e) = &parsed {
            assert!(e.starts_with("Invalid params for "), "{e}");
        }
        parsed
    }
    let r = match method {
        "configure" => typed::<ConfigureParams>(method, value).map(drop),
        "createVM" => typed::<CreateVmParams>(method, value).map(drop),
        "startVM" => typed::<StartVmParams>(method, value).map(drop),
        "stopVM" | "isRunning" | "isGuestConnected" | "getNetworkDrives" => Ok(()),
        "spawn" => typed::<SpawnParams>(method, value).map(|p| spawn_policy(&p)),
        "kill" => typed::<KillParams>(method, value).map(|p| {
            let signal = match p.signal {
                None => cowork_policy::signal::ParsedSignal::DefaultedToTerm,
                Some(SignalSpec::Name(name)) => cowork_policy::signal::parse_signal(&name),
                Some(SignalSpec::Number(n)) => cowork_policy::signal::signal_from_number(n),
            };
            let n = signal.number();
            assert!((1..=31).contains(&n), "{n}");
            assert!(cowork_policy::signal::signal_name(n).starts_with("SIG"));
        }),
        "writeStdin" => typed::<WriteStdinParams>(method, value).map(drop),
        "isProcessRunning" => typed::<ProcessIdParams>(method, value).map(drop),
        "mountPath" => typed::<MountPathParams>(method, value).map(|p| {
            if let Some(name) = &p.mount_name {
                let _ = cowork_policy::names::validate_mount_name(name);
            }
            if let Some(sub) = &p.subpath {
                let home = PathBuf::from("/home/u");
                let host = cowork_policy::paths::resolve_subpath(sub, &home, fake_fs());
                assert!(host.is_absolute());
            }
        }),
        "readFile" => typed::<ReadFileParams>(method, value).map(drop),
        "installSdk" => typed::<InstallSdkParams>(method, value).map(drop),
        "addApprovedOauthToken" => typed::<TokenParams>(method, value).map(drop),
        "setDebugLogging" => typed::<SetDebugLoggingParams>(method, value).map(drop),
        "sendGuestResponse" => typed::<SendGuestResponseParams>(method, value).map(drop),
        "getSessionsDiskInfo" => typed::<SessionsDiskInfoParams>(method, value).map(drop),
        "deleteSessionDirs" => typed::<DeleteSessionDirsParams>(method, value).map(|p| {
            for name in &p.names {
                let _ = cowork_policy::names::validate_session_name(name);
            }
        }),
        "pruneSessionCaches" => typed::<PruneSessionCachesParams>(method, value).map(drop),
        "subscribeEvents" => typed::<SubscribeEventsParams>(method, value).map(drop),
        _ => {
            assert!(!METHODS.contains(&method), "{method} has no parser here");
            return None;
        }
    };
    Some(r)
}

/// The pure decisions the daemon takes on a parsed spawn: session name,
/// mount map, argument rewriting, working directory, allowlist.
fn spawn_policy(p: &params::SpawnParams) {
    let _ = cowork_policy::names::validate_session_name(&p.name);
    let fs = fake_fs();
    let rules = rules();
    let additional = p
        .additional_mounts
        .as_ref()
        .map(|m| m.0.clone())
        .unwrap_or_default();
    let (map, _rejected) = cowork_policy::mounts::build_mount_map(&additional, &[], &rules, fs);
    for mount in map.iter() {
        assert!(mount.host.is_absolute(), "{mount:?}");
        assert!(
            cowork_policy::mounts::check_mount_source(&mount.host, &rules, fs).is_ok(),
            "{mount:?} passed the map but not the check"
        );
    }
    if let Some(args) = &p.args {
        let _ = cowork_policy::args::clean_spawn_args(args, &map, fs);
    }
    let cwd = cowork_policy::command::resolve_work_dir(
        p.cwd.as_deref(),
        p.shared_cwd_path.as_deref(),
        &map,
        &rules.home,
        fs,
    );
    assert!(cwd.is_absolute() || p.cwd.is_some(), "{cwd:?}");
    let list = cowork_policy::net::AllowList::from_entries(p.allowed_domains.as_deref());
    for pattern in list.patterns() {
        assert_eq!(
            cowork_policy::net::Pattern::parse(&pattern.to_string()).as_ref(),
            Ok(pattern)
        );
    }
}

/// A small machine: a home with a project, a symlink out of it, system
/// trees, another user's home (built once).
pub fn fake_fs() -> &'static FakeFs {
    static FS: LazyLock<FakeFs> = LazyLock::new(make_fake_fs);
    &FS
}

/// A fresh [`fake_fs`], for targets that add to it.
pub fn make_fake_fs() -> FakeFs {
    FakeFs::new()
        .dir("/home/u/proj/src")
        .dir("/home/u/.ssh")
        .dir("/home/other/secret")
        .dir("/mnt/storage/big")
        .dir("/etc")
        .dir("/usr/bin")
        .dir("/proc/self")
        .dir("/var/home/v")
        .file("/home/u/proj/run.sh", true)
        .symlink("/home/u/link-etc", "/etc")
        .symlink("/home/u/link-up", "../..")
        .symlink("/home/u/proj/loop", "loop")
        .symlink("/home/v", "/var/home/v")
}

/// The mount rules of `/home/u` on [`fake_fs`].
pub fn rules() -> MountRules {
    MountRules {
        home: PathBuf::from("/home/u"),
        home_real: PathBuf::from("/home/u"),
        other_homes: vec![PathBuf::from("/home/other")],
    }
}

/// A mount map like a session's: a primary project, dot-named mounts,
/// uploads, the whole root read-only (built once).
pub fn session_map() -> &'static MountMap {
    static MAP: LazyLock<MountMap> = LazyLock::new(make_session_map);
    &MAP
}

fn make_session_map() -> MountMap {
    let mut map = MountMap::new();
    for (name, host, mode) in [
        ("proj", "/home/u/proj", MountMode::ReadWrite),
        (".claude", "/home/u/.claude", MountMode::ReadWrite),
        (".skills", "/home/u/skills", MountMode::ReadOnly),
        ("uploads", "/home/u/uploads", MountMode::ReadWrite),
        ("root", "/", MountMode::ReadOnly),
    ] {
        map.insert(Mount {
            name: name.into(),
            host: PathBuf::from(host),
            mode,
        });
    }
    map
}
