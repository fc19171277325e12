//! The cost of a record between a source and a sink: what a source pays per JSON line and what
//! the first processor that reads a field pays.
//!
//! `cargo bench -p flow-core --bench record`
//!
//! - `lazy`: what a JSON source does per line when nothing downstream reads fields
//!   ([`JsonView::Lazy`]: UTF-8 and syntax checked, no value built), then drops the record, as a
//!   sink that only moves bytes does;
//! - `lazy+read`: the same, then a field read (the view built on first use);
//! - `eager+read`: the view built by the source ([`JsonView::Eager`], chosen when a consumer
//!   reads fields), then a field read;
//! - `text`: a raw line (`format: lines`);
//! - `fan-out`: a record copied to two branches before anything read it; both read a field.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flow_core::record::{JsonView, Record, Value};

/// Sensor events like the benchmarks' (`bench/gen-sensors.yaml`), 80 to 90 bytes each.
fn lines() -> Vec<Bytes> {
    (0..1000)
        .map(|i| {
            Bytes::from(format!(
                r#"{{"device":"car-{:04}","ts":{},"temperature":{}.{},"rpm":{},"status":"{}"}}"#,
                i * 7919 % 1000,
                1_732_300_000_000_u64 + i,
                20 + i % 60,
                i % 10,
                800 + i * 37 % 5000,
                if i % 11 == 0 { "warn" } else { "ok" }
            ))
        })
        .collect()
}

fn field(r: &mut Record) -> bool {
    matches!(r.value(), Ok(Value::Object(o)) if o.contains_key("device"))
}

fn bench(c: &mut Criterion) {
    let lines = lines();
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("lazy", |b| {
        b.iter(|| {
            for l in &lines {
                drop(black_box(Record::json(l.clone(), JsonView::Lazy)));
            }
        })
    });
    for (name, view) in [
        ("lazy+read", JsonView::Lazy),
        ("eager+read", JsonView::Eager),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0;
                for l in &lines {
                    if let Ok(mut r) = Record::json(l.clone(), view) {
                        n += usize::from(field(&mut r));
                    }
                }
                n
            })
        });
    }
    g.bench_function("text", |b| {
        b.iter(|| {
            for l in &lines {
                drop(black_box(Record::from_text(l.clone())));
            }
        })
    });
    g.bench_function("fan-out", |b| {
        b.iter_batched(
            || {
                lines
                    .iter()
                    .filter_map(|l| Record::parse_json(l.clone()).ok())
                    .collect::<Vec<_>>()
            },
            |records| {
                records
                    .into_iter()
                    .filter(|r| {
                        let (mut a, mut b) = (r.clone(), r.clone());
                        field(&mut a) && field(&mut b)
                    })
                    .count()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
