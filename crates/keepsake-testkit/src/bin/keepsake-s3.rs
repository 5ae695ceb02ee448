//! An S3-compatible server for the integration runs, in a process of its own so a test can
//! kill it: `keepsake-s3 ROOT [PORT]`, buckets as folders under ROOT; prints
//! `listening on ADDR` once it accepts connections.

use std::io::Write;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .ok_or_else(|| std::io::Error::other("usage: keepsake-s3 ROOT [PORT]"))?;
    let port: u16 = args
        .next()
        .map_or(Ok(0), |p| p.parse().map_err(std::io::Error::other))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        keepsake_testkit::s3::serve(root.into(), listener).await
    })
}
