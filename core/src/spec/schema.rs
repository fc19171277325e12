//! The JSON Schema of flow files, for editors (`flow schema`).

use crate::processor::Registry;

use super::{ApiConfig, EdgeSettingsConfig};

/// The JSON Schema of a flow file, built from every processor's config schema.
pub fn json_schema(registry: &Registry) -> serde_json::Value {
    let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let edge = g.subschema_for::<EdgeSettingsConfig>();
    let api = g.subschema_for::<ApiConfig>();
    let provenance = g.subschema_for::<crate::provenance::config::ProvenanceConfig>();
    let mut variants = Vec::new();
    for def in registry.all() {
        let mut schema = (def.schema)(&mut g).to_value();
        if let Some(obj) = schema.as_object_mut() {
            let props = obj
                .entry("properties")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(p) = props.as_object_mut() {
                p.insert(
                    "type".into(),
                    serde_json::json!({ "const": def.type_name, "description": def.summary() }),
                );
            }
            let req = obj
                .entry("required")
                .or_insert_with(|| serde_json::json!([]));
            if let Some(r) = req.as_array_mut() {
                r.push(serde_json::json!("type"));
            }
            obj.insert("title".into(), serde_json::json!(def.type_name));
        }
        variants.push(schema);
    }
    let defs = g.take_definitions(true);
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "flow file",
        "description": "A flow: processors connected by named ports.",
        "type": "object",
        "additionalProperties": false,
        "required": ["processors"],
        "properties": {
            "name": { "type": "string", "description": "The flow's name." },
            "description": { "type": "string", "description": "What the flow does." },
            "defaults": { "$ref": "#/$defs/EdgeSettingsConfig", "description": "Back-pressure settings for every edge." },
            "api": api,
            "provenance": provenance,
            "processors": {
                "type": "object",
                "description": "Processors by name.",
                "propertyNames": { "pattern": "^[A-Za-z0-9_-]+$" },
                "additionalProperties": { "oneOf": variants }
            },
            "layout": {
                "type": "object",
                "description": "Canvas positions of the processors, written by flow-designer; the engine ignores it.",
                "additionalProperties": { "type": "array", "items": { "type": "number" }, "minItems": 2, "maxItems": 2 }
            },
            "connections": {
                "type": "array",
                "description": "Edges: `from -> to`, `from.port -> to`, or a mapping with edge settings.",
                "items": {
                    "oneOf": [
                        { "type": "string", "pattern": "^\\s*[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)?\\s*->\\s*[A-Za-z0-9_-]+\\s*$" },
                        {
                            "allOf": [edge],
                            "type": "object",
                            "required": ["from", "to"],
                            "properties": {
                                "from": { "type": "string", "description": "`processor` or `processor.port`." },
                                "to": { "type": "string", "description": "The receiving processor." }
                            }
                        }
                    ]
                }
            }
        },
        "$defs": defs,
    })
}
