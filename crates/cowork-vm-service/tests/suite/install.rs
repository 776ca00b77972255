//! `install-client` / `uninstall-client` on a temporary config home, the
//! way a user runs them: the launcher environment file keeps the user's
//! other lines, `--dry-run` changes nothing, `uninstall-client` brings back
//! exactly what was there, and `--replace-script` swaps a client's script
//! for the shim and back.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::harness::BIN;

/// A home with its own config directory.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn env_file(&self) -> PathBuf {
        self.config().join("claude-desktop-debian/environment")
    }

    fn write_env_file(&self, text: &str) {
        std::fs::create_dir_all(self.env_file().parent().unwrap()).unwrap();
        std::fs::write(self.env_file(), text).unwrap();
    }

    fn env_text(&self) -> Option<String> {
        std::fs::read_to_string(self.env_file()).ok()
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .args(args)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.config())
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env_remove("COWORK_VM_BACKEND")
            .env_remove("COWORK_NODE_PATH")
            .output()
            .unwrap();
        eprintln!(
            "$ cowork-vm-service {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

fn binary() -> PathBuf {
    std::fs::canonicalize(BIN).unwrap()
}

/// The doctor's verdict on the hook-up.
fn hookup_status(home: &Home) -> String {
    let out = home.run(&["--doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let section = report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == "Claude Desktop hook-up")
        .unwrap_or_else(|| panic!("no hook-up section in {report}"));
    section["checks"][0]["status"].as_str().unwrap().to_string()
}

#[test]
fn install_client_keeps_the_users_lines_and_uninstall_client_restores_them() {
    let home = Home::new();
    let original = "# my launcher settings\nCLAUDE_USE_WAYLAND=1\nCOWORK_VM_BACKEND=host\n\n";
    home.write_env_file(original);
    std::fs::set_permissions(home.env_file(), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(hookup_status(&home), "warn");

    let diff = home.ok(&["install-client", "--dry-run"]);
    assert_eq!(home.env_text().as_deref(), Some(original), "dry run wrote");
    assert!(diff.contains("-COWORK_VM_BACKEND=host"), "{diff}");
    assert!(
        diff.contains("+#cowork-vm-service-saved# COWORK_VM_BACKEND=host"),
        "{diff}"
    );
    assert!(diff.contains("+COWORK_VM_BACKEND=bwrap"), "{diff}");
    let node_path = format!("+COWORK_NODE_PATH={}", binary().display());
    assert!(diff.contains(&node_path), "{diff}");

    home.ok(&["install-client"]);
    let installed = home.env_text().unwrap();
    for kept in ["# my launcher settings\n", "CLAUDE_USE_WAYLAND=1\n"] {
        assert!(installed.contains(kept), "{installed}");
    }
    let active: Vec<String> = installed
        .lines()
        .filter(|l| l.starts_with("COWORK_"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        active,
        [
            "COWORK_VM_BACKEND=bwrap".to_string(),
            format!("COWORK_NODE_PATH={}", binary().display())
        ]
    );
    let mode = std::fs::metadata(home.env_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "permissions kept");
    assert_eq!(hookup_status(&home), "pass");
    let again = home.ok(&["install-client"]);
    assert!(again.contains("already hooked up"), "{again}");
    assert_eq!(home.env_text().unwrap(), installed);

    let undo = home.ok(&["uninstall-client", "--dry-run"]);
    assert!(undo.contains("+COWORK_VM_BACKEND=host"), "{undo}");
    assert_eq!(home.env_text().unwrap(), installed, "dry run wrote");

    home.ok(&["uninstall-client"]);
    assert_eq!(home.env_text().as_deref(), Some(original));
    let nothing = home.ok(&["uninstall-client"]);
    assert!(nothing.contains("nothing to undo"), "{nothing}");
}

#[test]
fn install_client_creates_the_file_and_uninstall_client_deletes_it() {
    let home = Home::new();
    let diff = home.ok(&["install-client", "--dry-run"]);
    assert!(diff.contains("--- /dev/null"), "{diff}");
    assert!(!home.config().exists(), "dry run created the directory");
    home.ok(&["install-client"]);
    assert!(home.env_text().unwrap().contains("COWORK_VM_BACKEND=bwrap"));
    home.ok(&["uninstall-client"]);
    assert_eq!(home.env_text(), None);
}

#[test]
fn replace_script_swaps_the_clients_script_for_the_shim_and_back() {
    let home = Home::new();
    let resources = home.dir.path().join("client/resources");
    std::fs::create_dir_all(&resources).unwrap();
    let script = resources.join("cowork-vm-service.js");
    let reference = "// the reference daemon\n";
    std::fs::write(&script, reference).unwrap();
    let script_arg = script.to_str().unwrap();
    let shim = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/cowork-vm-service.js"),
    )
    .unwrap();
    let link = resources.join("cowork-vm-service");

    let plan = home.ok(&[
        "install-client",
        "--dry-run",
        "--replace-script",
        script_arg,
    ]);
    assert!(plan.contains("would replace"), "{plan}");
    assert_eq!(std::fs::read_to_string(&script).unwrap(), reference);

    home.ok(&["install-client", "--replace-script", script_arg]);
    assert_eq!(std::fs::read_to_string(&script).unwrap(), shim);
    let backup = resources.join("cowork-vm-service.js.cowork-vm-service-backup");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), reference);
    // The test binary is not on every session's PATH: the shim finds it
    // next to itself.
    assert_eq!(std::fs::read_link(&link).unwrap(), binary());

    home.ok(&["uninstall-client", "--replace-script", script_arg]);
    assert_eq!(std::fs::read_to_string(&script).unwrap(), reference);
    assert!(!backup.exists());
    assert!(std::fs::symlink_metadata(&link).is_err(), "symlink left");

    let missing = home.run(&[
        "install-client",
        "--replace-script",
        resources.join("nope.js").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}
