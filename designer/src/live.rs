//! Live figures of a running flow, drawn over the canvas: the queue fill of each edge (like
//! NiFi's connections), records per second, failures and state of each node, and the flow's
//! recent warnings and errors (bulletins) on their node. The canvas asks a [`LiveStats`] for
//! each node and edge it draws; without one (editing a file) nothing extra is drawn.
//! [`Snapshot`] is the one made from the control API's `/api/v1/stats` and `/api/v1/events`
//! (see [`crate::session`]).

use std::collections::HashMap;

use egui::Color32;
use flow_core::observe::{Event, Level, Stats};
use flow_core::runtime::metrics::NodeState;

/// A queue this full or more is drawn yellow.
pub const YELLOW: f32 = 0.5;
/// A queue this full or more is drawn red.
pub const RED: f32 = 0.8;

/// The colour of a queue's fill bar: green below [`YELLOW`], yellow below [`RED`], red above.
pub fn fill_color(fill: f32) -> Color32 {
    if fill >= RED {
        crate::theme::ERROR
    } else if fill >= YELLOW {
        crate::theme::WARNING
    } else {
        Color32::from_rgb(0x3f, 0xb9, 0x86)
    }
}

/// What a running node reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeStats {
    /// Records received per second.
    pub received_per_s: f64,
    /// Records sent per second.
    pub sent_per_s: f64,
    /// Records sent to `failure` so far.
    pub errors: u64,
    /// Where it is in its life.
    pub state: NodeState,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Its most recent warning or error (bulletin), if any.
    pub bulletin: Option<(Level, String)>,
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
    /// How full it is as the API says (the larger of records and bytes over their
    /// thresholds); `None`: from records alone.
    pub fill: Option<f32>,
}

impl EdgeStats {
    /// How full the queue is, 0 to 1.
    pub fn fill(&self) -> f32 {
        if let Some(f) = self.fill {
            return f.clamp(0.0, 1.0);
        }
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

/// The figures of one `/api/v1/stats` snapshot with the bulletins seen so far, indexed for
/// drawing.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    nodes: HashMap<String, NodeStats>,
    edges: HashMap<String, EdgeStats>,
}

impl Snapshot {
    /// Index `stats`; each node's latest bulletin from `events` (oldest first).
    pub fn new(stats: &Stats, events: &[Event]) -> Self {
        let mut latest: HashMap<&str, &Event> = HashMap::new();
        for e in events {
            if let Some(n) = &e.node {
                latest.insert(n.as_str(), e);
            }
        }
        let nodes = stats
            .nodes
            .iter()
            .map(|n| {
                let s = NodeStats {
                    received_per_s: n.rates.received,
                    sent_per_s: n.rates.sent,
                    errors: n.counters.failed,
                    state: n.counters.state,
                    error: n.counters.error.clone(),
                    bulletin: latest
                        .get(n.name.as_str())
                        .map(|e| (e.level, e.message.clone())),
                };
                (n.name.clone(), s)
            })
            .collect();
        let edges = stats
            .edges
            .iter()
            .map(|e| {
                let s = EdgeStats {
                    queued: e.counters.records,
                    max_records: e.info.max_records as u64,
                    per_s: e.rates.sent,
                    fill: Some(e.fill as f32),
                };
                (e.info.label(), s)
            })
            .collect();
        Self { nodes, edges }
    }
}

impl LiveStats for Snapshot {
    fn node(&self, name: &str) -> Option<NodeStats> {
        self.nodes.get(name).cloned()
    }

    fn edge(&self, label: &str) -> Option<EdgeStats> {
        self.edges.get(label).copied()
    }
}

/// `1234.5` as `1.2k/s`.
pub fn rate(per_s: f64) -> String {
    if per_s >= 1_000_000.0 {
        format!("{:.1}M/s", per_s / 1_000_000.0)
    } else if per_s >= 1_000.0 {
        format!("{:.1}k/s", per_s / 1_000.0)
    } else {
        format!("{per_s:.0}/s")
    }
}

/// `12345` as `12.3k` (queue sizes on a small label).
pub fn count(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1_000_000.0)
    } else if n >= 10_000 {
        format!("{:.1}k", n as f64 / 1_000.0)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_colours_change_at_the_thresholds() {
        let green = fill_color(0.0);
        assert_eq!(fill_color(YELLOW - 0.01), green);
        assert_eq!(fill_color(YELLOW), crate::theme::WARNING);
        assert_eq!(fill_color(RED - 0.01), crate::theme::WARNING);
        assert_eq!(fill_color(RED), crate::theme::ERROR);
        assert_eq!(fill_color(1.0), crate::theme::ERROR);
    }

    #[test]
    fn fill_is_the_apis_or_records_over_capacity() {
        let e = EdgeStats {
            queued: 30,
            max_records: 40,
            per_s: 0.0,
            fill: None,
        };
        assert_eq!(e.fill(), 0.75);
        assert_eq!(
            EdgeStats {
                fill: Some(1.5),
                ..e
            }
            .fill(),
            1.0
        );
    }
}
