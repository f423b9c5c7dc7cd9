//! Progress on the CLI's long waits (`deploy --wait`, its image pulls,
//! `cluster up`): indicatif bars on stderr when it is a terminal, and plain
//! lines, one per change, when it is not (a log, a CI run, a pipe), so
//! that nothing is lost to carriage returns where no one watches live.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of one wait, or nothing on a plain stderr.
#[derive(Debug)]
pub struct Progress {
    bars: Option<MultiProgress>,
}

/// One thing waited for: a bar, or the last line printed for it.
#[derive(Debug)]
pub struct Task {
    bar: Option<ProgressBar>,
    /// What was last said, so a plain stderr gets a line only on change.
    last: Mutex<String>,
}

impl Progress {
    /// Bars where stderr is a terminal, plain lines where it is not.
    pub fn on_stderr() -> Self {
        Self::with_bars(std::io::stderr().is_terminal())
    }

    fn with_bars(bars: bool) -> Self {
        Progress { bars: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())) }
    }

    /// A counted task: `done` of `total` (replicas up, agents registered).
    pub fn counted(&self, total: u64) -> Task {
        let bar = self.bars.as_ref().map(|bars| {
            let style = ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = bars.add(ProgressBar::new(total).with_style(style));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Task { bar, last: Mutex::new(String::new()) }
    }

    /// A line above the bars (or just a line), for what happened on the way.
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Task {
    /// Moves the task to `done` of `total`, saying `message`; on a plain
    /// stderr, prints the message when it changed.
    pub fn update(&self, done: u64, total: u64, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done.min(total));
                bar.set_message(message.to_owned());
            }
            None => {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                if *last != message {
                    eprintln!("{message}");
                    message.clone_into(&mut last);
                }
            }
        }
    }

    /// Ends the task, leaving its last line in view.
    pub fn finish(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_owned()),
            None => self.update(0, 0, message),
        }
    }

    /// What was last said on a plain stderr (for tests and error messages).
    pub fn last_said(&self) -> String {
        match &self.bar {
            Some(bar) => bar.message(),
            None => self.last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_stderr_gets_a_line_only_when_the_message_changes() {
        let progress = Progress::with_bars(false);
        let task = progress.counted(3);
        task.update(1, 3, "1 of 3 up");
        assert_eq!(task.last_said(), "1 of 3 up");
        task.update(1, 3, "1 of 3 up");
        task.update(3, 3, "3 of 3 up");
        assert_eq!(task.last_said(), "3 of 3 up");
        assert!(task.bar.is_none(), "no bar drawn where no terminal watches");
    }

    #[test]
    fn a_bar_counts_what_is_done_and_never_past_the_end() {
        let progress = Progress { bars: Some(MultiProgress::with_draw_target(ProgressDrawTarget::hidden())) };
        let task = progress.counted(5);
        task.update(7, 5, "over");
        let bar = task.bar.as_ref().expect("a bar");
        assert_eq!((bar.position(), bar.length()), (5, Some(5)));
        assert_eq!(task.last_said(), "over");
        task.finish("done");
        assert!(bar.is_finished());
    }
}
