//! Live figures of a running flow, drawn over the canvas: the place where watching a running
//! flow (queue fill of each edge like NiFi's, records per second of each node) plugs in. The
//! canvas asks a [`LiveStats`] for each node and edge it draws; without one (editing a file)
//! nothing extra is drawn.

/// What a running node reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeStats {
    /// Records received per second.
    pub received_per_s: f64,
    /// Records sent per second.
    pub sent_per_s: f64,
    /// Records sent to `failure` so far.
    pub errors: u64,
}

/// What a running edge reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EdgeStats {
    /// Records queued now.
    pub queued: u64,
    /// Its `max_records`.
    pub max_records: u64,
    /// Records through it per second.
    pub per_s: f64,
}

impl EdgeStats {
    /// How full the queue is, 0 to 1.
    pub fn fill(&self) -> f32 {
        if self.max_records == 0 {
            return 0.0;
        }
        (self.queued as f64 / self.max_records as f64).clamp(0.0, 1.0) as f32
    }
}

/// A source of live figures, keyed like `flow`'s control API: nodes by name, edges by
/// `from.port -> to`.
pub trait LiveStats {
    /// The figures of node `name`.
    fn node(&self, name: &str) -> Option<NodeStats>;
    /// The figures of the edge `from.port -> to`.
    fn edge(&self, label: &str) -> Option<EdgeStats>;
}

/// `1234.5` as `1.2k`.
pub fn rate(per_s: f64) -> String {
    if per_s >= 1_000_000.0 {
        format!("{:.1}M/s", per_s / 1_000_000.0)
    } else if per_s >= 1_000.0 {
        format!("{:.1}k/s", per_s / 1_000.0)
    } else {
        format!("{per_s:.0}/s")
    }
}
