//! Provenance end to end: a flow run with the store on, then its lineage read back.

use std::collections::HashMap;

use flow_core::clock::Clock;
use flow_core::provenance::EventKind;
use flow_core::provenance::config::Settings;
use flow_core::provenance::query::{Events, Lineage, Search};
use flow_core::provenance::store::Writer;
use flow_core::record::RecordId;
use flow_core::runtime::{self, CancellationToken};

const FLOW: &str = r#"
name: lineage
processors:
  src:
    type: file
    path: ${DIR}/in.jsonl
    format: json
  valid:
    type: filter
    condition: .n != 0
  triage:
    type: route
    routes:
      hot: .n >= 2
      big: .n >= 3
  all:
    type: file_sink
    path: ${DIR}/all.jsonl
  hot:
    type: file_sink
    path: ${DIR}/hot.jsonl
  big:
    type: file_sink
    path: ${DIR}/big.jsonl
connections:
  - src -> valid
  - valid.matched -> triage
  - valid.matched -> all
  - triage.hot -> hot
  - triage.big -> big
"#;

/// The tree without ids and times: one line per event, children indented.
fn shape(l: &Lineage, depth: usize, out: &mut Vec<String>) {
    for s in &l.events {
        let at = match &s.port {
            Some(p) => format!("{}.{p}", s.node),
            None => s.node.clone(),
        };
        let mut line = format!("{}{} {at}", "  ".repeat(depth), s.kind);
        if let Some(d) = &s.detail {
            line.push_str(&format!(" [{d}]"));
        }
        out.push(line);
    }
    for c in &l.children {
        shape(c, depth + 1, out);
    }
}

async fn run(dir: &std::path::Path, store: &std::path::Path) {
    let env: HashMap<String, String> = [("DIR".to_owned(), dir.display().to_string())].into();
    let loaded = flow_core::spec::load(FLOW, &|k| env.get(k).cloned(), &flow_processors::builtin());
    let flow = loaded.flow.expect("valid flow");
    let settings = Settings {
        dir: store.to_owned(),
        max_age: std::time::Duration::from_secs(3600),
        max_size: 1 << 30,
    };
    let writer = Writer::open(&settings, runtime::provenance_header(&flow)).expect("store");
    let running = runtime::start_with(
        &flow,
        CancellationToken::new(),
        Clock::system(),
        Some(writer.recorder()),
    )
    .expect("starts");
    let report = running.wait().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let stats = writer.close().expect("closed");
    assert!(stats.events > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_through_filter_route_fork_fan_out_and_file_sinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let lines: Vec<String> = (0..4)
        .map(|n| format!(r#"{{"n":{n},"token":"SECRET-hunter2"}}"#))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("input");
    run(dir.path(), &store).await;

    // What the sinks really wrote.
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("written");
    assert_eq!(read("all.jsonl"), lines[1..].join("\n") + "\n");
    assert_eq!(read("hot.jsonl"), lines[2..].join("\n") + "\n");
    assert_eq!(read("big.jsonl"), lines[3].clone() + "\n");

    let events = Events::read(&store).expect("read");
    let q = Search {
        node: Some("src".into()),
        kind: Some(EventKind::Create),
        limit: usize::MAX,
        ..Search::default()
    };
    let created: Vec<u64> = events
        .search(&q)
        .expect("search")
        .iter()
        .flat_map(|e| e.ids().collect::<Vec<_>>())
        .collect();
    assert_eq!(created.len(), 4, "one CREATE per record read");

    let path = |f: &str| dir.path().join(f).display().to_string();
    let tree = |n: usize| {
        let l = events
            .lineage(RecordId(created[n]))
            .expect("read")
            .expect("lineage");
        let mut lines = Vec::new();
        shape(&l, 0, &mut lines);
        (l, lines)
    };

    // n = 3: kept by the filter, copied to `triage` and `all` (FORK), where the route
    // matches `hot` and `big` (another FORK): three sinks, three SENDs with their paths.
    let (l3, got) = tree(3);
    let want = vec![
        "CREATE src".to_owned(),
        "ROUTE src.out".into(),
        "RECEIVE valid".into(),
        "ROUTE valid.matched".into(),
        "FORK valid.matched [matched -> triage, matched -> all]".into(),
        "  RECEIVE triage".into(),
        "  FORK triage [hot, big]".into(),
        "    ROUTE triage.hot".into(),
        "    RECEIVE hot".into(),
        format!("    SEND hot [{}]", path("hot.jsonl")),
        "    ROUTE triage.big".into(),
        "    RECEIVE big".into(),
        format!("    SEND big [{}]", path("big.jsonl")),
        "  RECEIVE all".into(),
        format!("  SEND all [{}]", path("all.jsonl")),
    ];
    assert_eq!(got, want);
    // The origin is the record's line in the input; every id in the tree is different.
    let origin = |l: &Lineage| l.events[0].origin.expect("an origin");
    let (l0, _) = tree(0);
    assert_eq!(origin(&l3), origin(&l0) + 3);
    let mut ids = Vec::new();
    fn collect(l: &Lineage, ids: &mut Vec<String>) {
        ids.push(l.id.clone());
        l.children.iter().for_each(|c| collect(c, ids));
    }
    collect(&l3, &mut ids);
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (n, ids.len()),
        (5, 5),
        "the record, two copies, two route copies"
    );
    // Asked from a leaf (the `big` copy), the lineage is the same whole tree.
    let leaf = &l3.children[0].children[1].id;
    let from_leaf = events
        .lineage(RecordId(u64::from_str_radix(leaf, 16).expect("hex")))
        .expect("read")
        .expect("lineage");
    assert_eq!(from_leaf, l3);

    // n = 0: dropped by the filter (its `unmatched` port has no edge).
    assert_eq!(
        tree(0).1,
        [
            "CREATE src",
            "ROUTE src.out",
            "RECEIVE valid",
            "DROP valid.unmatched [port `unmatched` has no edge]",
        ]
    );
    // n = 1: the route matches nothing, and `unmatched` has no edge.
    assert_eq!(
        tree(1).1,
        vec![
            "CREATE src".to_owned(),
            "ROUTE src.out".into(),
            "RECEIVE valid".into(),
            "ROUTE valid.matched".into(),
            "FORK valid.matched [matched -> triage, matched -> all]".into(),
            "  RECEIVE triage".into(),
            "  DROP triage.unmatched [port `unmatched` has no edge]".into(),
            "  RECEIVE all".into(),
            format!("  SEND all [{}]", path("all.jsonl")),
        ]
    );

    // No content reaches the store: the planted secret is in none of its bytes.
    for entry in std::fs::read_dir(&store).expect("store") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("segment");
        assert!(
            !bytes.windows(7).any(|w| w == b"SECRET-"),
            "a secret reached the store"
        );
    }
}
