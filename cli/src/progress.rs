//! The progress line of `flow run` on a terminal: records in and out with their rates, and,
//! when every source knows the size of its input (files), the percent done and the time left.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow_core::processor::Kind;
use flow_core::runtime::RunningFlow;
use flow_core::runtime::metrics::NodeMetrics;

/// The counters the line reads.
pub struct Handles {
    sources: Vec<Arc<NodeMetrics>>,
    sinks: Vec<Arc<NodeMetrics>>,
}

impl Handles {
    pub fn of(running: &RunningFlow) -> Self {
        let pick = |k: Kind| {
            running
                .nodes()
                .iter()
                .filter(|n| n.kind == k)
                .map(|n| n.metrics.clone())
                .collect()
        };
        Self {
            sources: pick(Kind::Source),
            sinks: pick(Kind::Sink),
        }
    }
}

/// Bytes read and to read over every source, when every source knows its size.
fn done_of(h: &Handles) -> Option<(u64, u64)> {
    let mut acc = (0u64, 0u64);
    for m in &h.sources {
        let p = m.snapshot().progress?;
        acc.0 += p.done;
        acc.1 += p.total;
    }
    (acc.1 > 0).then_some(acc)
}

/// `42% ETA 1m05s`, from the bytes read so far at the rate since the start.
pub fn percent_and_eta(done: u64, total: u64, elapsed: Duration) -> String {
    let pct = (done as f64 * 100.0 / total.max(1) as f64).min(100.0);
    let secs = elapsed.as_secs_f64();
    let eta = if done == 0 || secs <= 0.0 {
        "?".to_owned()
    } else {
        let left = total.saturating_sub(done) as f64 / (done as f64 / secs);
        human_duration(Duration::from_secs_f64(left.min(1e9)))
    };
    format!("{pct:.0}% ETA {eta}")
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub async fn show(h: Handles) {
    let start = Instant::now();
    let (mut last_in, mut last_out) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let records_in: u64 = h.sources.iter().map(|m| m.snapshot().received).sum();
        let records_out: u64 = h.sinks.iter().map(|m| m.snapshot().sent).sum();
        let progress = done_of(&h)
            .map(|(done, total)| format!("  {}", percent_and_eta(done, total, start.elapsed())))
            .unwrap_or_default();
        eprint!(
            "\r\x1b[2K{:>5}s  in {} ({}/s)  out {} ({}/s){progress}",
            start.elapsed().as_secs(),
            human(records_in),
            human(records_in - last_in),
            human(records_out),
            human(records_out - last_out),
        );
        let _ = std::io::stderr().flush();
        (last_in, last_out) = (records_in, records_out);
    }
}

pub fn human(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_time_left() {
        assert_eq!(
            percent_and_eta(250, 1000, Duration::from_secs(10)),
            "25% ETA 30s"
        );
        assert_eq!(
            percent_and_eta(100, 1000, Duration::from_secs(10)),
            "10% ETA 1m30s"
        );
        assert_eq!(percent_and_eta(0, 1000, Duration::from_secs(1)), "0% ETA ?");
        assert_eq!(
            percent_and_eta(1000, 1000, Duration::from_secs(3)),
            "100% ETA 0s"
        );
    }
}
