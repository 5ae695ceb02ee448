//! CI's test step: every test binary `cargo test --workspace` would run, on two lanes. The
//! end-to-end binary spends most of its minute and a half waiting on real processes, so it
//! runs beside the others instead of after them; the doc tests follow on the second lane.
//! Each binary runs as cargo would run it (from its package's folder, with cargo's
//! variables), and its output is printed whole when it ends, so lanes never interleave.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A test executable and the package folder cargo runs it from.
struct TestBinary {
    name: String,
    executable: PathBuf,
    package_dir: PathBuf,
}

/// The test binaries of the workspace, built already (`cargo test --no-run` compiles nothing
/// when the previous step built them).
fn binaries(root: &Path) -> Result<Vec<TestBinary>> {
    let out = crate::ci::cargo()
        .current_dir(root)
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--quiet",
            "--message-format=json",
        ])
        .output()
        .context("listing the test binaries")?;
    if !out.status.success() {
        bail!(
            "building the tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let manifest = PathBuf::from(message["manifest_path"].as_str().unwrap_or_default());
        found.push(TestBinary {
            name: format!(
                "{} ({})",
                message["target"]["name"].as_str().unwrap_or("?"),
                message["target"]["kind"][0].as_str().unwrap_or("?")
            ),
            executable: executable.into(),
            package_dir: manifest.parent().map(Path::to_path_buf).unwrap_or_default(),
        });
    }
    Ok(found)
}

fn run_binary(binary: &TestBinary) -> Result<Output> {
    let mut command = Command::new(&binary.executable);
    command.current_dir(&binary.package_dir);
    // What `cargo test` gives a test binary: the cargo that builds the e2e test's server,
    // with the same settings (so it builds nothing new), and the package's folder.
    let cargo = crate::ci::cargo();
    for (key, value) in cargo.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    command
        .env("CARGO", cargo.get_program())
        .env("CARGO_MANIFEST_DIR", &binary.package_dir)
        .arg("--quiet");
    command
        .output()
        .with_context(|| format!("running {}", binary.executable.display()))
}

/// Held while a binary's output is printed, so the lanes' outputs never interleave.
static PRINTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Prints a finished binary's output; says whether it passed.
fn report(binary: &TestBinary, output: &Output) -> bool {
    let _alone = PRINTING.lock().unwrap_or_else(|p| p.into_inner());
    println!("\n---- {} ----", binary.name);
    print!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        println!("FAILED: {} ({})", binary.name, output.status);
    }
    output.status.success()
}

/// Runs every test binary on two lanes, then the doc tests; fails if any failed.
pub fn run(root: &Path) -> Result<()> {
    println!(
        "\n==> cargo test --workspace, on two lanes (with 100 simulated seeds and the crash sweeps)"
    );
    let all = binaries(root)?;
    let (slow, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|b| b.name.starts_with("e2e ("));
    let mut failed = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        let slow_lane = scope.spawn(|| -> Result<Vec<(String, bool)>> {
            slow.iter()
                .map(|b| Ok((b.name.clone(), report(b, &run_binary(b)?))))
                .collect()
        });
        for binary in &rest {
            if !report(binary, &run_binary(binary)?) {
                failed.push(binary.name.clone());
            }
        }
        let mut docs = crate::ci::cargo();
        docs.current_dir(root)
            .args(["test", "--workspace", "--doc", "--quiet"]);
        if !docs.status().context("running the doc tests")?.success() {
            failed.push("doc tests".into());
        }
        for (name, passed) in slow_lane
            .join()
            .map_err(|_| anyhow::anyhow!("the end-to-end lane panicked"))??
        {
            if !passed {
                failed.push(name);
            }
        }
        Ok(())
    })?;
    if !failed.is_empty() {
        bail!("tests failed: {}", failed.join(", "));
    }
    Ok(())
}
