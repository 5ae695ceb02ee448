//! The real servers the PostgreSQL + S3 runs need, started by the command that needs them:
//! a throwaway PostgreSQL cluster (Debian's, installed when missing, never run as root) and
//! the `keepsake-s3` server in a process of its own. Both stop when dropped.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A PostgreSQL cluster of our own on a free loopback port.
pub struct Postgres {
    /// `postgres://keepsake@127.0.0.1:PORT/keepsake`.
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    /// The server's options (port, socket folder, durability off for speed), kept for a restart.
    options: String,
}

fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Postgres {
    /// Makes and starts a cluster under `root/target/services`.
    pub fn start(root: &Path) -> Result<Self> {
        let bin = match pg_bin() {
            Some(b) => b,
            None => {
                println!("services: installing Debian's postgresql");
                let ok = Command::new("sh")
                    .args([
                        "-c",
                        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql",
                    ])
                    .status()?
                    .success();
                if !ok {
                    bail!("could not install postgresql; install it and rerun");
                }
                pg_bin().context("postgresql installed but initdb not found")?
            }
        };
        let as_postgres = is_root();
        let base = root.join("target/services");
        std::fs::create_dir_all(&base)?;
        let data = base.join(format!("pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data)?;
        if as_postgres {
            // PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()?
                .success();
            if !ok {
                bail!("could not hand {} to the postgres user", data.display());
            }
            // It must reach the folder through every parent.
            let mut dir = data.parent();
            while let Some(d) = dir {
                let _ = Command::new("chmod").arg("o+x").arg(d).status();
                dir = d.parent();
            }
        }
        let mut pg = Self {
            url: String::new(),
            bin,
            data,
            as_postgres,
            options: String::new(),
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "-U",
                "keepsake",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let port = free_port()?;
        pg.options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
            pg.data.display()
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "-o",
                &pg.options,
                "-l",
                &pg.data.join("log").to_string_lossy(),
                "-w",
                "start",
            ],
        )?;
        pg.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "keepsake",
                "keepsake",
            ],
        )?;
        pg.url = format!("postgres://keepsake@127.0.0.1:{port}/keepsake");
        Ok(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .with_context(|| format!("starting {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stops the server at once (as a crash would) and keeps the cluster, to start again.
    pub fn kill(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "immediate",
                "stop",
            ],
        )
    }

    /// Starts the server again after `kill`.
    pub fn restart(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-o",
                &self.options,
                "-l",
                &self.data.join("log").to_string_lossy(),
                "-w",
                "start",
            ],
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The `keepsake-s3` server in its own process, buckets under a folder of its own.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Its folder (objects survive a kill there).
    pub root: PathBuf,
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// The bucket every run uses.
pub const BUCKET: &str = "keepsake";

impl S3Server {
    /// Builds the server if needed and starts it with the bucket made.
    pub fn start(root: &Path) -> Result<Self> {
        Self::start_built(root, false)
    }

    /// The same, built in release (for benchmarks: the bucket must not be the bottleneck).
    pub fn start_release(root: &Path) -> Result<Self> {
        Self::start_built(root, true)
    }

    fn start_built(root: &Path, release: bool) -> Result<Self> {
        let mut build = crate::ci::cargo();
        // Resolved as `cargo test --workspace` resolves features (see WITH_TEST_FEATURES), so
        // after the tests this builds nothing.
        build.current_dir(root).args(["build", "--quiet"]);
        if release {
            build.args([
                "--release",
                "-p",
                "keepsake-testkit",
                "--bin",
                "keepsake-s3",
            ]);
        } else {
            build
                .args(["--bin", "keepsake-s3"])
                .args(crate::ci::WITH_TEST_FEATURES);
        }
        let status = build.status()?;
        if !status.success() {
            bail!("building keepsake-s3 failed");
        }
        let dir = root
            .join("target/services")
            .join(format!("s3-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(BUCKET))?;
        let mut server = Self {
            endpoint: String::new(),
            root: dir,
            binary: root.join(if release {
                "target/release/keepsake-s3"
            } else {
                "target/debug/keepsake-s3"
            }),
            port: 0,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(&self.binary)
            .arg(&self.root)
            .arg(self.port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting keepsake-s3")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("keepsake-s3 said {line:?}"))?
            .to_string();
        self.port = addr.rsplit(':').next().unwrap_or("0").parse()?;
        self.endpoint = format!("http://{addr}");
        self.child = Some(child);
        Ok(())
    }

    /// `s3://keepsake?endpoint=…` for `keepsake serve --blobs`.
    pub fn url(&self) -> String {
        format!("s3://{BUCKET}?endpoint={}", self.endpoint)
    }

    /// The credentials a client needs, as AWS environment variables.
    pub fn env(&self) -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", "keepsake-test"),
            ("AWS_SECRET_ACCESS_KEY", "keepsake-test-secret"),
        ]
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and folder.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `command` with both servers up and the variables that point tests at them.
pub fn with_services(root: &Path, command: &[String]) -> Result<()> {
    let (program, args) = command
        .split_first()
        .context("usage: cargo xtask services CMD ARGS..")?;
    let pg = Postgres::start(root)?;
    let s3 = S3Server::start(root)?;
    println!("services: PostgreSQL at {}, S3 at {}", pg.url, s3.endpoint);
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(root);
    apply_env(&mut cmd, &pg, &s3);
    let status = cmd
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} failed ({status})");
    }
    Ok(())
}

/// Points a test run at the servers.
pub fn apply_env(cmd: &mut Command, pg: &Postgres, s3: &S3Server) {
    cmd.env("KEEPSAKE_TEST_POSTGRES", &pg.url)
        .env("KEEPSAKE_TEST_S3", s3.url());
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
}

/// The end-to-end tests that also run on PostgreSQL + S3: the two-device story, the kill -9
/// tests of the real binary, a reinstall, and the move of an embedded server up.
const E2E_ON_POSTGRES: &[&str] = &[
    "photos_deletes_restores_and_purges_reach_the_other_device_and_moves_send_nothing",
    "new_photos_are_fetched_ahead_and_arrive_exact",
    "a_reinstalled_device_sends_nothing_and_an_unmounted_folder_deletes_nothing",
    "acknowledged_chunks_survive_kill_9_mid_upload",
    "an_acknowledged_commit_survives_kill_9_and_its_retry_is_no_duplicate",
    "an_embedded_library_moved_to_postgres_and_s3_keeps_its_devices_and_nothing_is_sent_again",
    "a_watcher_and_a_rotated_key_reach_another_node_within_a_second",
];

/// CI's PostgreSQL step: the seam's, the store's and the library's property and model tests,
/// and the end-to-end tests above, against a fresh cluster and S3 server started here. The
/// same `--workspace` resolution as the test step, so nothing is built again.
pub fn ci_step(root: &Path) -> Result<()> {
    let pg = Postgres::start(root)?;
    let s3 = S3Server::start(root)?;
    println!("services: PostgreSQL at {}, S3 at {}", pg.url, s3.endpoint);
    let mut unit = crate::ci::cargo();
    unit.args(["test", "--workspace"]);
    for name in ["postgres", "store", "s3", "model", "batch", "cloud"] {
        unit.args(["--test", name]);
    }
    apply_env(&mut unit, &pg, &s3);
    crate::ci::run(
        root,
        "store, library and seam tests on PostgreSQL + S3",
        unit,
    )?;
    let mut e2e = crate::ci::cargo();
    e2e.args(["test", "--workspace", "--test", "e2e", "--"])
        .args(E2E_ON_POSTGRES);
    apply_env(&mut e2e, &pg, &s3);
    crate::ci::run(root, "end-to-end and kill -9 on PostgreSQL + S3", e2e)
}
