//! Resource limits of one session sandbox, from what the client asked the
//! "VM" to be: `configure {memoryMB, cpuCount}` and `startVM {memoryGB,
//! cpuCount}`. Each session sandbox gets that much, as a VM would: the
//! memory (no swap beyond it), `cpuCount` cores of CPU time, and a process
//! count (`COWORK_VM_PIDS_MAX`, default 4096). The tmpfs mounts of the
//! sandbox are sized from the memory limit.

/// The environment variable that sets the process limit of each session
/// sandbox: a positive number, or `max` for none.
pub const PIDS_MAX_ENV: &str = "COWORK_VM_PIDS_MAX";

/// The reference daemon's defaults (`config = {memoryMB: 8192, cpuCount: 4}`).
pub const DEFAULT_MEMORY_MB: u64 = 8192;
pub const DEFAULT_CPUS: u32 = 4;
pub const DEFAULT_PIDS_MAX: u64 = 4096;
/// A smaller request is raised to this: below it nothing useful runs.
pub const MIN_MEMORY_BYTES: u64 = 256 * MIB;
/// The CFS period used for the CPU quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// One request that carries limits, in the order the daemon received them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRequest {
    Configure {
        memory_mb: Option<u64>,
        cpu_count: Option<u32>,
    },
    StartVm {
        memory_gb: Option<u64>,
        cpu_count: Option<u32>,
    },
}

/// The process limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidsMax {
    Limit(u64),
    Unlimited,
}

impl Default for PidsMax {
    fn default() -> Self {
        PidsMax::Limit(DEFAULT_PIDS_MAX)
    }
}

impl PidsMax {
    /// The value of `COWORK_VM_PIDS_MAX` (absent or empty: the default).
    pub fn from_env(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(PidsMax::default()),
            Some("max") => Ok(PidsMax::Unlimited),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(PidsMax::Limit(n)),
                _ => Err(format!(
                    "{PIDS_MAX_ENV}={v:?} is not a positive number or \"max\"; using {DEFAULT_PIDS_MAX}"
                )),
            },
        }
    }

    /// As cgroup files write it.
    pub fn as_cgroup_value(self) -> String {
        match self {
            PidsMax::Limit(n) => n.to_string(),
            PidsMax::Unlimited => "max".into(),
        }
    }
}

/// What bounds each session sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub memory_bytes: u64,
    pub cpus: u32,
    pub pids_max: PidsMax,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            memory_bytes: DEFAULT_MEMORY_MB * MIB,
            cpus: DEFAULT_CPUS,
            pids_max: PidsMax::default(),
        }
    }
}

impl SessionLimits {
    /// The limits after `requests` (oldest first): for each of memory and
    /// CPU the latest request that gives a usable value wins, absent or
    /// zero values leave the earlier one, nothing at all means the
    /// defaults. Memory is raised to [`MIN_MEMORY_BYTES`].
    pub fn from_requests(requests: &[LimitRequest], pids_max: PidsMax) -> Self {
        let start = SessionLimits {
            pids_max,
            ..SessionLimits::default()
        };
        requests
            .iter()
            .fold(start, |limits, r| limits.with_request(r))
    }

    /// These limits after one more request (what the daemon does on each
    /// `configure` and `startVM`, keeping the result).
    pub fn with_request(mut self, request: &LimitRequest) -> Self {
        let (memory, cpus) = match *request {
            LimitRequest::Configure {
                memory_mb,
                cpu_count,
            } => (memory_mb.and_then(|mb| mb.checked_mul(MIB)), cpu_count),
            LimitRequest::StartVm {
                memory_gb,
                cpu_count,
            } => (memory_gb.and_then(|gb| gb.checked_mul(GIB)), cpu_count),
        };
        if let Some(bytes) = memory.filter(|b| *b > 0) {
            self.memory_bytes = bytes.max(MIN_MEMORY_BYTES);
        }
        if let Some(n) = cpus.filter(|n| *n > 0) {
            self.cpus = n;
        }
        self
    }

    /// CFS quota for `cpus` cores per [`CPU_PERIOD_US`].
    pub fn cpu_quota_us(&self) -> u64 {
        u64::from(self.cpus) * CPU_PERIOD_US
    }
}

/// Sizes of the sandbox's tmpfs mounts, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmpfsSizes {
    /// The root `/`: mount points and bwrap's skeleton (Landlock keeps it
    /// read-only; this bounds it where Landlock is missing).
    pub root: u64,
    /// `/dev/shm`: a quarter of the memory, at most 2 GiB (browsers use it
    /// for shared buffers).
    pub dev_shm: u64,
    /// `/run`.
    pub run: u64,
}

impl TmpfsSizes {
    /// Sizes derived from the session's memory limit. Whatever is written
    /// to a tmpfs is also charged to the session's memory cgroup, so these
    /// matter most where cgroups are not enforced.
    pub fn for_memory(memory_bytes: u64) -> Self {
        TmpfsSizes {
            root: (memory_bytes / 32).clamp(16 * MIB, 256 * MIB),
            dev_shm: (memory_bytes / 4).min(2 * GIB),
            run: (memory_bytes / 64).clamp(4 * MIB, 32 * MIB),
        }
    }

    /// Replaces `--tmpfs /`: `--size N --tmpfs /`.
    pub fn root_args(&self) -> [String; 4] {
        sized_tmpfs(self.root, "/")
    }

    /// Replaces `--tmpfs /run`: `--size N --tmpfs /run`.
    pub fn run_args(&self) -> [String; 4] {
        sized_tmpfs(self.run, "/run")
    }

    /// Goes right after `--dev /dev`: bwrap 0.8's `--size` applies to
    /// `--tmpfs` only (not `--dev`), so `/dev/shm` becomes its own sized
    /// tmpfs over the directory `--dev` made, world-writable with the
    /// sticky bit like the host's.
    pub fn dev_shm_args(&self) -> [String; 6] {
        [
            "--perms".into(),
            "1777".into(),
            "--size".into(),
            self.dev_shm.to_string(),
            "--tmpfs".into(),
            "/dev/shm".into(),
        ]
    }
}

fn sized_tmpfs(bytes: u64, dest: &str) -> [String; 4] {
    [
        "--size".into(),
        bytes.to_string(),
        "--tmpfs".into(),
        dest.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configure(memory_mb: Option<u64>, cpu_count: Option<u32>) -> LimitRequest {
        LimitRequest::Configure {
            memory_mb,
            cpu_count,
        }
    }

    fn start(memory_gb: Option<u64>, cpu_count: Option<u32>) -> LimitRequest {
        LimitRequest::StartVm {
            memory_gb,
            cpu_count,
        }
    }

    #[test]
    fn limits_table() {
        let cases: Vec<(&str, Vec<LimitRequest>, u64, u32)> = vec![
            ("nothing: defaults", vec![], 8192 * MIB, 4),
            (
                "configure",
                vec![configure(Some(4096), Some(2))],
                4 * GIB,
                2,
            ),
            (
                "startVM after configure wins",
                vec![configure(Some(4096), Some(2)), start(Some(6), Some(3))],
                6 * GIB,
                3,
            ),
            (
                "configure after startVM wins",
                vec![start(Some(6), Some(3)), configure(Some(2048), Some(1))],
                2 * GIB,
                1,
            ),
            (
                "absent fields keep the earlier value",
                vec![configure(Some(4096), Some(2)), start(None, None)],
                4 * GIB,
                2,
            ),
            (
                "startVM memory only",
                vec![configure(Some(4096), Some(2)), start(Some(1), None)],
                GIB,
                2,
            ),
            (
                "zeros are ignored",
                vec![configure(Some(0), Some(0))],
                8192 * MIB,
                4,
            ),
            (
                "tiny memory is raised",
                vec![configure(Some(16), None)],
                256 * MIB,
                4,
            ),
            (
                "overflow is ignored",
                vec![start(Some(u64::MAX), Some(8))],
                8192 * MIB,
                8,
            ),
        ];
        for (what, requests, memory, cpus) in cases {
            let l = SessionLimits::from_requests(&requests, PidsMax::default());
            assert_eq!((l.memory_bytes, l.cpus), (memory, cpus), "{what}");
            assert_eq!(l.pids_max, PidsMax::Limit(4096), "{what}");
        }
        let folded = [configure(Some(4096), Some(2)), start(Some(6), None)]
            .iter()
            .fold(SessionLimits::default(), |l, r| l.with_request(r));
        assert_eq!(
            (folded.memory_bytes, folded.cpus),
            (6 * GIB, 2),
            "incremental"
        );
        let l = SessionLimits::from_requests(&[configure(None, Some(3))], PidsMax::Unlimited);
        assert_eq!(
            (l.cpu_quota_us(), l.pids_max),
            (300_000, PidsMax::Unlimited)
        );
    }

    #[test]
    fn pids_env_table() {
        let cases = [
            (None, Ok(PidsMax::Limit(4096))),
            (Some(""), Ok(PidsMax::Limit(4096))),
            (Some("512"), Ok(PidsMax::Limit(512))),
            (Some(" 100 "), Ok(PidsMax::Limit(100))),
            (Some("max"), Ok(PidsMax::Unlimited)),
            (Some("0"), Err(())),
            (Some("-1"), Err(())),
            (Some("lots"), Err(())),
        ];
        for (value, want) in cases {
            assert_eq!(PidsMax::from_env(value).map_err(|_| ()), want, "{value:?}");
        }
        assert_eq!(PidsMax::Limit(7).as_cgroup_value(), "7");
        assert_eq!(PidsMax::Unlimited.as_cgroup_value(), "max");
    }

    #[test]
    fn tmpfs_sizes_table() {
        let cases = [
            (8 * GIB, 256 * MIB, 2 * GIB, 32 * MIB),
            (4 * GIB, 128 * MIB, GIB, 32 * MIB),
            (GIB, 32 * MIB, 256 * MIB, 16 * MIB),
            (256 * MIB, 16 * MIB, 64 * MIB, 4 * MIB),
            (64 * GIB, 256 * MIB, 2 * GIB, 32 * MIB),
        ];
        for (memory, root, shm, run) in cases {
            let s = TmpfsSizes::for_memory(memory);
            assert_eq!((s.root, s.dev_shm, s.run), (root, shm, run), "{memory}");
            assert!(s.dev_shm <= memory / 4);
        }
        let s = TmpfsSizes::for_memory(GIB);
        assert_eq!(s.root_args(), ["--size", "33554432", "--tmpfs", "/"]);
        assert_eq!(s.run_args(), ["--size", "16777216", "--tmpfs", "/run"]);
        assert_eq!(
            s.dev_shm_args(),
            [
                "--perms",
                "1777",
                "--size",
                "268435456",
                "--tmpfs",
                "/dev/shm"
            ]
        );
    }
}
