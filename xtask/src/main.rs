//! Project automation, run as `cargo xtask <command>`.

mod bench;
mod ci;
mod codegen;
mod python;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>
  codegen [--check]     regenerate (or check) the committed gRPC code from proto/
  ci                    everything CI runs: fmt, codegen check, architecture, clippy, tests, crash sweep, python client, short bench
  arch                  check the dependency rules of ARCHITECTURE.md
  python                the Python grpcio client against a real server
  bench store [--short] store throughput over loopback gRPC vs same-run baselines
  bench policy [--short] cost of one policy evaluation";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = codegen::workspace_root();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen::run(&root, rest.iter().any(|a| a == "--check")),
        Some("ci") => ci::ci(&root),
        Some("arch") => ci::architecture(&root),
        Some("python") => python::run(&root),
        Some("bench") => bench::run(&root, rest),
        _ => bail!("{USAGE}"),
    }
}
