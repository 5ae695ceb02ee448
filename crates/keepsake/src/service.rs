//! `keepsake service install|uninstall|status`: the agent as a background service that starts
//! at login and restarts after a failure — a systemd user unit on Linux, a launchd agent on
//! macOS (written the same way; untested here) — for one device data directory and folder.
//!
//! The unit runs `keepsake sync FOLDER --data DIR`, which stops cleanly on SIGTERM. An agent
//! whose device was revoked exits with [`crate::agent::REVOKED_EXIT`], which the unit does
//! not restart.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `keepsake service` does.
#[derive(clap::Subcommand, Clone)]
pub enum ServiceCommand {
    /// Write the service for a folder and start it now and at every login.
    Install {
        /// The library folder.
        dir: PathBuf,
        /// The device's data directory (enrolled with `keepsake device enroll`).
        #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
        data: PathBuf,
        /// Write the unit only; do not enable or start it (packagers, tests).
        #[arg(long)]
        no_start: bool,
    },
    /// Stop the service and remove it (the folder and the device's data stay).
    Uninstall {
        /// The device's data directory.
        #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
        data: PathBuf,
    },
    /// Whether the service is installed and runs, and what its agent last said.
    Status {
        /// The device's data directory.
        #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
        data: PathBuf,
    },
}

/// The service's name for a data directory: one service per device, stable across runs.
pub fn service_name(data: &Path) -> String {
    let digest = blake3::hash(data.as_os_str().as_encoded_bytes());
    format!("keepsake-sync-{}", &digest.to_hex()[..12])
}

/// One argument of a systemd `ExecStart=` line: double-quoted, with `\`, `"`, `%` (a
/// specifier) and `$` (a variable) escaped, so a folder called `50% $HOME "x"` is that
/// folder and nothing else.
pub fn systemd_quote(arg: &str) -> Result<String> {
    if arg.chars().any(|c| c.is_control()) {
        bail!("{arg:?} holds a control character; a service cannot name it");
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// The systemd user unit that runs `binary sync folder --data data`.
pub fn systemd_unit(binary: &Path, folder: &Path, data: &Path) -> Result<String> {
    let args = [
        binary.to_string_lossy(),
        "sync".into(),
        folder.to_string_lossy(),
        "--data".into(),
        data.to_string_lossy(),
    ]
    .iter()
    .map(|a| systemd_quote(a))
    .collect::<Result<Vec<_>>>()?
    .join(" ");
    let folder_text = folder.to_string_lossy().replace('%', "%%");
    Ok(format!(
        "# Written by `keepsake service install`; `keepsake service uninstall` removes it.
[Unit]
Description=Keepsake photo sync of {folder_text}

[Service]
Type=simple
ExecStart={args}
# The agent finishes nothing half-way on SIGTERM: what was acknowledged is durable, the rest
# is sent again by the next start.
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=10
# A revoked device: restarting changes nothing (its status says why and what fixes it).
RestartPreventExitStatus={revoked}
Environment=NO_COLOR=1

[Install]
WantedBy=default.target
",
        revoked = crate::agent::REVOKED_EXIT
    ))
}

/// The launchd agent that runs the same command on macOS (at login, kept alive unless it
/// exits successfully or was revoked).
pub fn launchd_plist(label: &str, binary: &Path, folder: &Path, data: &Path) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let args = [
        binary.to_string_lossy().into_owned(),
        "sync".into(),
        folder.to_string_lossy().into_owned(),
        "--data".into(),
        data.to_string_lossy().into_owned(),
    ]
    .iter()
    .map(|a| format!("    <string>{}</string>\n", esc(a)))
    .collect::<String>();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{label}</string>
  <key>ProgramArguments</key>
  <array>
{args}  </array>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>StandardOutPath</key><string>{log}</string>
  <key>StandardErrorPath</key><string>{log}</string>
</dict>
</plist>
"#,
        log = esc(&data.join("agent.log").to_string_lossy())
    )
}

/// Where units go: `$XDG_CONFIG_HOME/systemd/user` (else `~/.config/systemd/user`), or
/// `~/Library/LaunchAgents` on macOS.
fn unit_dir() -> Result<PathBuf> {
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("HOME is not set")
    };
    if cfg!(target_os = "macos") {
        return Ok(home()?.join("Library/LaunchAgents"));
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home()?.join(".config"),
    };
    Ok(config.join("systemd/user"))
}

fn unit_path(data: &Path) -> Result<PathBuf> {
    let name = service_name(data);
    Ok(if cfg!(target_os = "macos") {
        unit_dir()?.join(format!("org.keepsake.{name}.plist"))
    } else {
        unit_dir()?.join(format!("{name}.service"))
    })
}

/// Runs the service manager; `Err` with what it said when it refused or is absent.
fn manager(args: &[&str]) -> Result<String> {
    let (program, args): (&str, Vec<&str>) = if cfg!(target_os = "macos") {
        ("launchctl", args.to_vec())
    } else {
        ("systemctl", [&["--user"], args].concat())
    };
    let out = Command::new(program)
        .args(&args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            said
        );
    }
    Ok(said)
}

/// Runs `keepsake service …`.
pub fn run(command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Install {
            dir,
            data,
            no_start,
        } => install(&dir, &data, no_start),
        ServiceCommand::Uninstall { data } => uninstall(&data),
        ServiceCommand::Status { data } => status(&data),
    }
}

fn install(dir: &Path, data: &Path, no_start: bool) -> Result<()> {
    // The service starts elsewhere (its own working directory): every path is absolute.
    let folder = std::path::absolute(dir)?;
    let data = std::path::absolute(data)?;
    crate::device_cli::load(&data).with_context(|| {
        format!(
            "enrol this device first: `keepsake device enroll --data {}`",
            data.display()
        )
    })?;
    if !folder.is_dir() {
        bail!("{} is not a folder", folder.display());
    }
    let binary = std::env::current_exe().context("finding this keepsake binary")?;
    let path = unit_path(&data)?;
    std::fs::create_dir_all(path.parent().expect("a unit has a directory"))?;
    let name = service_name(&data);
    let body = if cfg!(target_os = "macos") {
        launchd_plist(&format!("org.keepsake.{name}"), &binary, &folder, &data)
    } else {
        systemd_unit(&binary, &folder, &data)?
    };
    std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    if no_start {
        println!("not started (--no-start)");
        return Ok(());
    }
    let started = if cfg!(target_os = "macos") {
        manager(&["load", "-w", &path.to_string_lossy()])
    } else {
        manager(&["daemon-reload"]).and_then(|_| manager(&["enable", "--now", &name]))
    };
    match started {
        Ok(_) => {
            println!(
                "started {name}: it syncs {} now and at every login; `keepsake service status --data {}` says how it does",
                folder.display(),
                data.display()
            );
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "the service is written but could not be started; in your login session run \
             `systemctl --user daemon-reload && systemctl --user enable --now {name}`"
        ))),
    }
}

fn uninstall(data: &Path) -> Result<()> {
    let data = std::path::absolute(data)?;
    let path = unit_path(&data)?;
    let name = service_name(&data);
    if !path.exists() {
        bail!("no service is installed for {}", data.display());
    }
    // Stopped first: a unit removed while it runs keeps running until the next reboot.
    let stopped = if cfg!(target_os = "macos") {
        manager(&["unload", "-w", &path.to_string_lossy()])
    } else {
        manager(&["disable", "--now", &name])
    };
    if let Err(e) = &stopped {
        println!("note: {e:#}");
    }
    std::fs::remove_file(&path)?;
    if !cfg!(target_os = "macos") {
        let _ = manager(&["daemon-reload"]);
    }
    println!(
        "removed {}; the folder and {} are untouched",
        path.display(),
        data.display()
    );
    Ok(())
}

fn status(data: &Path) -> Result<()> {
    let data = std::path::absolute(data)?;
    let path = unit_path(&data)?;
    let name = service_name(&data);
    if !path.exists() {
        println!(
            "not installed: no service syncs with {}. Fix: `keepsake service install FOLDER --data {}`",
            data.display(),
            data.display()
        );
    } else {
        let state = if cfg!(target_os = "macos") {
            manager(&["list", &format!("org.keepsake.{name}")]).map(|_| "loaded".to_string())
        } else {
            manager(&["is-active", &name])
        };
        match state {
            Ok(state) => println!("service {name}: {state} ({})", path.display()),
            Err(e) => println!(
                "service {name}: installed at {}; its state cannot be read ({e:#})",
                path.display()
            ),
        }
    }
    match crate::device_cli::load_status(&data) {
        Some(s) => {
            let running = keepsake_device::agent_running(&data.join("state"));
            for line in
                crate::device_cli::headline(&s, running, crate::device_cli::now_ms(), None, &data)
            {
                println!("{line}");
            }
        }
        None => println!("its agent has not run yet"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_with_spaces_percent_dollar_and_quotes_is_one_argument() {
        assert_eq!(
            systemd_quote(r#"/home/a/My 50% $HOME "x"\y"#).unwrap(),
            r#""/home/a/My 50%% $$HOME \"x\"\\y""#
        );
        assert!(systemd_quote("a\nExecStartPre=/bin/rm").is_err());
        let unit = systemd_unit(
            Path::new("/usr/bin/keepsake"),
            Path::new("/home/a/Photos 2024"),
            Path::new("/home/a/.keepsake"),
        )
        .unwrap();
        assert!(
            unit.contains(
                r#"ExecStart="/usr/bin/keepsake" "sync" "/home/a/Photos 2024" "--data" "/home/a/.keepsake""#
            ),
            "{unit}"
        );
        assert!(unit.contains("RestartPreventExitStatus=3"));
    }

    #[test]
    fn each_data_directory_has_its_own_stable_service() {
        let a = service_name(Path::new("/home/a/phone"));
        assert_eq!(a, service_name(Path::new("/home/a/phone")));
        assert_ne!(a, service_name(Path::new("/home/a/laptop")));
    }
}
