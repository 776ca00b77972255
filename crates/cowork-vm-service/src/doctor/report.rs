//! The doctor's findings and their two renderings: text for people
//! (`[PASS]` lines with indented hints, colour only on a terminal) and JSON
//! for machines.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Optional facts that do not affect the verdict (the KVM section when
    /// KVM is not asked for).
    Info,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Info => "INFO",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Status::Pass => "\x1b[32m",
            Status::Warn => "\x1b[33m",
            Status::Fail => "\x1b[31m",
            Status::Info => "\x1b[36m",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    pub title: String,
    /// What to do about it (one line each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
}

impl Check {
    pub fn new(status: Status, title: impl Into<String>) -> Self {
        Self {
            status,
            title: title.into(),
            hints: Vec::new(),
        }
    }

    pub fn hint(mut self, line: impl Into<String>) -> Self {
        self.hints.push(line.into());
        self
    }

    pub fn hints<I: IntoIterator<Item = String>>(mut self, lines: I) -> Self {
        self.hints.extend(lines);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Section {
    pub title: String,
    pub checks: Vec<Check>,
}

/// The backend the daemon would use, as the report states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendVerdict {
    /// `bwrap`, `host` or `kvm`: what the daemon builds.
    pub backend: String,
    /// What selection chose (differs from `backend` when an auto-selected
    /// KVM falls back to host in this build).
    pub selected: String,
    pub reason: String,
    pub overridden: bool,
    pub isolated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub info: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub version: String,
    pub verdict: BackendVerdict,
    pub sections: Vec<Section>,
}

impl Report {
    fn checks(&self) -> impl Iterator<Item = &Check> {
        self.sections.iter().flat_map(|s| s.checks.iter())
    }

    pub fn summary(&self) -> Summary {
        let count = |st: Status| self.checks().filter(|c| c.status == st).count();
        Summary {
            pass: count(Status::Pass),
            warn: count(Status::Warn),
            fail: count(Status::Fail),
            info: count(Status::Info),
        }
    }

    /// The process exit status: the number of failures (capped for the
    /// 8-bit status).
    pub fn exit_status(&self) -> u8 {
        u8::try_from(self.summary().fail).unwrap_or(u8::MAX)
    }

    pub fn render_text(&self, colour: bool) -> String {
        let (bold, reset) = if colour {
            ("\x1b[1m", "\x1b[0m")
        } else {
            ("", "")
        };
        let mut out = format!("{bold}cowork-vm-service {} doctor{reset}\n", self.version);
        for section in &self.sections {
            out.push_str(&format!("\n{bold}{}{reset}\n", section.title));
            for check in &section.checks {
                let label = check.status.label();
                let tag = if colour {
                    format!("{}[{label}]{reset}", check.status.colour())
                } else {
                    format!("[{label}]")
                };
                out.push_str(&format!("{tag} {}\n", check.title));
                for hint in &check.hints {
                    out.push_str(&format!("       {hint}\n"));
                }
            }
        }
        let s = self.summary();
        out.push_str(&format!(
            "\n{bold}Backend: {}{reset} ({}). {} passed, {} warnings, {} failed.\n",
            self.verdict.backend, self.verdict.reason, s.pass, s.warn, s.fail
        ));
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "summary".into(),
                serde_json::to_value(self.summary()).unwrap_or_default(),
            );
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[Status]) -> Report {
        Report {
            version: "1.2.3".into(),
            verdict: BackendVerdict {
                backend: "bwrap".into(),
                selected: "bwrap".into(),
                reason: "because".into(),
                overridden: false,
                isolated: true,
            },
            sections: vec![Section {
                title: "S".into(),
                checks: statuses
                    .iter()
                    .map(|s| Check::new(*s, "t").hint("do this"))
                    .collect(),
            }],
        }
    }

    #[test]
    fn exit_status_counts_failures_only() {
        let table: &[(&[Status], u8)] = &[
            (&[], 0),
            (&[Status::Pass, Status::Warn, Status::Info], 0),
            (&[Status::Fail], 1),
            (&[Status::Fail, Status::Warn, Status::Fail], 2),
        ];
        for (statuses, want) in table {
            assert_eq!(report(statuses).exit_status(), *want, "{statuses:?}");
        }
    }

    #[test]
    fn text_has_tags_hints_and_no_escapes_without_colour() {
        let text = report(&[Status::Fail]).render_text(false);
        assert!(text.contains("[FAIL] t\n       do this\n"), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(
            report(&[Status::Fail])
                .render_text(true)
                .contains("\x1b[31m[FAIL]")
        );
    }

    #[test]
    fn json_carries_statuses_and_summary() {
        let v = report(&[Status::Warn, Status::Fail]).to_json();
        assert_eq!(v["sections"][0]["checks"][0]["status"], "warn");
        assert_eq!(v["summary"]["fail"], 1);
        assert_eq!(v["verdict"]["backend"], "bwrap");
    }
}
