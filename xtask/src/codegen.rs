//! `cargo xtask codegen`: proto/ -> committed Rust in keepsake-proto, with protox (no system protoc).

use anyhow::{Context, Result, bail};
use prost::Message;
use std::path::{Path, PathBuf};

/// The .proto files that make the wire contract, relative to `proto/`.
pub const PROTO_FILES: &[&str] = &[
    "keepsake/v1/store.proto",
    "keepsake/v1/policy.proto",
    "keepsake/v1/delta.proto",
    "keepsake/v1/accounts.proto",
    "keepsake/v1/library.proto",
    "keepsake/v1/device.proto",
];

/// Where the generated code is committed, relative to the workspace root.
pub const GENERATED_DIR: &str = "crates/keepsake-proto/src/generated";

/// Files written by codegen, relative to [`GENERATED_DIR`].
const OUTPUTS: &[&str] = &["keepsake.v1.rs", "keepsake_descriptor.bin"];

/// Generates the Rust code and descriptor set for `proto/` into `out_dir`.
pub fn generate(root: &Path, out_dir: &Path) -> Result<()> {
    let fds = protox::compile(PROTO_FILES, [root.join("proto")]).context("compiling proto/")?;
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("keepsake_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .bytes(".keepsake.v1")
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .compile_fds(fds)
        .context("generating Rust from the descriptor set")?;
    Ok(())
}

/// Regenerates the committed code, or with `check` fails when it is stale.
pub fn run(root: &Path, check: bool) -> Result<()> {
    let committed = root.join(GENERATED_DIR);
    if !check {
        generate(root, &committed)?;
        println!("codegen: wrote {}", committed.display());
        return Ok(());
    }
    let fresh = tempfile::tempdir()?;
    generate(root, fresh.path())?;
    let stale = stale_outputs(&committed, fresh.path())?;
    if !stale.is_empty() {
        bail!(
            "generated code is stale ({}); run `cargo xtask codegen` and commit the result",
            stale.join(", ")
        );
    }
    println!("codegen: committed code is fresh");
    Ok(())
}

fn stale_outputs(committed: &Path, fresh: &Path) -> Result<Vec<String>> {
    let mut stale = Vec::new();
    for name in OUTPUTS {
        let want = std::fs::read(fresh.join(name)).with_context(|| format!("fresh {name}"))?;
        let have = std::fs::read(committed.join(name)).unwrap_or_default();
        if want != have {
            stale.push((*name).to_string());
        }
    }
    Ok(stale)
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_generated_code_matches_proto() {
        let root = workspace_root();
        let fresh = tempfile::tempdir().unwrap();
        generate(&root, fresh.path()).unwrap();
        let stale = stale_outputs(&root.join(GENERATED_DIR), fresh.path()).unwrap();
        assert!(
            stale.is_empty(),
            "stale generated code: {stale:?}; run `cargo xtask codegen`"
        );
    }
}
