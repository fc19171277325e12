//! `GET /metrics`: the flow's live counters in the Prometheus text format, encoded by
//! `prometheus-client` from a collector that reads the runtime's counters at each scrape
//! (nothing is copied between scrapes).
//!
//! Names follow Prometheus' conventions: a `flow_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` on counters. Nodes are labelled `node`; edges `from`, `port`, `to` (two
//! connections with the same three are summed); partitions `partition`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use flow_core::provenance::Backlog;
use flow_core::runtime::Reporter;
use flow_core::runtime::metrics::{BATCH_SECONDS_BUCKETS, NodeState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// Reads a running flow's counters at each scrape.
#[derive(Debug)]
struct FlowCollector {
    flow: String,
    reporter: ReporterDebug,
    started: SystemTime,
}

/// [`Reporter`] is not `Debug`; the collector trait wants it.
struct ReporterDebug(Reporter);

impl std::fmt::Debug for ReporterDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

/// A registry holding the flow's collector, and the provenance writer's when provenance is
/// on.
pub fn registry(
    flow: &str,
    reporter: Reporter,
    started: SystemTime,
    provenance: Option<Arc<Backlog>>,
) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(FlowCollector {
        flow: flow.to_owned(),
        reporter: ReporterDebug(reporter),
        started,
    }));
    if let Some(backlog) = provenance {
        r.register_collector(Box::new(ProvenanceCollector(backlog)));
    }
    r
}

/// What the provenance writer's falling behind cost (see `provenance.when_full`).
#[derive(Debug)]
struct ProvenanceCollector(Arc<Backlog>);

impl Collector for ProvenanceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            &mut enc,
            "flow_provenance_events_dropped",
            "Provenance events dropped because the store's writer was behind (when_full: sample).",
            None,
            MetricType::Counter,
            [(vec![], C(self.0.dropped()))],
        )?;
        family(
            &mut enc,
            "flow_provenance_blocked",
            "Seconds nodes waited for the provenance store's writer (when_full: block).",
            Some(&Unit::Seconds),
            MetricType::Counter,
            [(vec![], CF(self.0.blocked().as_secs_f64()))],
        )
    }
}

/// Encode `registry` in the Prometheus text format (0.0.4), or OpenMetrics.
pub fn encode(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    }
    Ok(out)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A per-node counter family: name, help, and how to read it from a snapshot.
type NodeCounter = (
    &'static str,
    &'static str,
    fn(&flow_core::runtime::metrics::NodeSnapshot) -> u64,
);

fn node(name: &str) -> Labels<'_> {
    vec![("node", name)]
}

/// Encode one family: `samples` are (labels, value).
fn family<'a, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> Result<(), std::fmt::Error>
where
    V: Sample,
{
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut m = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in samples {
        let mut e = m.encode_family(&labels)?;
        v.encode(&mut e)?;
    }
    Ok(())
}

trait Sample {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error>;
}

/// A counter's value.
struct C(u64);
/// A gauge's value.
struct G(f64);

impl Sample for C {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        e.encode_counter::<NoLabelSet, _, u64>(&self.0, None)
    }
}

impl Sample for G {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        e.encode_gauge(&self.0)
    }
}

/// Resident memory (bytes) and CPU time (seconds) of this process, from `/proc` (Linux).
fn process_usage() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ: 100 on every Linux architecture flow builds for.
    Some((rss_kb * 1024.0, ticks / 100.0))
}

impl Collector for FlowCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.reporter.0;
        let nodes: Vec<_> = r
            .nodes()
            .iter()
            .map(|n| (n, n.metrics.snapshot()))
            .collect();

        // Process.
        let version = env!("CARGO_PKG_VERSION");
        ConstGauge::new(1i64).encode(
            enc.encode_descriptor(
                "flow_build",
                "flow's version and the flow it runs (value 1).",
                None,
                MetricType::Info,
            )?
            .encode_family(&[("version", version), ("flow", self.flow.as_str())])?,
        )?;
        family(
            &mut enc,
            "flow_uptime",
            "Seconds since the flow started.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            [(vec![], G(r.elapsed().as_secs_f64()))],
        )?;
        if let Some((rss, cpu)) = process_usage() {
            family(
                &mut enc,
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
                [(vec![], G(rss))],
            )?;
            family(
                &mut enc,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
                [(vec![], CF(cpu))],
            )?;
        }
        let start = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        family(
            &mut enc,
            "process_start_time",
            "Start time of the process since the Unix epoch in seconds.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            [(vec![], G(start))],
        )?;

        // Nodes.
        {
            let mut info = enc.encode_descriptor(
                "flow_node",
                "Each processor: its type and shape (value 1).",
                None,
                MetricType::Info,
            )?;
            for (n, _) in &nodes {
                let kind = n.kind.to_string();
                ConstGauge::new(1i64).encode(info.encode_family(&[
                    ("node", n.name.as_str()),
                    ("type", n.type_name.as_str()),
                    ("kind", kind.as_str()),
                ])?)?;
            }
        }
        family(
            &mut enc,
            "flow_node_state",
            "1 for the state each processor is in (starting, running, finished, failed), 0 for the others.",
            None,
            MetricType::Gauge,
            nodes.iter().flat_map(|(n, s)| {
                [
                    NodeState::Starting,
                    NodeState::Running,
                    NodeState::Finished,
                    NodeState::Failed,
                ]
                .into_iter()
                .map(move |st| {
                    (
                        vec![("node", n.name.as_str()), ("state", st.as_str())],
                        G(if s.state == st { 1.0 } else { 0.0 }),
                    )
                })
            }),
        )?;
        let counters: [NodeCounter; 4] = [
            (
                "flow_node_records_in",
                "Records in: read by a source, taken from its input by a transform or sink.",
                |s| s.received,
            ),
            (
                "flow_node_records_out",
                "Records out: queued on an edge of a port other than `failure`, or written by a sink.",
                |s| s.sent,
            ),
            (
                "flow_node_records_dropped",
                "Records dropped on purpose (filtered out, or sent to a port with no edge).",
                |s| s.dropped,
            ),
            (
                "flow_node_records_failed",
                "Records that failed (sent to `failure`).",
                |s| s.failed,
            ),
        ];
        for (name, help, get) in counters {
            family(
                &mut enc,
                name,
                help,
                None,
                MetricType::Counter,
                nodes.iter().map(|(n, s)| (node(&n.name), C(get(s)))),
            )?;
        }
        family(
            &mut enc,
            "flow_node_port_records_out",
            "Records out per output port (`failure` included) that at least one edge queued.",
            None,
            MetricType::Counter,
            nodes.iter().flat_map(|(n, s)| {
                s.ports.iter().map(move |(port, v)| {
                    (
                        vec![("node", n.name.as_str()), ("port", port.as_str())],
                        C(*v),
                    )
                })
            }),
        )?;
        {
            let with: Vec<_> = nodes
                .iter()
                .filter_map(|(n, s)| s.batches.as_ref().map(|b| (n, b)))
                .collect();
            if !with.is_empty() {
                let mut m = enc.encode_descriptor(
                    "flow_node_batch_duration",
                    "Time a processor spent on each batch it took in (until it asked for the next).",
                    Some(&Unit::Seconds),
                    MetricType::Histogram,
                )?;
                for (n, b) in with {
                    // The encoder takes each bucket's own count (it sums them, and adds
                    // `+Inf` from the total); the snapshot's are cumulative.
                    let mut below = 0;
                    let buckets: Vec<(f64, u64)> = BATCH_SECONDS_BUCKETS
                        .iter()
                        .zip(&b.buckets)
                        .map(|(le, cumulative)| {
                            let own = cumulative - below;
                            below = *cumulative;
                            (*le, own)
                        })
                        .collect();
                    m.encode_family(&node(&n.name))?
                        .encode_histogram::<NoLabelSet>(b.sum_seconds, b.count, &buckets, None)?;
                }
            }
        }
        family(
            &mut enc,
            "flow_node_connected",
            "1 when the processor is connected to its server, 0 when not (processors with a server).",
            None,
            MetricType::Gauge,
            nodes.iter().filter_map(|(n, s)| {
                s.connected
                    .map(|c| (node(&n.name), G(if c { 1.0 } else { 0.0 })))
            }),
        )?;
        family(
            &mut enc,
            "flow_node_status",
            "Processor-specific figures (committed offsets, open windows, watermark, ...), by name.",
            None,
            MetricType::Gauge,
            nodes.iter().flat_map(|(n, s)| {
                s.status.iter().filter_map(move |(k, v)| {
                    let x = v
                        .as_f64()
                        .or_else(|| v.as_bool().map(|b| if b { 1.0 } else { 0.0 }))?;
                    Some((vec![("node", n.name.as_str()), ("name", k.as_str())], G(x)))
                })
            }),
        )?;

        // Sources: acknowledgements and lag.
        family(
            &mut enc,
            "flow_source_acks_pending",
            "Batches a source emitted whose records have not all finished yet.",
            None,
            MetricType::Gauge,
            nodes
                .iter()
                .filter_map(|(n, s)| s.acks.map(|a| (node(&n.name), G(a.pending as f64)))),
        )?;
        family(
            &mut enc,
            "flow_source_acks",
            "Batches a source emitted that finished, by status: delivered and failed ones are committed, abandoned ones are read again.",
            None,
            MetricType::Counter,
            nodes.iter().flat_map(|(n, s)| {
                s.acks.into_iter().flat_map(move |a| {
                    [
                        ("delivered", a.delivered),
                        ("failed", a.failed),
                        ("abandoned", a.abandoned),
                    ]
                    .into_iter()
                    .map(move |(status, v)| {
                        (vec![("node", n.name.as_str()), ("status", status)], C(v))
                    })
                })
            }),
        )?;
        for unit in [
            flow_core::runtime::metrics::LagUnit::Records,
            flow_core::runtime::metrics::LagUnit::Messages,
            flow_core::runtime::metrics::LagUnit::Bytes,
        ] {
            let (name, help) = match unit {
                flow_core::runtime::metrics::LagUnit::Records => (
                    "flow_source_lag_records",
                    "Records a source has yet to read, per partition (Kafka consumer lag).",
                ),
                flow_core::runtime::metrics::LagUnit::Messages => (
                    "flow_source_lag_messages",
                    "Messages a source holds unacknowledged to its broker (MQTT).",
                ),
                flow_core::runtime::metrics::LagUnit::Bytes => (
                    "flow_source_lag_bytes",
                    "Bytes a source has yet to read (a file).",
                ),
            };
            family(
                &mut enc,
                name,
                help,
                None,
                MetricType::Gauge,
                nodes.iter().flat_map(|(n, s)| {
                    s.lag.iter().filter(move |l| l.unit == unit).map(move |l| {
                        let mut labels = node(&n.name);
                        if let Some(p) = &l.partition {
                            labels.push(("partition", p.as_str()));
                        }
                        (labels, G(l.value as f64))
                    })
                }),
            )?;
        }

        // Edges, summed by (from, port, to).
        let mut edges: BTreeMap<(&str, &str, &str), [u64; 8]> = BTreeMap::new();
        for h in r.edges() {
            let (e, s) = (&h.info, h.stats.snapshot());
            let acc = edges
                .entry((e.from.as_str(), e.port.as_str(), e.to.as_str()))
                .or_default();
            for (a, v) in acc.iter_mut().zip([
                s.records,
                s.bytes,
                e.max_records as u64,
                e.max_bytes,
                s.high_water_records,
                s.high_water_bytes,
                s.sent,
                s.dropped,
            ]) {
                *a += v;
            }
        }
        let edge_families: [(&str, &str, Option<Unit>, MetricType, usize); 8] = [
            (
                "flow_edge_queued_records",
                "Records queued on the edge now.",
                None,
                MetricType::Gauge,
                0,
            ),
            (
                "flow_edge_queued",
                "Bytes queued on the edge now (approximate memory).",
                Some(Unit::Bytes),
                MetricType::Gauge,
                1,
            ),
            (
                "flow_edge_capacity_records",
                "The edge's back-pressure threshold in records.",
                None,
                MetricType::Gauge,
                2,
            ),
            (
                "flow_edge_capacity",
                "The edge's back-pressure threshold in bytes.",
                Some(Unit::Bytes),
                MetricType::Gauge,
                3,
            ),
            (
                "flow_edge_high_water_records",
                "The most records ever queued on the edge.",
                None,
                MetricType::Gauge,
                4,
            ),
            (
                "flow_edge_high_water",
                "The most bytes ever queued on the edge.",
                Some(Unit::Bytes),
                MetricType::Gauge,
                5,
            ),
            (
                "flow_edge_records_sent",
                "Records the producer queued on the edge.",
                None,
                MetricType::Counter,
                6,
            ),
            (
                "flow_edge_records_dropped",
                "Records the edge shed because it was full (`when_full: drop_newest`).",
                None,
                MetricType::Counter,
                7,
            ),
        ];
        for (name, help, unit, kind, i) in edge_families {
            let samples = edges.iter().map(|((from, port, to), v)| {
                (vec![("from", *from), ("port", *port), ("to", *to)], v[i])
            });
            match kind {
                MetricType::Counter => family(
                    &mut enc,
                    name,
                    help,
                    unit.as_ref(),
                    kind,
                    samples.map(|(l, v)| (l, C(v))),
                )?,
                _ => family(
                    &mut enc,
                    name,
                    help,
                    unit.as_ref(),
                    kind,
                    samples.map(|(l, v)| (l, G(v as f64))),
                )?,
            }
        }
        Ok(())
    }
}

/// A float counter's value.
struct CF(f64);

impl Sample for CF {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        e.encode_counter::<NoLabelSet, _, f64>(&self.0, None)
    }
}
