//! Progress on the terminal: indicatif bars (one per unit, and a total) when stderr is a
//! terminal, plain lines (at most one per unit per second) when it is not, e.g. in CI logs.

use crate::config::ByteSize;
use crate::progress::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Draws progress events.
pub struct Render {
    bars: Option<(MultiProgress, ProgressBar)>,
    units: HashMap<String, Unit>,
}

struct Unit {
    label: String,
    bar: Option<ProgressBar>,
    done: u64,
    total: Option<u64>,
    printed: Instant,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Render {
    /// Bars on a terminal, lines elsewhere.
    pub fn new() -> Render {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(0));
            total.set_style(style(
                "{msg:44!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            ));
            total.set_message("total");
            (multi, total)
        });
        Render {
            bars,
            units: HashMap::new(),
        }
    }

    /// Draw one event.
    pub fn on(&mut self, event: &Event) {
        match event {
            Event::Begin { id, label, total } => self.begin(id, label, *total),
            Event::Advance { id, done, total } => self.advance(id, *done, *total),
            Event::End { id, ok, message } => self.end(id, *ok, message.as_deref()),
            Event::Note { text } => self.line(text),
            Event::Report { .. } => {}
        }
    }

    /// Print a line without breaking the bars.
    pub fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn begin(&mut self, id: &str, label: &str, total: Option<u64>) {
        let bar = self.bars.as_ref().map(|(multi, all)| {
            let bar = multi.insert_before(all, ProgressBar::new(total.unwrap_or(0)));
            bar.set_style(style(
                "{msg:44!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {prefix}",
            ));
            bar.set_message(label.to_string());
            bar
        });
        if self.bars.is_none() {
            eprintln!("{label}: started");
        }
        self.add_total(total.unwrap_or(0));
        self.units.insert(
            id.to_string(),
            Unit {
                label: label.to_string(),
                bar,
                done: 0,
                total,
                printed: Instant::now(),
            },
        );
    }

    fn advance(&mut self, id: &str, done: u64, total: Option<u64>) {
        let Some(u) = self.units.get_mut(id) else {
            return;
        };
        let grew = match (total, u.total) {
            (Some(t), old) if Some(t) != old => t.saturating_sub(old.unwrap_or(0)),
            _ => 0,
        };
        if total.is_some() {
            u.total = total;
        }
        let step = done.saturating_sub(u.done);
        u.done = done;
        if let Some(bar) = &u.bar {
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(done);
        } else if u.printed.elapsed() >= Duration::from_secs(1) {
            u.printed = Instant::now();
            let of = u
                .total
                .map_or(String::new(), |t| format!(" of {}", ByteSize(t)));
            eprintln!("{}: {}{of}", u.label, ByteSize(done));
        }
        self.add_total(grew);
        if let Some((_, all)) = &self.bars {
            all.inc(step);
        }
    }

    fn end(&mut self, id: &str, ok: bool, message: Option<&str>) {
        let Some(u) = self.units.remove(id) else {
            return;
        };
        let verdict = match (ok, message) {
            (true, None) => "done".to_string(),
            (true, Some(m)) => format!("done: {m}"),
            (false, m) => format!("FAILED: {}", m.unwrap_or("see the report")),
        };
        match u.bar {
            Some(bar) => {
                bar.set_prefix(verdict);
                bar.finish();
            }
            None => eprintln!("{}: {verdict} ({})", u.label, ByteSize(u.done)),
        }
    }

    fn add_total(&self, bytes: u64) {
        if let Some((_, all)) = &self.bars {
            all.inc_length(bytes);
        }
    }

    /// Clear the bars.
    pub fn finish(&self) {
        if let Some((_, all)) = &self.bars {
            all.finish();
        }
    }
}

impl Default for Render {
    fn default() -> Self {
        Render::new()
    }
}
