//! Project automation, run as `cargo xtask <command>`.

mod codegen;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = codegen::workspace_root();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen::run(&root, args.iter().any(|a| a == "--check")),
        _ => bail!("usage: cargo xtask <codegen [--check]>"),
    }
}
