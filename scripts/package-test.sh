#!/usr/bin/env bash
# Builds the .deb (packaging/build-deb.sh) and checks it: lintian, then the
# package unpacked into a scratch root (dpkg -x): the binary, the man pages,
# the completions, the dependencies against the binary, the AppArmor
# profile, and the maintainer scripts' AppArmor gate against a fake root,
# knob and apparmor_parser; last, `cargo install --path` from the same build.
#
# As root it installs what it needs with apt-get (lintian, man-db). Run it
# alone or from scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

if [ "$(id -u)" = 0 ]; then
    missing=()
    command -v lintian >/dev/null || missing+=(lintian)
    command -v man >/dev/null || missing+=(man-db)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

passes=0
failures=0
pass() { echo "ok   $*"; passes=$((passes + 1)); }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

deb=$(bash packaging/build-deb.sh | tail -n 1)
[ -f "$deb" ] || { echo "no .deb built"; exit 1; }
echo "built $deb"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
root="$scratch/root"
control="$scratch/control"
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$control"
bin="$root/usr/bin/cowork-vm-service"
field() { dpkg-deb -f "$deb" "$1"; }

# --- lintian: no errors, and every warning kept is overridden with a reason
# (packaging/deb/lintian-overrides).
if command -v lintian >/dev/null; then
    if lintian --fail-on error,warning --pedantic "$deb" >"$scratch/lintian" 2>&1; then
        pass "lintian: no errors or warnings"
    else
        cat "$scratch/lintian"
        fail "lintian"
    fi
else
    fail "lintian is not installed (run as root to install it)"
fi

# --- control fields and the files at their vendor paths.
version=$(field Version)
synopsis=$(field Description | head -n 1)
check "synopsis under 80 characters (${#synopsis})" test "${#synopsis}" -lt 80
check "Depends on bubblewrap" grep -qw bubblewrap <<<"$(field Depends)"
check "Recommends qemu-system-x86" grep -qw qemu-system-x86 <<<"$(field Recommends)"
for f in \
    usr/bin/cowork-vm-service \
    usr/share/man/man1/cowork-vm-service.1.gz \
    usr/share/man/man1/cowork-vm-service-install-client.1.gz \
    usr/share/bash-completion/completions/cowork-vm-service \
    usr/share/zsh/vendor-completions/_cowork-vm-service \
    usr/share/fish/vendor_completions.d/cowork-vm-service.fish \
    usr/share/cowork-vm-service/cowork-vm-service.js \
    usr/share/cowork-vm-service/apparmor/cowork-vm-service \
    usr/share/doc/cowork-vm-service/copyright \
    usr/share/doc/cowork-vm-service/changelog.Debian.gz; do
    check "ships /$f" test -s "$root/$f"
done
check "the shim is contrib/cowork-vm-service.js" \
    cmp -s contrib/cowork-vm-service.js "$root/usr/share/cowork-vm-service/cowork-vm-service.js"
check "the profile is packaging/apparmor/cowork-vm-service" \
    cmp -s packaging/apparmor/cowork-vm-service "$root/usr/share/cowork-vm-service/apparmor/cowork-vm-service"
check "copyright is DEP-5" grep -q '^Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
    "$root/usr/share/doc/cowork-vm-service/copyright"
changelog_version=$(zcat "$root/usr/share/doc/cowork-vm-service/changelog.Debian.gz" \
    | sed -n '1s/^cowork-vm-service (\([^)]*\)).*/\1/p')
check "changelog's version is the package's ($changelog_version)" test "$changelog_version" = "$version"

# --- the glibc floor: Depends must cover every GLIBC_x.y the binary needs,
# and 2.36 when it has packed relocations (GLIBC_ABI_DT_RELR), which
# dpkg-shlibdeps does not count. Only libc is loaded (build.rs).
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
unexpected=$(tr ' ' '\n' <<<"$needed" | grep -v -E '^(libc\.so\.6|ld-linux-[a-z0-9-]+\.so\.2|libgcc_s\.so\.1)?$' || true)
check "loads only libc (${needed% })" test -z "$unexpected"
floor=$(readelf -V "$bin" | grep -oE 'GLIBC_2\.[0-9]+' | sort -uV | tail -n 1 | sed 's/GLIBC_//')
if readelf -V "$bin" | grep -q GLIBC_ABI_DT_RELR; then
    floor=$(printf '%s\n2.36\n' "$floor" | sort -V | tail -n 1)
fi
declared=$(field Depends | grep -oE 'libc6 \(>= [0-9.]+\)' | grep -oE '[0-9]+\.[0-9]+' || true)
check "Depends: libc6 (>= ${declared:-none}) covers the binary's glibc $floor" \
    test -n "$declared" -a "$(printf '%s\n%s\n' "$floor" "$declared" | sort -V | tail -n 1)" = "$declared"

# --- the binary, from the scratch root, in a scratch home.
home="$scratch/home"
mkdir -p "$home"
as_user() {
    env HOME="$home" XDG_CONFIG_HOME="$home/.config" XDG_DATA_HOME="$home/.local/share" \
        XDG_RUNTIME_DIR="$scratch" "$@"
}
check "--version is ${version%-*}" grep -qx "cowork-vm-service ${version%-*}" <<<"$("$bin" --version)"
doctor_out=$(as_user "$bin" --doctor 2>&1 || true)
for section in "Backend" "Sandbox (bubblewrap)" "Kernel" "Runtime" "Claude Desktop hook-up"; do
    check "--doctor prints its \"$section\" section" grep -qx "$section" <<<"$doctor_out"
done
dry=$(as_user "$bin" install-client --dry-run)
if [[ $dry == *"+COWORK_VM_BACKEND=bwrap"* && ! -e $home/.config/claude-desktop-debian ]]; then
    pass "install-client --dry-run (packaged binary) shows a diff and writes nothing"
else
    fail "install-client --dry-run (packaged binary): $dry"
fi

# --- man pages open with man.
for page in "$root"/usr/share/man/man1/*.1.gz; do
    name=$(basename "$page" .1.gz)
    rendered=$(MANWIDTH=80 man -l "$page" 2>"$scratch/man.err" | head -n 20)
    if grep -q "^NAME" <<<"$rendered" && grep -q "$name" <<<"$rendered" && [ ! -s "$scratch/man.err" ]; then
        pass "man -l $name"
    else
        cat "$scratch/man.err"
        fail "man -l $name"
    fi
done

# --- completions parse and register.
bash_completion="$root/usr/share/bash-completion/completions/cowork-vm-service"
check "bash completion parses (bash -n)" bash -n "$bash_completion"
check "bash completion registers (complete -p cowork-vm-service)" \
    bash -c 'source "$1" && complete -p cowork-vm-service >/dev/null' _ "$bash_completion"
if command -v zsh >/dev/null; then
    check "zsh completion parses" zsh -n "$root/usr/share/zsh/vendor-completions/_cowork-vm-service"
fi
if command -v fish >/dev/null; then
    check "fish completion parses" fish -n "$root/usr/share/fish/vendor_completions.d/cowork-vm-service.fish"
fi

# --- the AppArmor profile with a real parser: AppArmor 4 must accept it;
# AppArmor 3 (Debian 12) must reject it, which is why postinst asks first.
profile="$root/usr/share/cowork-vm-service/apparmor/cowork-vm-service"
parser=$(command -v apparmor_parser || true)
parser_base=/etc/apparmor.d
if [ -z "$parser" ] && command -v apt-get >/dev/null; then
    # Not installed: this distribution's parser, unpacked, not installed.
    if (cd "$scratch" && apt-get download -qq apparmor >/dev/null 2>&1); then
        dpkg-deb -x "$scratch"/apparmor_*.deb "$scratch/apparmor"
        parser=$(find "$scratch/apparmor" -name apparmor_parser -type f | head -n 1)
        parser_base="$scratch/apparmor/etc/apparmor.d"
    fi
fi
if [ -n "$parser" ]; then
    parser_version=$("$parser" --version 2>/dev/null | sed -n '1s/.*version \([0-9][0-9.]*\).*/\1/p')
    if "$parser" -Q -T --base "$parser_base" "$profile" >"$scratch/aa.out" 2>&1; then
        parsed=yes
    else
        parsed=no
    fi
    case "$parser_version" in
        [0-3].*) check "AppArmor $parser_version's parser rejects the profile (postinst must skip it)" test $parsed = no ;;
        *) cat "$scratch/aa.out"; check "AppArmor $parser_version's parser accepts the profile" test $parsed = yes ;;
    esac
else
    echo "skip no apparmor_parser to be had: the profile's syntax is checked by the fake-parser runs only"
fi

# --- the maintainer scripts' gate, against the scratch root: a fake kernel
# knob and securityfs under it, a fake apparmor_parser on PATH that logs its
# calls and accepts or rejects the profile. The real AppArmor 3 parser runs
# through the same gate when it was found above.
fake="$scratch/fakebin"
mkdir -p "$fake"
cat >"$fake/apparmor_parser" <<'EOF'
#!/bin/sh
echo "$*" >>"$FAKE_PARSER_LOG"
case " $* " in
    *" --skip-kernel-load "*) [ "$FAKE_PARSER_ACCEPTS" = yes ] ;;
    *) exit 0 ;;
esac
EOF
chmod +x "$fake/apparmor_parser"
log="$scratch/parser.log"
knob="$root/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
securityfs="$root/sys/kernel/security/apparmor"
installed="$root/etc/apparmor.d/cowork-vm-service"
maint() { # maint SCRIPT ARG PATH-PREFIX ACCEPTS
    env DPKG_ROOT="$root" PATH="$3:/usr/bin:/bin" FAKE_PARSER_LOG="$log" \
        FAKE_PARSER_ACCEPTS="$4" sh "$control/$1" "$2" >>"$scratch/maint.out" 2>&1 \
        || { fail "$1 $2 exited with status $?"; cat "$scratch/maint.out"; }
}
reset_root() {
    rm -rf "$root/proc" "$root/sys" "$root/etc" "$root/var"
    : >"$log"
}
empty_path="$scratch/empty"
mkdir -p "$empty_path"

reset_root
maint postinst configure "$fake" yes
check "postinst: no restriction in the kernel: nothing installed, parser not asked" \
    test ! -e "$installed" -a ! -s "$log"

reset_root
mkdir -p "$(dirname "$knob")" && echo 1 >"$knob"
maint postinst configure "$empty_path" yes
check "postinst: no apparmor_parser: nothing installed" test ! -e "$installed"

reset_root
mkdir -p "$(dirname "$knob")" && echo 1 >"$knob"
maint postinst configure "$fake" no
check "postinst: the parser rejects the profile (AppArmor 3): nothing installed" \
    test ! -e "$installed" -a -s "$log"

reset_root
mkdir -p "$(dirname "$knob")" && echo 1 >"$knob"
maint postinst configure "$fake" yes
check "postinst: accepted, no securityfs: installed, not loaded" \
    bash -c 'cmp -s "$1" "$2" && ! grep -q -- --replace "$3"' _ "$profile" "$installed" "$log"

reset_root
mkdir -p "$(dirname "$knob")" "$securityfs" && echo 1 >"$knob"
maint postinst configure "$fake" yes
check "postinst: accepted, AppArmor running: installed and loaded" \
    bash -c 'cmp -s "$1" "$2" && grep -q -- "--replace.* $2\$" "$3"' _ "$profile" "$installed" "$log"
check "installed profile is mode 644" test "$(stat -c %a "$installed")" = 644
mkdir -p "$root/var/cache/apparmor/0123abcd.0" && touch "$root/var/cache/apparmor/0123abcd.0/cowork-vm-service"
maint prerm upgrade "$fake" yes
check "prerm upgrade: profile stays loaded" bash -c '! grep -q -- --remove "$1"' _ "$log"
maint prerm remove "$fake" yes
check "prerm remove: profile unloaded" grep -q -- "--remove.* $installed\$" "$log"
maint postrm remove "$fake" yes
check "postrm remove: profile and its cache deleted" \
    test ! -e "$installed" -a ! -e "$root/var/cache/apparmor/0123abcd.0/cowork-vm-service"
maint postrm purge "$fake" yes
if env DPKG_ROOT="$root" sh "$control/postinst" bogus >/dev/null 2>&1; then
    fail "postinst refuses an unknown argument"
else
    pass "postinst refuses an unknown argument"
fi

if [ -n "$parser" ]; then
    # No securityfs: a real parser must not load anything into this kernel.
    reset_root
    mkdir -p "$(dirname "$knob")" "$root/etc/apparmor.d" && echo 1 >"$knob"
    cp -r "$parser_base"/. "$root/etc/apparmor.d/" 2>/dev/null || true
    real="$scratch/realbin"
    mkdir -p "$real" && ln -sf "$parser" "$real/apparmor_parser"
    maint postinst configure "$real" unused
    case "$parser_version" in
        [0-3].*) check "postinst with the real AppArmor $parser_version parser: skipped" test ! -e "$installed" ;;
        *) check "postinst with the real AppArmor $parser_version parser: installed" test -e "$installed" ;;
    esac
fi
rm -rf "$root/proc" "$root/sys"

# --- cargo install --path, from the release build made above.
prefix="$scratch/cargo-root"
if cargo install --quiet --locked --path crates/cowork-vm-service --root "$prefix" >"$scratch/install.out" 2>&1 \
    && "$prefix/bin/cowork-vm-service" completions bash | bash -n; then
    pass "cargo install --path crates/cowork-vm-service (and its completions)"
else
    cat "$scratch/install.out"
    fail "cargo install --path crates/cowork-vm-service"
fi

echo "package checks took $((SECONDS - start)) s"
echo "package: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
