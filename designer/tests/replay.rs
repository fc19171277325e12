//! The lineage window's Replay button, on a real `flow run` child, headless with
//! egui_kittest: a tapped record whose content the sink kept is re-injected into the running
//! flow and reaches the sink's file a second time.

use std::time::{Duration, Instant};

use crate::common::{app_for, count, harness, log, session, until};
use egui_kittest::kittest::Queryable;
use flow_designer::session::{LineageState, ReplayState};

fn kept(l: &flow_core::provenance::query::Lineage) -> bool {
    l.events
        .iter()
        .any(|s| s.kind == flow_core::provenance::EventKind::Content)
        || l.children.iter().any(kept)
}

#[test]
fn the_lineage_windows_replay_button_sends_the_record_to_the_sink_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let file = dir.path().join("replay.yaml");
    std::fs::write(
        &file,
        format!(
            "name: replay\nprovenance:\n  path: {}\n  content: [out]\nprocessors:\n  numbers:\n    type: generate\n    preset: sequence\n    rate: 20\n    batch_size: 1\n  out:\n    type: file_sink\n    path: {}\nconnections:\n  - numbers -> out\n",
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

    // Tap the edge; take a record the list shows and the sink has written.
    h.state_mut().designer.select_edge(0);
    until(&mut h, "tapped records", |app| {
        session(app)
            .shared()
            .tap
            .as_ref()
            .is_some_and(|t| t.records.len() >= 3)
    });
    let rows: Vec<(String, u64)> = session(h.state())
        .shared()
        .tap
        .as_ref()
        .map(|t| {
            t.records
                .iter()
                .filter_map(|r| Some((r.id.clone(), r.content["n"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let (id, n) = rows
        .into_iter()
        .find(|(id, _)| h.query_by_label_contains(id).is_some())
        .expect("a tapped record shown in the list");
    let line = format!(r#"{{"n":{n}}}"#);
    until(&mut h, "the record at the sink", |_| {
        count(&out, &line) == 1
    });

    // Its lineage, with the content the sink kept (the store may lag the file a little:
    // ask again until it is there).
    let start = Instant::now();
    loop {
        h.get_by_label_contains(&id).click();
        until(&mut h, "the lineage", |app| {
            !matches!(
                session(app).shared().lineage,
                Some(LineageState::Loading(_)) | None
            )
        });
        if let Some(LineageState::Found(l)) = &session(h.state()).shared().lineage
            && kept(l)
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no kept content");
        std::thread::sleep(Duration::from_millis(200));
    }
    h.run_steps(2);
    h.get_by_label("Replay").click();
    until(&mut h, "the replay's answer", |app| {
        !matches!(
            session(app).shared().replay,
            Some(ReplayState::Sending(_)) | None
        )
    });
    let replay = session(h.state()).shared().replay.clone();
    match replay {
        Some(ReplayState::Done(r, said)) => {
            assert_eq!(r, id);
            assert!(
                said.starts_with(&format!("replayed {id} at out as ")),
                "{said}"
            );
            h.get_by_label(&said);
        }
        other => panic!("{other:?}\n{}", log(h.state())),
    }
    until(&mut h, "the record at the sink again", |_| {
        count(&out, &line) == 2
    });

    h.get_by_label("■ Stop").click();
    until(&mut h, "the child to exit", |app| {
        session(app).shared().exit.is_some()
    });
    assert_eq!(count(&out, &line), 2, "exactly once more");
}
