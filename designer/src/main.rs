//! `flow-designer [FILE]`: the designer's window.

use std::path::PathBuf;

use flow_designer::{Designer, DesignerApp, process_env};

/// glibc's malloc gives big blocks back to the kernel as soon as they are freed (a block over
/// 128 KiB is mapped and unmapped on its own, and the heap's top is trimmed). Mesa's software
/// renderer (llvmpipe, on a desktop or VM without a GPU) allocates its buffers again for each
/// frame, so every frame faulted fresh pages in: 2,000 page faults a frame at 500 nodes, some
/// 15 % of the designer's CPU time. Keep up to 64 MiB of them instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: `mallopt` only changes the allocator's parameters, takes no pointer, and is
    // called first thing in `main`, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> anyhow::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    keep_freed_memory();
    let mut file = None;
    let mut run = false;
    let mut attach = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--help" || a == "-h" {
            println!(
                "usage: flow-designer [FILE] [--run] [--attach URL]\n\nOpens FILE (a flow's YAML) in the designer, or a new flow.\n  --run         runs FILE at once (`flow run FILE --api`) and shows it live\n  --attach URL  watches the flow whose control API is at URL (token: FLOW_API_TOKEN)"
            );
            return Ok(());
        } else if a == "--run" {
            run = true;
        } else if a == "--attach" {
            attach = Some(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("--attach needs a URL"))?
                    .to_string_lossy()
                    .into_owned(),
            );
        } else {
            file = Some(PathBuf::from(a));
        }
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
                if run {
                    app.live.run(&mut app.designer, &cc.egui_ctx);
                }
            }
            if let Some(url) = &attach {
                let token = std::env::var("FLOW_API_TOKEN").ok();
                app.live.attach(url, token, &cc.egui_ctx);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the designer window could not start: {e}"))
}
