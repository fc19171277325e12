//! What one call into a plugin costs, by batch size: the sensors alerts filter in Rust and in
//! Python, called with 1, 64 and 512 records. `bash bench/plugins.sh` builds the plugins and
//! runs this next to the whole-flow comparison.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flow_wasm::{Grants, Input, Instance, Limits, Module};

fn plugin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/target/plugins")
        .join(format!("{name}.wasm"))
}

fn inputs(n: usize) -> Vec<Input> {
    (0..n)
        .map(|i| Input {
            content: format!(
                r#"{{"device":"car-{:04}","ts":{},"temperature":{}.5,"rpm":2310,"status":"ok"}}"#,
                i % 1000,
                1_732_300_000_000u64 + i as u64,
                60 + i % 50
            )
            .into_bytes(),
            attributes: Vec::new(),
            event_time: None,
        })
        .collect()
}

fn calls(c: &mut Criterion) {
    let limits = Limits::default();
    for name in ["alerts", "alerts_py"] {
        let path = plugin(name);
        let module = match Module::load(&path, &limits) {
            Ok(m) => m,
            Err(e) => panic!("{}: {e} (run `bash plugins/build.sh`)", path.display()),
        };
        let mut instance =
            Instance::new(&module, &limits, &Grants::default(), Arc::from(name)).expect("instance");
        instance
            .init(r#"{"threshold":95}"#)
            .expect("init")
            .expect("config accepted");
        let mut group = c.benchmark_group(format!("call/{name}"));
        for size in [1usize, 64, 512] {
            let batch = inputs(size);
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(BenchmarkId::from_parameter(size), &batch, |b, batch| {
                b.iter(|| instance.process(batch).expect("answers"));
            });
        }
        group.finish();
    }
}

criterion_group!(benches, calls);
criterion_main!(benches);
