//! VRL over arbitrary records: compile arbitrary source as a condition (or a value, or a
//! `remap` program: the first byte says) and run it on an arbitrary JSON record. Input: the kind
//! byte, the source up to the first NUL byte, then the record's JSON.
#![no_main]

use flow_core::expr::{Expr, ExprKind};
use flow_core::record::{Attributes, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (source, record) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let kind = match kind % 3 {
        0 => ExprKind::Condition,
        1 => ExprKind::Value,
        _ => ExprKind::Program,
    };
    let Ok(expr) = Expr::compile(source, kind) else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<Value>(record) else {
        return;
    };
    let mut attributes = Attributes::new();
    attributes.insert("source".into(), "fuzz".into());
    match kind {
        ExprKind::Condition => {
            let before = value.clone();
            let _ = expr.test(&value, &attributes);
            assert_eq!(value, before, "a condition leaves the record as it was");
        }
        ExprKind::Value => {
            let _ = expr.eval(&value, &attributes);
        }
        ExprKind::Program => {
            let mut value = value;
            let _ = expr.run_mut(&mut value, &mut attributes);
        }
    }
});
