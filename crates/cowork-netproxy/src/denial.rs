//! Reporting refused destinations to the daemon or the CLI.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cowork_policy::net::{Denial, DenyReason, Host};

use crate::serve::Protocol;

/// One refused destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenialEvent {
    /// The session label of the connection's context.
    pub session: Arc<str>,
    /// Which proxy refused it.
    pub protocol: Protocol,
    /// What and why.
    pub denial: Denial,
}

impl DenialEvent {
    pub fn host(&self) -> &Host {
        &self.denial.target.host
    }
    pub fn port(&self) -> u16 {
        self.denial.target.port
    }
    pub fn reason(&self) -> &DenyReason {
        &self.denial.reason
    }
}

/// Told of every refusal, on the connection's task: keep it quick (log,
/// or send to a channel).
pub trait DenialSink: Send + Sync {
    fn denied(&self, event: &DenialEvent);
}

impl<F: Fn(&DenialEvent) + Send + Sync> DenialSink for F {
    fn denied(&self, event: &DenialEvent) {
        self(event)
    }
}

/// Remembers which (session, host) pairs were seen, so that each is
/// reported once. Bounded: past `capacity` pairs it forgets them all and
/// starts again (a sandbox asking for endless distinct names gets repeated
/// reports rather than unbounded memory).
#[derive(Debug)]
pub struct DenialDedup {
    seen: Mutex<HashSet<(Arc<str>, Host)>>,
    capacity: usize,
}

impl DenialDedup {
    pub const DEFAULT_CAPACITY: usize = 4096;

    pub fn new(capacity: usize) -> DenialDedup {
        DenialDedup {
            seen: Mutex::new(HashSet::new()),
            capacity: capacity.max(1),
        }
    }

    /// Whether this is the first time `(session, host)` is seen (and
    /// remembers it).
    pub fn first_time(&self, session: &Arc<str>, host: &Host) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(&(Arc::clone(session), host.clone())) {
            return false;
        }
        if seen.len() >= self.capacity {
            seen.clear();
        }
        seen.insert((Arc::clone(session), host.clone()));
        true
    }

    /// Forgets a session's pairs (when its sandbox goes away).
    pub fn forget_session(&self, session: &str) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.retain(|(s, _)| &**s != session);
    }
}

impl Default for DenialDedup {
    fn default() -> DenialDedup {
        DenialDedup::new(DenialDedup::DEFAULT_CAPACITY)
    }
}

/// The default sink: logs each (session, host) once at info level through
/// `tracing`, and repeats at debug level.
#[derive(Debug, Default)]
pub struct LogDenials {
    dedup: DenialDedup,
}

impl LogDenials {
    pub fn new() -> LogDenials {
        LogDenials::default()
    }
}

impl DenialSink for LogDenials {
    fn denied(&self, event: &DenialEvent) {
        if self.dedup.first_time(&event.session, event.host()) {
            tracing::info!(
                session = %event.session,
                protocol = ?event.protocol,
                host = %event.host(),
                port = event.port(),
                reason = %event.reason(),
                "network egress blocked"
            );
        } else {
            tracing::debug!(
                session = %event.session,
                target = %event.denial.target,
                reason = %event.reason(),
                "network egress blocked again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn dedup_once_per_session_and_host() {
        let dedup = DenialDedup::new(3);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let x = Host::Name("x.example".into());
        let y = Host::Name("y.example".into());
        let steps = [
            (&a, &x, true),
            (&a, &x, false),
            (&b, &x, true),
            (&a, &y, true),
            (&a, &y, false),
            // Full (3 pairs): the next new pair starts afresh.
            (&b, &y, true),
            (&a, &x, true),
        ];
        for (session, host, want) in steps {
            assert_eq!(dedup.first_time(session, host), want, "{session} {host}");
        }
        dedup.forget_session("a");
        assert!(dedup.first_time(&a, &x));
        assert!(!dedup.first_time(&b, &y));
    }
}
