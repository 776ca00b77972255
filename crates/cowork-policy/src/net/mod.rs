//! Network egress policy of a sandbox: which destinations the proxy may
//! open for it. Pure decisions only; the proxy (`cowork-netproxy`) does
//! the I/O and asks these functions at each step.
//!
//! A connection goes through four checks, in this order:
//!
//! 1. the requested target is parsed and normalized ([`Target`]): lower
//!    case, trailing dot dropped, internationalized names in punycode,
//!    IPv4-mapped IPv6 literals decoded;
//! 2. the spawn's `allowedDomains` ([`AllowList`], built from
//!    [`Pattern`]s) decides [`Decision::Denied`] or
//!    [`Decision::Allowed`], noting whether the host was listed
//!    *exactly* (an exact name or IP literal, not a wildcard);
//! 3. the proxy resolves a name once and [`vet_destinations`] filters the
//!    addresses: loopback, private, link-local, metadata, the host's own
//!    interfaces and the rest of [`AddressClass`] are refused unless the
//!    host was listed exactly, and the proxy's own listening endpoints are
//!    always refused (loop guard);
//! 4. a refusal at any step is a [`Denial`], shown to the sandbox as an
//!    HTTP 403 ([`http_denial`]) or a SOCKS5 "not allowed by ruleset".
//!
//! [`proxy_env()`] is the environment every sandboxed process gets so that
//! its tools use the two in-sandbox proxy endpoints.

pub mod address;
pub mod allowlist;
pub mod denial;
pub mod host;
pub mod pattern;
pub mod proxy_env;
pub mod target;

pub use address::{
    AddressClass, AddressRefusal, Embedding, is_proxy_endpoint, vet_address, vet_destinations,
};
pub use allowlist::{AllowList, AllowListKey, Decision};
pub use denial::{
    BLOCKED_BY_ALLOWLIST, Denial, DenyReason, HttpDenial, PROXY_ERROR_HEADER, denial_line,
    http_denial,
};
pub use host::{Brackets, Host, HostError, parse_host};
pub use pattern::{HostPattern, InvalidPattern, Match, Pattern, PatternError};
pub use proxy_env::{
    HTTP_PROXY_ENDPOINT, HTTP_PROXY_URL, NO_PROXY, PROXY_ENV, SOCKS_PROXY_ENDPOINT,
    SOCKS_PROXY_URL, apply_proxy_env, proxy_env,
};
pub use target::{Target, TargetError};
