//! How long one frame of the designer takes on a 500-node flow: the egui pass (layout of
//! every panel and node, interaction) and tessellation into triangles, without a GPU.
//!
//! `cargo bench -p flow-designer --bench frame` prints the median and the 99th percentile
//! over a few hundred frames, with the whole flow in view (fit to window, every node drawn)
//! and at 100 % zoom (a part of it), while the pointer moves over the canvas; then the same
//! with the live view (a fill bar and rates on every edge, rates and state on every node)
//! whose figures change once a second, as `/api/v1/stats/stream` sends them. Target: a p99
//! under 16 ms (60 frames per second).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::{Event, Pos2, RawInput, Rect, Vec2};
use flow_core::observe::{EdgeInfo, EdgeRates, EdgeStats, NodeRates, NodeStats, Stats};
use flow_core::runtime::edge::{EdgeSnapshot, WhenFull};
use flow_core::runtime::metrics::{NodeSnapshot, NodeState};
use flow_designer::live::Snapshot;
use flow_designer::{Designer, DesignerApp};

/// A flow of `n` processors: chains of source -> filter -> route -> remap -> two sinks, laid
/// out on a grid.
pub fn generated_flow(n: usize) -> String {
    let mut procs = String::new();
    let mut conns = String::new();
    let mut layout = String::new();
    let mut count = 0;
    let mut chain = 0;
    while count < n {
        let c = chain;
        let y = c as f32 * 260.0;
        let nodes: [(&str, String, f32, f32); 6] = [
            ("src", format!("    type: generate\n    preset: sensors\n    count: {}\n", 1000 + c), 0.0, 0.0),
            ("valid", "    type: filter\n    condition: .status != \"error\"\n".into(), 260.0, 0.0),
            ("triage", "    type: route\n    routes:\n      hot: .temperature > 95\n      cold: .temperature < 40\n".into(), 520.0, 0.0),
            ("label", "    type: remap\n    source: .alert = \"hot\"\n".into(), 780.0, 0.0),
            ("alerts", "    type: stdout\n".into(), 1040.0, 0.0),
            ("archive", format!("    type: file_sink\n    path: out/archive-{c}.jsonl\n"), 780.0, 150.0),
        ];
        for (name, body, x, dy) in nodes {
            if count == n {
                break;
            }
            let _ = write!(procs, "  {name}{c}:\n{body}");
            let _ = writeln!(layout, "  {name}{c}: [{x}, {}]", y + dy);
            count += 1;
        }
        let _ = write!(
            conns,
            "  - src{c} -> valid{c}\n  - valid{c}.matched -> triage{c}\n  - triage{c}.hot -> label{c}\n  - label{c} -> alerts{c}\n  - valid{c}.matched -> archive{c}\n"
        );
        chain += 1;
    }
    // Drop connections to nodes past `n`.
    let names: Vec<String> = procs
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("    ") && l.ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':').to_owned())
        .collect();
    let conns: String = conns
        .lines()
        .filter(|l| {
            let rest = l.trim_start_matches("  - ");
            rest.split("->").all(|e| {
                names
                    .iter()
                    .any(|n| n == e.trim().split('.').next().unwrap_or(""))
            })
        })
        .map(|l| format!("{l}\n"))
        .collect();
    format!("name: bench\nprocessors:\n{procs}connections:\n{conns}layout:\n{layout}")
}

struct Figures {
    pass: Vec<Duration>,
    tessellate: Vec<Duration>,
    total: Vec<Duration>,
    /// Vertices and triangles handed to the GPU in the last frame: what a software renderer
    /// (Mesa's llvmpipe) pays for in vertex work and triangle setup.
    vertices: usize,
    triangles: usize,
    /// Meshes in the last frame: one draw call each (a clip rectangle or texture change starts
    /// a new one).
    draws: usize,
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Stats for every node and edge of the open flow, different for each `tick`.
fn stats(designer: &Designer, tick: usize) -> Stats {
    let g = designer.graph();
    let nodes = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeStats {
            name: n.name.clone(),
            type_name: n.type_name.clone().unwrap_or_default(),
            kind: n.kind.unwrap_or(flow_core::processor::Kind::Transform),
            counters: NodeSnapshot {
                state: NodeState::Running,
                received: (tick * 1000 + i) as u64,
                sent: (tick * 990 + i) as u64,
                failed: (i % 7 == 0) as u64 * tick as u64,
                ..Default::default()
            },
            rates: NodeRates {
                received: 1000.0 + (i + tick) as f64,
                sent: 990.0 + (i * tick) as f64,
                ..Default::default()
            },
        })
        .collect();
    let edges = g
        .edges
        .iter()
        .map(|e| {
            let queued = ((e.index * 37 + tick * 401) % 4096) as u64;
            EdgeStats {
                info: EdgeInfo {
                    id: e.index,
                    from: g.nodes[e.from].name.clone(),
                    port: g.nodes[e.from].ports[e.port].clone(),
                    to: g.nodes[e.to].name.clone(),
                    max_records: 4096,
                    max_bytes: 64 << 20,
                    when_full: WhenFull::Block,
                },
                fill: queued as f64 / 4096.0,
                counters: EdgeSnapshot {
                    records: queued,
                    sent: (tick * 1000) as u64,
                    ..Default::default()
                },
                rates: EdgeRates {
                    sent: 1000.0 + e.index as f64,
                    dropped: 0.0,
                },
            }
        })
        .collect();
    Stats {
        flow: "bench".into(),
        uptime_seconds: tick as f64,
        interval_seconds: 1.0,
        finished: false,
        nodes,
        edges,
    }
}

fn run(ctx: &egui::Context, app: &mut DesignerApp, frames: usize, size: Vec2, t0: f64) -> Figures {
    let mut f = Figures {
        pass: Vec::new(),
        tessellate: Vec::new(),
        total: Vec::new(),
        vertices: 0,
        triangles: 0,
        draws: 0,
    };
    for i in 0..frames {
        let t = i as f32 / frames as f32;
        let pointer = Pos2::new(400.0 + 600.0 * t, 300.0 + 250.0 * (t * 6.0).sin());
        let input = RawInput {
            screen_rect: Some(Rect::from_min_size(Pos2::ZERO, size)),
            time: Some(t0 + i as f64 / 60.0),
            predicted_dt: 1.0 / 60.0,
            events: vec![Event::PointerMoved(pointer)],
            ..Default::default()
        };
        let start = Instant::now();
        // Live: new figures once a second (every 60 frames), as the stats stream sends them.
        if app.canvas.live.is_some() && i % 60 == 0 {
            let s = stats(&app.designer, i / 60);
            app.canvas.live = Some(Box::new(Snapshot::new(&s, &[])));
        }
        let mut out = ctx.run_ui(input, |ui| app.ui(ui));
        let pass = start.elapsed();
        let primitives = ctx.tessellate(out.shapes, out.pixels_per_point);
        let total = start.elapsed();
        (f.vertices, f.triangles) =
            primitives
                .iter()
                .fold((0, 0), |(v, t), p| match &p.primitive {
                    egui::epaint::Primitive::Mesh(m) => {
                        (v + m.vertices.len(), t + m.indices.len() / 3)
                    }
                    egui::epaint::Primitive::Callback(_) => (v, t),
                });
        f.draws = primitives.len();
        std::hint::black_box(primitives);
        // No GPU takes the font atlas updates: say they are dealt with (epaint checks).
        out.textures_delta.clear();
        f.pass.push(pass);
        f.tessellate.push(total - pass);
        f.total.push(total);
    }
    f
}

fn report(what: &str, f: &Figures) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: frame median {:.2} ms, p99 {:.2} ms (egui pass median {:.2} / p99 {:.2}; tessellation median {:.2} / p99 {:.2}) over {} frames; {} vertices, {} triangles, {} draw calls a frame",
        ms(percentile(&f.total, 0.5)),
        ms(percentile(&f.total, 0.99)),
        ms(percentile(&f.pass, 0.5)),
        ms(percentile(&f.pass, 0.99)),
        ms(percentile(&f.tessellate, 0.5)),
        ms(percentile(&f.tessellate, 0.99)),
        f.total.len(),
        f.vertices,
        f.triangles,
        f.draws,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let frames = if quick { 5 } else { 400 };
    let text = generated_flow(500);
    let mut designer = Designer::new(flow_processors::builtin(), Arc::new(|_: &str| None));
    designer.load_text(text, None);
    assert_eq!(designer.graph().nodes.len(), 500);
    assert!(designer.graph().edges.len() > 400);
    let mut app = DesignerApp::new(designer);
    let ctx = egui::Context::default();
    let size = Vec2::new(1600.0, 1000.0);
    // Warm up: fonts, layout of every node, fit to window.
    let warm = run(&ctx, &mut app, 10, size, 0.0);
    drop(warm);
    let fit = run(&ctx, &mut app, frames, size, 100.0);
    report("500 nodes, whole flow in view", &fit);
    app.canvas.zoom_by(1.0 / app.canvas.scale().max(0.01));
    run(&ctx, &mut app, 5, size, 200.0);
    let near = run(&ctx, &mut app, frames, size, 300.0);
    report("500 nodes, 100% zoom", &near);

    // The live view, updated at 1 Hz.
    app.canvas.live = Some(Box::new(Snapshot::new(&stats(&app.designer, 0), &[])));
    app.canvas.fit();
    run(&ctx, &mut app, 10, size, 400.0);
    let live = run(&ctx, &mut app, frames, size, 500.0);
    report("500 nodes, live view at 1 Hz, whole flow in view", &live);
}
