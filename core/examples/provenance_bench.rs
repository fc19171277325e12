//! The provenance store at scale: write a store of `N` records (default 10,000,000) through
//! the real [`Writer`], shaped like `flows/sensors.yaml`'s events (batches of 1000, a filter
//! that drops errors, a fan-out to a filter and a window, three sinks), then time a record's
//! lineage and a search for one node in one minute. Then the same events written to redb
//! (already in the tree), for the store's choice. Run by `bench/provenance-query.sh`:
//!
//! ```sh
//! cargo run --release -p flow-core --example provenance_bench -- [N] [DIR]
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use flow_core::provenance::config::Settings;
use flow_core::provenance::query::{Events, Search};
use flow_core::provenance::store::{Header, NodeInfo, Writer};
use flow_core::provenance::{Children, Event, EventKind, Runs, WhenFull};
use flow_core::record::RecordId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Events per redb transaction (a writer frame holds up to 4096).
const REDB_BATCH: usize = 4096;
/// The synthetic clock: a batch of 1000 records every 100 ms (10,000 records/s).
const BATCH_MS: i64 = 100;
const T0: i64 = 1_796_000_000_000;

// Node indexes, in the header's order.
const EVENTS: u32 = 0;
const VALID: u32 = 1;
const HOT: u32 = 2;
const PER_DEVICE: u32 = 3;
const ALERTS: u32 = 4;
const WINDOWS: u32 = 5;

fn header() -> Header {
    let node = |name: &str, ports: &[&str]| NodeInfo {
        name: name.into(),
        ports: ports.iter().map(|p| (*p).to_owned()).collect(),
    };
    Header {
        flow: "sensors".into(),
        nodes: vec![
            node("events", &["failure", "out"]),
            node("valid", &["failure", "matched", "unmatched"]),
            node("hot", &["failure", "matched", "unmatched"]),
            node("per_device", &["failure", "out", "late"]),
            node("alerts", &["failure"]),
            node("windows", &["failure"]),
            node("late", &["failure"]),
        ],
        started: T0,
    }
}

/// The events of batch `i` of `n` records whose ids start at `a`: what the runtime records
/// for one batch through flows/sensors.yaml. `next` hands out fresh ids (FORK copies,
/// window outputs) as `RecordId::block` does.
fn batch(i: u64, n: u32, a: u64, next: &mut u64, rng: &mut SmallRng) -> Vec<Event> {
    let time = T0 + i as i64 * BATCH_MS;
    let ev = |kind, node, ids: Runs| {
        let mut e = Event::new(kind, node, ids);
        e.time = time;
        e
    };
    let mut out = Vec::with_capacity(16);
    let all = Runs::run(a, n);
    let mut create = ev(EventKind::Create, EVENTS, all.clone());
    create.origin = Some(flow_core::provenance::Origins {
        source: 7,
        seqs: Runs::run(i * u64::from(n), n),
    });
    out.push(create);
    out.push(ev(EventKind::Route, EVENTS, all.clone()).at(1));
    out.push(ev(EventKind::Receive, VALID, all.clone()));
    // About 1 % are errors, dropped by `valid`.
    let (ok, errors): (Vec<u64>, Vec<u64>) =
        all.iter().partition(|_| rng.random_range(0..100) != 0);
    let ok = Runs::from_ids(ok);
    out.push(ev(EventKind::Route, VALID, ok.clone()).at(1));
    out.push(
        ev(EventKind::Drop, VALID, Runs::from_ids(errors))
            .at(2)
            .detail("port `unmatched` has no edge"),
    );
    // valid.matched goes to `hot` and `per_device`: a FORK, each copy new ids.
    let k = u32::try_from(ok.len()).unwrap_or(u32::MAX);
    let to_hot = Runs::run(*next, k);
    let to_window = Runs::run(*next + u64::from(k), k);
    *next += 2 * u64::from(k);
    let mut fork = ev(EventKind::Fork, VALID, ok.clone()).at(1);
    fork.children = vec![
        Children {
            port: 1,
            to: Some(HOT),
            ids: to_hot.clone(),
        },
        Children {
            port: 1,
            to: Some(PER_DEVICE),
            ids: to_window.clone(),
        },
    ];
    out.push(fork);
    out.push(ev(EventKind::Receive, HOT, to_hot.clone()));
    // About 5 % are hot.
    let (hot, cold): (Vec<u64>, Vec<u64>) =
        to_hot.iter().partition(|_| rng.random_range(0..20) == 0);
    let hot = Runs::from_ids(hot);
    out.push(ev(EventKind::Route, HOT, hot.clone()).at(1));
    out.push(
        ev(EventKind::Drop, HOT, Runs::from_ids(cold))
            .at(2)
            .detail("port `unmatched` has no edge"),
    );
    out.push(ev(EventKind::Receive, ALERTS, hot.clone()));
    out.push(ev(EventKind::Send, ALERTS, hot).detail("/var/lib/flow/out/alerts.jsonl"));
    out.push(ev(EventKind::Receive, PER_DEVICE, to_window));
    // The window closes about 50 device windows a second: 5 new records a batch.
    let windows = Runs::run(*next, 5);
    *next += 5;
    out.push(ev(EventKind::Route, PER_DEVICE, windows.clone()).at(1));
    out.push(ev(EventKind::Receive, WINDOWS, windows.clone()));
    out.push(ev(EventKind::Send, WINDOWS, windows).detail("/var/lib/flow/out/windows.jsonl"));
    out
}

/// Every batch's events, in order, with the first id of each batch.
fn events(records: u64) -> (Vec<Vec<Event>>, Vec<u64>) {
    let mut rng = SmallRng::seed_from_u64(16);
    let mut next = RecordId::block(0).0;
    let (mut all, mut firsts) = (Vec::new(), Vec::new());
    for i in 0..records.div_ceil(1000) {
        let n = u32::try_from((records - i * 1000).min(1000)).unwrap_or(1000);
        let a = next;
        next += u64::from(n);
        firsts.push(a);
        all.push(batch(i, n, a, &mut next, &mut rng));
    }
    (all, firsts)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().map_or(Ok(10_000_000), |a| a.parse())?;
    let tmp = tempfile::tempdir()?;
    let base = args
        .next()
        .map_or_else(|| tmp.path().to_owned(), Into::into);
    let (batches, firsts) = events(records);
    let count: usize = batches.iter().map(Vec::len).sum();
    println!(
        "{records} records in {} batches: {count} events",
        batches.len()
    );

    // The segments, through the real writer (its thread, channel and frames).
    let store = base.join("segments");
    let _ = std::fs::remove_dir_all(&store);
    let settings = Settings {
        dir: store.clone(),
        max_age: Duration::from_secs(365 * 86_400),
        max_size: 64 << 30,
    };
    let start = Instant::now();
    let w = Writer::open(&settings, header())?.when_full(WhenFull::Block);
    let rec = w.recorder().node(0, true);
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        for b in &batches {
            for e in b {
                rec.record(e.clone()).await;
            }
        }
    });
    drop(rec);
    let stats = w.close()?;
    let took = start.elapsed();
    let bytes = dir_bytes(&store);
    println!(
        "segments: {:.2} s, {:.0} events/s, {bytes} bytes ({:.2} bytes/record, index {} bytes)",
        took.as_secs_f64(),
        stats.events as f64 / took.as_secs_f64(),
        bytes as f64 / records as f64,
        bytes - stats.bytes,
    );

    // Queries, each on a freshly opened store (opening reads the headers and indexes).
    let middle = firsts[firsts.len() / 2] + 17;
    let start = Instant::now();
    let events = Events::read(&store)?;
    let opened = start.elapsed();
    let tree = events.lineage(RecordId(middle))?.ok_or("no lineage")?;
    let lineage = start.elapsed();
    let size = |l: &flow_core::provenance::query::Lineage| -> usize {
        fn walk(l: &flow_core::provenance::query::Lineage) -> usize {
            l.events.len() + l.children.iter().map(walk).sum::<usize>()
        }
        walk(l)
    };
    println!(
        "lineage of {}: {} (open {}), {} events in the tree, {} of {} blocks read",
        RecordId(middle),
        ms(lineage),
        ms(opened),
        size(&tree),
        events.blocks_read(),
        events.blocks()
    );
    let start = Instant::now();
    let events = Events::read(&store)?;
    let minute = T0 + (batches.len() as i64 * BATCH_MS) / 2;
    let q = Search {
        node: Some("alerts".into()),
        kind: None,
        since: Some(minute),
        until: Some(minute + 59_999),
        limit: usize::MAX,
        ..Search::default()
    };
    let found = events.search(&q)?;
    let search = start.elapsed();
    println!(
        "search node=alerts, one minute: {}, {} events, {} of {} blocks read",
        ms(search),
        found.len(),
        events.blocks_read(),
        events.blocks()
    );
    let start = Instant::now();
    let s = Events::read(&store)?.stats();
    println!("stats: {} ({} events)", ms(start.elapsed()), s.events);
    let start = Instant::now();
    let all = Events::read(&store)?.search(&Search {
        limit: usize::MAX,
        ..Search::default()
    })?;
    println!(
        "every event read and decoded (no index): {} ({} events)",
        ms(start.elapsed()),
        all.len()
    );
    drop(all);

    // redb: the same events, postcard-encoded, keyed by their number, one transaction per
    // 4096 events (a writer frame), durable commits (redb's default) and not.
    for durable in [false, true] {
        let path = base.join(if durable { "redb-durable" } else { "redb" });
        let _ = std::fs::remove_file(&path);
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
        let start = Instant::now();
        let db = redb::Database::create(&path)?;
        let flat: Vec<&Event> = batches.iter().flatten().collect();
        let mut seq = 0u64;
        for chunk in flat.chunks(REDB_BATCH) {
            let mut tx = db.begin_write()?;
            if !durable {
                tx.set_durability(redb::Durability::None)?;
            }
            {
                let mut t = tx.open_table(table)?;
                for e in chunk {
                    let v = postcard::to_allocvec(e)?;
                    t.insert(seq, v.as_slice())?;
                    seq += 1;
                }
            }
            tx.commit()?;
        }
        drop(db);
        let took = start.elapsed();
        let bytes = std::fs::metadata(&path)?.len();
        println!(
            "redb ({}): {:.2} s, {:.0} events/s, {bytes} bytes ({:.2} bytes/record)",
            if durable {
                "durable commits"
            } else {
                "Durability::None"
            },
            took.as_secs_f64(),
            seq as f64 / took.as_secs_f64(),
            bytes as f64 / records as f64,
        );
    }
    Ok(())
}
