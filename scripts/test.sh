#!/usr/bin/env bash
# The test command (see README): installs what the tests need when run as
# root, checks formatting and lints, and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    # System packages the sandbox and VM tests use.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap qemu-system-x86 >/dev/null
    # The JS shim test (and the reference daemon) need Node.
    command -v node >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
    # Sandbox tests run the daemon as this unprivileged account.
    id cowork-test >/dev/null 2>&1 || useradd --create-home --shell /bin/bash cowork-test
    # Tools the sandbox tests run inside sandboxes (curl through the proxy,
    # git in a protected repository, python3 for raw syscalls and sockets).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl git python3 >/dev/null
    # The package checks (scripts/package-test.sh).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian man-db >/dev/null
    # A systemd user manager with its session bus, for the transient-scope
    # test (tests/suite/cgroup_v2.rs starts one as the test account).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd dbus-user-session >/dev/null
fi

# The real Claude Code CLI (a self-contained native binary from npm), for the
# end-to-end test through the sandbox's proxy; installed once into a cache.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cowork-vm-service-tests"
if [ ! -x "$cache/claude-code/bin/claude" ]; then
    mkdir -p "$cache"
    npm install -g --silent --prefix "$cache/claude-code" @anthropic-ai/claude-code >/dev/null
fi
export COWORK_TEST_CLAUDE="$cache/claude-code/bin/claude"

# The kvm backend's tests (tests/suite/kvm.rs) boot a microVM under TCG:
# the Debian cloud kernel unpacked into a cache (never /boot), by our own
# setup-vm, and the Rust virtiofsd (Debian 12 has no package; about 2 min to
# build once). Kept between local runs.
if [ "$(id -u)" = 0 ]; then
    vmcache=/var/cache/cowork-vm-service-tests
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev libcap-ng-dev pkg-config >/dev/null
else
    vmcache="${XDG_CACHE_HOME:-$HOME/.cache}/cowork-vm-service-tests"
fi
mkdir -p "$vmcache" && chmod 755 "$vmcache"
if [ ! -x "$vmcache/virtiofsd/bin/virtiofsd" ]; then
    cargo install virtiofsd --locked --quiet --root "$vmcache/virtiofsd"
fi
cargo run --quiet -p cowork-vm-service -- setup-vm --dir "$vmcache/guest"
export COWORK_TEST_VM_GUEST_DIR="$vmcache/guest" COWORK_TEST_VIRTIOFSD="$vmcache/virtiofsd/bin/virtiofsd"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
# The .deb: built from the release build, lintian, unpacked and exercised.
bash scripts/package-test.sh
