#!/usr/bin/env bash
# Builds the Debian package: bash packaging/build-deb.sh
#
# 1. installs cargo-deb (into ${CARGO_HOME:-~/.cargo}/bin) if it is missing;
# 2. builds the release binary (the same build `cargo build --release` makes);
# 3. generates the man pages and the bash/zsh/fish completions from the clap
#    definitions with that binary (`cowork-vm-service manpage`, `completions`)
#    into <target>/release/packaging/, where the cargo-deb assets point;
# 4. runs `cargo deb --no-build` with the metadata in
#    crates/cowork-vm-service/Cargo.toml.
#
# Prints the path of the .deb (<target>/debian/cowork-vm-service_<version>-1_<arch>.deb)
# as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb (once) into ${CARGO_HOME:-$HOME/.cargo}/bin" >&2
    # Its own temporary build directory, not this project's target/.
    env -u CARGO_TARGET_DIR cargo install cargo-deb --version '^3' --locked >&2
fi

target_dir=$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || { echo "cannot find the cargo target directory" >&2; exit 1; }

cargo build --release --locked -p cowork-vm-service >&2

bin="$target_dir/release/cowork-vm-service"
generated="$target_dir/release/packaging"
rm -rf "$generated"
mkdir -p "$generated/man" "$generated/completions"
"$bin" manpage --out-dir "$generated/man" >/dev/null
gzip -9n "$generated"/man/*.1
"$bin" completions bash >"$generated/completions/cowork-vm-service.bash"
"$bin" completions zsh >"$generated/completions/_cowork-vm-service"
"$bin" completions fish >"$generated/completions/cowork-vm-service.fish"

cargo deb -p cowork-vm-service --no-build --locked --output "$target_dir/debian/" \
    | tail -n 1
