//! `filter`: split records in two by a condition.

use flow_core::expr::{Expr, ExprKind};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Output, PortId, Processor,
    ProcessorConfig, Transform,
};
use flow_core::record::Record;
use schemars::JsonSchema;
use serde::Deserialize;

/// Send records that match a condition to `matched`, the others to `unmatched`.
///
/// The condition is a VRL expression returning a boolean, evaluated on the record's JSON view
/// (`.field`) and its attributes (`%"name"`). A record whose content is not JSON, or on which the
/// condition fails (`.temperature > 95` when `temperature` is a string), goes to `failure`. To
/// drop records, leave `unmatched` unconnected.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The VRL condition, for example `.status != "error" && .temperature > 95`.
    pub condition: String,
}

impl Describe for FilterConfig {
    const TYPE: &'static str = "filter";
    const KIND: Kind = Kind::Transform;
}

const MATCHED: PortId = PortId(1);
const UNMATCHED: PortId = PortId(2);

impl ProcessorConfig for FilterConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["matched".into(), "unmatched".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        match Expr::compile(&self.condition, ExprKind::Condition) {
            Ok(_) => Vec::new(),
            Err(e) => ConfigError::from_expr(&["condition"], &e),
        }
    }

    fn reads_only_top_level_fields(&self) -> bool {
        Expr::compile(&self.condition, ExprKind::Condition)
            .is_ok_and(|e| e.reads_only_top_level_fields())
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        let condition = Expr::compile(&self.condition, ExprKind::Condition)?;
        Ok(Processor::Transform(Box::new(Filter { condition })))
    }
}

struct Filter {
    condition: Expr,
}

impl Transform for Filter {
    fn routes(&self) -> bool {
        self.condition.reads_only_top_level_fields()
    }

    /// Conditions the indexed fields answer; the others need the structured view (`process`).
    fn route(&mut self, record: &Record) -> Option<PortId> {
        let matched = record
            .fields()
            .and_then(|f| self.condition.test_fields(f))?;
        Some(if matched { MATCHED } else { UNMATCHED })
    }

    fn process(&mut self, mut record: Record, out: &mut Output) {
        // Fields the source indexed answer most conditions without the structured view.
        if let Some(port) = self.route(&record) {
            return out.push(port, record);
        }
        if let Err(e) = record.value() {
            return out.fail(record, &e);
        }
        let Some(value) = record.parsed_value() else {
            return out.fail(record, &"content was not parsed");
        };
        match self.condition.test(value, record.attributes()) {
            Ok(true) => out.push(MATCHED, record),
            Ok(false) => out.push(UNMATCHED, record),
            Err(e) => out.fail(record, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, contents, rec, run_transform, transform};
    use serde_json::json;

    fn filter(condition: &str) -> Box<dyn Transform> {
        transform(&config::<FilterConfig>(json!({ "condition": condition })))
    }

    #[test]
    fn splits_matched_and_unmatched() {
        let mut f = filter(r#".status != "error" && .temperature > 95"#);
        let hot = r#"{"status":"ok","temperature":96.5}"#;
        let cool = r#"{"status":"ok","temperature":20}"#;
        let broken = r#"{"status":"error","temperature":99}"#;
        let out = run_transform(f.as_mut(), vec![rec(hot), rec(cool), rec(broken)], 2);
        assert_eq!(contents(&out, MATCHED), [hot]);
        assert_eq!(contents(&out, UNMATCHED), [cool, broken]);
        assert!(out.port(PortId::FAILURE).is_empty());
    }

    /// A fan-out shares its batch with a filter only when the filter can route records by a
    /// look at their indexed fields.
    #[test]
    fn routes_by_a_look_when_the_index_answers() {
        assert!(filter(r#".status != "error" && .temperature > 95"#).routes());
        assert!(!filter(r#"contains(string!(.status), "err")"#).routes());
        assert!(!filter(r#"%"mqtt.topic" == "cars/1""#).routes());
    }

    #[test]
    fn reads_attributes() {
        let mut f = filter(r#"%"mqtt.topic" == "cars/1""#);
        let mut r = rec("{}");
        r.set_attribute("mqtt.topic", "cars/1");
        let out = run_transform(f.as_mut(), vec![r, rec("{}")], 2);
        assert_eq!((out.port(MATCHED).len(), out.port(UNMATCHED).len()), (1, 1));
    }

    #[test]
    fn malformed_json_and_eval_errors_go_to_failure() {
        let mut f = filter(".temperature > 95");
        let out = run_transform(
            f.as_mut(),
            vec![rec("{nope"), rec(r#"{"temperature":"hot"}"#)],
            2,
        );
        let failed = out.port(PortId::FAILURE);
        assert_eq!(failed.len(), 2);
        assert!(out.port(MATCHED).is_empty() && out.port(UNMATCHED).is_empty());
        let msg = |i: usize| {
            failed[i]
                .attributes()
                .get("error.message")
                .cloned()
                .unwrap_or_default()
        };
        assert!(msg(0).contains("not valid JSON"), "{}", msg(0));
        assert!(!msg(1).is_empty());
        assert_eq!(
            failed[1].raw_content().map(|b| b.as_ref()),
            Some(&br#"{"temperature":"hot"}"#[..])
        );
        assert_eq!(
            failed[0]
                .attributes()
                .get("error.processor")
                .map(String::as_str),
            Some(crate::testing::NAME)
        );
    }

    #[test]
    fn validate_points_at_the_condition() {
        let errors = config::<FilterConfig>(json!({"condition": ".a =="})).validate();
        assert_eq!(errors[0].path, ["condition"]);
        assert!(errors[0].offset.is_some());
        let errors = config::<FilterConfig>(json!({"condition": "\"text\""})).validate();
        assert!(errors[0].message.contains("boolean"), "{errors:?}");
        assert!(
            config::<FilterConfig>(json!({"condition": ".a > 1"}))
                .validate()
                .is_empty()
        );
    }
}
