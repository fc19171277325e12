//! `flow-designer [FILE]`: the designer's window.

use std::path::PathBuf;

use flow_designer::{Designer, DesignerApp, process_env};

fn main() -> anyhow::Result<()> {
    let file = std::env::args_os().nth(1).map(PathBuf::from);
    if file.as_deref().is_some_and(|f| f == "--help" || f == "-h") {
        println!(
            "usage: flow-designer [FILE]\n\nOpens FILE (a flow's YAML) in the designer, or a new flow."
        );
        return Ok(());
    }
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("flow designer")
            .with_inner_size([1440.0, 880.0])
            .with_min_inner_size([800.0, 500.0]),
        ..Default::default()
    };
    eframe::run_native(
        "flow designer",
        options,
        Box::new(move |cc| {
            let mut designer = Designer::new(flow_processors::builtin(), process_env());
            if let Some(storage) = cc.storage
                && let Some(recent) = eframe::get_value::<Vec<PathBuf>>(storage, "recent")
            {
                designer.set_recent(recent);
            }
            let mut app = DesignerApp::new(designer);
            if let Some(f) = &file {
                app.open(f);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the designer window could not start: {e}"))
}
