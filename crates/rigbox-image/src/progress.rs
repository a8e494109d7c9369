//! Progress output for long builds: spinners on a terminal, timestamped lines
//! (with a heartbeat) when the output is a log file or a CI console.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where progress goes.
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<ProgressInner>,
}

#[derive(Debug)]
struct ProgressInner {
    tty: bool,
    quiet: bool,
    started: Instant,
}

impl Progress {
    /// Progress on stderr, fancy if it is a terminal.
    pub fn stderr() -> Self {
        Progress {
            inner: Arc::new(ProgressInner {
                tty: std::io::stderr().is_terminal(),
                quiet: false,
                started: Instant::now(),
            }),
        }
    }

    /// No output (tests).
    pub fn quiet() -> Self {
        Progress {
            inner: Arc::new(ProgressInner {
                tty: false,
                quiet: true,
                started: Instant::now(),
            }),
        }
    }

    /// Starts a named step.
    pub fn step(&self, name: &str) -> Step {
        let bar = if self.inner.tty && !self.inner.quiet {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix:.bold} {wide_msg}")
                    .expect("static template is valid"),
            );
            pb.set_prefix(name.to_string());
            pb.enable_steady_tick(Duration::from_millis(120));
            Some(pb)
        } else {
            None
        };
        let step = Step {
            name: name.to_string(),
            bar,
            quiet: self.inner.quiet,
            started: Instant::now(),
            last_line: Arc::new(Mutex::new(Instant::now())),
            t0: self.inner.started,
        };
        step.line("started");
        step
    }
}

/// One step of a build.
#[derive(Debug)]
pub struct Step {
    name: String,
    bar: Option<ProgressBar>,
    quiet: bool,
    started: Instant,
    last_line: Arc<Mutex<Instant>>,
    t0: Instant,
}

impl Step {
    fn line(&self, msg: &str) {
        if self.quiet || self.bar.is_some() {
            return;
        }
        eprintln!(
            "[{:>6.1}s] {}: {}",
            self.t0.elapsed().as_secs_f64(),
            self.name,
            msg
        );
        if let Ok(mut l) = self.last_line.lock() {
            *l = Instant::now();
        }
    }

    /// Updates the current activity. On a plain console this prints at most
    /// one line every 15 s so logs show the build is alive.
    pub fn update(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            return;
        }
        let due = self
            .last_line
            .lock()
            .map(|l| l.elapsed() >= Duration::from_secs(15))
            .unwrap_or(true);
        if due {
            self.line(&format!("{msg} ({}s)", self.started.elapsed().as_secs()));
        }
    }

    /// Prints a message unconditionally.
    pub fn note(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.println(format!("  {}: {msg}", self.name));
        } else {
            self.line(msg);
        }
    }

    /// Ends the step.
    pub fn done(self, msg: &str) {
        let text = format!("{msg} in {:.1}s", self.started.elapsed().as_secs_f64());
        if let Some(b) = &self.bar {
            b.finish_with_message(text);
        } else {
            self.line(&text);
        }
    }
}
