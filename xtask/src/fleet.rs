//! `cargo xtask it --nodes N [--short] [--seed S] [--seconds T]`: N `keepsake serve`
//! processes on one PostgreSQL database and one bucket, behind HAProxy (HTTP/2 to each,
//! Debian's, installed if missing), and three device agents — two cameras and a viewer —
//! syncing through its one address while photos are taken and the nodes are kill -9'd and
//! restarted one at a time. Then every node is up again, and every device must hold every
//! photo byte for byte, with exactly one live asset each in the library.
//!
//! `cargo xtask it --apart`: the same story with the services deployed apart — a store
//! node (`--services store`) and two library nodes (`--services library,policy,delta
//! --store …`) that reach it over gRPC through HAProxy, which routes
//! `/keepsake.v1.ChunkStore/` to the store and the rest to the libraries; the store is
//! killed mid-upload and restarted in turn with each library node.

use crate::it::{Harness, Proc, Rng, live_names, random_bytes, wait_for_folder};
use crate::services::{Postgres, S3Server, free_port};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEVICES: [&str; 3] = ["camera-1", "camera-2", "viewer"];
/// The photo whose upload a store kill interrupts: several of the store's 8 MiB batches.
const LARGE_PHOTO: usize = 20 << 20;

/// Objects of 2 MiB and more in the bucket: packs of a large photo's batches (the small
/// photos are under 1.5 MB).
fn large_objects(root: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => walk(&entry.path(), n),
                Ok(m) if m.len() >= 2 << 20 => *n += 1,
                _ => {}
            }
        }
    }
    let mut n = 0;
    walk(root, &mut n);
    n
}

/// Debian's haproxy, installed when missing.
fn haproxy() -> Result<PathBuf> {
    crate::media::ensure(&[("haproxy", "haproxy")])?;
    Ok(PathBuf::from("haproxy"))
}

/// One address for the fleet: round robin over the nodes, HTTP/2 without TLS on both
/// sides (gRPC), a node found down within a check or two and new calls sent elsewhere.
/// With `stores`, the ChunkStore's calls go to those nodes and everything else to `nodes`.
fn haproxy_config(front: u16, nodes: &[(usize, u16)], stores: &[(usize, u16)]) -> String {
    let mut config = format!(
        "global\n    maxconn 4096\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 10m\n    \
         timeout server 10m\n    retries 3\n    option redispatch\n    retry-on conn-failure\n\
         frontend keepsake\n    bind 127.0.0.1:{front} proto h2\n"
    );
    if !stores.is_empty() {
        config.push_str(
            "    acl chunk_store path_beg /keepsake.v1.ChunkStore/\n    use_backend stores if chunk_store\n",
        );
    }
    config.push_str("    default_backend nodes\n");
    let mut backend = |name: &str, servers: &[(usize, u16)]| {
        config.push_str(&format!("backend {name}\n    balance roundrobin\n"));
        for (i, port) in servers {
            config.push_str(&format!(
                "    server node{i} 127.0.0.1:{port} proto h2 check inter 250ms fall 1 rise 2\n"
            ));
        }
    };
    backend("nodes", nodes);
    if !stores.is_empty() {
        backend("stores", stores);
    }
    config
}

/// A node: `keepsake serve` on the shared database and bucket, its own data directory
/// (lock, published keys) and port; its log in `work/node-I.log`.
struct Node<'a> {
    bin: &'a Path,
    work: &'a Path,
    database: String,
    blobs: String,
    env: Vec<(String, String)>,
}

impl Node<'_> {
    fn start(&self, i: usize, port: u16, role: &[String]) -> Result<Proc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join(format!("node-{i}.log")))?;
        let mut child = Command::new(self.bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(self.work.join(format!("node-{i}")))
            .args(["--database", &self.database, "--blobs", &self.blobs])
            .args(["--web-listen", "off"])
            .args(role)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting a node")?;
        let mut lines = BufReader::new(child.stdout.take().context("piped")?).lines();
        for line in lines.by_ref() {
            if line?.contains("serving") {
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(Proc(child));
            }
        }
        bail!("node {i} exited before serving (see node-{i}.log)")
    }
}

/// Writes a photo into a camera's folder the way a camera app does: whole, then renamed in.
fn take_photo(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let staged = dir.with_extension("staging");
    std::fs::create_dir_all(&staged)?;
    std::fs::write(staged.join(name), data)?;
    std::fs::rename(staged.join(name), dir.join(name))?;
    Ok(())
}

/// N nodes on one database and bucket behind HAProxy, and a harness whose commands reach
/// the fleet through HAProxy as the administrator.
pub(crate) struct Fleet<'a> {
    node: Node<'a>,
    ports: Vec<u16>,
    /// Each node's `--services` and what goes with them (empty: everything).
    roles: Vec<Vec<String>>,
    pub(crate) running: Vec<Proc>,
    _balancer: Proc,
    pub(crate) h: Harness,
}

impl<'a> Fleet<'a> {
    /// Starts `nodes` servers of `bin` in `work` on `pg` and `s3`, and HAProxy before them.
    pub(crate) fn start(
        bin: &'a Path,
        work: &'a Path,
        nodes: usize,
        pg: &Postgres,
        s3: &S3Server,
    ) -> Result<Self> {
        Self::start_as(bin, work, vec![Vec::new(); nodes], pg, s3)
    }

    /// Starts one server per role, in order (a library first: it makes the administrator
    /// and publishes the token keys a store apart reads), and HAProxy before them; nodes
    /// whose role is `--services store` get the ChunkStore's calls.
    fn start_as(
        bin: &'a Path,
        work: &'a Path,
        roles: Vec<Vec<String>>,
        pg: &Postgres,
        s3: &S3Server,
    ) -> Result<Self> {
        let node = Node {
            bin,
            work,
            database: pg.url.clone(),
            blobs: s3.url(),
            env: s3
                .env()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let ports: Vec<u16> = roles.iter().map(|_| free_port()).collect::<Result<_>>()?;
        let front = free_port()?;
        let front_url = format!("http://127.0.0.1:{front}");
        let roles: Vec<Vec<String>> = roles
            .into_iter()
            .map(|role| {
                role.into_iter()
                    .map(|a| a.replace("{front}", &front_url))
                    .collect()
            })
            .collect();
        let is_store = |role: &Vec<String>| role.iter().any(|a| a == "store");
        // The first node makes the administrator; the others find it in the database.
        let mut running: Vec<Proc> = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            running.push(node.start(i, *port, &roles[i])?);
        }
        let numbered = ports.iter().copied().enumerate();
        let (stores, libraries): (Vec<_>, Vec<_>) =
            numbered.partition(|(i, _)| is_store(&roles[*i]));
        let config = work.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(front, &libraries, &stores))?;
        let balancer = Proc(
            Command::new(haproxy()?)
                .arg("-f")
                .arg(&config)
                .arg("-db")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(work.join("haproxy.log"))?)
                .spawn()
                .context("starting haproxy")?,
        );
        let credentials: serde_json::Value = serde_json::from_slice(&std::fs::read(
            work.join("node-0/initial-credentials.json"),
        )?)?;
        let h = Harness {
            bin: bin.to_path_buf(),
            work: work.to_path_buf(),
            port: front,
            password: credentials["password"]
                .as_str()
                .context("credentials hold a password")?
                .to_string(),
            events: Default::default(),
            sync_args: Vec::new(),
            serve_args: Vec::new(),
            serve_env: Vec::new(),
        };
        // HAProxy answers once its first checks pass.
        let ready = Instant::now() + Duration::from_secs(20);
        while h.run_ok(&["library", "ls"]).is_err() {
            if Instant::now() > ready {
                bail!("the fleet never answered through HAProxy (see haproxy.log)");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Self {
            node,
            ports,
            roles,
            running,
            _balancer: balancer,
            h,
        })
    }

    /// kill -9 of node `i`, a pause of `down`, and the node started again.
    fn bounce(&mut self, i: usize, down: Duration) -> Result<()> {
        self.running[i].kill();
        std::thread::sleep(down);
        self.restart(i)
    }

    /// Starts node `i` again (after a kill).
    fn restart(&mut self, i: usize) -> Result<()> {
        self.running[i] = self.node.start(i, self.ports[i], &self.roles[i])?;
        Ok(())
    }
}

/// The roles of the services-apart fleet: a library node, the store, a second library
/// node. The libraries reach the store through HAProxy's one address (`{front}`), with
/// the key the store was given; the store checks tokens with the keys node 0 publishes.
fn apart_roles(work: &Path) -> Vec<Vec<String>> {
    let key = work.join("service-key").display().to_string();
    let library = vec![
        "--services".to_string(),
        "library,policy,delta".to_string(),
        "--store".to_string(),
        "{front}".to_string(),
        "--service-key".to_string(),
        key.clone(),
    ];
    let store = vec![
        "--services".to_string(),
        "store".to_string(),
        "--service-key".to_string(),
        key,
        "--token-keys".to_string(),
        work.join("node-0/token-keys.json").display().to_string(),
    ];
    vec![library.clone(), store, library]
}

/// Runs the fleet scenario with `nodes` servers, or with the services apart.
pub fn run(root: &Path, args: &[String], nodes: usize) -> Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse::<u64>().ok())
    };
    let short = args.iter().any(|a| a == "--short");
    let apart = args.iter().any(|a| a == "--apart");
    let seed = value("--seed").unwrap_or(1);
    let seconds = value("--seconds").unwrap_or(if short { 20 } else { 120 });
    if nodes < 2 && !apart {
        bail!("--nodes {nodes}: a fleet is at least two");
    }
    if apart {
        println!(
            "\n==> it: store and library apart (one store node, two library nodes) behind HAProxy on PostgreSQL + S3, the store kill -9'd mid-upload in turn with each library (seed {seed}, {seconds} s)"
        );
    } else {
        println!(
            "\n==> it: {nodes} nodes behind HAProxy on PostgreSQL + S3, nodes kill -9'd one at a time (seed {seed}, {seconds} s)"
        );
    }
    let bin = crate::ci::build_debug_keepsake(root)?;
    let pg = Postgres::start(root)?;
    let s3 = S3Server::start(root)?;
    let tmp = tempfile::tempdir()?;
    let work = tmp.path().to_path_buf();
    let mut fleet = if apart {
        Fleet::start_as(&bin, &work, apart_roles(&work), &pg, &s3)?
    } else {
        Fleet::start(&bin, &work, nodes, &pg, &s3)?
    };
    let nodes = fleet.ports.len();
    // Apart, every other kill is the store's: uploads in flight lose it mid-batch.
    let victims: Vec<usize> = if apart {
        vec![1, 0, 1, 2]
    } else {
        (0..nodes).collect()
    };
    let h = &fleet.h;
    for name in DEVICES {
        h.run_ok(&[
            "device",
            "enroll",
            "--name",
            name,
            "--data",
            &format!("{name}-data"),
        ])?;
        std::fs::create_dir_all(work.join(name))?;
    }
    let agents: Vec<Proc> = DEVICES.iter().map(|d| h.sync(d)).collect::<Result<_>>()?;

    let mut rng = Rng(seed);
    let mut photos: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let (mut kills, mut store_kills, mut mid_upload, mut victim) = (0u32, 0u32, 0u32, 0usize);
    let started = Instant::now();
    let mut next_kill = started + Duration::from_secs(3);
    while started.elapsed() < Duration::from_secs(seconds) {
        let camera = DEVICES[rng.below(2) as usize];
        let name = format!("IMG_{:05}.JPG", photos.len());
        let len = 100_000 + rng.below(1_400_000) as usize;
        let data = random_bytes(&mut rng, len);
        take_photo(&work.join(camera), &name, &data)?;
        photos.insert(name, data);
        if Instant::now() >= next_kill {
            let down = Duration::from_millis(500 + rng.below(1500));
            if apart && victims[victim] == 1 {
                // A large photo, and the store killed once its first pack is in the bucket:
                // the rest of the photo is still on its way, so the kill lands mid-upload.
                let name = format!("IMG_{:05}.JPG", photos.len());
                let data = random_bytes(&mut rng, LARGE_PHOTO);
                let before = large_objects(&s3.root);
                take_photo(&work.join(DEVICES[0]), &name, &data)?;
                photos.insert(name, data);
                let waited = Instant::now();
                while large_objects(&s3.root) <= before {
                    if waited.elapsed() > Duration::from_secs(30) {
                        bail!(
                            "no pack of the large photo reached the bucket in 30 s (seed {seed})"
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                fleet.running[1].kill();
                // Its packs are 8 MiB batches: fewer than all of them means no commit yet.
                if large_objects(&s3.root) - before < LARGE_PHOTO / (8 << 20) + 1 {
                    mid_upload += 1;
                }
                std::thread::sleep(down);
                fleet.restart(1)?;
                store_kills += 1;
            } else {
                fleet.bounce(victims[victim], down)?;
            }
            kills += 1;
            victim = (victim + 1) % victims.len();
            next_kill = Instant::now() + Duration::from_millis(2000 + rng.below(3000));
        }
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
    }
    println!(
        "it: {} photos taken on two cameras, {kills} node kills in {:.0} s",
        photos.len(),
        started.elapsed().as_secs_f64()
    );
    if apart {
        println!(
            "it: {store_kills} kills of the store, {mid_upload} of them after part of a {} MiB photo was stored and before the rest",
            LARGE_PHOTO >> 20
        );
        if mid_upload == 0 {
            bail!("the store was never killed mid-upload (seed {seed}); run longer");
        }
    }
    let healed = Instant::now();
    for device in DEVICES {
        wait_for_folder(
            &work.join(device),
            &photos,
            healed + Duration::from_secs(240),
        )
        .with_context(|| format!("{device} never held every photo (seed {seed})"))?;
    }
    let converged = healed.elapsed();
    let h = &fleet.h;
    let listing = h.run_ok(&["library", "ls"])?;
    let live_rows = listing.lines().filter(|l| l.contains(" live ")).count();
    let names = live_names(h)?;
    let want: std::collections::BTreeSet<String> = photos.keys().cloned().collect();
    if live_rows != photos.len() || names != want {
        bail!(
            "the library holds {live_rows} live assets for {} photos (seed {seed}); missing {:?}, extra {:?}",
            photos.len(),
            want.difference(&names).collect::<Vec<_>>(),
            names.difference(&want).collect::<Vec<_>>()
        );
    }
    println!(
        "it: fleet converged {:.1} s after the last photo: every device holds all {} photos byte for byte, one asset each — 0 lost, 0 duplicated",
        converged.as_secs_f64(),
        photos.len()
    );
    drop((agents, fleet));
    Ok(())
}

/// `cargo xtask bench nodes [--short]`: the first sync of one seeded library through
/// HAProxy to one node and then to two, release builds, each on a fresh PostgreSQL and S3
/// server, in the same run. On two cores the second node has no core of its own: what it
/// can show is what the balancer and a second process cost, not what a second machine adds.
pub fn bench(root: &Path, short: bool) -> Result<()> {
    let (items, mean) = if short { (60, 2 << 20) } else { (300, 2 << 20) };
    if !crate::ci::cargo()
        .current_dir(root)
        .args(["build", "--quiet", "--release", "-p", "keepsake"])
        .status()?
        .success()
    {
        bail!("building keepsake failed");
    }
    let bin = root.join("target/release/keepsake");
    let tmp_root = root.join("target/bench-tmp");
    std::fs::create_dir_all(&tmp_root)?;
    let mut rows = Vec::new();
    let mut total = 0;
    for nodes in [1, 2] {
        let pg = Postgres::start(root)?;
        let s3 = S3Server::start_release(root)?;
        let tmp = tempfile::tempdir_in(&tmp_root)?;
        let fleet = Fleet::start(&bin, tmp.path(), nodes, &pg, &s3)?;
        fleet
            .h
            .run_ok(&["device", "enroll", "--name", "camera", "--data", "a-data"])?;
        fleet
            .h
            .run_ok(&["device", "enroll", "--name", "viewer", "--data", "b-data"])?;
        total = crate::bench_backends::write_library(&tmp.path().join("a"), items, mean)?;
        std::fs::create_dir_all(tmp.path().join("b"))?;
        std::thread::sleep(Duration::from_millis(1100));
        let seconds = crate::bench_backends::first_sync(&fleet.h, tmp.path())?;
        rows.push((nodes, seconds));
        if nodes == 2 {
            // A watcher on node 0, albums made through node 1: LISTEN/NOTIFY's hop.
            let status = crate::bench::bench_binary(root)
                .arg("cross-node")
                .args(["--watch", &format!("http://127.0.0.1:{}", fleet.ports[0])])
                .args(["--edit", &format!("http://127.0.0.1:{}", fleet.ports[1])])
                .args([
                    "--account",
                    "me",
                    "--rounds",
                    if short { "50" } else { "200" },
                ])
                .env("KEEPSAKE_PASSWORD", &fleet.h.password)
                .status()?;
            if !status.success() {
                bail!("bench cross-node failed");
            }
        }
        drop(fleet);
    }
    let mib = total as f64 / f64::from(1 << 20);
    println!(
        "bench nodes: first sync of {items} photos ({mib:.0} MiB) A -> B through HAProxy, PostgreSQL + S3, release, one machine of two cores"
    );
    println!("| nodes | first sync | MiB/s |");
    println!("|---|---|---|");
    for (nodes, seconds) in &rows {
        println!("| {nodes} | {seconds:.1} s | {:.0} |", mib / seconds);
    }
    println!();
    println!("two nodes / one node, time = {:.2}", rows[1].1 / rows[0].1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balancer_speaks_http2_to_every_node_and_checks_each() {
        let config = haproxy_config(9000, &[(0, 9001), (1, 9002), (2, 9003)], &[]);
        assert!(config.contains("bind 127.0.0.1:9000 proto h2"));
        assert!(!config.contains("use_backend"), "{config}");
        for (i, port) in [9001, 9002, 9003].iter().enumerate() {
            assert!(
                config.contains(&format!("server node{i} 127.0.0.1:{port} proto h2 check")),
                "{config}"
            );
        }
    }

    #[test]
    fn apart_the_chunk_store_calls_reach_the_store_and_the_rest_the_libraries() {
        let config = haproxy_config(9000, &[(0, 9001), (2, 9003)], &[(1, 9002)]);
        let stores = config
            .split("\nbackend stores")
            .nth(1)
            .expect("a store backend");
        let libraries = config
            .split("\nbackend nodes")
            .nth(1)
            .and_then(|b| b.split("\nbackend stores").next())
            .expect("a library backend");
        assert!(
            config.contains("path_beg /keepsake.v1.ChunkStore/"),
            "{config}"
        );
        assert!(
            config.contains("use_backend stores if chunk_store"),
            "{config}"
        );
        assert!(stores.contains("127.0.0.1:9002") && !stores.contains("9001"));
        assert!(libraries.contains("127.0.0.1:9001") && libraries.contains("127.0.0.1:9003"));
        assert!(!libraries.contains("9002"), "{config}");
    }
}
