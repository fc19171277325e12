//! The flow file loader and validator, as `flow validate` runs it, on arbitrary text.
#![no_main]

use std::sync::LazyLock;

use flow_core::processor::Registry;
use libfuzzer_sys::fuzz_target;

static REGISTRY: LazyLock<Registry> = LazyLock::new(flow_processors::builtin);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A fixed environment: `${FLOW_SET}` is set, every other variable is not.
    let env = |k: &str| (k == "FLOW_SET").then(|| "value".to_owned());
    let loaded = flow_core::spec::load(text, &env, &REGISTRY);
    let errors = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == flow_core::spec::Severity::Error)
        .count();
    assert!(
        loaded.flow.is_some() || errors > 0,
        "a flow that does not load has an error"
    );
    let _ = flow_core::spec::render_short("flow.yaml", &loaded.diagnostics);
});
