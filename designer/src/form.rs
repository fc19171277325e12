//! Inspector forms from a processor's JSON Schema (the one `flow schema` prints, generated
//! from the config struct): each property becomes a field of the right kind, with the doc
//! comment as its help.
//!
//! The schema says text, number, boolean, choice, list, map or nested object. Some strings
//! are more than text, and the schema does not say so yet; they are recognised here, in one
//! place: a `format` of `vrl`, `vrl-program`, `duration`, `size` or `secret` when a schema has
//! one, otherwise the doc comment (it names VRL, or shows a `10s` or `64MiB` example or
//! default) and the key (`token`, `password`...).

use serde_json::Value as Json;

/// What kind of text a string field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextKind {
    /// Any text.
    Plain,
    /// A VRL expression (one line, in a code font).
    Expression,
    /// A VRL program (several lines, in a code font).
    Program,
    /// A duration like `10s`, `500ms`, `1m`.
    Duration,
    /// A size like `64MiB`.
    Size,
    /// A secret: masked unless it is a `${VAR}` reference.
    Secret,
}

impl TextKind {
    /// The syntax to show in an empty field.
    pub fn hint(self) -> Option<&'static str> {
        match self {
            TextKind::Duration => Some("a duration: 500ms, 10s, 5m, 1h"),
            TextKind::Size => Some("a size: 512KiB, 64MiB, 1GB"),
            TextKind::Expression => Some("a VRL expression, e.g. .temperature > 95"),
            TextKind::Program => Some("a VRL program, e.g. .f = to_float!(.c) * 1.8 + 32"),
            TextKind::Secret => Some("a secret: better ${VAR} than the value itself"),
            TextKind::Plain => None,
        }
    }

    /// A short badge for the field.
    pub fn badge(self) -> Option<&'static str> {
        match self {
            TextKind::Expression | TextKind::Program => Some("VRL"),
            TextKind::Duration => Some("duration"),
            TextKind::Size => Some("size"),
            TextKind::Secret => Some("secret"),
            TextKind::Plain => None,
        }
    }
}

/// The kind of a field.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldKind {
    /// A string.
    Text(TextKind),
    /// An integer.
    Integer,
    /// A number.
    Number,
    /// A boolean.
    Bool,
    /// One of these values (with their help).
    Choice(Vec<(String, String)>),
    /// A list of values of this kind.
    List(Box<FieldKind>),
    /// A mapping of names to values of this kind (routes, aggregates, headers).
    Map(Box<FieldKind>),
    /// A nested object with these fields.
    Object(Vec<Field>),
    /// One of several shapes, each a single key (`{ tumbling: 10s }` or
    /// `{ session: { gap: 30s } }`).
    Variants(Vec<(String, String, FieldKind)>),
    /// Anything else: edited as YAML text.
    Other,
}

/// One field of a form.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// Its key.
    pub key: String,
    /// Its doc comment.
    pub help: String,
    /// Whether the config needs it.
    pub required: bool,
    /// Its default, as text (`"5s"`, `4096`, `false`).
    pub default: Option<String>,
    /// What it holds.
    pub kind: FieldKind,
}

/// The fields of a processor type, from its schema: required ones first, then the others,
/// each group by key.
pub fn fields(schema: &Json) -> Vec<Field> {
    let mut out = object_fields(schema);
    out.sort_by(|a, b| b.required.cmp(&a.required).then(a.key.cmp(&b.key)));
    out
}

/// What the designer shows of a processor type: its one-line summary, its whole description
/// and its form's fields.
pub struct TypeDocs {
    pub summary: String,
    pub description: String,
    pub fields: Vec<Field>,
}

/// The docs of `def`, made once per type and kept: each comes from building the type's JSON
/// Schema, which the palette (every type) and the inspector (the selected node's) did on
/// every frame.
pub fn docs(def: &flow_core::processor::ProcessorDef) -> std::sync::Arc<TypeDocs> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock, PoisonError};
    // By type name and schema function: a plugin loaded again under its name may differ.
    type Key = (&'static str, usize);
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<TypeDocs>>>> = OnceLock::new();
    let key = (def.type_name, def.schema as usize);
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(d) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return d.clone();
    }
    let d = Arc::new(TypeDocs {
        summary: def.summary(),
        description: def.description(),
        fields: fields(&schema_of(def)),
    });
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, d.clone());
    d
}

/// The JSON Schema of a registry entry, with every subschema inlined.
pub fn schema_of(def: &flow_core::processor::ProcessorDef) -> Json {
    let mut g = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    (def.schema)(&mut g).to_value()
}

fn object_fields(schema: &Json) -> Vec<Field> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Json::as_array)
        .map(|r| r.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.get("properties").and_then(Json::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(key, prop)| {
            let help = description(prop);
            let default = prop.get("default").and_then(|d| match d {
                Json::Null => None,
                Json::String(s) => Some(s.clone()),
                Json::Object(m) if m.is_empty() => None,
                Json::Array(a) if a.is_empty() => None,
                other => Some(other.to_string()),
            });
            let kind = kind_of(key, prop, &help, default.as_deref());
            Field {
                key: key.clone(),
                help,
                required: required.contains(&key.as_str()),
                default,
                kind,
            }
        })
        .collect()
}

fn description(schema: &Json) -> String {
    schema
        .get("description")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .or_else(|| {
            non_null(schema).and_then(|s| s.get("description")?.as_str().map(str::to_owned))
        })
        .unwrap_or_default()
}

/// The schema without `null`: `Option<T>` is `anyOf: [T, null]` or `type: [t, "null"]`.
fn non_null(schema: &Json) -> Option<&Json> {
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Json::as_array) {
            let rest: Vec<&Json> = list
                .iter()
                .filter(|s| s.get("type").and_then(Json::as_str) != Some("null"))
                .collect();
            if rest.len() == 1 {
                return Some(rest[0]);
            }
        }
    }
    None
}

fn types(schema: &Json) -> Vec<&str> {
    match schema.get("type") {
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts
            .iter()
            .filter_map(Json::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    }
}

fn kind_of(key: &str, schema: &Json, help: &str, default: Option<&str>) -> FieldKind {
    if let Some(inner) = non_null(schema) {
        return kind_of(key, inner, help, default);
    }
    if let Some(values) = choices(schema) {
        return FieldKind::Choice(values);
    }
    // An object of optional shapes of which exactly one is set (windows): its doc says so,
    // or shows each key as a form of its own (`{ tumbling: 10s }`).
    if let Some(props) = schema.get("properties").and_then(Json::as_object)
        && !props.is_empty()
        && schema.get("required").is_none()
        && (description(schema).contains("exactly one")
            || props.keys().all(|k| help.contains(&format!("{{ {k}:"))))
    {
        return FieldKind::Variants(
            props
                .iter()
                .map(|(name, inner)| {
                    let help = description(inner);
                    let kind = kind_of(name, inner, &help, None);
                    (name.clone(), help, kind)
                })
                .collect(),
        );
    }
    // Several forms, one of them a string (`brokers: a:9092,b:9092` or a list): the string.
    if let Some(alternatives) = schema.get("anyOf").and_then(Json::as_array)
        && let Some(text) = alternatives
            .iter()
            .find(|a| a.get("type").and_then(Json::as_str) == Some("string"))
    {
        return FieldKind::Text(text_kind(key, text, help, default));
    }
    if let Some(variants) = schema.get("oneOf").and_then(Json::as_array) {
        let shapes: Option<Vec<(String, String, FieldKind)>> = variants
            .iter()
            .map(|v| {
                let props = v.get("properties")?.as_object()?;
                if props.len() != 1 {
                    return None;
                }
                let (name, inner) = props.iter().next()?;
                let help = description(v);
                Some((
                    name.clone(),
                    help.clone(),
                    kind_of(name, inner, &help, None),
                ))
            })
            .collect();
        if let Some(shapes) = shapes
            && !shapes.is_empty()
        {
            return FieldKind::Variants(shapes);
        }
        return FieldKind::Other;
    }
    match types(schema).first().copied() {
        Some("string") => FieldKind::Text(text_kind(key, schema, help, default)),
        Some("integer") => FieldKind::Integer,
        Some("number") => FieldKind::Number,
        Some("boolean") => FieldKind::Bool,
        Some("array") => {
            let item = schema
                .get("items")
                .map_or(FieldKind::Other, |i| kind_of(key, i, help, None));
            match item {
                FieldKind::Text(_)
                | FieldKind::Integer
                | FieldKind::Number
                | FieldKind::Bool
                | FieldKind::Choice(_) => FieldKind::List(Box::new(item)),
                _ => FieldKind::Other,
            }
        }
        Some("object") => {
            if schema.get("properties").is_some() {
                FieldKind::Object(fields(schema))
            } else if let Some(values) =
                schema.get("additionalProperties").filter(|v| v.is_object())
            {
                let value = kind_of(key, values, help, None);
                match value {
                    FieldKind::Text(_)
                    | FieldKind::Integer
                    | FieldKind::Number
                    | FieldKind::Bool => FieldKind::Map(Box::new(value)),
                    _ => FieldKind::Other,
                }
            } else {
                FieldKind::Other
            }
        }
        _ => FieldKind::Other,
    }
}

/// `enum: [...]`, or `oneOf` of `const`s (enums whose variants have doc comments).
fn choices(schema: &Json) -> Option<Vec<(String, String)>> {
    if let Some(values) = schema.get("enum").and_then(Json::as_array) {
        return values
            .iter()
            .map(|v| Some((v.as_str()?.to_owned(), String::new())))
            .collect();
    }
    let list = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))?
        .as_array()?;
    let mut out = Vec::new();
    for v in list {
        if let Some(c) = v.get("const").and_then(Json::as_str) {
            out.push((c.to_owned(), description(v)));
        } else if let Some(values) = v.get("enum").and_then(Json::as_array) {
            for e in values {
                out.push((e.as_str()?.to_owned(), description(v)));
            }
        } else {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn text_kind(key: &str, schema: &Json, help: &str, default: Option<&str>) -> TextKind {
    match schema.get("format").and_then(Json::as_str) {
        Some("vrl") => return TextKind::Expression,
        Some("vrl-program") => return TextKind::Program,
        Some("duration") => return TextKind::Duration,
        Some("size") => return TextKind::Size,
        Some("secret" | "password") => return TextKind::Secret,
        _ => {}
    }
    let secret_keys = [
        "token",
        "password",
        "secret",
        "sasl_password",
        "secret_access_key",
    ];
    if secret_keys.contains(&key) || key.ends_with("_password") || key.ends_with("_token") {
        return TextKind::Secret;
    }
    if help.contains("VRL") {
        return if help.contains("program") {
            TextKind::Program
        } else {
            TextKind::Expression
        };
    }
    let examples: Vec<&str> = help.split('`').skip(1).step_by(2).chain(default).collect();
    if examples.iter().any(|e| is_duration(e)) {
        return TextKind::Duration;
    }
    if examples.iter().any(|e| is_size(e)) {
        return TextKind::Size;
    }
    TextKind::Plain
}

fn split_number(text: &str) -> Option<(&str, &str)> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    (end > 0).then(|| (&t[..end], t[end..].trim()))
}

/// `10s`, `500ms`, `1m`, `2h`, `1d`.
pub fn is_duration(text: &str) -> bool {
    split_number(text).is_some_and(|(_, unit)| {
        ["ns", "us", "ms", "s", "sec", "m", "min", "h", "d"].contains(&unit)
    })
}

/// `64MiB`, `512KiB`, `1GB`.
pub fn is_size(text: &str) -> bool {
    split_number(text).is_some_and(|(_, unit)| {
        [
            "B", "KB", "KiB", "MB", "MiB", "GB", "GiB", "TB", "TiB", "kB", "kiB",
        ]
        .contains(&unit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(type_name: &str) -> Vec<Field> {
        let registry = flow_processors::builtin();
        let def = registry.get(type_name).expect("type");
        fields(&schema_of(def))
    }

    fn field<'a>(fields: &'a [Field], key: &str) -> &'a Field {
        fields
            .iter()
            .find(|f| f.key == key)
            .unwrap_or_else(|| panic!("no field {key}"))
    }

    #[test]
    fn kinds_from_the_schema_and_the_doc_comments() {
        let filter = form("filter");
        assert_eq!(filter[0].key, "condition");
        assert!(filter[0].required);
        assert_eq!(filter[0].kind, FieldKind::Text(TextKind::Expression));
        assert!(filter[0].help.contains("VRL condition"));

        let remap = form("remap");
        assert_eq!(
            field(&remap, "source").kind,
            FieldKind::Text(TextKind::Program)
        );

        let route = form("route");
        assert_eq!(
            field(&route, "routes").kind,
            FieldKind::Map(Box::new(FieldKind::Text(TextKind::Expression)))
        );

        let window = form("window_aggregate");
        assert_eq!(
            field(&window, "checkpoint_interval").kind,
            FieldKind::Text(TextKind::Duration)
        );
        assert_eq!(field(&window, "max_keys").kind, FieldKind::Integer);
        assert!(
            matches!(field(&window, "on_limit").kind, FieldKind::Choice(ref c) if c.len() == 2)
        );
        assert!(
            matches!(field(&window, "window").kind, FieldKind::Variants(ref v) if v.len() == 3)
        );

        let influx = form("influxdb_sink");
        assert_eq!(
            field(&influx, "token").kind,
            FieldKind::Text(TextKind::Secret)
        );
        assert!(matches!(field(&influx, "tags").kind, FieldKind::List(_)));

        let file_sink = form("file_sink");
        assert_eq!(field(&file_sink, "append").kind, FieldKind::Bool);
        // Required fields come first.
        assert!(file_sink[0].required);
    }

    #[test]
    fn durations_and_sizes() {
        assert!(is_duration("10s") && is_duration("500ms") && is_duration("1.5h"));
        assert!(!is_duration("10") && !is_duration("s") && !is_duration("10 apples"));
        assert!(is_size("64MiB") && is_size("1 GB"));
        assert!(!is_size("64"));
    }
}
