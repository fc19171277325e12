//! The designer driven like a user would, headless with egui_kittest: widgets found by their
//! label, pointer drags between pins, keys. Snapshot images of the canvas are checked in under
//! `tests/snapshots/` (`UPDATE_SNAPSHOTS=1` rewrites them; look at them before committing).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{Key, Modifiers, Pos2, Vec2};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use flow_core::spec::{self, Severity};
use flow_designer::{Designer, DesignerApp, Env};

use crate::common::repo;

/// The environment flows/ needs, so every example validates.
fn env() -> Env {
    Arc::new(|k: &str| match k {
        "INPUT" => Some("in.jsonl".into()),
        "OUT_DIR" => Some("out".into()),
        "MQTT_URL" => Some("mqtt://127.0.0.1:1".into()),
        "S3_URL" => Some("s3://bucket/prefix".into()),
        _ if k.ends_with("_URL") => Some("http://127.0.0.1:1".into()),
        "KAFKA_BROKERS" => Some("127.0.0.1:9092".into()),
        _ => None,
    })
}

fn app_with(file: &Path) -> DesignerApp {
    let mut designer = Designer::new(flow_processors::builtin(), env());
    designer.open(file).expect("open");
    DesignerApp::new(designer)
}

fn harness(app: DesignerApp) -> Harness<'static, DesignerApp> {
    Harness::builder()
        .with_size(Vec2::new(1440.0, 880.0))
        .with_step_dt(1.0 / 60.0)
        .build_ui_state(|ui, app: &mut DesignerApp| app.ui(ui), app)
}

/// A copy of `flows/<name>` in a temporary directory.
fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::copy(repo().join(format!("flows/{name}")), &path).expect("copy");
    (dir, path)
}

/// Drag the pointer from `a` to `b` in steps, as a hand would.
fn drag(h: &mut Harness<'_, DesignerApp>, a: Pos2, b: Pos2) {
    h.hover_at(a);
    h.run_steps(2);
    h.drag_at(a);
    h.run_steps(2);
    for i in 1..=10 {
        let t = i as f32 / 10.0;
        h.hover_at(a + (b - a) * t);
        h.step();
    }
    h.drop_at(b);
    h.run_steps(3);
}

fn double_click(h: &mut Harness<'_, DesignerApp>, label: &str) {
    h.get_by_label(label).scroll_to_me();
    // Scrolling is animated.
    h.run_steps(30);
    h.get_by_label(label).click();
    h.step();
    h.get_by_label(label).click();
    h.run_steps(3);
}

fn pin(h: &Harness<'_, DesignerApp>, node: &str, port: Option<&str>) -> Pos2 {
    let app = h.state();
    app.canvas
        .pin_pos(&app.designer, node, port)
        .unwrap_or_else(|| panic!("no pin {node}.{port:?}"))
}

fn errors(text: &str) -> Vec<String> {
    let loaded = spec::load(text, &|k| env()(k), &flow_processors::builtin());
    loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
        .collect()
}

#[test]
fn scripted_edit_of_the_demo_saves_the_expected_file() {
    let (_dir, path) = scratch("demo.yaml");
    let mut h = harness(app_with(&path));
    h.run_steps(4);

    // Add a filter from the palette; it becomes the selection.
    double_click(&mut h, "filter");
    assert_eq!(h.state().designer.selection.single(), Some("filter"));
    // Connect valid.matched to it by dragging from the pin to the node.
    let from = pin(&h, "valid", Some("matched"));
    let to = pin(&h, "filter", None);
    drag(&mut h, from, to);
    // Type its condition in the form.
    h.state_mut().designer.select_node("filter", false);
    h.run_steps(2);
    let field = h.get_by_label("condition");
    field.focus();
    field.type_text(".temperature > 90");
    h.run_steps(2);
    // Add a file_sink, set its path, connect the filter to it.
    double_click(&mut h, "file_sink");
    assert_eq!(h.state().designer.selection.single(), Some("file_sink"));
    let field = h.get_by_label("path");
    field.focus();
    field.type_text("out/very-hot.jsonl");
    h.run_steps(2);
    let from = pin(&h, "filter", Some("matched"));
    let to = pin(&h, "file_sink", None);
    drag(&mut h, from, to);
    // Save with Ctrl+S (not while a text field has the keyboard: click the canvas first).
    h.key_press(Key::Escape);
    h.run_steps(2);
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.run_steps(2);

    let saved = std::fs::read_to_string(&path).expect("saved");
    let expected_path = repo().join("designer/tests/expected/demo-edited.yaml");
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&expected_path, &saved).expect("write expected");
    }
    let expected = std::fs::read_to_string(&expected_path).expect("expected file");
    assert_eq!(saved, expected);
    assert_eq!(
        errors(&saved),
        Vec::<String>::new(),
        "flow validate accepts it"
    );
    assert!(!h.state().designer.is_dirty());
}

#[test]
fn a_vrl_error_shows_on_the_field_and_undo_restores_the_file() {
    let (_dir, path) = scratch("demo.yaml");
    let original = std::fs::read_to_string(&path).expect("read");
    let mut h = harness(app_with(&path));
    h.state_mut().designer.select_node("valid", false);
    h.run_steps(3);
    let field = h.get_by_label("condition");
    field.focus();
    field.type_text(" &&");
    h.run_steps(3);
    // The loader's message, on the field, and on the node.
    let problems = &h.state().designer.validation().problems;
    let p = problems
        .iter()
        .find(|p| p.field.as_deref() == Some("condition"))
        .expect("an error on the field");
    assert!(p.message.contains("invalid expression"), "{}", p.message);
    h.get_by_label_contains("✖ invalid expression");
    // Undo (the toolbar button) brings the file back byte for byte.
    h.key_press(Key::Escape);
    h.run_steps(1);
    h.get_by_label("Undo").click();
    h.run_steps(3);
    assert_eq!(h.state().designer.document().text(), original);
    assert!(h.state().designer.validation().problems.is_empty());
    assert!(!h.state().designer.is_dirty());
}

#[test]
fn every_example_flow_opens_and_saves_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("flows")).expect("flows/") {
        let src = entry.expect("entry").path();
        // Flows, not their `flow test` files (`*.test.yaml`).
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.ends_with(".yaml") || name.ends_with(".test.yaml") {
            continue;
        }
        let path = dir.path().join(src.file_name().expect("name"));
        std::fs::copy(&src, &path).expect("copy");
        let mut h = harness(app_with(&path));
        // Draw it a few frames (layout, fit, hover), then save.
        h.run_steps(6);
        h.hover_at(Pos2::new(700.0, 400.0));
        h.run_steps(2);
        assert!(
            !h.state().designer.is_dirty(),
            "{} changed by just opening it",
            src.display()
        );
        h.state_mut().designer.save().expect("save");
        let a = std::fs::read(&src).expect("read");
        let b = std::fs::read(&path).expect("read");
        assert!(
            a == b,
            "{} is not byte-identical after open and save",
            src.display()
        );
        seen += 1;
    }
    assert!(seen >= 9);
}

#[test]
fn a_flow_with_unset_variables_opens_draws_and_validates_its_structure() {
    let mut designer = Designer::new(flow_processors::builtin(), Arc::new(|_: &str| None));
    designer
        .open(&repo().join("flows/sensors.yaml"))
        .expect("open");
    let mut h = harness(DesignerApp::new(designer));
    h.run_steps(4);
    let v = h.state().designer.validation();
    assert_eq!(v.errors(), 0, "{:?}", v.problems);
    assert!(
        v.problems
            .iter()
            .any(|p| p.message.contains("`OUT_DIR` is not set") && p.node.is_some()),
        "{:?}",
        v.problems
    );
    // Drawn, with the ports its config gives.
    pin(&h, "per_device", Some("late"));
    pin(&h, "late", None);
}

#[test]
fn edges_into_a_source_or_making_a_cycle_are_refused_with_the_reason() {
    let (_dir, path) = scratch("demo.yaml");
    let mut h = harness(app_with(&path));
    h.run_steps(4);
    let before = h.state().designer.document().text().to_owned();
    // label.out -> valid would close a loop.
    let from = pin(&h, "label", Some("out"));
    let to = pin(&h, "valid", None);
    drag(&mut h, from, to);
    assert_eq!(h.state().designer.document().text(), before);
    h.get_by_label_contains("that would make a cycle: valid -> triage -> label -> valid");
}

#[test]
fn delete_undo_redo_copy_paste_and_find() {
    let (_dir, path) = scratch("demo.yaml");
    let mut h = harness(app_with(&path));
    h.run_steps(4);
    let original = h.state().designer.document().text().to_owned();
    h.state_mut().designer.select_node("label", false);
    h.run_steps(1);
    h.key_press(Key::Delete);
    h.run_steps(2);
    let d = &h.state().designer;
    assert!(d.outline().processor("label").is_none());
    assert!(!d.document().text().contains("  label:"));
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(2);
    assert_eq!(h.state().designer.document().text(), original);
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    h.run_steps(2);
    assert!(h.state().designer.outline().processor("label").is_none());
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(2);

    // Copy two connected processors and paste them: new names, their edge kept.
    {
        let d = &mut h.state_mut().designer;
        d.select_node("triage", false);
        d.select_node("label", true);
    }
    let text = h.state_mut().designer.copy().expect("copied");
    h.event(egui::Event::Paste(text));
    h.run_steps(2);
    let d = &h.state().designer;
    assert!(d.outline().processor("triage_2").is_some());
    assert!(d.outline().processor("label_2").is_some());
    assert!(
        d.outline()
            .connections
            .iter()
            .flatten()
            .any(|c| c.label() == "triage_2.hot -> label_2")
    );
    assert_eq!(
        d.selection.nodes.iter().cloned().collect::<Vec<_>>(),
        ["label_2", "triage_2"]
    );

    // Ctrl+F finds a processor by name and selects it.
    h.key_press(Key::Escape);
    h.key_press_modifiers(Modifiers::COMMAND, Key::F);
    h.run_steps(2);
    h.get_by_label("Find").type_text("archi");
    h.run_steps(2);
    assert_eq!(h.state().designer.selection.single(), Some("archive"));
}

#[test]
fn closing_with_unsaved_changes_asks_first() {
    let (_dir, path) = scratch("demo.yaml");
    let mut h = harness(app_with(&path));
    h.state_mut().designer.select_node("alerts", false);
    h.state_mut().designer.delete_selection();
    h.run_steps(1);
    h.event(egui::Event::WindowFocused(true));
    h.state_mut().open(&repo().join("flows/sensors.yaml"));
    h.run_steps(2);
    assert!(h.state().prompting());
    h.get_by_label("Save changes?");
    h.get_by_label("Cancel").click();
    h.run_steps(2);
    assert!(!h.state().prompting());
    assert!(h.state().designer.is_dirty(), "nothing lost");
    h.state_mut().open(&repo().join("flows/sensors.yaml"));
    h.run_steps(2);
    h.get_by_label("Save").click();
    h.run_steps(2);
    let saved = std::fs::read_to_string(&path).expect("saved");
    assert!(!saved.contains("alerts:"));
    assert!(
        h.state()
            .designer
            .path()
            .is_some_and(|p| p.ends_with("sensors.yaml"))
    );
}

#[test]
fn a_file_changed_on_disk_is_offered_for_reload() {
    let (_dir, path) = scratch("demo.yaml");
    let mut h = harness(app_with(&path));
    h.run_steps(2);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(
        &path,
        text.replace("name: demo", "name: changed-elsewhere\n# edited"),
    )
    .expect("write");
    // The check runs about once a second.
    for _ in 0..150 {
        h.step();
    }
    h.get_by_label("The file changed on disk.");
    h.get_by_label("Reload").click();
    h.run_steps(2);
    assert_eq!(
        h.state().designer.outline().name.as_deref(),
        Some("changed-elsewhere")
    );
}

fn snapshot(file: &str, name: &str, select: Option<&str>) {
    let mut h = harness(app_with(&repo().join(format!("flows/{file}"))));
    if let Some(s) = select {
        h.state_mut().designer.select_node(s, false);
    }
    h.run_steps(8);
    h.remove_cursor();
    h.run_steps(2);
    h.snapshot_options(name, &snapshot_options());
}

#[test]
fn snapshot_demo() {
    snapshot("demo.yaml", "demo", Some("triage"));
}

#[test]
fn snapshot_sensors() {
    snapshot("sensors.yaml", "sensors", Some("per_device"));
}

#[test]
fn snapshot_mqtt_to_kafka() {
    snapshot("mqtt-to-kafka.yaml", "mqtt-to-kafka", None);
}

/// Every example flow with its variables unset (a warning on most nodes, as
/// scripts/screenshot.sh shows sensors.yaml): the fit on opening puts every node inside the
/// canvas (not under a side panel), and the automatic layout leaves each node the room it is
/// drawn in, findings included, so that none overlaps another.
#[test]
fn fit_shows_every_node_in_the_canvas_and_findings_do_not_grow_nodes() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("flows")).expect("flows/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(".yaml") || name.ends_with(".test.yaml") {
            continue;
        }
        let mut designer = Designer::new(flow_processors::builtin(), Arc::new(|_: &str| None));
        designer.open(&path).expect("open");
        let mut h = harness(DesignerApp::new(designer));
        h.run_steps(6);
        let app = h.state();
        let canvas = app.canvas.rect();
        let scale = app.canvas.scale();
        let nodes = &app.designer.graph().nodes;
        let drawn: Vec<egui::Rect> = nodes
            .iter()
            .map(|n| {
                app.canvas
                    .node_rect(&app.designer, &n.name)
                    .unwrap_or_else(|| panic!("{name}: {} not drawn", n.name))
            })
            .collect();
        for (n, r) in nodes.iter().zip(&drawn) {
            assert!(
                canvas.contains_rect(*r),
                "{name}: {} at {r:?} is outside the canvas {canvas:?}",
                n.name
            );
            let room = flow_designer::layout::node_size(n);
            assert!(
                r.width() / scale <= room[0] + 0.5 && r.height() / scale <= room[1] + 0.5,
                "{name}: {} is drawn {:?}, the layout leaves {room:?}",
                n.name,
                r.size() / scale
            );
        }
        for i in 0..drawn.len() {
            for j in 0..i {
                assert!(
                    !drawn[i].intersects(drawn[j]),
                    "{name}: {} and {} overlap",
                    nodes[i].name,
                    nodes[j].name
                );
            }
        }
        seen += 1;
    }
    assert!(seen >= 9);
}

#[test]
fn snapshot_sensors_with_its_variables_unset() {
    let mut designer = Designer::new(flow_processors::builtin(), Arc::new(|_: &str| None));
    designer
        .open(&repo().join("flows/sensors.yaml"))
        .expect("open");
    let mut h = harness(DesignerApp::new(designer));
    h.run_steps(8);
    h.remove_cursor();
    h.run_steps(2);
    h.snapshot_options("sensors-unset", &snapshot_options());
}

/// A few anti-aliased pixels of a wire may differ from machine to machine (seen: 3 of
/// 1,267,200 on a fresh clone); anything a person would see is far more.
fn snapshot_options() -> egui_kittest::SnapshotOptions {
    egui_kittest::SnapshotOptions::new().max_failed_pixels(32)
}
