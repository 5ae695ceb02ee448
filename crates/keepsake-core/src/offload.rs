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
