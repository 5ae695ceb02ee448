//! Where blocking work runs when an async caller needs it.

/// Runs blocking work off the async threads, and hands back its join handle.
///
/// On a single-threaded runtime — the deterministic simulation's, or a plain
/// `#[tokio::test]` — the work runs as an ordinary task on the runtime's own thread
/// instead: a second thread would make the order of events depend on the OS scheduler,
/// and a simulated run could no longer be replayed from its seed.
pub fn offload<T, F>(work: F) -> tokio::task::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if on_one_thread() {
        tokio::task::spawn(async move { work() })
    } else {
        tokio::task::spawn_blocking(work)
    }
}

/// Whether the current runtime is single-threaded (the simulation's, or a plain test's):
/// there no work may run on a thread of its own, or a run could not be replayed.
pub fn on_one_thread() -> bool {
    tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
}

/// A small runtime owned by a synchronous object (a database connection, a bucket client).
/// Each call is spawned onto it and waited for over a channel, which works from plain
/// threads, blocking threads and other runtimes' workers alike — unlike `block_on`.
pub struct OwnRuntime {
    // Taken out on drop: a runtime dropped inside another one's task would panic.
    runtime: Option<tokio::runtime::Runtime>,
}

impl OwnRuntime {
    /// A runtime of `workers` threads named `name`, with I/O and timers.
    pub fn new(name: &str, workers: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `work` on this runtime and waits for it; `None` if its task stopped first
    /// (the runtime is shutting down).
    pub fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .spawn(async move {
                let _ = tx.send(work.await);
            });
        rx.recv().ok()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
