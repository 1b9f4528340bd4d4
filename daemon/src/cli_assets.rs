//! Man pages and shell completions generated from a binary's clap command, for packaging
//! (`r1d --generate-assets DIR`, hidden; `make assets` runs it, before `cargo deb` packs the files).
//!
//! `r1ctl` has the same generator in `cli/src/assets.rs` (it does not depend on this crate).

use std::path::Path;

use clap_complete::Shell;

/// Writes `DIR/man/NAME.1` (and one page per subcommand, `NAME-SUB.1`) and
/// `DIR/completions/` (`NAME.bash`, `_NAME` for zsh, `NAME.fish`).
///
/// # Errors
/// I/O errors creating the directories or writing the files.
pub fn generate(mut command: clap::Command, dir: &Path) -> std::io::Result<()> {
    let name = command.get_name().to_owned();
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    // One page per subcommand, not one per `help <subcommand>`.
    clap_mangen::generate_to(command.clone().disable_help_subcommand(true), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, &name, &completions)?;
    }
    Ok(())
}
