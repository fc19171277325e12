//! The runtime's side of a node's ports: fan a batch out to every edge of a port, and merge the
//! edges coming in. Both ends count, for every kind of node, in this one place:
//! [`Emitter::send`] counts records out per port (only what an edge queued: a batch every edge
//! of the port shed under `when_full: drop_newest` is counted by those edges, not as sent),
//! failed and dropped, and offers copies to an open tap; [`Input::next`] (and
//! [`Input::next_payload`], the plain transforms') counts records in and the time the node
//! spent on its previous batch. These are the per-batch hooks: keep them
//! cheap (atomics, no allocation while no tap is open).

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::ack::{AckStatus, Acks};
use crate::committed::Written;
use crate::processor::{Output, PortId};
use crate::provenance::{Children, EventKind, NodeRecorder, Origins, Runs};
use crate::record::{Record, RecordId, finish_all};
use crate::runtime::edge::{Batch, EdgeReceiver, EdgeSender, Sent};
use crate::runtime::metrics::NodeMetrics;
use crate::runtime::shared::{Payload, SharedBatch, renumber};
use crate::runtime::tap::TapPoint;

/// Every downstream edge of a port is gone: the flow is failing.
#[derive(Debug, thiserror::Error)]
#[error("downstream of `{node}.{port}` stopped")]
pub struct DownstreamGone {
    /// The node.
    pub node: Arc<str>,
    /// The port.
    pub port: String,
}

struct Port {
    name: String,
    edges: Vec<EdgeSender>,
    tap: Arc<TapPoint>,
    /// Records sent here with no edge are counted as failed and logged, not dropped quietly
    /// (`failure`, and the ports a processor declares in `reported_outputs`).
    reported: bool,
    /// The last time such records were logged, and how many came since.
    log: Option<(Instant, u64)>,
}

const BURST: Duration = Duration::from_secs(5);

impl Port {
    /// Log records that reached this port with no edge, at most once per burst.
    fn report(&mut self, node: &str, batch: &Batch) {
        let now = Instant::now();
        let n = batch.len() as u64;
        if let Some((last, suppressed)) = &mut self.log
            && now.duration_since(*last) < BURST
        {
            *suppressed += n;
            return;
        }
        let count = n + self.log.map_or(0, |(_, s)| s);
        self.log = Some((now, 0));
        let first = batch.first();
        if self.name == crate::processor::FAILURE {
            let message = first
                .and_then(|r| r.attributes().get("error.message"))
                .map(String::as_str)
                .unwrap_or("unknown error");
            tracing::warn!(
                node,
                failed = count,
                error = message,
                "records failed and the `failure` port has no edge; they are counted and dropped"
            );
        } else {
            let attributes = first
                .map(|r| format!("{:?}", r.attributes()))
                .unwrap_or_default();
            tracing::warn!(
                node,
                port = %self.name,
                records = count,
                first_attributes = %attributes,
                "records went to port `{}`, which has no edge; they are counted as failed and \
                 dropped (connect `{node}.{}` to keep them)",
                self.name,
                self.name
            );
        }
    }
}

/// Sends a node's output batches along its edges.
pub struct Emitter {
    node: Arc<str>,
    ports: Vec<Port>,
    metrics: Arc<NodeMetrics>,
    prov: Option<Prov>,
}

/// An emitter's provenance hooks: the node's recorder and, per port, the node each edge
/// goes to (a FORK's children say which copy went where).
struct Prov {
    rec: NodeRecorder,
    targets: Vec<Vec<u32>>,
    /// A source's output, open while the emitter lives.
    _open: Option<crate::provenance::SourceOpen>,
}

impl Emitter {
    /// An emitter for `node` with these ports (index = [`PortId`]).
    pub fn new(
        node: Arc<str>,
        ports: Vec<(String, Vec<EdgeSender>)>,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        Self {
            node,
            ports: ports
                .into_iter()
                .enumerate()
                .map(|(i, (name, edges))| Port {
                    name,
                    edges,
                    tap: Arc::default(),
                    reported: i == PortId::FAILURE.0,
                    log: None,
                })
                .collect(),
            metrics,
            prov: None,
        }
    }

    /// Record provenance with `rec`; `targets[port][k]` is the node (index) the port's `k`th
    /// edge goes to. A batch sent to several edges is then forked: each copy gets new ids.
    pub fn with_provenance(mut self, rec: NodeRecorder, targets: Vec<Vec<u32>>) -> Self {
        let _open = rec.source_open();
        self.prov = Some(Prov {
            rec,
            targets,
            _open,
        });
        self
    }

    /// The node's provenance recorder, when provenance is on.
    pub fn provenance(&self) -> Option<&NodeRecorder> {
        self.prov.as_ref().map(|p| &p.rec)
    }

    /// Also count and log records sent to these ports (by name) when they have no edge, as
    /// for `failure` (see [`crate::processor::ProcessorConfig::reported_outputs`]).
    pub fn with_reported(mut self, names: &[String]) -> Self {
        for p in &mut self.ports {
            p.reported |= names.contains(&p.name);
        }
        self
    }

    /// Each port's name and tap, in port order.
    pub fn taps(&self) -> Vec<(String, Arc<TapPoint>)> {
        self.ports
            .iter()
            .map(|p| (p.name.clone(), p.tap.clone()))
            .collect()
    }

    /// The number of ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Whether records sent to `port` go nowhere and are dropped on purpose: no edge, not
    /// `failure` nor another reported port, no tap open on it. A transform's record routed
    /// there needs no copy made (see [`Output::shed`]).
    pub fn sheds(&self, port: PortId) -> bool {
        port != PortId::FAILURE
            && self
                .ports
                .get(port.0)
                .is_some_and(|p| p.edges.is_empty() && !p.reported && !p.tap.is_open())
    }

    /// Count and record as dropped the records routed to `port` without their copies being
    /// made (see [`Emitter::sheds`]): what [`Emitter::send`] does with a batch for a port
    /// without edges.
    async fn shed(&mut self, port: PortId, ids: Vec<RecordId>) {
        self.metrics.add_dropped(ids.len() as u64);
        if let (Some(prov), Some(p)) = (&self.prov, self.ports.get(port.0)) {
            let rec = &prov.rec;
            let e = rec
                .event(EventKind::Drop, Runs::from_ids(ids.iter().map(|id| id.0)))
                .at(port.0)
                .detail(no_edge(&p.name));
            rec.record(e).await;
        }
    }

    /// Whether `port` has at least one edge.
    pub fn is_connected(&self, port: PortId) -> bool {
        self.ports.get(port.0).is_some_and(|p| !p.edges.is_empty())
    }

    /// Send a batch on a port: to every edge (see `fan_out`: a copy each, or views of one
    /// shared batch when a consumer routes by a look). Waits while an edge is full. A port without edges drops the batch on purpose
    /// (acknowledged, counted as dropped), except `failure` and the processor's other
    /// reported ports, whose records are counted as failed, logged once per burst and
    /// acknowledged `Failed`. A batch for an edge whose consumer is gone is abandoned.
    ///
    /// Counting: records on `failure` count as failed; on another port, as sent (and out on
    /// that port) when at least one edge queued them. A batch every edge shed
    /// (`when_full: drop_newest`) is counted as dropped by those edges only.
    pub async fn send(&mut self, port: PortId, batch: Batch) -> Result<(), DownstreamGone> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        let Some(p) = self.ports.get_mut(port.0) else {
            // No such port: a processor bug. Dropping the batch abandons it.
            return Ok(());
        };
        if p.tap.is_open() {
            p.tap.offer(&batch);
        }
        if let Some(prov) = &self.prov {
            return send_recorded(&self.node, p, prov, &self.metrics, port, batch).await;
        }
        if p.edges.is_empty() {
            if p.reported {
                self.metrics.add_failed(n);
                p.report(&self.node, &batch);
                for mut r in batch {
                    r.take_acks().finish(AckStatus::Failed);
                }
            } else {
                self.metrics.add_dropped(n);
                finish_all(batch);
            }
            return Ok(());
        }
        let (last, rest) = p.edges.split_last().ok_or_else(|| DownstreamGone {
            node: self.node.clone(),
            port: p.name.clone(),
        })?;
        let (mut open, mut queued) = (false, false);
        let mut count = |sent: Result<Sent, _>| {
            open |= sent.is_ok();
            queued |= matches!(sent, Ok(Sent::Queued));
        };
        if rest.is_empty() {
            count(last.send(batch).await);
        } else {
            let payloads = fan_out(&p.edges, batch, None);
            for (e, payload) in p.edges.iter().zip(payloads) {
                count(e.send_payload(payload).await);
            }
        }
        if !open {
            return Err(DownstreamGone {
                node: self.node.clone(),
                port: p.name.clone(),
            });
        }
        if port == PortId::FAILURE {
            self.metrics.add_failed(n);
        } else if queued {
            self.metrics.add_sent(n);
        }
        if queued {
            self.metrics.add_port_out(port.0, n);
        }
        Ok(())
    }

    /// Forward everything a processor pushed, port by port. Counts the records it dropped on
    /// purpose, and with provenance records what the emitter cannot see in the batches: the
    /// records dropped on purpose (DROP) and those pushed to several ports (FORK, each copy
    /// renumbered).
    pub async fn flush(&mut self, out: &mut Output) -> Result<(), DownstreamGone> {
        if let Some(prov) = &self.prov {
            let rec = &prov.rec;
            let dropped = out.take_dropped_ids();
            if !dropped.is_empty() {
                let ids = Runs::from_ids(dropped.iter().map(|id| id.0));
                rec.record(rec.event(EventKind::Drop, ids)).await;
            }
            if let Some(batches) = out.copies() {
                for e in crate::provenance::fork_copies(rec, batches) {
                    rec.record(e).await;
                }
            }
        }
        self.metrics.add_dropped(out.take_dropped());
        let mut batches = out
            .drain()
            .collect::<Vec<(PortId, Batch)>>()
            .into_iter()
            .peekable();
        for p in 0..out.port_count() {
            let port = PortId(p);
            if let Some((_, batch)) = batches.next_if(|(q, _)| *q == port) {
                self.send(port, batch).await?;
            }
            let shed = out.take_shed(port);
            if !shed.is_empty() {
                self.shed(port, shed).await;
            }
        }
        Ok(())
    }
}

/// Why a port's records were dropped (or failed) there: provenance's detail.
fn no_edge(port: &str) -> String {
    format!("port `{port}` has no edge")
}

/// One payload per edge of a fan-out. When a consumer routes records by a look (a filter),
/// every edge gets a view of one shared batch (see [`crate::runtime::shared`]): that consumer
/// copies only what it sends on. Otherwise every consumer takes every record, and the copies
/// are made here, where the records are in cache, for all edges but the last, which gets the
/// records themselves. `bases` numbers each edge's copies from its base (provenance's FORK).
fn fan_out(edges: &[EdgeSender], mut batch: Batch, bases: Option<&[u64]>) -> Vec<Payload> {
    let base = |k: usize| bases.and_then(|b| b.get(k)).copied();
    if edges.iter().any(EdgeSender::routes) {
        return SharedBatch::views(batch, (0..edges.len()).map(base).collect())
            .into_iter()
            .map(Payload::Shared)
            .collect();
    }
    let mut payloads = Vec::with_capacity(edges.len());
    for k in 0..edges.len() {
        let mut copy = if k + 1 == edges.len() {
            std::mem::take(&mut batch)
        } else {
            batch.iter_mut().map(Record::fork).collect()
        };
        if let Some(base) = base(k) {
            renumber(&mut copy, base);
        }
        payloads.push(Payload::Owned(copy));
    }
    payloads
}

/// [`Emitter::send`] with provenance: the same sending and counting, and the events that
/// say what happened to the batch (CREATE at a source; JOIN for records made from others,
/// MODIFY for records changed here; FAILURE, DROP or ROUTE; FORK when several edges get
/// copies, each with new ids; DROP for an edge that shed its copy).
async fn send_recorded(
    node: &Arc<str>,
    p: &mut Port,
    prov: &Prov,
    metrics: &NodeMetrics,
    port: PortId,
    mut batch: Batch,
) -> Result<(), DownstreamGone> {
    let rec = &prov.rec;
    let n = batch.len() as u64;
    if rec.is_source() {
        rec.record(rec.create(&batch)).await;
        if let Some(e) = rec.content(&batch) {
            rec.record(e).await;
        }
    }
    for e in rec.made_and_changed(&mut batch, port.0) {
        // A failed record's `error.*` attributes are its FAILURE, not a change.
        if port != PortId::FAILURE || e.kind != EventKind::Modify {
            rec.record(e).await;
        }
    }
    let ids = Runs::of(&batch);
    if port == PortId::FAILURE {
        for e in rec.failures(&batch, port.0) {
            rec.record(e).await;
        }
    } else if p.edges.is_empty() {
        // A reported port's records count as failed, another's as dropped on purpose.
        let kind = if p.reported {
            EventKind::Failure
        } else {
            EventKind::Drop
        };
        let e = rec
            .event(kind, ids.clone())
            .at(port.0)
            .detail(no_edge(&p.name));
        rec.record(e).await;
    } else {
        rec.record(rec.event(EventKind::Route, ids.clone()).at(port.0))
            .await;
    }
    if p.edges.is_empty() {
        if p.reported {
            metrics.add_failed(n);
            p.report(node, &batch);
            for mut r in batch {
                r.take_acks().finish(AckStatus::Failed);
            }
        } else {
            metrics.add_dropped(n);
            finish_all(batch);
        }
        return Ok(());
    }
    // One payload per edge; with several edges, each edge's copies get new ids (a FORK).
    let edges = p.edges.len();
    let mut copies: Vec<(Payload, Runs)> = Vec::with_capacity(edges);
    if edges == 1 {
        copies.push((Payload::Owned(batch), ids));
    } else {
        // Each edge's copies get new ids (see `fan_out`).
        let mut fork = rec.event(EventKind::Fork, ids).at(port.0);
        let count = u32::try_from(n).unwrap_or(u32::MAX);
        let bases: Vec<u64> = (0..edges).map(|_| RecordId::block(n).0).collect();
        for (k, &base) in bases.iter().enumerate() {
            fork.children.push(Children {
                port: u32::try_from(port.0).unwrap_or(u32::MAX),
                to: prov.targets.get(port.0).and_then(|t| t.get(k)).copied(),
                ids: Runs::run(base, count),
            });
        }
        rec.record(fork).await;
        let payloads = fan_out(&p.edges, batch, Some(&bases));
        for (payload, base) in payloads.into_iter().zip(bases) {
            copies.push((payload, Runs::run(base, count)));
        }
    }
    let (mut open, mut queued) = (false, false);
    for (k, (copy, ids)) in copies.into_iter().enumerate() {
        let sent = p.edges[k].send_payload(copy).await;
        open |= sent.is_ok();
        queued |= matches!(sent, Ok(Sent::Queued));
        let to = prov.targets.get(port.0).and_then(|t| t.get(k)).copied();
        let why = match (&sent, to) {
            (Ok(Sent::Queued), _) => None,
            (Ok(Sent::Dropped), Some(to)) => {
                Some(format!("queue to node #{to} full (when_full: drop_newest)"))
            }
            (Ok(Sent::Dropped), None) => Some("queue full (when_full: drop_newest)".to_owned()),
            // The consumer has ended (failed): the batch is abandoned with the error.
            (Err(_), Some(to)) => Some(format!("abandoned: node #{to} has ended")),
            (Err(_), None) => Some("abandoned: the next node has ended".to_owned()),
        };
        if let Some(why) = why {
            rec.record(rec.event(EventKind::Drop, ids).at(port.0).detail(why))
                .await;
        }
    }
    if !open {
        return Err(DownstreamGone {
            node: node.clone(),
            port: p.name.clone(),
        });
    }
    if port == PortId::FAILURE {
        metrics.add_failed(n);
    } else if queued {
        metrics.add_sent(n);
    }
    if queued {
        metrics.add_port_out(port.0, n);
    }
    Ok(())
}

/// A node's incoming edges, merged. Counts what the node takes in (see the module doc).
pub struct Input {
    edges: Vec<EdgeReceiver>,
    next: usize,
    metrics: Arc<NodeMetrics>,
    /// When the last batch was handed out (the node has been on it since).
    handed: Option<Instant>,
    prov: Option<NodeRecorder>,
    /// Batches re-injected by a replay ([`crate::runtime::Injector`]): taken before the
    /// edges' but not keeping the input open (the input ends with its edges).
    injected: Option<tokio::sync::mpsc::Receiver<Batch>>,
    /// A restart replays this node's input in the same order (one path back to one source
    /// that replays in order): a sink may record [`Written`] positions (see
    /// [`crate::committed`]).
    ordered: bool,
    /// After a restart: records at or below these positions were written before, and are
    /// finished without being handed out.
    resume: Option<Written>,
    /// What the sink wrote so far, by [`Input::commit_point`].
    written: Written,
}

impl Input {
    /// Merge these edges, counting into `metrics`.
    pub fn new(edges: Vec<EdgeReceiver>, metrics: Arc<NodeMetrics>) -> Self {
        Self {
            edges,
            next: 0,
            metrics,
            handed: None,
            prov: None,
            injected: None,
            ordered: false,
            resume: None,
            written: Written::default(),
        }
    }

    /// Also take the batches a replay re-injects here.
    pub fn with_injection(mut self, rx: tokio::sync::mpsc::Receiver<Batch>) -> Self {
        self.injected = Some(rx);
        self
    }

    /// A restart replays this node's input in the same order (the runtime sets this when the
    /// node has a single path back to one source that replays in order).
    pub fn with_ordered_origins(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Whether a restart replays this node's input in the same order, so that a sink may skip
    /// replayed records by position (see [`crate::committed`]).
    pub fn origins_ordered(&self) -> bool {
        self.ordered
    }

    /// A sink restarting from its last commit: from now on, records at or below `written`'s
    /// positions (written before the restart) are finished as delivered, counted as dropped and
    /// not handed out. Ignored where origins are not ordered (the sink committed no positions
    /// then, and a high-water mark would skip records that were never written).
    pub fn resume_after(&mut self, written: Written) {
        if self.ordered && !written.is_empty() {
            self.written = written.clone();
            self.resume = Some(written);
        }
    }

    /// What a sink records with its commit once it has written `records` (and everything
    /// before): the positions written so far, or `None` where origins are not ordered here.
    /// Call it for every batch written, in order, right before the commit that covers it.
    pub fn commit_point(&mut self, records: &[Record]) -> Option<Written> {
        if !self.ordered {
            return None;
        }
        self.written.note(records);
        Some(self.written.clone())
    }

    /// A sink wrote these records (and committed them, if it commits): record their SEND to
    /// `destination`, then finish them. Every sink ends a written record's journey here or in
    /// [`Input::finish_sent_ids`], so the rule lives in one place: with provenance, the
    /// acknowledgements go to the store's writer behind the SEND and are released once it is
    /// written (see [`crate::provenance::Entry::Release`]), so a source never commits a record
    /// whose events a `kill -9` could still lose. The sink does not wait for that. Counting
    /// them as sent stays with the sink, which may count deliveries earlier.
    pub async fn finish_sent(&self, mut records: Vec<Record>, destination: Option<String>) {
        match &self.prov {
            Some(rec) if !records.is_empty() => {
                self.sent(&records, destination).await;
                let acks = records.iter_mut().map(Record::take_acks).collect();
                drop(records);
                rec.release_after_written(acks).await;
            }
            _ => finish_all(records),
        }
    }

    /// As [`Input::finish_sent`], for a sink that kept only the records' ids and
    /// acknowledgements (an object holding many batches, deliveries reported one by one),
    /// with, where the destination numbers what it stores, each record's position there (see
    /// [`Input::sent_to`]): record the SEND, then release `acks` once it is written.
    pub async fn finish_sent_ids(
        &self,
        ids: Runs,
        acks: Acks,
        destination: Option<String>,
        positions: Option<Runs>,
    ) {
        match &self.prov {
            Some(rec) if !ids.is_empty() => {
                self.sent_to(ids, destination, positions).await;
                rec.release_after_written(vec![acks]).await;
            }
            _ => acks.release(),
        }
    }

    /// Handles on the incoming edges that tell, once this input is gone, what was still
    /// queued on them (see [`EdgeReceiver::watch`]).
    pub fn watch(&self) -> Vec<crate::runtime::edge::EdgeWatch> {
        self.edges.iter().map(EdgeReceiver::watch).collect()
    }

    /// Record provenance (RECEIVE, and SEND for sinks) with `rec`.
    pub fn with_provenance(mut self, rec: NodeRecorder) -> Self {
        self.prov = Some(rec);
        self
    }

    /// Whether provenance is recorded here: a sink that must gather something for
    /// [`Input::sent_to`] (ids it would not keep otherwise, offsets) does it only then.
    pub fn records_provenance(&self) -> bool {
        self.prov.is_some()
    }

    /// A sink wrote these records and is finishing them: record where they went (SEND).
    /// Every sink calls this (or [`Input::sent_to`]) for what it wrote, before finishing the
    /// records; `destination` says where (a file path, an object's URL, a topic).
    pub async fn sent(&self, records: &[Record], destination: Option<String>) {
        if self.prov.is_some() && !records.is_empty() {
            self.sent_to(Runs::of(records), destination, None).await;
        }
    }

    /// SEND for records known by their ids (a sink that kept only those, like an object
    /// holding many batches), with, where the destination numbers what it stores, each
    /// record's position there: `positions` in the order of `ids` (Kafka offsets within
    /// `destination` = `topic/partition`), shown as `destination@position`.
    pub async fn sent_to(&self, ids: Runs, destination: Option<String>, positions: Option<Runs>) {
        if let Some(rec) = &self.prov
            && !ids.is_empty()
        {
            let mut e = rec.event(EventKind::Send, ids);
            e.detail = destination;
            e.origin = positions.map(|seqs| Origins { source: 0, seqs });
            rec.record(e).await;
        }
    }

    /// The next batch from any edge, taking turns; `None` once every edge is closed and drained.
    /// Counts its records as received, and the time since the previous batch was handed out
    /// as that batch's processing time. Cancel-safe: a batch is only taken when returned.
    ///
    /// With provenance, the batch's RECEIVE is recorded as it is taken, or, if the writer
    /// has no room, before the node's next event (see [`NodeRecorder::receive`]): a node's
    /// events keep their order.
    pub async fn next(&mut self) -> Option<Batch> {
        self.begin().await;
        loop {
            let mut batch = match self.take().await? {
                Payload::Owned(b) => b,
                Payload::Shared(v) => v.into_batch(),
            };
            if let Some(resume) = &self.resume
                && batch.iter().any(|r| resume.covers(r.origin))
            {
                let (skip, keep): (Vec<Record>, Vec<Record>) = std::mem::take(&mut batch)
                    .into_iter()
                    .partition(|r| resume.covers(r.origin));
                batch = keep;
                // Their SEND is in the run that wrote them; here their journey ends. Nothing
                // is awaited here, so taking a batch stays cancel-safe.
                if let Some(rec) = &self.prov {
                    rec.record_now([rec
                        .event(EventKind::Drop, Runs::of(&skip))
                        .detail("written before the restart (the sink's committed position)")]);
                }
                self.metrics.add_dropped(skip.len() as u64);
                finish_all(skip);
                if batch.is_empty() {
                    continue;
                }
            }
            return Some(batch);
        }
    }

    /// The next batch as it travelled (see [`Input::next`]): a fan-out's records stay shared
    /// ([`SharedView`]) for a consumer that looks at them before taking any (a plain
    /// transform that routes, see [`crate::processor::Transform::route`]). Not for a node
    /// that resumes after a restart (a sink: use [`Input::next`]).
    pub async fn next_payload(&mut self) -> Option<Payload> {
        if self.resume.is_some() {
            // What was written before the restart is left out by `next`.
            return self.next().await.map(Payload::Owned);
        }
        self.begin().await;
        self.take().await
    }

    /// What precedes taking a batch: the last one's processing time, the node's pending
    /// provenance.
    async fn begin(&mut self) {
        if let Some(t) = self.handed.take() {
            self.metrics.observe_batch(t.elapsed());
        }
        if let Some(rec) = &self.prov {
            rec.flush().await;
        }
    }

    /// Take the next batch, counted and (with provenance) received.
    async fn take(&mut self) -> Option<Payload> {
        let mut batch = poll_batch(&mut self.edges, &mut self.next, &mut self.injected).await?;
        self.metrics.add_received(batch.len() as u64);
        self.handed = Some(Instant::now());
        if let Some(rec) = &self.prov {
            match batch {
                Payload::Owned(ref b) => rec.receive(b),
                // The content kept names each record by its id: this edge's copies, made
                // first.
                Payload::Shared(v) if rec.keeps_content() => {
                    let b = v.into_batch();
                    rec.receive(&b);
                    batch = Payload::Owned(b);
                }
                Payload::Shared(ref v) => rec.receive_as(v.ids(), v.records()),
            }
        }
        Some(batch)
    }
}

/// The next batch from any of `edges`, taking turns from `next`.
/// A batch re-injected (`injected`) comes first; it never keeps the input open.
async fn poll_batch(
    edges: &mut Vec<EdgeReceiver>,
    next: &mut usize,
    injected: &mut Option<tokio::sync::mpsc::Receiver<Batch>>,
) -> Option<Payload> {
    std::future::poll_fn(|cx| {
        if !edges.is_empty()
            && let Some(rx) = injected
        {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => return Poll::Ready(Some(Payload::Owned(b))),
                Poll::Ready(None) => *injected = None,
                Poll::Pending => {}
            }
        }
        let mut i = 0;
        while i < edges.len() {
            let idx = (*next + i) % edges.len();
            match edges[idx].poll_recv(cx) {
                Poll::Ready(Some(b)) => {
                    *next = (idx + 1) % edges.len();
                    return Poll::Ready(Some(b));
                }
                Poll::Ready(None) => {
                    edges.remove(idx);
                    if edges.is_empty() {
                        return Poll::Ready(None);
                    }
                    *next %= edges.len();
                    i = 0;
                }
                Poll::Pending => i += 1,
            }
        }
        if edges.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
    .await
}

impl Drop for Emitter {
    fn drop(&mut self) {
        // Nothing more leaves this node: end its taps.
        for p in &self.ports {
            p.tap.close();
        }
    }
}
