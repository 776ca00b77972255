//! The daemon log, in the reference's format and at its path:
//!
//! ```text
//! 2026-11-23T14:28:00.123Z [lifecycle] [cowork-vm-service] listening /run/user/1000/x.sock
//! ```
//!
//! Levels: `lifecycle` (always: startup, listening, signals, panics, exit),
//! `error` and `warn` (always, also echoed to stderr, which the 3.x client
//! captures), `info` (always, used sparingly), `debug` (only with
//! `COWORK_VM_DEBUG=1` / `CLAUDE_LINUX_DEBUG=1`, or after `setDebugLogging`).
//! The file is capped at [`MAX_LOG_BYTES`]; when full it is renamed to
//! `<name>.1` (replacing the previous one) and a new file is started.
//!
//! Emit lifecycle lines with `tracing::info!(target: "lifecycle", ...)`.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Size at which the log file is rotated.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// The target that marks lifecycle lines.
pub const LIFECYCLE: &str = "lifecycle";
/// Longest message text kept in one log line (a client can put megabytes
/// into a field that gets logged, e.g. a signal name).
const MAX_MESSAGE_BYTES: usize = 4096;

/// Whether debug logging was requested by the environment.
pub fn debug_from_env() -> bool {
    ["COWORK_VM_DEBUG", "CLAUDE_LINUX_DEBUG"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| v == "1"))
}

/// Handle to switch debug lines on and off at run time.
#[derive(Debug, Clone, Default)]
pub struct LogControl {
    debug: Arc<AtomicBool>,
}

impl LogControl {
    pub fn set_debug(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    pub fn debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }
}

/// Installs the global logger writing to `log_file`. `echo_errors` copies
/// warnings and errors to stderr. Logging never fails the caller: if the
/// file cannot be opened, lines are dropped (and echoed where enabled).
pub fn init(log_file: &Path, debug: bool, echo_errors: bool) -> LogControl {
    let control = LogControl::default();
    control.set_debug(debug);
    if let Some(dir) = log_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let layer = FileLayer {
        file: Mutex::new(RotatingFile::new(log_file.to_path_buf(), MAX_LOG_BYTES)),
        debug: control.debug.clone(),
        echo_errors,
    };
    // A second init (tests, `run` inside one process) keeps the first logger.
    let _ = tracing_subscriber::registry().with(layer).try_init();
    control
}

struct FileLayer {
    file: Mutex<RotatingFile>,
    debug: Arc<AtomicBool>,
    echo_errors: bool,
}

fn is_verbose(level: &Level) -> bool {
    *level == Level::DEBUG || *level == Level::TRACE
}

impl<S: Subscriber> Layer<S> for FileLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Debug call sites are re-checked each time: the flag can change.
        if is_verbose(meta.level()) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        !is_verbose(meta.level()) || self.debug.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let label = if meta.target() == LIFECYCLE {
            "lifecycle"
        } else {
            match *meta.level() {
                Level::ERROR => "error",
                Level::WARN => "warn",
                Level::INFO => "info",
                _ => "debug",
            }
        };
        let mut text = MessageText::default();
        event.record(&mut text);
        let stamp = humantime::format_rfc3339_millis(SystemTime::now());
        let line = format!(
            "{stamp} [{label}] [cowork-vm-service] {}\n",
            one_line(&text.0, MAX_MESSAGE_BYTES)
        );
        if self.echo_errors && (*meta.level() == Level::ERROR || *meta.level() == Level::WARN) {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let Ok(mut file) = self.file.lock() {
            file.write_line(line.as_bytes());
        }
    }
}

/// `text` as one log line of at most about `max` bytes: line breaks and
/// other control characters escaped (text from a client, a path or a
/// process's stderr cannot forge a line), the rest cut with its length said.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for c in text.chars() {
        if out.len() >= max {
            let _ = write!(out, "... ({} bytes in all)", text.len());
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            // Controls, and what viewers take for line breaks or use to
            // reorder text (line and paragraph separators, bidi controls).
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// An append-only file that starts over (keeping one old copy) at a size cap.
struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl RotatingFile {
    fn new(path: PathBuf, max: u64) -> Self {
        let mut me = Self {
            path,
            file: None,
            size: 0,
            max,
        };
        me.open();
        me
    }

    fn open(&mut self) {
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    }

    fn write_line(&mut self, line: &[u8]) {
        if self.size + line.len() as u64 > self.max && self.size > 0 {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, old);
            self.open();
        }
        if let Some(f) = self.file.as_mut()
            && f.write_all(line).is_ok()
        {
            self.size += line.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_cannot_be_forged_or_flooded() {
        let forged = "x\n2026-12-01T00:00:00.000Z [lifecycle] [cowork-vm-service] SIGTERM";
        let cases: &[(&str, usize, &str)] = &[
            ("plain", 100, "plain"),
            (
                forged,
                200,
                "x\\n2026-12-01T00:00:00.000Z [lifecycle] [cowork-vm-service] SIGTERM",
            ),
            ("a\r\u{1b}[2Jb\tc", 100, "a\\r\\u{1b}[2Jb\tc"),
            ("ééééé", 4, "éé... (10 bytes in all)"),
            ("a\u{2028}b\u{202e}c", 100, "a\\u{2028}b\\u{202e}c"),
        ];
        for &(text, max, want) in cases {
            assert_eq!(one_line(text, max), want, "{text:?}");
        }
        assert!(!one_line(&"\n".repeat(10_000), 4096).contains('\n'));
        assert!(one_line(&"y".repeat(9 << 20), 4096).len() < 4200);
    }

    #[test]
    fn rotating_file_keeps_one_old_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut f = RotatingFile::new(path.clone(), 10);
        f.write_line(b"12345678\n");
        f.write_line(b"abcdefgh\n");
        f.write_line(b"ABCDEFGH\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ABCDEFGH\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.log.1")).unwrap(),
            "abcdefgh\n"
        );
    }
}
