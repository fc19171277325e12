//! `remap`: rewrite records with a VRL program.

use flow_core::expr::{EvalError, Expr, ExprKind};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, PortId, Processor,
    ProcessorConfig, Transform,
};
use flow_core::record::Record;
use schemars::JsonSchema;
use serde::Deserialize;

/// Rewrite each record with a VRL program: change, add or delete fields and attributes.
///
/// The program sees the record's JSON view as `.` and its attributes as `%name`, and may change
/// both. A program that calls `abort` drops the record on purpose (it is acknowledged, not
/// failed): that is how a remap filters. A record whose content is not JSON, or on which the
/// program fails, goes to `failure` unchanged.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemapConfig {
    /// The VRL program, for example `.temperature_f = .temperature * 9 / 5 + 32`.
    pub source: String,
}

impl Describe for RemapConfig {
    const TYPE: &'static str = "remap";
    const KIND: Kind = Kind::Transform;
}

impl ProcessorConfig for RemapConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        match Expr::compile(&self.source, ExprKind::Program) {
            Ok(_) => Vec::new(),
            Err(e) => ConfigError::from_expr(&["source"], &e),
        }
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        let program = Expr::compile(&self.source, ExprKind::Program)?;
        Ok(Processor::Transform(Box::new(Remap { program })))
    }
}

struct Remap {
    program: Expr,
}

impl Transform for Remap {
    fn process(&mut self, mut record: Record, out: &mut Output) {
        // Work on copies, so a failing program leaves the record as it came.
        let mut value = match record.value() {
            Ok(v) => v.clone(),
            Err(e) => return out.fail(record, &e),
        };
        let mut attributes = record.attributes().clone();
        match self.program.run_mut(&mut value, &mut attributes) {
            Ok(()) => {
                // Only what the program changed: an unchanged record keeps its content
                // bytes (nothing to re-encode) and is not recorded as modified.
                if record.parsed_value() != Some(&value) {
                    record.set_value(value);
                }
                record.set_attributes(attributes);
                out.push(PortId::DEFAULT, record);
            }
            Err(EvalError::Aborted(_)) => out.drop_record(record),
            Err(e) => out.fail(record, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, contents, rec, run_transform, transform};
    use serde_json::json;

    fn remap(source: &str) -> Box<dyn Transform> {
        transform(&config::<RemapConfig>(json!({ "source": source })))
    }

    #[test]
    fn rewrites_and_reencodes() {
        let mut t = remap(r#".f = to_int!(.c) * 9 / 5 + 32; del(.c); %unit = "F""#);
        let out = run_transform(t.as_mut(), vec![rec(r#"{"c":100, "id":"a"}"#)], 1);
        assert_eq!(contents(&out, PortId::DEFAULT), [r#"{"f":212.0,"id":"a"}"#]);
        let r = &out.port(PortId::DEFAULT)[0];
        assert_eq!(r.attributes().get("unit").map(String::as_str), Some("F"));
    }

    #[test]
    fn abort_drops_and_errors_fail_unchanged() {
        let mut t = remap(r#"if .drop == true { abort }; .n = to_int!(.n) + 1"#);
        let input = vec![
            rec(r#"{"drop":true,"n":1}"#),
            rec(r#"{"n":"x"}"#),
            rec("not json"),
            rec(r#"{"n":1}"#),
        ];
        let out = run_transform(t.as_mut(), input, 1);
        assert_eq!(contents(&out, PortId::DEFAULT), [r#"{"n":2}"#]);
        assert_eq!(
            contents(&out, PortId::FAILURE),
            [r#"{"n":"x"}"#, "not json"]
        );
    }

    #[test]
    fn validate_points_at_the_source() {
        let errors = config::<RemapConfig>(json!({"source": ".a = "})).validate();
        assert_eq!(errors[0].path, ["source"]);
        // VRL requires fallible calls to be handled in a program.
        assert!(
            !config::<RemapConfig>(json!({"source": ".a = to_int(.b)"}))
                .validate()
                .is_empty()
        );
        assert!(
            config::<RemapConfig>(json!({"source": ".a = 1"}))
                .validate()
                .is_empty()
        );
    }
}
