//! Black-box tests: the real binary, driven over its socket like the
//! desktop client drives it. One test binary (fast to link); areas are
//! modules under `suite/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod suite;
