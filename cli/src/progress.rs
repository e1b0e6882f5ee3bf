//! Progress bars on stderr for long exports and imports: only when stderr is a
//! terminal, never with --json or --quiet, never when piped.

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// One redrawn stderr line, at most ten times a second; cleared when dropped.
pub struct Bar {
    enabled: bool,
    last: Instant,
    shown: bool,
}

impl Bar {
    pub fn new(allowed: bool) -> Bar {
        Bar {
            enabled: allowed && std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
        }
    }

    /// Draws `done` of `total` (a bar) or `done` alone, in `unit`s.
    pub fn draw(&mut self, label: &str, done: f64, total: Option<f64>, unit: &str) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let line = match total.filter(|t| *t > 0.0) {
            Some(t) => {
                let frac = (done / t).min(1.0);
                let filled = (frac * 30.0) as usize;
                format!(
                    "{label} [{}{}] {:>3.0}% {done:.0}/{t:.0} {unit}",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    frac * 100.0
                )
            }
            None => format!("{label} {done:.1} {unit}"),
        };
        eprint!("\r{line}\x1b[K");
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

/// Counts bytes passing through a reader or writer and draws them.
pub struct Progress<T> {
    inner: T,
    label: &'static str,
    done: u64,
    total: Option<u64>,
    bar: Bar,
}

impl<T> Progress<T> {
    pub fn new(inner: T, label: &'static str, total: Option<u64>, allowed: bool) -> Progress<T> {
        Progress {
            inner,
            label,
            done: 0,
            total,
            bar: Bar::new(allowed),
        }
    }

    fn tick(&mut self, n: usize) {
        self.done += n as u64;
        self.bar.draw(
            self.label,
            self.done as f64 / 1e6,
            self.total.map(|t| t as f64 / 1e6),
            "MB",
        );
    }

    /// Clears the line and hands back what was wrapped.
    pub fn finish(self) -> T {
        self.inner
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tick(n);
        Ok(n)
    }
}

impl<W: Write> Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tick(n);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Shows the replica's own progress (packing an export, applying an import).
pub fn attach(replica: &mut tide_core::Replica, allowed: bool) {
    let mut bar = Bar::new(allowed);
    if bar.enabled {
        replica.set_progress(Some(Box::new(move |p: tide_core::Progress| {
            bar.draw(
                p.stage.name(),
                p.done as f64,
                Some(p.total as f64),
                "changes",
            )
        })));
    }
}
