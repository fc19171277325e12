//! What the designer's tests with a real `flow run` child share: the `flow` binary, a
//! harness around the whole app, stepping it until something holds (bounded), the child's
//! log, named pipes and whether a process is gone.
//!
//! Each test file uses a part of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::Vec2;
use egui_kittest::Harness;
use flow_designer::session::Session;
use flow_designer::{Designer, DesignerApp};

/// How long any wait of these tests lasts at most: past it, the test fails and says what it
/// waited for (instead of hanging).
pub const PATIENCE: Duration = Duration::from_secs(120);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `flow` binary of this workspace, built (or found current) by cargo once.
pub fn flow_bin() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    let bin = target.join("debug").join("flow");
    BUILD.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(repo())
            .args(["build", "-q", "-p", "flow-cli", "--bin", "flow"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cannot build the flow binary");
    });
    assert!(bin.is_file(), "no {}", bin.display());
    bin
}

pub fn harness(app: DesignerApp) -> Harness<'static, DesignerApp> {
    Harness::builder()
        .with_size(Vec2::new(1440.0, 880.0))
        .with_step_dt(1.0 / 60.0)
        .build_ui_state(|ui, app: &mut DesignerApp| app.ui(ui), app)
}

/// The designer with `file` open, running this workspace's `flow`.
pub fn app_for(file: &Path) -> DesignerApp {
    let mut designer = Designer::new(flow_processors::builtin(), Arc::new(|_: &str| None));
    designer.open(file).expect("open");
    let mut app = DesignerApp::new(designer);
    app.live.flow_bin = Some(flow_bin());
    app
}

/// Step the UI until `done` holds (the child and the API work in the background); fails
/// after [`PATIENCE`].
pub fn until(
    h: &mut Harness<'_, DesignerApp>,
    what: &str,
    mut done: impl FnMut(&DesignerApp) -> bool,
) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < PATIENCE,
            "gave up waiting for {what}; log:\n{}",
            log(h.state())
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.run_steps(2);
}

pub fn session(app: &DesignerApp) -> &Session {
    app.live.session.as_ref().expect("a session")
}

/// The child's output, last lines.
pub fn log(app: &DesignerApp) -> String {
    app.live.session.as_ref().map_or_else(String::new, |s| {
        s.shared()
            .log
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    })
}

pub fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

/// A process, known by its id and its start time (so that a new process given the same id
/// is not taken for it).
#[derive(Clone, Copy, Debug)]
pub struct Pid {
    pub pid: u32,
    start: Option<u64>,
}

impl Pid {
    pub fn of(pid: u32) -> Self {
        Self {
            pid,
            start: stat(pid).map(|(_, _, start)| start),
        }
    }

    /// Whether the process has ended: no such process, a zombie (ended, not yet reaped by
    /// its parent), or another process with its id.
    pub fn gone(&self) -> bool {
        match stat(self.pid) {
            None => true,
            Some((state, _, start)) => state == 'Z' || Some(start) != self.start,
        }
    }
}

/// State, parent and start time (clock ticks after boot) of a process, from
/// `/proc/PID/stat`.
pub fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses; it ends at the last `)`.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let parent = fields.get(1)?.parse().ok()?;
    // Field 22 of the line is the 20th after COMM.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, parent, start))
}

/// Whether pid `pid` has ended (see [`Pid::gone`]; a process that was not seen before).
pub fn gone(pid: u32) -> bool {
    stat(pid).is_none_or(|(state, _, _)| state == 'Z')
}

/// Wait until `done` holds; fails after [`PATIENCE`] saying what it waited for.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many lines of `path` are `line`.
pub fn count(path: &Path, line: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == line)
        .count()
}

/// A child killed and reaped when dropped, even when the test fails.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
