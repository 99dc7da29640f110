//! The progress line of long `replay` and `simulate` runs: events done, events/s and an
//! ETA, redrawn on stderr at most twice a second, and only when stderr is a terminal
//! (a log file or a pipe gets nothing).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A progress line that draws itself only for a person watching.
pub struct Progress {
    on: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    /// On when stderr is a terminal.
    pub fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }

    /// Redraws the line if half a second passed: `done` records, and `fraction` of the
    /// input read when the size is known.
    pub fn tick(&mut self, done: u64, fraction: Option<f64>) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.last = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let mut line = format!("\r{done} events, {:.0} events/s", done as f64 / secs);
        if let Some(f) = fraction.filter(|f| *f > 0.0) {
            let eta = secs * (1.0 - f) / f;
            line.push_str(&format!(", {:.0}%, ETA {}", f * 100.0, eta_text(eta)));
        }
        // Erase the rest of the previous, possibly longer, line.
        line.push_str("\x1b[K");
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }

    /// Clears the line before the summary is printed.
    pub fn finish(&mut self) {
        if self.on && self.last.is_some() {
            let _ = std::io::stderr().write_all(b"\r\x1b[K");
        }
    }
}

fn eta_text(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn eta_reads_as_hours_minutes_or_seconds() {
        assert_eq!(super::eta_text(42.4), "42s");
        assert_eq!(super::eta_text(125.0), "2m05s");
        assert_eq!(super::eta_text(3725.0), "1h02m");
    }
}
