//! The list of every built-in processor.
//!
//! `flow processors`, `flow schema`, the generated reference docs and the designer's palette all
//! read this one list. Adding a processor means adding one line here.

use flow_core::processor::{ProcessorDef, Registry};

use crate::file::FileConfig;
use crate::file_sink::FileSinkConfig;
use crate::filter::FilterConfig;
use crate::generate::GenerateConfig;
use crate::http::{HttpPollConfig, HttpServerConfig};
use crate::influxdb::InfluxDbSinkConfig;
use crate::kafka::{KafkaSinkConfig, KafkaSourceConfig};
use crate::mqtt::{MqttSinkConfig, MqttSourceConfig};
use crate::remap::RemapConfig;
use crate::route::RouteConfig;
use crate::s3::S3SinkConfig;
use crate::stdin::StdinConfig;
use crate::stdout::StdoutConfig;
use crate::window::WindowAggregateConfig;

/// Every processor built into `flow`.
pub fn builtin() -> Registry {
    Registry::new(vec![
        ProcessorDef::of::<GenerateConfig>(),
        ProcessorDef::of::<FileConfig>(),
        ProcessorDef::of::<StdinConfig>(),
        ProcessorDef::of::<FilterConfig>(),
        ProcessorDef::of::<RouteConfig>(),
        ProcessorDef::of::<RemapConfig>(),
        ProcessorDef::of::<FileSinkConfig>(),
        ProcessorDef::of::<StdoutConfig>(),
        ProcessorDef::of::<WindowAggregateConfig>(),
        ProcessorDef::of::<MqttSourceConfig>(),
        ProcessorDef::of::<MqttSinkConfig>(),
        ProcessorDef::of::<HttpPollConfig>(),
        ProcessorDef::of::<HttpServerConfig>(),
        ProcessorDef::of::<InfluxDbSinkConfig>(),
        ProcessorDef::of::<S3SinkConfig>(),
        ProcessorDef::of::<KafkaSourceConfig>(),
        ProcessorDef::of::<KafkaSinkConfig>(),
        flow_wasm::definition(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_core::processor::Kind;

    #[test]
    fn every_processor_is_listed_once_with_a_summary() {
        let r = builtin();
        let names: Vec<&str> = r.all().iter().map(|d| d.type_name).collect();
        assert_eq!(
            names,
            [
                "file",
                "file_sink",
                "filter",
                "generate",
                "http_poll",
                "http_server",
                "influxdb_sink",
                "kafka_sink",
                "kafka_source",
                "mqtt_sink",
                "mqtt_source",
                "remap",
                "route",
                "s3_sink",
                "stdin",
                "stdout",
                "wasm",
                "window_aggregate"
            ]
        );
        for d in r.all() {
            let summary = d.summary();
            assert!(!summary.is_empty(), "{} has no summary", d.type_name);
            assert!(!summary.contains('\n'), "{}: {summary}", d.type_name);
        }
        assert_eq!(r.get("filter").map(|d| d.kind), Some(Kind::Transform));
        assert_eq!(r.get("file").map(|d| d.kind), Some(Kind::Source));
        assert_eq!(r.get("stdout").map(|d| d.kind), Some(Kind::Sink));
    }

    #[test]
    fn every_field_is_documented() {
        for d in builtin().all() {
            let mut g = schemars::SchemaGenerator::default();
            let schema = (d.schema)(&mut g);
            let props = schema.get("properties").and_then(|p| p.as_object());
            for (key, prop) in props.into_iter().flatten() {
                let documented = prop.get("description").is_some()
                    || prop
                        .get("allOf")
                        .and_then(|a| a.as_array())
                        .is_some_and(|a| !a.is_empty());
                assert!(documented, "{}.{key} has no doc comment", d.type_name);
            }
        }
    }

    #[test]
    fn configs_parse_from_yaml() {
        let r = builtin();
        let yaml = "condition: '.status == \"error\"'";
        let node = marked_yaml::parse_yaml(0, yaml).expect("yaml");
        let def = r.get("filter").expect("filter");
        let cfg = (def.parse)(&node).expect("parses");
        assert_eq!(cfg.outputs(), ["matched", "unmatched"]);
        let bad = marked_yaml::parse_yaml(0, "condtion: 'true'").expect("yaml");
        assert!((def.parse)(&bad).is_err(), "unknown keys are rejected");
    }
}
