//! Man pages and shell completions, generated from the clap definitions in
//! [`crate::cli`] so they never drift from `--help`.
//!
//! `cowork-vm-service manpage --out-dir DIR` (hidden; run by
//! `packaging/build-deb.sh` before `cargo deb`) writes
//! `cowork-vm-service.1` and one page per public subcommand;
//! `cowork-vm-service completions SHELL` prints a completion script (the
//! package installs bash, zsh and fish ones; `cargo install` users run it
//! themselves).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The program name the pages and completions are for.
pub const BIN_NAME: &str = "cowork-vm-service";

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let mut cmd = without_hidden_subcommands(Cli::command());
    clap_complete::generate(shell, &mut cmd, BIN_NAME, out);
}

/// The command tree less its hidden subcommands (`agent`, `manpage`), which
/// clap_complete would otherwise offer.
fn without_hidden_subcommands(full: clap::Command) -> clap::Command {
    let mut cmd = clap::Command::new(BIN_NAME).version(env!("CARGO_PKG_VERSION"));
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd.args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Writes the man pages into `dir` (created if missing); returns their
/// paths, sorted.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command().name(BIN_NAME);
    clap_mangen::generate_to(cmd, dir)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(BIN_NAME) && n.ends_with(".1"))
        })
        .collect();
    pages.sort();
    Ok(pages)
}

/// `cowork-vm-service completions SHELL`.
pub fn completions_main(shell: Shell) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    completions(shell, &mut stdout);
    match stdout.flush() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cowork-vm-service completions: cannot write: {e}");
            ExitCode::from(1)
        }
    }
}

/// `cowork-vm-service manpage --out-dir DIR`.
pub fn manpage_main(dir: &Path) -> ExitCode {
    match man_pages(dir) {
        Ok(pages) => {
            for page in pages {
                println!("{}", page.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "cowork-vm-service manpage: cannot write man pages to {}: {e}",
                dir.display()
            );
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_every_public_subcommand_and_no_hidden_one() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "cowork-vm-service.1",
            "cowork-vm-service-run.1",
            "cowork-vm-service-doctor.1",
            "cowork-vm-service-install-client.1",
            "cowork-vm-service-uninstall-client.1",
            "cowork-vm-service-completions.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        for hidden in ["agent", "manpage"] {
            assert!(!names.iter().any(|n| n.contains(hidden)), "{names:?}");
        }
        let main = std::fs::read_to_string(dir.path().join("cowork-vm-service.1")).unwrap();
        assert!(main.starts_with(".ie \\n(.g .ds Aq \\(aq") || main.contains(".TH"));
        assert!(main.contains("\\-\\-doctor"), "{main}");
        assert!(
            main.contains("COWORK_VM_BACKEND"),
            "the environment is documented"
        );
    }

    #[test]
    fn completions_know_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let script = String::from_utf8(out).unwrap();
            for word in ["install-client", "doctor", "run", "completions"] {
                assert!(script.contains(word), "{shell}: {word}");
            }
            assert!(!script.contains("manpage"), "{shell}: hidden subcommand");
        }
    }
}
