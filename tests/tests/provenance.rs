//! Provenance end to end: a flow run with the store on, then its lineage read back.

use std::collections::HashMap;

use flow_core::clock::Clock;
use flow_core::provenance::EventKind;
use flow_core::provenance::config::Settings;
use flow_core::provenance::query::{Events, Found, Lineage, Search};
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
    run_flow(FLOW, dir, store).await;
}

/// Run `yaml` (`${DIR}` is `dir`) with its provenance in `store`.
async fn run_flow(yaml: &str, dir: &std::path::Path, store: &std::path::Path) {
    let env: HashMap<String, String> = [("DIR".to_owned(), dir.display().to_string())].into();
    let loaded = flow_core::spec::load(yaml, &|k| env.get(k).cloned(), &flow_processors::builtin());
    let flow = loaded
        .flow
        .unwrap_or_else(|| panic!("invalid flow: {:?}", loaded.diagnostics));
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

/// Every event of `kind` (at `node`), in order.
fn search(events: &Events, node: Option<&str>, kind: EventKind) -> Vec<Found> {
    events
        .search(&Search {
            node: node.map(str::to_owned),
            kind: Some(kind),
            limit: usize::MAX,
            ..Search::default()
        })
        .expect("search")
}

/// The ids the source `node` created, in order.
fn created(events: &Events, node: &str) -> Vec<u64> {
    search(events, Some(node), EventKind::Create)
        .iter()
        .flat_map(|e| e.ids().collect::<Vec<_>>())
        .collect()
}

/// Every raw byte of the store's files.
fn store_bytes(store: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(store).expect("store") {
        all.extend(std::fs::read(entry.expect("entry").path()).expect("segment"));
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
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

const WINDOW: &str = r#"
name: joined
processors:
  src:
    type: file
    path: ${DIR}/in.jsonl
  mark:
    type: remap
    source: 'if .big == true { .checked = true }'
  agg:
    type: window_aggregate
    event_time: .ts
    window: { tumbling: 10s }
    aggregates: { count: count(), total: sum(.n) }
    max_parents: 2
  out:
    type: file_sink
    path: ${DIR}/out.jsonl
connections:
  - src -> mark
  - mark -> agg
  - agg -> out
"#;

/// A window aggregates five records into one: an input's lineage goes through the JOIN to
/// the sink's SEND, the JOIN names all five inputs (not only `max_parents`), and the remap
/// that changed two of them is a MODIFY for those two only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_joins_every_input_and_a_remap_modifies_only_what_it_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let lines: Vec<String> = (0..5)
        .map(|n| format!(r#"{{"n":{n},"ts":{},"big":{}}}"#, 1000 * (n + 1), n >= 3))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("input");
    run_flow(WINDOW, dir.path(), &store).await;
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("written");
    let windows: Vec<serde_json::Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(windows.len(), 1, "one window: {written}");
    assert_eq!(
        (&windows[0]["count"], &windows[0]["total"]),
        (&serde_json::json!(5), &serde_json::json!(10))
    );

    let events = Events::read(&store).expect("read");
    let inputs = created(&events, "src");
    assert_eq!(inputs.len(), 5);
    let sink = dir.path().join("out.jsonl").display().to_string();
    let lineage = |id: u64| {
        events
            .lineage(RecordId(id))
            .expect("read")
            .expect("lineage")
    };
    let lines_of = |l: &Lineage| {
        let mut out = Vec::new();
        shape(l, 0, &mut out);
        out
    };
    let l3 = lineage(inputs[3]);
    assert_eq!(l3.children.len(), 1, "the window's output");
    let output = l3.children[0].id.clone();
    let join = format!("JOIN agg.out [5 inputs -> {output}]");
    assert_eq!(
        lines_of(&l3),
        vec![
            "CREATE src".to_owned(),
            "ROUTE src.out".into(),
            "RECEIVE mark".into(),
            "MODIFY mark".into(),
            "ROUTE mark.out".into(),
            "RECEIVE agg".into(),
            join.clone(),
            "  ROUTE agg.out".into(),
            "  RECEIVE out".into(),
            format!("  SEND out [{sink}]"),
        ]
    );
    // An input the remap left alone: no MODIFY, the same JOIN and output.
    let l0 = lineage(inputs[0]);
    assert_eq!(l0.children, l3.children);
    assert!(!lines_of(&l0).iter().any(|l| l.starts_with("MODIFY")));
    // The output's lineage starts at the JOIN, which lists exactly the five inputs.
    let out = lineage(u64::from_str_radix(&output, 16).expect("hex"));
    assert_eq!(
        lines_of(&out),
        vec![
            join,
            "ROUTE agg.out".into(),
            "RECEIVE out".into(),
            format!("SEND out [{sink}]"),
        ]
    );
    let want: Vec<String> = inputs.iter().map(|&i| RecordId(i).to_string()).collect();
    assert_eq!(out.events[0].inputs, want);
    // MODIFY names the two records the remap changed, and no other.
    let modified: Vec<u64> = search(&events, Some("mark"), EventKind::Modify)
        .iter()
        .flat_map(|e| e.ids().collect::<Vec<_>>())
        .collect();
    assert_eq!(modified, inputs[3..]);
}

const KEEP: &str = r#"
name: kept
provenance:
  content: [clean]
  secret_attributes: [auth]
  secret_fields: [password, user.token]
processors:
  src:
    type: file
    path: ${DIR}/in.jsonl
  label:
    type: remap
    source: '%auth = "SECRET-attr-" + to_string!(.n); %team = "blue"'
  clean:
    type: remap
    source: '.seen = true'
  out:
    type: file_sink
    path: ${DIR}/out.jsonl
connections:
  - src -> label
  - label -> clean
  - clean -> out
"#;

/// A node with `content` keeps what it received, without the secret attributes and fields
/// (which appear nowhere in the store's bytes); a processor not named keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_content_leaves_out_secret_attributes_and_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let lines: Vec<String> = (0..3)
        .map(|n| {
            format!(
                r#"{{"n":{n},"password":"SECRET-pw-{n}","user":{{"name":"ann-{n}","token":"SECRET-tok-{n}"}}}}"#
            )
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("input");
    run_flow(KEEP, dir.path(), &store).await;
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("written");
    assert!(
        written.contains("SECRET-pw-2"),
        "the flow itself is unchanged"
    );

    let bytes = store_bytes(&store);
    assert!(!contains(&bytes, b"SECRET-"), "a secret reached the store");
    // What was kept is there: the other fields and attributes.
    assert!(contains(&bytes, b"ann-2") && contains(&bytes, b"blue"));
    let events = Events::read(&store).expect("read");
    let kept = search(&events, None, EventKind::Content);
    assert!(!kept.is_empty());
    assert!(
        kept.iter().all(|e| e.node == "clean"),
        "only `clean` keeps content"
    );

    let ids = created(&events, "src");
    let r = flow_core::provenance::replay::find(&store, RecordId(ids[1]), None).expect("kept");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].node, "clean");
    assert_eq!(
        r[0].kept.content.as_deref(),
        Some(r#"{"n":1,"user":{"name":"ann-1"}}"#)
    );
    assert_eq!(
        r[0].kept.attributes,
        [("team".to_owned(), "blue".to_owned())].into()
    );
}

const KEEP_PLAIN: &str = r#"
name: kept-plain
provenance:
  content: [clean]
processors:
  src:
    type: file
    path: ${DIR}/in.jsonl
  clean:
    type: remap
    source: '.seen = true'
  out:
    type: file_sink
    path: ${DIR}/out.jsonl
connections:
  - src -> clean
  - clean -> out
"#;

const REINJECT: &str = r#"
name: reinject
provenance:
  enabled: false
processors:
  src:
    type: file
    path: ${DIR}/replayed.jsonl
  out:
    type: file_sink
    path: ${DIR}/again.jsonl
connections:
  - src -> out
"#;

/// Replay: the line `flow provenance replay` writes for a record, read by a `file` source,
/// is the record as it entered the node that kept it, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_record_reinjected_by_a_file_source_is_the_original() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let lines = [
        r#"{"device":"a","t":21.5,"tags":["x","y"]}"#,
        r#"{"device":"b",  "t":-3,"note":"spaced  out é"}"#,
        r#"{"device":"c","t":1e3}"#,
    ];
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("input");
    run_flow(KEEP_PLAIN, dir.path(), &store).await;
    let events = Events::read(&store).expect("read");
    let ids = created(&events, "src");
    assert_eq!(ids.len(), 3);

    let found = flow_core::provenance::replay::find(&store, RecordId(ids[1]), None).expect("kept");
    let line = flow_core::provenance::replay::line(&found[0]).expect("whole");
    std::fs::write(dir.path().join("replayed.jsonl"), line + "\n").expect("replayed");
    run_flow(REINJECT, dir.path(), &store).await;
    let again = std::fs::read_to_string(dir.path().join("again.jsonl")).expect("written");
    assert_eq!(again, lines[1].to_owned() + "\n");
}

const WHOLE: &str = r#"
name: whole
processors:
  src:
    type: file
    path: ${DIR}/in.jsonl
  valid:
    type: filter
    condition: .n != 0
  triage:
    type: route
    routes:
      hot: .n >= 2
      big: .n >= 3
  agg:
    type: window_aggregate
    event_time: .ts
    window: { tumbling: 10s }
    aggregates: { count: count() }
  all:
    type: file_sink
    path: ${DIR}/all.jsonl
  hot:
    type: file_sink
    path: ${DIR}/hot.jsonl
  big:
    type: file_sink
    path: ${DIR}/big.jsonl
  windows:
    type: file_sink
    path: ${DIR}/windows.jsonl
connections:
  - src -> valid
  - valid.matched -> triage
  - valid.matched -> all
  - valid.matched -> agg
  - triage.hot -> hot
  - triage.big -> big
  - agg -> windows
"#;

/// One record's whole journey in one tree: a filter, a fan-out to three edges, a route that
/// matches two ports (a fork), a window (a JOIN of every input) and four sinks, each SEND
/// naming the file it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tree_through_filter_fan_out_route_window_and_sinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let lines: Vec<String> = (0..5)
        .map(|n| format!(r#"{{"n":{n},"ts":{}}}"#, 1000 * (n + 1)))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("input");
    run_flow(WHOLE, dir.path(), &store).await;
    let events = Events::read(&store).expect("read");
    let inputs = created(&events, "src");
    assert_eq!(inputs.len(), 5);
    let tree = events
        .lineage(RecordId(inputs[3]))
        .expect("read")
        .expect("lineage");
    let mut got = Vec::new();
    shape(&tree, 0, &mut got);
    let d = dir.path().display().to_string();
    let got: Vec<String> = got.into_iter().map(|l| l.replace(&d, "DIR")).collect();
    // The window's output, the fourth copy down: the fan-out's third way.
    let output = &tree.children[2].children[0].id;
    let want = [
        "CREATE src",
        "ROUTE src.out",
        "RECEIVE valid",
        "ROUTE valid.matched",
        "FORK valid.matched [matched -> triage, matched -> all, matched -> agg]",
        "  RECEIVE triage",
        "  FORK triage [hot, big]",
        "    ROUTE triage.hot",
        "    RECEIVE hot",
        "    SEND hot [DIR/hot.jsonl]",
        "    ROUTE triage.big",
        "    RECEIVE big",
        "    SEND big [DIR/big.jsonl]",
        "  RECEIVE all",
        "  SEND all [DIR/all.jsonl]",
        "  RECEIVE agg",
        // n = 1..4 (n = 0 was filtered out) fall in one 10 s window.
        &format!("  JOIN agg.out [4 inputs -> {output}]"),
        "    ROUTE agg.out",
        "    RECEIVE windows",
        "    SEND windows [DIR/windows.jsonl]",
    ];
    assert_eq!(got, want);
    // Each file a SEND names holds what the tree says reached it.
    let count = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .expect("written")
            .lines()
            .count()
    };
    assert_eq!(
        [
            count("all.jsonl"),
            count("hot.jsonl"),
            count("big.jsonl"),
            count("windows.jsonl")
        ],
        [4, 3, 2, 1]
    );
}

const ATTRS: &str = r#"
name: attrs
provenance:
  secret_attributes: [auth]
  secret_fields: [password]
processors:
  src:
    type: file
    path: ${DIR}/in.jsonl
  label:
    type: remap
    source: |
      %auth = "SECRET-attr-" + to_string!(.n)
      if mod(to_int!(.n), 3) == 0 { %team = "blue" } else { %team = "red" }
  check:
    type: remap
    source: |
      if .n == 4 || .n == 7 {
        .boom = to_int!("bad password " + string!(.password) + " for " + string!(%auth))
      }
  out:
    type: file_sink
    path: ${DIR}/out.jsonl
connections:
  - src -> label
  - label -> check
  - check -> out
"#;

/// `search --attr team=blue` finds exactly the records labelled blue, at every event that
/// names them; a secret attribute is found nowhere; and a failure whose message quotes a
/// secret attribute and a secret field keeps neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_search_is_exact_and_failures_keep_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let lines: Vec<String> = (0..12)
        .map(|n| format!(r#"{{"n":{n},"password":"SECRET-pw-{n}"}}"#))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("input");
    run_flow(ATTRS, dir.path(), &store).await;
    let events = Events::read(&store).expect("read");
    let ids = created(&events, "src");
    assert_eq!(ids.len(), 12);
    let attr = |kind: Option<EventKind>, node: Option<&str>, k: &str, v: &str| -> Vec<u64> {
        let mut found: Vec<u64> = events
            .search(&Search {
                node: node.map(str::to_owned),
                kind,
                attr: Some((k.into(), v.into())),
                limit: usize::MAX,
                ..Search::default()
            })
            .expect("search")
            .iter()
            .flat_map(|e| e.ids().collect::<Vec<_>>())
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    };
    let blue: Vec<u64> = [0, 3, 6, 9].iter().map(|&n| ids[n]).collect();
    // Labelled at `label` (a MODIFY), received so at `check` and `out`, sent by `out`.
    assert_eq!(attr(None, None, "team", "blue"), blue);
    assert_eq!(
        attr(Some(EventKind::Modify), Some("label"), "team", "blue"),
        blue
    );
    assert_eq!(
        attr(Some(EventKind::Receive), Some("out"), "team", "blue"),
        blue
    );
    assert_eq!(attr(Some(EventKind::Send), None, "team", "blue"), blue);
    assert!(attr(Some(EventKind::Create), None, "team", "blue").is_empty());
    assert!(attr(None, None, "team", "green").is_empty());
    assert!(attr(None, None, "auth", "SECRET-attr-3").is_empty());
    // The failures' messages are there, without the secrets they quoted.
    let failed = search(&events, Some("check"), EventKind::Failure);
    let failed_ids: Vec<u64> = failed
        .iter()
        .flat_map(|e| e.ids().collect::<Vec<_>>())
        .collect();
    assert_eq!(failed_ids, [ids[4], ids[7]]);
    for f in &failed {
        let message = f.detail.as_deref().expect("a message");
        assert!(
            message.contains("bad password [secret] for [secret]"),
            "{message}"
        );
    }
    assert!(
        !contains(&store_bytes(&store), b"SECRET-"),
        "a secret reached the store"
    );
}
