//! Running and watching a real `flow run` child from the designer, headless with egui_kittest.
//!
//! The slow sink is a `file_sink` writing into a named pipe (FIFO) that the test reads only
//! when it chooses: until then the sink blocks once the pipe's buffer is full, and the edge
//! before it fills up to its `max_records`. Deterministic, with no timing in the flow.

use std::io::{BufRead as _, BufReader};
use std::sync::mpsc;

use crate::common::{Killed, app_for, flow_bin, gone, harness, mkfifo, repo, session, until};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use flow_designer::DesignerApp;
use flow_designer::live::{YELLOW, fill_color};
use flow_designer::session::LineageState;

const RECORDS: u64 = 20_000;
const EDGE: &str = "numbers.out -> slow";

#[test]
fn a_slow_sink_fills_its_edge_a_tap_shows_its_records_and_the_end_equals_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("slow.fifo");
    mkfifo(&fifo);
    let file = dir.path().join("slow-sink.yaml");
    std::fs::write(
        &file,
        format!(
            "name: slow-sink\nprocessors:\n  numbers:\n    type: generate\n    preset: sequence\n    count: {RECORDS}\n    batch_size: 100\n  slow:\n    type: file_sink\n    path: ${{SLOW_SINK}}\nconnections:\n  - {{ from: numbers, to: slow, max_records: 1000 }}\n"
        ),
    )
    .expect("write the flow");
    // The reader: opens the pipe (the sink opens the other end), reads only once told to.
    let (go, wait) = mpsc::channel::<()>();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&fifo).expect("open the fifo");
            wait.recv().expect("told to read");
            BufReader::new(f).lines().map_while(Result::ok).count() as u64
        })
    };

    let mut h = harness(app_for(&file));
    h.run_steps(3);
    // Run: the file needs ${SLOW_SINK}; the designer asks for it.
    h.get_by_label("▶ Run").click();
    h.run_steps(2);
    let field = h.get_by_label("SLOW_SINK");
    field.focus();
    field.type_text(&fifo.display().to_string());
    h.run_steps(1);
    h.get_by_label("Run with these").click();
    h.run_steps(2);
    let pid = session(h.state()).pid().expect("a child");

    // The edge before the slow sink fills past the yellow threshold.
    until(&mut h, "the edge to fill", |app| {
        app.canvas
            .live
            .as_ref()
            .and_then(|l| l.edge(EDGE))
            .is_some_and(|e| e.fill() >= YELLOW)
    });
    let edge = h.state().canvas.live.as_ref().and_then(|l| l.edge(EDGE));
    let fill = edge.expect("live edge").fill();
    assert!(fill >= YELLOW, "fill {fill}");
    assert_ne!(fill_color(fill), fill_color(0.0), "not drawn green");
    // The edges tab lists it with its fill.
    h.get_by_label(EDGE);

    // Click the edge: a tap of its records opens.
    h.state_mut().designer.select_edge(0);
    until(&mut h, "the tap to connect", |app| {
        session(app)
            .shared()
            .tap
            .as_ref()
            .is_some_and(|t| t.connected)
    });
    h.get_by_label_contains(&format!("Tap · {EDGE}"));
    // Let the sink go: records flow through the tap, the flow ends.
    go.send(()).expect("reader waits");
    until(&mut h, "tapped records", |app| {
        session(app)
            .shared()
            .tap
            .as_ref()
            .is_some_and(|t| !t.records.is_empty())
    });
    // The end: the child exited, its report is read, and the tap stream is closed, so no
    // record arrives after the frames drawn below (the counts and the list are final).
    until(&mut h, "the flow and its tap to end", |app| {
        let s = session(app).shared();
        s.exit.is_some() && s.report.is_some() && s.tap.as_ref().is_some_and(|t| !t.open)
    });
    // A few frames more: the record list sticks to its bottom once it is laid out.
    h.run_steps(4);
    assert_eq!(reader.join().expect("reader"), RECORDS);
    {
        let s = session(h.state()).shared();
        let tap = s.tap.as_ref().expect("tap");
        assert_eq!((tap.node.as_str(), tap.port.as_str()), ("numbers", "out"));
        for r in &tap.records {
            assert_eq!((r.node.as_str(), r.port.as_str()), ("numbers", "out"));
            let n = r.content["n"].as_u64().expect("a sequence record");
            assert!(n < RECORDS);
        }
    }
    let count = |h: &Harness<'_, DesignerApp>| {
        let s = session(h.state()).shared();
        s.tap.as_ref().map_or(0, |t| t.records.len())
    };
    let shown = count(&h);
    h.run_steps(2);
    assert_eq!(
        count(&h),
        shown,
        "the tap's records changed after it closed"
    );
    h.get_by_label_contains(&format!("{shown} of {shown} records"));

    // The counters shown at the end equal the run's --report.
    let (stats, report, exit) = {
        let s = session(h.state()).shared();
        (
            s.stats.clone().expect("stats"),
            s.report.clone().expect("report"),
            s.exit.clone(),
        )
    };
    assert!(stats.finished, "the last snapshot says finished");
    assert_eq!(exit.as_deref(), Some("exited normally"));
    for n in &report.nodes {
        let shown = stats.node(&n.name).expect("node shown");
        let (a, b) = (&shown.counters, &n.counters);
        assert_eq!(
            (a.received, a.sent, a.dropped, a.failed),
            (b.received, b.sent, b.dropped, b.failed),
            "{}",
            n.name
        );
    }
    assert_eq!(report.nodes[1].counters.sent, RECORDS);
    h.get_by_label("Summary").click();
    h.run_steps(2);
    assert!(h.get_all_by_label(&RECORDS.to_string()).count() >= 3);

    // A tapped record's lineage: the tree from provenance, or why there is none.
    // One the list shows (the newest that has a row in the UI tree; which rows are laid out
    // depends on where the list's scroll settled).
    let ids: Vec<String> = session(h.state())
        .shared()
        .tap
        .as_ref()
        .map(|t| t.records.iter().rev().map(|r| r.id.clone()).collect())
        .unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|id| h.query_by_label_contains(id).is_some())
        .expect("a tapped record shown in the list");
    h.get_by_label_contains(&id).click();
    until(&mut h, "the lineage", |app| {
        !matches!(
            session(app).shared().lineage,
            Some(LineageState::Loading(_)) | None
        )
    });
    match session(h.state()).shared().lineage.clone() {
        Some(LineageState::Found(l)) => {
            let nodes: Vec<&str> = l.events.iter().map(|e| e.node.as_str()).collect();
            assert!(
                nodes.contains(&"numbers") && nodes.contains(&"slow"),
                "{nodes:?}"
            );
        }
        Some(LineageState::Unavailable(_, why)) => {
            // The flow has ended: its API is gone, or it has no provenance endpoint.
            assert!(!why.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(gone(pid), "the child is gone");
}

#[test]
fn stop_ends_the_child_gracefully_and_a_second_stop_kills_a_stuck_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Graceful: an endless source, a sink that keeps up.
    let file = dir.path().join("endless.yaml");
    std::fs::write(
        &file,
        format!(
            "name: endless\nprocessors:\n  numbers:\n    type: generate\n    preset: sequence\n    rate: 2000\n  out:\n    type: file_sink\n    path: {}\nconnections:\n  - numbers -> out\n",
            dir.path().join("out.jsonl").display()
        ),
    )
    .expect("write");
    let mut h = harness(app_for(&file));
    h.run_steps(3);
    h.get_by_label("▶ Run").click();
    h.run_steps(2);
    until(&mut h, "live figures", |app| {
        session(app)
            .shared()
            .stats
            .as_ref()
            .is_some_and(|s| !s.finished)
    });
    let pid = session(h.state()).pid().expect("a child");
    h.get_by_label("■ Stop").click();
    until(&mut h, "the child to exit", |app| {
        session(app).shared().exit.is_some()
    });
    assert_eq!(
        session(h.state()).shared().exit.as_deref(),
        Some("exited normally")
    );
    assert!(gone(pid), "pid {pid} is gone");
    let report = session(h.state()).shared().report.clone().expect("report");
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("out");
    assert_eq!(
        report.nodes[1].counters.sent,
        written.lines().count() as u64
    );

    // Stuck: the sink waits forever for a reader of its pipe, so SIGTERM cannot finish;
    // the second Stop kills it.
    let fifo = dir.path().join("nobody.fifo");
    mkfifo(&fifo);
    let file = dir.path().join("stuck.yaml");
    std::fs::write(
        &file,
        format!(
            "name: stuck\nprocessors:\n  numbers:\n    type: generate\n    preset: sequence\n  out:\n    type: file_sink\n    path: {}\nconnections:\n  - numbers -> out\n",
            fifo.display()
        ),
    )
    .expect("write");
    let mut h = harness(app_for(&file));
    h.run_steps(3);
    h.get_by_label("▶ Run").click();
    h.run_steps(2);
    until(&mut h, "live figures", |app| {
        session(app).shared().stats.is_some()
    });
    let pid = session(h.state()).pid().expect("a child");
    h.get_by_label("■ Stop").click();
    h.run_steps(2);
    h.get_by_label("■ Kill").click();
    until(&mut h, "the child to exit", |app| {
        session(app).shared().exit.is_some()
    });
    assert_eq!(
        session(h.state()).shared().exit.as_deref(),
        Some("killed by signal 9")
    );
    assert!(gone(pid), "pid {pid} is gone");
}

#[test]
fn attaching_to_a_flow_that_differs_from_the_open_file_draws_the_running_graph() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("running.yaml");
    std::fs::write(
        &file,
        format!(
            "name: running\nprocessors:\n  ticks:\n    type: generate\n    preset: sequence\n    rate: 100\n  keep:\n    type: filter\n    condition: .n > 1\n  out:\n    type: file_sink\n    path: {}\nconnections:\n  - ticks -> keep\n  - {{ from: keep.matched, to: out, max_records: 50 }}\n",
            dir.path().join("out.jsonl").display()
        ),
    )
    .expect("write");
    // A flow started outside the designer; its API's address from its stderr.
    let mut child = Killed(
        std::process::Command::new(flow_bin())
            .args(["run", "--api", "127.0.0.1:0"])
            .arg(&file)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("flow runs"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix(flow_designer::session::LISTENING)
                .map(str::to_owned)
        })
        .expect("the API's address");
    std::thread::spawn(move || lines.for_each(drop));

    // The designer has another file open (the demo), and attaches.
    let mut h = harness(app_for(&repo().join("flows/demo.yaml")));
    h.run_steps(3);
    h.get_by_label("Attach…").click();
    h.run_steps(2);
    h.get_by_label("API URL").focus();
    h.run_steps(1);
    // Select the suggested URL, type over it.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.run_steps(1);
    h.get_by_label("API URL").type_text(&url);
    h.run_steps(1);
    h.get_by_label("Attach").click();
    h.run_steps(2);
    until(&mut h, "the running graph", |app| {
        app.live.differs.is_some() && app.designer.graph().find("ticks").is_some()
    });
    assert_eq!(h.state().live.differs.as_deref(), Some("running"));
    let g = h.state().designer.graph();
    let labels: Vec<String> = g.edges.iter().map(|e| g.edge_label(e)).collect();
    assert_eq!(labels, ["ticks.out -> keep", "keep.matched -> out"]);
    h.get_by_label_contains("differs from the open file");
    until(&mut h, "live figures on the running graph", |app| {
        app.canvas
            .live
            .as_ref()
            .and_then(|l| l.edge("keep.matched -> out"))
            .is_some_and(|e| e.max_records == 50)
    });
    // Detach leaves the flow running; then it is stopped here.
    h.get_by_label("Detach").click();
    h.run_steps(2);
    assert!(h.state().live.session.is_none());
    assert!(
        child.0.try_wait().expect("status").is_none(),
        "still running"
    );
}
