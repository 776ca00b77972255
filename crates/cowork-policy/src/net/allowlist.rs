//! A spawn's `allowedDomains`, parsed once.
//!
//! * `None` (an older client that sends no `allowedDomains`): every public
//!   destination is allowed, as if the list were `["*"]`; resolved
//!   addresses are still vetted.
//! * `Some([])`: nothing is allowed.
//! * Invalid entries are kept as [`PatternError`] warnings for the caller
//!   to log, and ignored.
//!
//! The daemon keys its sandboxes by [`AllowList::key`], so that a spawn
//! with a different allowlist gets a different sandbox: the key is the
//! sorted, deduplicated list of normalized valid patterns (or the
//! [`AllowListKey::Absent`] marker), so `["A.com", "a.com."]` and
//! `["a.com"]` share a sandbox.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::pattern::{Match, Pattern, PatternError};
use super::target::Target;

/// The canonical form of an allowlist: cheap to clone, compare and hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllowListKey {
    /// No `allowedDomains` was sent: public destinations allowed.
    Absent,
    /// The valid patterns, sorted and deduplicated (may be empty: nothing
    /// is allowed).
    Listed(Arc<[Pattern]>),
}

/// `absent` or the patterns in canonical text, comma-separated, in
/// brackets (`[*.example.com, example.com:443]`).
impl fmt::Display for AllowListKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowListKey::Absent => f.write_str("absent (all public destinations)"),
            AllowListKey::Listed(patterns) => {
                f.write_str("[")?;
                for (i, pattern) in patterns.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{pattern}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// The allowlist decision for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No pattern matches.
    Denied,
    /// A pattern matches; `exact` when an exact name or IP literal pattern
    /// does (not only `*` or `*.base`), which waives the resolved-address
    /// checks of [`super::vet_destinations`].
    Allowed { exact: bool },
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
    pub fn is_exact(self) -> bool {
        matches!(self, Decision::Allowed { exact: true })
    }
}

/// A parsed allowlist: its canonical key and the warnings of its parse.
///
/// Equality and hashing are those of the key (the warnings are reports
/// about the input, not part of the policy).
#[derive(Debug, Clone)]
pub struct AllowList {
    key: AllowListKey,
    warnings: Vec<PatternError>,
}

impl AllowList {
    /// From a spawn's `allowedDomains` (`None` when the client sent none).
    pub fn from_entries(entries: Option<&[String]>) -> AllowList {
        match entries {
            None => AllowList::absent(),
            Some(entries) => AllowList::from_patterns(entries),
        }
    }

    /// From a list of entries (`Some(list)`).
    pub fn from_patterns<S: AsRef<str>>(entries: &[S]) -> AllowList {
        let mut patterns = Vec::with_capacity(entries.len());
        let mut warnings = Vec::new();
        for entry in entries {
            match Pattern::parse(entry.as_ref()) {
                Ok(pattern) => patterns.push(pattern),
                Err(e) => warnings.push(e),
            }
        }
        patterns.sort();
        patterns.dedup();
        AllowList {
            key: AllowListKey::Listed(patterns.into()),
            warnings,
        }
    }

    /// The list of a client that sent no `allowedDomains`.
    pub fn absent() -> AllowList {
        AllowList {
            key: AllowListKey::Absent,
            warnings: Vec::new(),
        }
    }

    /// The canonical form (for the sandbox key).
    pub fn key(&self) -> &AllowListKey {
        &self.key
    }

    /// The entries that were refused, for the caller to log.
    pub fn warnings(&self) -> &[PatternError] {
        &self.warnings
    }

    /// The valid patterns (empty when absent).
    pub fn patterns(&self) -> &[Pattern] {
        match &self.key {
            AllowListKey::Absent => &[],
            AllowListKey::Listed(patterns) => patterns,
        }
    }

    /// Whether the client sent no `allowedDomains`.
    pub fn is_absent(&self) -> bool {
        self.key == AllowListKey::Absent
    }

    /// Whether `target` is listed, and whether exactly.
    pub fn check(&self, target: &Target) -> Decision {
        let AllowListKey::Listed(patterns) = &self.key else {
            return Decision::Allowed { exact: false };
        };
        let mut decision = Decision::Denied;
        for pattern in patterns.iter() {
            match pattern.matches(target) {
                Some(Match::Exact) => return Decision::Allowed { exact: true },
                Some(Match::Wildcard) => decision = Decision::Allowed { exact: false },
                None => {}
            }
        }
        decision
    }
}

impl PartialEq for AllowList {
    fn eq(&self, other: &AllowList) -> bool {
        self.key == other.key
    }
}

impl Eq for AllowList {}

impl Hash for AllowList {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pattern::InvalidPattern;
    use pretty_assertions::assert_eq;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::from_patterns(entries)
    }
    fn target(s: &str) -> Target {
        Target::parse_authority(s).unwrap()
    }
    const DENIED: Decision = Decision::Denied;
    const WILD: Decision = Decision::Allowed { exact: false };
    const EXACT: Decision = Decision::Allowed { exact: true };

    #[test]
    fn absent_empty_and_listed() {
        let absent = AllowList::from_entries(None);
        let empty = AllowList::from_entries(Some(&[]));
        assert!(absent.is_absent());
        assert!(!empty.is_absent());
        assert_eq!(absent.check(&target("example.com:443")), WILD);
        assert_eq!(absent.check(&target("127.0.0.1:80")), WILD);
        assert_eq!(empty.check(&target("example.com:443")), DENIED);
        assert_ne!(absent.key(), empty.key());
        assert_ne!(absent.key(), list(&["*"]).key());
    }

    #[test]
    fn check_table() {
        let allow = list(&[
            "github.com",
            "*.githubusercontent.com",
            "registry.npmjs.org:443",
            "*:8443",
            "127.0.0.2:8080",
            "[::1]",
            "localhost",
        ]);
        let cases = [
            ("github.com:443", EXACT),
            ("GitHub.com.:22", EXACT),
            ("api.github.com:443", DENIED),
            ("raw.githubusercontent.com:443", WILD),
            ("githubusercontent.com:443", DENIED),
            ("registry.npmjs.org:443", EXACT),
            ("registry.npmjs.org:80", DENIED),
            ("registry.npmjs.org:8443", WILD),
            ("anything.example:8443", WILD),
            ("127.0.0.2:8080", EXACT),
            ("127.0.0.2:8081", DENIED),
            ("127.0.0.2:8443", WILD),
            ("[::ffff:127.0.0.2]:8080", EXACT),
            ("[::1]:5432", EXACT),
            ("localhost:3000", EXACT),
            ("127.0.0.1:3000", DENIED),
            ("example.com:443", DENIED),
        ];
        for (t, want) in cases {
            assert_eq!(allow.check(&target(t)), want, "{t}");
        }
        // An exact pattern wins over a wildcard that also matches.
        let both = list(&["*", "example.com"]);
        assert_eq!(both.check(&target("example.com:1")), EXACT);
        assert_eq!(both.check(&target("a.example.com:1")), WILD);
    }

    #[test]
    fn key_is_canonical() {
        let a = list(&[
            "B.example",
            "a.example.",
            "*.c.example",
            "a.example",
            "[::1]",
        ]);
        let b = list(&[
            "[0::1]",
            "*.C.example",
            "a.example",
            "b.example",
            "bad/entry",
        ]);
        assert_eq!(a.key(), b.key());
        assert_eq!(a, b);
        assert_eq!(
            a.key().to_string(),
            "[a.example, b.example, *.c.example, [::1]]"
        );
        assert_eq!(a.warnings(), &[]);
        assert_eq!(b.warnings().len(), 1);
        assert_eq!(b.warnings()[0].reason, InvalidPattern::Path);

        let hash = |l: &AllowList| {
            use std::collections::hash_map::DefaultHasher;
            let mut h = DefaultHasher::new();
            l.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&b));
        // Ports and wildcard/apex are distinct patterns.
        let distinct = [
            list(&["a.example"]),
            list(&["a.example:443"]),
            list(&["*.a.example"]),
            list(&["*"]),
            list(&[]),
            AllowList::absent(),
        ];
        for (i, x) in distinct.iter().enumerate() {
            for (j, y) in distinct.iter().enumerate() {
                assert_eq!(x == y, i == j, "{} vs {}", x.key(), y.key());
            }
        }
        assert_eq!(
            AllowList::absent().key().to_string(),
            "absent (all public destinations)"
        );
    }

    #[test]
    fn invalid_entries_never_widen() {
        let allow = list(&[
            "http://example.com",
            "*.com",
            "a*.example",
            "*.[::1]",
            "::1",
        ]);
        assert_eq!(allow.patterns(), &[]);
        assert_eq!(allow.warnings().len(), 5);
        for t in ["example.com:80", "x.com:443", "ab.example:1", "[::1]:1"] {
            assert_eq!(allow.check(&target(t)), DENIED, "{t}");
        }
        assert_eq!(allow.key(), list(&[]).key());
    }
}
