//! Progress people can read: a bar (files and bytes, rate, time left) when the output is a
//! terminal, nothing between passes otherwise — logs and the journal get one line a pass
//! from the agent, and `keepsake status` reads the same numbers from `status.json`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar over bytes, labelled with what moves and how many files of how many.
pub(crate) struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar on the terminal, or none when stdout is not one (a pipe, a log, the journal).
    pub(crate) fn new() -> Self {
        Self::on(std::io::stdout().is_terminal())
    }

    /// A bar on stderr when it is a terminal, for a command whose stdout is its answer
    /// (`keepsake open` prints a path for scripts).
    pub(crate) fn on_stderr() -> Self {
        let mut bar = Self::on(std::io::stderr().is_terminal());
        if let Some(b) = &mut bar.bar {
            b.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar
    }

    fn on(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:28}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar
        });
        Self { bar }
    }

    /// Shows `done` of `total` bytes, `files_done` of `files` files, for `what`
    /// ("uploading", "downloading", "exporting").
    pub(crate) fn show(&self, what: &str, files_done: u64, files: u64, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total.max(done));
            bar.set_position(done);
            bar.set_message(format!(
                "{what} {} of {}",
                crate::device_cli::thousands(files_done.min(files)),
                crate::device_cli::thousands(files)
            ));
        }
    }

    /// Shows where an agent's pass stands.
    pub(crate) fn show_pass(&self, p: &keepsake_device::Progress) {
        self.show(
            &p.phase,
            p.items_done,
            p.items_total,
            p.bytes_done,
            p.bytes_total,
        );
    }

    /// Takes the bar off the screen (the pass's summary line follows).
    pub(crate) fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            bar.reset();
        }
    }

    /// Whether a bar is drawn.
    #[cfg(test)]
    fn drawn(&self) -> bool {
        self.bar.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_terminal_there_is_no_bar_and_showing_costs_nothing() {
        let bar = Bar::on(false);
        assert!(!bar.drawn());
        bar.show("uploading", 1, 2, 10, 20);
        bar.clear();
        assert!(Bar::on(true).drawn());
    }
}
