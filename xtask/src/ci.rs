//! `cargo xtask ci`: everything CI checks, in the order that fails fastest.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// Domain crates: they must not know tonic, prost or the generated proto code.
const DOMAIN_CRATES: &[&str] = &[
    "keepsake-core",
    "keepsake-store",
    "keepsake-delta",
    "keepsake-library",
    "keepsake-policy",
    "keepsake-device",
    "keepsake-media",
    "keepsake-path",
    "keepsake-sql",
    "keepsake-import",
];

/// Dependencies a crate must not have anywhere in its normal tree: the pure crates stay
/// pure (no database, no runtime), and the delta engine speaks the core's vocabulary,
/// not the store's.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("keepsake-core", &["rusqlite", "tokio", "keepsake-store"]),
    ("keepsake-delta", &["keepsake-store", "rusqlite", "tokio"]),
    ("keepsake-policy", &["rusqlite", "tokio", "keepsake-store"]),
];

/// The only crates under crates/ allowed to depend on keepsake-proto (tooling and tests may):
/// the wire itself, the web library (a client of the wire for browsers) and the binary.
const PROTO_USERS: &[&str] = &["keepsake-transport", "keepsake-web", "keepsake"];

/// Set by `cargo xtask ci`: every cargo it runs lints the workspace's crates as it builds.
static LINTED_BUILDS: AtomicBool = AtomicBool::new(false);

pub fn cargo() -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // `cargo xtask` runs this with cargo's word about the xtask package (CARGO_MANIFEST_DIR,
    // CARGO_PKG_*), which a build must not see: ring's build script reruns when
    // CARGO_MANIFEST_DIR changes, and the end-to-end tests' cargo (which drops them too)
    // then rebuilt ring and 25 crates above it, a minute in each of three steps.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                &*key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            cargo.env_remove(&*key);
        }
    }
    // A CI machine builds from a clean clone once: incremental compilation's bookkeeping
    // only costs it time. Cargo passes the setting on, so the binaries tests build inside
    // `cargo test` share the same artifacts.
    if std::env::var_os("CI").is_some() {
        cargo.env("CARGO_INCREMENTAL", "0");
    }
    if LINTED_BUILDS.load(Ordering::Relaxed) {
        // clippy-driver compiles the workspace's crates in place of rustc, lints included
        // (what `cargo clippy` does, but producing code): the lint pass and the test build
        // are one compile, and the dependencies are built once rather than once checked
        // for clippy and once built for the tests. Every step sets the same wrapper, so no
        // later step rebuilds what an earlier one built.
        cargo.env("RUSTC_WORKSPACE_WRAPPER", "clippy-driver").env(
            "CLIPPY_ARGS",
            "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
        );
    }
    cargo
}

/// Builds the debug `keepsake` binary with the features `cargo test --workspace` resolves, so
/// after the tests it is a relink at most, not a second build of the dependency graph
/// (`-p keepsake` resolves without dev-dependencies: tokio, syn and all above them differ).
pub fn build_debug_keepsake(root: &Path) -> Result<std::path::PathBuf> {
    let status = cargo()
        .current_dir(root)
        .args(DEBUG_KEEPSAKE_BUILD)
        .status()
        .context("starting cargo build")?;
    if !status.success() {
        bail!("building keepsake failed");
    }
    Ok(root.join("target/debug/keepsake"))
}

/// `--test e2e` (built by the tests anyway) makes cargo resolve features as `cargo test
/// --workspace` does: a unit that needs dev-dependencies turns them on for the whole
/// resolve. `--examples` did not (there are no examples, so no such unit), and every build
/// of the server flipped the store, the library and all above them between two feature sets:
/// ~50 s rebuilt in each of four CI steps.
pub const WITH_TEST_FEATURES: [&str; 3] = ["--workspace", "--test", "e2e"];

const DEBUG_KEEPSAKE_BUILD: [&str; 7] = [
    "build",
    "--quiet",
    "--bin",
    "keepsake",
    WITH_TEST_FEATURES[0],
    WITH_TEST_FEATURES[1],
    WITH_TEST_FEATURES[2],
];

pub fn run(root: &Path, what: &str, mut cmd: Command) -> Result<()> {
    println!("\n==> {what}");
    let status = cmd
        .current_dir(root)
        .status()
        .with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// One CI step: a name for the summary and the work.
type Step<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// Debian packages the test steps use: the service test checks its unit with systemd's
/// verifier, the metadata tests write EXIF with exiftool, the web library's test drives
/// Chromium over WebDriver, and the media step makes real media.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("systemd-analyze", "systemd"),
    ("exiftool", "libimage-exiftool-perl"),
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

/// What the later steps need from the network — Debian packages and the Python client's
/// venv — fetched on threads of their own while the first steps compile, so a fresh machine
/// waits for downloads and compilers at once rather than one after the other.
fn prepare(root: &Path) -> (Prepared, Prepared) {
    let tools = std::thread::spawn(|| {
        let mut tools = TEST_TOOLS.to_vec();
        tools.extend_from_slice(crate::media::TOOLS);
        crate::media::ensure(&tools)
    });
    let root = root.to_path_buf();
    let venv = std::thread::spawn(move || crate::python::venv(&root).map(|_| ()));
    (
        std::sync::Mutex::new(Some(tools)),
        std::sync::Mutex::new(Some(venv)),
    )
}

/// Work started by `prepare`, waited for by the first step that needs it.
type Prepared = std::sync::Mutex<Option<std::thread::JoinHandle<Result<()>>>>;

fn wait_for(prepared: &Prepared, what: &str) -> Result<()> {
    let handle = prepared.lock().unwrap_or_else(|p| p.into_inner()).take();
    match handle {
        Some(handle) => handle
            .join()
            .map_err(|_| anyhow::anyhow!("{what} panicked"))?,
        None => Ok(()),
    }
}

/// Runs every step; prints a closing `N passed, M failed` line.
pub fn ci(root: &Path) -> Result<()> {
    LINTED_BUILDS.store(true, Ordering::Relaxed);
    let (tools, venv) = prepare(root);
    let steps: Vec<(&str, Step<'_>)> = vec![
        (
            "rustfmt",
            Box::new(|| {
                let mut c = cargo();
                c.args(["fmt", "--all", "--", "--check"]);
                run(root, "cargo fmt --check", c)
            }),
        ),
        (
            "generated code is fresh",
            Box::new(|| crate::codegen::run(root, true)),
        ),
        ("architecture rules", Box::new(|| architecture(root))),
        (
            "clippy, building the tests",
            Box::new(|| {
                let mut c = cargo();
                // Linted as it builds (see `cargo`): every crate, test and binary the
                // later steps run, without compiling again. `--bins` in the same graph:
                // the server the end-to-end tests start was otherwise built on their
                // lane, a minute of the test step spent waiting for one crate.
                c.args(["build", "--workspace", "--tests", "--bins", "--quiet"]);
                run(
                    root,
                    "clippy -D warnings, building every test and binary (clippy-driver as the compiler)",
                    c,
                )?;
                // The device's side alone, as an app links it: it must build and stay clean.
                // (Run beside the later steps it slowed them by more than it took alone.)
                let mut c = cargo();
                c.args([
                    "clippy",
                    "-p",
                    "keepsake-transport",
                    "--no-default-features",
                    "--",
                    "-D",
                    "warnings",
                ]);
                run(
                    root,
                    "cargo clippy -p keepsake-transport --no-default-features",
                    c,
                )
            }),
        ),
        (
            "tests",
            Box::new(|| {
                wait_for(&tools, "installing the test tools")?;
                crate::media::ensure(TEST_TOOLS)?;
                crate::testrun::run(root)
            }),
        ),
        (
            "fuzz targets (short)",
            Box::new(|| {
                let args = ["--seconds", "10", "--quick"].map(String::from);
                crate::fuzz::run(root, &args)
            }),
        ),
        ("postgres + s3", Box::new(|| crate::services::ci_step(root))),
        (
            "three nodes behind HAProxy, kill -9 one at a time (short)",
            Box::new(|| crate::fleet::run(root, &["--short".to_string()], 3)),
        ),
        (
            "store and library apart behind HAProxy, the store kill -9'd mid-upload (short)",
            Box::new(|| {
                let args = ["--short", "--apart", "--seconds", "15"].map(String::from);
                crate::fleet::run(root, &args, 3)
            }),
        ),
        (
            "kill -9 integration (short), the Python client and real media beside it",
            Box::new(|| {
                // The chaos run spends most of its minute and a half waiting on real
                // processes; the two short checks use that time instead of their own.
                std::thread::scope(|scope| {
                    let beside = scope.spawn(|| -> Result<()> {
                        let t = std::time::Instant::now();
                        wait_for(&venv, "making the Python venv")?;
                        crate::python::run(root)?;
                        println!(
                            "xtask ci: the Python client took {:.0} s",
                            t.elapsed().as_secs_f64()
                        );
                        let t = std::time::Instant::now();
                        wait_for(&tools, "installing the media tools")?;
                        crate::media::media(root)?;
                        println!(
                            "xtask ci: real-media deltas took {:.0} s",
                            t.elapsed().as_secs_f64()
                        );
                        Ok(())
                    });
                    let t = std::time::Instant::now();
                    let chaos = crate::it::run(root, &["--short".to_string()]);
                    println!(
                        "xtask ci: kill -9 integration took {:.0} s",
                        t.elapsed().as_secs_f64()
                    );
                    let beside = beside
                        .join()
                        .map_err(|_| anyhow::anyhow!("the Python and media checks panicked"))?;
                    chaos.and(beside)
                })
            }),
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    let started = std::time::Instant::now();
    for (name, step) in &steps {
        let t = std::time::Instant::now();
        let outcome = step();
        println!(
            "xtask ci: step `{name}` took {:.0} s ({:.0} s so far)",
            t.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        match outcome {
            Ok(()) => passed += 1,
            Err(e) => {
                failed += 1;
                println!("xtask ci: step `{name}` failed: {e:#}");
                break;
            }
        }
    }
    println!("\nxtask ci: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("ci failed");
    }
    Ok(())
}

/// Domain crates stay free of tonic/prost; only the transport and the binary see keepsake-proto.
pub fn architecture(root: &Path) -> Result<()> {
    println!("\n==> architecture rules");
    let members = workspace_crates(root)?;
    let mut violations = Vec::new();
    for krate in DOMAIN_CRATES
        .iter()
        .filter(|c| members.iter().any(|m| m == *c))
    {
        let out = cargo()
            .current_dir(root)
            .args([
                "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
            ])
            .output()?;
        let tree = String::from_utf8_lossy(&out.stdout);
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if matches!(name, "tonic" | "prost" | "keepsake-proto" | "tonic-prost") {
                violations.push(format!("{krate} depends on {name}"));
            }
            let forbidden = FORBIDDEN
                .iter()
                .filter(|(c, _)| c == krate)
                .flat_map(|(_, deps)| deps.iter());
            for dep in forbidden {
                if name == *dep {
                    violations.push(format!("{krate} depends on {name}, which it must not"));
                }
            }
        }
    }
    for krate in members
        .iter()
        .filter(|m| !PROTO_USERS.contains(&m.as_str()))
    {
        let out = cargo()
            .current_dir(root)
            .args([
                "tree", "-p", krate, "-e", "normal", "--depth", "1", "--prefix", "none",
                "--format", "{p}",
            ])
            .output()?;
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .any(|l| l.starts_with("keepsake-proto "))
        {
            violations.push(format!("{krate} depends on keepsake-proto"));
        }
    }
    violations.extend(device_side_links(root)?);
    violations.extend(test_kit_users(root)?);
    violations.extend(oversized_files(root)?);
    violations.sort();
    violations.dedup();
    if !violations.is_empty() {
        bail!("architecture rules broken:\n  {}", violations.join("\n  "));
    }
    println!(
        "architecture: domain crates free of tonic/prost; keepsake-proto only where allowed; \
         core, delta and policy free of the store, SQLite and tokio; \
         the transport's device side free of the library; no test kit in production"
    );
    Ok(())
}

/// What the transport's device side (without its `cloud` feature) must not link: the
/// library's password hashing and token signing have no business in a phone's app.
fn device_side_links(root: &Path) -> Result<Vec<String>> {
    let out = cargo()
        .current_dir(root)
        .args([
            "tree",
            "-p",
            "keepsake-transport",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()?;
    if !out.status.success() {
        bail!("cargo tree of keepsake-transport without features failed");
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            matches!(
                *name,
                "keepsake-library" | "argon2" | "ed25519-dalek" | "tonic-reflection"
            )
        })
        .map(|name| format!("keepsake-transport without `cloud` links {name}"))
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// Production crates that depend on the test kit (only dev-dependencies may).
fn test_kit_users(root: &Path) -> Result<Vec<String>> {
    let mut users = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))? {
        let dir = entry?.path();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let mut section = "";
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line;
            } else if section == "[dependencies]"
                && line.starts_with("keepsake-testkit")
                && name != "keepsake-testkit"
            {
                users.push(format!("{name} depends on keepsake-testkit (tests only)"));
            }
        }
    }
    Ok(users)
}

/// A source file a newcomer can hold in mind has at most this many lines.
const MAX_FILE_LINES: usize = 1_000;

/// Source files (generated code and tests aside) past the bound, after printing the
/// largest so growth is seen.
fn oversized_files(root: &Path) -> Result<Vec<String>> {
    let mut sizes = Vec::new();
    let mut stack = vec![root.join("crates"), root.join("xtask")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !matches!(name, "target" | "generated" | "tests" | "benches") {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                let lines = std::fs::read_to_string(&path)?.lines().count();
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                sizes.push((lines, rel));
            }
        }
    }
    sizes.sort_by(|a, b| b.cmp(a));
    let largest: Vec<String> = sizes
        .iter()
        .take(5)
        .map(|(n, f)| format!("{f} {n}"))
        .collect();
    println!("architecture: largest source files: {}", largest.join(", "));
    Ok(sizes
        .iter()
        .filter(|(lines, _)| *lines > MAX_FILE_LINES)
        .map(|(lines, file)| {
            format!(
                "{file} has {lines} lines, over the bound of {MAX_FILE_LINES}: \
                 split it by what its parts do"
            )
        })
        .collect())
}

fn workspace_crates(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))? {
        let manifest = entry?.path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)?;
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_string())
            .with_context(|| format!("no name in {}", manifest.display()))?;
        let folder = manifest
            .parent()
            .and_then(|p| p.file_name())
            .unwrap_or_default();
        if folder.to_string_lossy() != name {
            bail!("crate folder {folder:?} must be named like its crate {name:?}");
        }
        names.push(name);
    }
    Ok(names)
}
