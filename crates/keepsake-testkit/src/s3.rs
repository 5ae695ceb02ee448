//! A real S3-compatible server (s3s-fs: objects as files under a folder) for tests, in this
//! process (`InProcessS3`) or in its own (the `keepsake-s3` binary), so a test can kill it.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::path::{Path, PathBuf};

/// The access key the test servers accept.
pub const ACCESS_KEY: &str = "keepsake-test";
/// The secret key the test servers accept.
pub const SECRET_KEY: &str = "keepsake-test-secret";

/// Serves the buckets under `root` (one folder each) on `listener` until the task ends.
pub async fn serve(root: PathBuf, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let http = Builder::new(TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// An S3 server on a thread of its own, on 127.0.0.1 and a free port; stops when dropped.
pub struct InProcessS3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl InProcessS3 {
    /// Starts a server whose buckets live under `root`, with `bucket` made.
    pub fn start(root: &Path, bucket: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join(bucket))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        runtime.spawn(serve(root.to_path_buf(), listener));
        Ok(Self {
            endpoint,
            runtime: Some(runtime),
        })
    }

    /// The address the store takes for `bucket` here.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}?endpoint={}&prefix={prefix}", self.endpoint)
    }
}

impl Drop for InProcessS3 {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
