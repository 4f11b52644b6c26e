// @rabbitmq-begin
//! Running commands as the service users that database and broker servers insist on.
// @rabbitmq-else
// //! Running commands as the service user that PostgreSQL insists on.
// @rabbitmq-end

use nix::unistd::{Uid, User, chown};
use std::path::Path;
use std::process::{Command, Stdio};

pub(crate) fn is_root() -> bool {
    Uid::effective().is_root()
}

/// A command that runs as `user` when we are root, as ourselves otherwise.
pub(crate) fn command_as(user: &str, program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", user, "--", program]);
        command
    } else {
        Command::new(program)
    }
}

/// Gives `path` (recursively) to `user` when we are root.
pub(crate) fn give_to(user: &str, path: &Path) {
    if !is_root() {
        return;
    }
    let account = User::from_name(user)
        .unwrap()
        .unwrap_or_else(|| panic!("no user {user}"));
    for entry in walk(path) {
        chown(&entry, Some(account.uid), Some(account.gid)).unwrap();
    }
}

fn walk(path: &Path) -> Vec<std::path::PathBuf> {
    let mut all = vec![path.to_path_buf()];
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            all.extend(walk(&entry.path()));
        }
    }
    all
}

/// Runs `command` to completion; panics with its output if it fails.
pub(crate) fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what} failed ({}): {text}",
        output.status
    );
    text
}

/// Pids of the processes whose working directory or command line mentions `dir`.
pub(crate) fn processes_using(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cwd.starts_with(&needle) || cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

pub(crate) fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}
