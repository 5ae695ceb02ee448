//! `cargo xtask python`: proof that the contract is plain gRPC. Creates a venv,
//! generates Python stubs from proto/, starts the real server, runs the client.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `keepsake serve`, killed on drop.
pub struct RunningServer {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its data directory (holding `initial-credentials.json`).
    pub data: tempfile::TempDir,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds and starts `keepsake serve` on an ephemeral port with a fresh data directory.
pub fn start_server(root: &Path) -> Result<RunningServer> {
    let keepsake = crate::ci::build_debug_keepsake(root)?;
    let data = tempfile::tempdir()?;
    let mut child = Command::new(keepsake)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting keepsake serve")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut url = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(at) = line.find("http://") {
            url = Some(line[at..].trim().to_string());
            break;
        }
    }
    // Keep reading so the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let url = url.context("keepsake serve exited before printing its address")?;
    Ok(RunningServer { child, url, data })
}

/// The Python client's venv under target/, made once per requirements file.
pub fn venv(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/py-venv");
    let python = dir.join("bin/python");
    let requirements = root.join("tests/python/requirements.txt");
    let stamp = dir.join(".requirements");
    let wanted = std::fs::read_to_string(&requirements)?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .context("python3 is needed for the gRPC interop check")?
        .success()
        && Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements)
            .status()?
            .success();
    if !ok {
        bail!("creating the Python venv failed");
    }
    std::fs::write(stamp, wanted)?;
    Ok(python)
}

/// Runs the Python client against a fresh server.
pub fn run(root: &Path) -> Result<()> {
    println!("\n==> python grpc client");
    let python = venv(root)?;
    let stubs = root.join("target/py-stubs");
    std::fs::create_dir_all(&stubs)?;
    let generated = Command::new(&python)
        .current_dir(root)
        .args(["-m", "grpc_tools.protoc", "-Iproto"])
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .args([
            "proto/keepsake/v1/store.proto",
            "proto/keepsake/v1/policy.proto",
            "proto/keepsake/v1/accounts.proto",
            "proto/keepsake/v1/library.proto",
        ])
        .status()?;
    if !generated.success() {
        bail!("generating Python stubs failed");
    }
    let server = start_server(root)?;
    let status = Command::new(&python)
        .arg(root.join("tests/python/store_client.py"))
        .arg(&server.url)
        .arg(server.data.path().join("initial-credentials.json"))
        .arg(&stubs)
        .status()?;
    if !status.success() {
        bail!("the Python gRPC client failed");
    }
    Ok(())
}
