//! A tapped record's lineage, asked from the designer while its flow runs: a real `flow run`
//! child with provenance on, headless with egui_kittest. The tree shows every step of the
//! record: where it was made, each node and port it passed, the file it was written to.

use std::time::Instant;

use crate::common::{PATIENCE, app_for, harness, log, session, until};
use egui_kittest::kittest::Queryable;
use flow_core::provenance::query::Lineage;
use flow_designer::session::LineageState;

/// The tree without ids and times: one line per event, `KIND node[.port] [detail]`,
/// children indented.
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

#[test]
fn a_tapped_records_lineage_in_a_running_flow_has_every_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let file = dir.path().join("lineage.yaml");
    // Endless: the flow still runs when the lineage is asked for.
    std::fs::write(
        &file,
        format!(
            "name: lineage\nprovenance:\n  path: {}\nprocessors:\n  numbers:\n    type: generate\n    preset: sequence\n    rate: 20\n    batch_size: 1\n  keep:\n    type: filter\n    condition: .n >= 0\n  out:\n    type: file_sink\n    path: {}\nconnections:\n  - numbers -> keep\n  - keep.matched -> out\n",
            dir.path().join("store").display(),
            out.display()
        ),
    )
    .expect("write the flow");
    let mut h = harness(app_for(&file));
    h.run_steps(3);
    h.get_by_label("▶ Run").click();
    h.run_steps(2);
    until(&mut h, "live figures", |app| {
        session(app).shared().stats.is_some()
    });

    // Click the first edge: its tap shows the records the source makes, more than its
    // window shows at once (the first ones scrolled out of view).
    h.state_mut().designer.select_edge(0);
    until(&mut h, "tapped records", |app| {
        session(app)
            .shared()
            .tap
            .as_ref()
            .is_some_and(|t| t.records.len() >= 40)
    });
    // Paused, the list stands still (a record's row stays where the click goes).
    h.get_by_label("Pause").click();
    h.run_steps(2);
    assert!(
        session(h.state())
            .shared()
            .tap
            .as_ref()
            .is_some_and(|t| t.paused)
    );
    // Each record's row: its id and content.
    let rows: Vec<(String, String)> = session(h.state())
        .shared()
        .tap
        .as_ref()
        .map(|t| {
            t.records
                .iter()
                .map(|r| {
                    let content = serde_json::to_string(&r.content).unwrap_or_default();
                    (r.id.clone(), format!("{}  {content}", r.id))
                })
                .collect()
        })
        .unwrap_or_default();
    // The list sticks to its end: the newest record shown is in view.
    let (id, row) = rows
        .into_iter()
        .rev()
        .find(|(_, row)| h.query_by_label(row).is_some())
        .expect("a tapped record shown in the list");

    // Click it: its lineage. The store lags the flow a little (the writer batches): ask
    // again until the tree reaches the sink's SEND.
    let want = [
        "CREATE numbers".to_owned(),
        "ROUTE numbers.out".into(),
        "RECEIVE keep".into(),
        "ROUTE keep.matched".into(),
        "RECEIVE out".into(),
        format!("SEND out [{}]", out.display()),
    ];
    let start = Instant::now();
    let lineage = loop {
        h.get_by_label(&row).click();
        let asked = Instant::now();
        loop {
            h.step();
            let state = session(h.state()).shared().lineage.clone();
            if !matches!(state, Some(LineageState::Loading(_)) | None) {
                break;
            }
            assert!(
                asked.elapsed() < PATIENCE,
                "no answer for the lineage of {id}: state {state:?}; log:\n{}",
                log(h.state())
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        h.run_steps(2);
        let answer = session(h.state()).shared().lineage.clone();
        match &answer {
            Some(LineageState::Found(l)) => assert_eq!(l.id, id, "the record clicked"),
            Some(LineageState::Unavailable(asked, _)) => assert_eq!(*asked, id),
            _ => {}
        }
        match answer {
            Some(LineageState::Found(l)) if l.events.iter().any(|e| e.node == "out") => {
                let sent = l
                    .events
                    .iter()
                    .any(|e| e.kind == flow_core::provenance::EventKind::Send);
                if sent {
                    break l;
                }
            }
            Some(LineageState::Found(_)) => {}
            Some(LineageState::Unavailable(_, why)) if why.contains("no event names record") => {}
            other => panic!("{other:?}\nlog:\n{}", log(h.state())),
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the lineage never reached the sink"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        session(h.state()).running(),
        "the flow still runs: the lineage was answered while it ran"
    );
    assert_eq!(lineage.id, id);
    let mut got = Vec::new();
    shape(&lineage, 0, &mut got);
    assert_eq!(got, want);
    assert!(lineage.children.is_empty(), "no copies");
    // The source's step says where in its input the record was made.
    assert!(
        lineage.events[0].origin.is_some(),
        "{:?}",
        lineage.events[0]
    );

    // The window shows the tree: the record, and a line per step with its node and port
    // (and the file it was sent to).
    h.run_steps(2);
    h.get_by_label_contains(&format!("Lineage · {id}"));
    h.get_by_label(&format!("record {id}"));
    for (kind, at) in [
        ("Create", "numbers".to_owned()),
        ("Route", "numbers.out".into()),
        ("Receive", "keep".into()),
        ("Route", "keep.matched".into()),
        ("Receive", "out".into()),
        ("Send", format!("out  → {}", out.display())),
    ] {
        let line = format!("  {kind}  {at}");
        assert_eq!(
            h.query_all_by_label_contains(&line).count(),
            1,
            "one line `{line}` in the lineage window"
        );
    }

    h.get_by_label("■ Stop").click();
    until(&mut h, "the child to exit", |app| {
        session(app).shared().exit.is_some()
    });
}
