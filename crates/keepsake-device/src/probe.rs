//! What the machine says about its link, its power profile and its battery, each asked in
//! bounded time. An answer that cannot be had — no tool, a tool that hangs, output in a
//! shape not known here — is unknown (`None`), never guessed as the opposite: a metered link
//! read as unmetered would spend someone's data plan, a power saver read as off their battery.
//!
//! The parsers take the tools' output as text, so they are tested against recorded outputs;
//! [`linux`] runs the tools.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one outside tool may take to answer before it counts as unknown.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The machine's answers, each `None` where unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probed {
    /// Whether the way out is a metered connection (NetworkManager).
    pub metered: Option<bool>,
    /// Whether the power-saver profile is on (power-profiles-daemon, or macOS Low Power Mode).
    pub power_saver: Option<bool>,
    /// Battery charge, percent.
    pub battery_percent: Option<u8>,
    /// On mains power, or charging.
    pub charging: Option<bool>,
}

/// Asks this machine, each probe bounded by [`PROBE_TIMEOUT`].
pub fn machine() -> Probed {
    #[cfg(target_os = "macos")]
    return macos::probe();
    #[cfg(not(target_os = "macos"))]
    {
        let (battery_percent, charging) = battery_in(Path::new("/sys/class/power_supply"));
        Probed {
            metered: linux::metered(),
            power_saver: linux::power_saver(),
            battery_percent,
            charging,
        }
    }
}

/// How long the tools' answers are kept: an agent builds a snapshot every pass, and a
/// process per pass would cost more than the answer is worth.
const TOOLS_FRESH: Duration = Duration::from_secs(30);

/// [`machine`], with the tools asked at most every 30 s (the battery is read each time:
/// it is a file).
pub fn machine_cached() -> Probed {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, Probed)>> =
        std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    match *last {
        Some((at, probed)) if at.elapsed() < TOOLS_FRESH && !cfg!(target_os = "macos") => {
            let (battery_percent, charging) = battery_in(Path::new("/sys/class/power_supply"));
            Probed {
                battery_percent,
                charging,
                ..probed
            }
        }
        Some((at, probed)) if at.elapsed() < TOOLS_FRESH => probed,
        _ => {
            let probed = machine();
            *last = Some((std::time::Instant::now(), probed));
            probed
        }
    }
}

/// Runs `program` with `args`; its standard output if it exits successfully within
/// `timeout`, else `None` (a tool still running then is killed).
pub fn run_bounded(program: &str, args: &[&str], timeout: Duration) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Bounded too: a tool that floods its output is not waited on for ever either.
        let mut out = String::new();
        let read = (&mut stdout).take(1 << 20).read_to_string(&mut out);
        let _ = tx.send(read.map(|_| out));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => {
            let status = child.wait().ok()?;
            status.success().then_some(out)
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// Whether traffic leaves through a metered link, from
/// `nmcli -t -f GENERAL.DEVICE,GENERAL.STATE,GENERAL.METERED device show`.
///
/// Metered when every connected link is (`yes`, or NetworkManager's `yes (guessed)` for a
/// phone's hotspot or mobile broadband); unmetered when a connected link is known not to be
/// (traffic can take it); unknown otherwise — no connected link, or `unknown`.
pub fn metered_from_nmcli(out: &str) -> Option<bool> {
    let mut links: Vec<(bool, Option<bool>)> = Vec::new();
    let mut device = String::new();
    let mut connected = false;
    let mut metered: Option<bool> = None;
    let mut flush = |device: &mut String, connected: &mut bool, metered: &mut Option<bool>| {
        if !device.is_empty() && device != "lo" {
            links.push((*connected, *metered));
        }
        device.clear();
        *connected = false;
        *metered = None;
    };
    for line in out.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "GENERAL.DEVICE" => {
                flush(&mut device, &mut connected, &mut metered);
                device = value.trim().to_string();
            }
            // "100 (connected)"; also "100 (connected (externally))".
            "GENERAL.STATE" => connected = value.trim().split(' ').next() == Some("100"),
            "GENERAL.METERED" => {
                metered = match value.trim().split(' ').next() {
                    Some("yes") => Some(true),
                    Some("no") => Some(false),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    flush(&mut device, &mut connected, &mut metered);
    let up: Vec<Option<bool>> = links
        .iter()
        .filter(|(connected, _)| *connected)
        .map(|(_, m)| *m)
        .collect();
    if up.contains(&Some(false)) {
        Some(false)
    } else if !up.is_empty() && up.iter().all(|m| *m == Some(true)) {
        Some(true)
    } else {
        None
    }
}

/// Whether the power-saver profile is on, from `powerprofilesctl get`.
pub fn power_saver_from_powerprofilesctl(out: &str) -> Option<bool> {
    match out.trim() {
        "power-saver" => Some(true),
        "balanced" | "performance" => Some(false),
        _ => None,
    }
}

/// Battery percent and charging from a `/sys/class/power_supply` tree at `root`; `None`
/// where unreadable. Charging is also true on mains power, with or without a battery.
pub fn battery_in(root: &Path) -> (Option<u8>, Option<bool>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return (None, None);
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    let (mut percent, mut charging) = (None, None);
    for dir in entries {
        let read =
            |name: &str| std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string());
        match read("type").as_deref() {
            Ok("Battery") => {
                if let Some(p) = read("capacity")
                    .ok()
                    .and_then(|c| c.parse::<u8>().ok())
                    .filter(|p| *p <= 100)
                {
                    percent = Some(p);
                }
                match read("status").as_deref() {
                    Ok("Charging" | "Full") => charging = Some(true),
                    Ok("Discharging") if charging.is_none() => charging = Some(false),
                    _ => {}
                }
            }
            Ok("Mains") => match read("online").as_deref() {
                Ok("1") => charging = Some(true),
                Ok("0") if charging.is_none() => charging = Some(false),
                _ => {}
            },
            _ => {}
        }
    }
    (percent, charging)
}

/// The tools of a Linux desktop: NetworkManager's `nmcli`, power-profiles-daemon's
/// `powerprofilesctl`.
pub mod linux {
    use super::*;

    /// Whether the way out is metered, by `nmcli`.
    pub fn metered() -> Option<bool> {
        run_bounded(
            "nmcli",
            &[
                "-t",
                "-f",
                "GENERAL.DEVICE,GENERAL.STATE,GENERAL.METERED",
                "device",
                "show",
            ],
            PROBE_TIMEOUT,
        )
        .as_deref()
        .and_then(metered_from_nmcli)
    }

    /// Whether the power-saver profile is on, by `powerprofilesctl`.
    pub fn power_saver() -> Option<bool> {
        run_bounded("powerprofilesctl", &["get"], PROBE_TIMEOUT)
            .as_deref()
            .and_then(power_saver_from_powerprofilesctl)
    }
}

/// `pmset`, where it is cheap: documented, not tested on these machines.
#[cfg(target_os = "macos")]
mod macos {
    use super::*;

    pub(super) fn probe() -> Probed {
        let batt = run_bounded("pmset", &["-g", "batt"], PROBE_TIMEOUT);
        let (battery_percent, charging) = batt.as_deref().map(pmset_batt).unwrap_or_default();
        let power_saver = run_bounded("pmset", &["-g"], PROBE_TIMEOUT).and_then(|out| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix("lowpowermode"))
                .map(|v| v.trim() == "1")
        });
        Probed {
            metered: None,
            power_saver,
            battery_percent,
            charging,
        }
    }

    fn pmset_batt(out: &str) -> (Option<u8>, Option<bool>) {
        let charging = if out.contains("'AC Power'") {
            Some(true)
        } else if out.contains("'Battery Power'") {
            Some(false)
        } else {
            None
        };
        let percent = out
            .split_whitespace()
            .find_map(|w| w.strip_suffix("%;")?.parse().ok());
        (percent, charging)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from NetworkManager 1.42 (Debian 12): a laptop on Wi-Fi, cable unplugged.
    const WIFI_UNMETERED: &str = "GENERAL.DEVICE:wlp2s0\nGENERAL.STATE:100 (connected)\nGENERAL.METERED:no (guessed)\n\nGENERAL.DEVICE:enp0s31f6\nGENERAL.STATE:20 (unavailable)\nGENERAL.METERED:unknown\n\nGENERAL.DEVICE:lo\nGENERAL.STATE:100 (connected (externally))\nGENERAL.METERED:no\n";
    // The same laptop on a phone's hotspot: NetworkManager guesses it metered.
    const HOTSPOT: &str = "GENERAL.DEVICE:wlp2s0\nGENERAL.STATE:100 (connected)\nGENERAL.METERED:yes (guessed)\n\nGENERAL.DEVICE:lo\nGENERAL.STATE:100 (connected (externally))\nGENERAL.METERED:no\n";
    // On the hotspot with a cable plugged in too.
    const HOTSPOT_AND_CABLE: &str = "GENERAL.DEVICE:enp0s31f6\nGENERAL.STATE:100 (connected)\nGENERAL.METERED:no (guessed)\n\nGENERAL.DEVICE:wlp2s0\nGENERAL.STATE:100 (connected)\nGENERAL.METERED:yes\n";
    // Nothing connected but the loopback.
    const OFFLINE: &str = "GENERAL.DEVICE:wlp2s0\nGENERAL.STATE:30 (disconnected)\nGENERAL.METERED:unknown\n\nGENERAL.DEVICE:lo\nGENERAL.STATE:100 (connected (externally))\nGENERAL.METERED:no\n";

    #[test]
    fn nmcli_says_metered_only_when_every_way_out_is() {
        assert_eq!(metered_from_nmcli(WIFI_UNMETERED), Some(false));
        assert_eq!(metered_from_nmcli(HOTSPOT), Some(true));
        assert_eq!(metered_from_nmcli(HOTSPOT_AND_CABLE), Some(false));
        assert_eq!(
            metered_from_nmcli(OFFLINE),
            None,
            "the loopback is no way out"
        );
        let unknown =
            "GENERAL.DEVICE:wlp2s0\nGENERAL.STATE:100 (connected)\nGENERAL.METERED:unknown\n";
        assert_eq!(metered_from_nmcli(unknown), None);
    }

    #[test]
    fn garbage_or_nothing_from_a_tool_is_unknown_never_the_opposite() {
        for out in [
            "",
            "Error: NetworkManager is not running.\n",
            "\u{0}\u{1}binary",
            "GENERAL.METERED:yes\n",
        ] {
            assert_eq!(metered_from_nmcli(out), None, "{out:?}");
            assert_eq!(power_saver_from_powerprofilesctl(out), None, "{out:?}");
        }
    }

    #[test]
    fn powerprofilesctl_profiles_read_as_saver_or_not() {
        assert_eq!(
            power_saver_from_powerprofilesctl("power-saver\n"),
            Some(true)
        );
        assert_eq!(power_saver_from_powerprofilesctl("balanced\n"), Some(false));
        assert_eq!(
            power_saver_from_powerprofilesctl("performance\n"),
            Some(false)
        );
    }

    fn supply(root: &Path, name: &str, files: &[(&str, &str)]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), format!("{text}\n")).unwrap();
        }
    }

    #[test]
    fn sys_power_supply_trees_read_as_battery_and_charging() {
        let laptop = tempfile::tempdir().unwrap();
        supply(laptop.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        supply(
            laptop.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("capacity", "17"),
                ("status", "Discharging"),
            ],
        );
        assert_eq!(battery_in(laptop.path()), (Some(17), Some(false)));
        supply(laptop.path(), "AC", &[("type", "Mains"), ("online", "1")]);
        supply(
            laptop.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("capacity", "18"),
                ("status", "Not charging"),
            ],
        );
        assert_eq!(
            battery_in(laptop.path()),
            (Some(18), Some(true)),
            "plugged in, held"
        );

        let desktop = tempfile::tempdir().unwrap();
        assert_eq!(
            battery_in(desktop.path()),
            (None, None),
            "no supplies: unknown"
        );
        let missing = desktop.path().join("absent");
        assert_eq!(battery_in(&missing), (None, None));
        let broken = tempfile::tempdir().unwrap();
        supply(
            broken.path(),
            "BAT0",
            &[("type", "Battery"), ("capacity", "many"), ("status", "??")],
        );
        assert_eq!(
            battery_in(broken.path()),
            (None, None),
            "garbage is unknown"
        );
    }

    #[test]
    fn a_missing_tool_or_one_that_hangs_is_unknown_within_the_bound() {
        assert_eq!(
            run_bounded("keepsake-no-such-tool", &[], PROBE_TIMEOUT),
            None
        );
        let started = std::time::Instant::now();
        assert_eq!(
            run_bounded("sleep", &["30"], Duration::from_millis(200)),
            None
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the hung tool was killed"
        );
        assert_eq!(
            run_bounded("false", &[], PROBE_TIMEOUT),
            None,
            "a failure is unknown"
        );
        assert_eq!(
            run_bounded("echo", &["balanced"], PROBE_TIMEOUT).as_deref(),
            Some("balanced\n")
        );
    }
}
