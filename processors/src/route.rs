//! `route`: send records to named ports by conditions.

use flow_core::expr::{Expr, ExprKind};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, FAILURE, Kind, Output, PortId, Processor,
    ProcessorConfig, Transform,
};
use flow_core::record::Record;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

/// Send each record to the ports whose condition it matches, or to `unmatched`.
///
/// Each route is a port name and a VRL condition; routes are tried in the order written. By
/// default a record goes to every route it matches (as copies, which share the parsed content);
/// with `first_match` only to the first. A record whose content is not JSON, or on which a
/// condition fails, goes to `failure`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Port name to VRL condition, for example `alert: .temperature > 95`.
    pub routes: IndexMap<String, String>,
    /// Send a record only to the first route it matches.
    #[serde(default)]
    pub first_match: bool,
}

const UNMATCHED: &str = "unmatched";

impl Describe for RouteConfig {
    const TYPE: &'static str = "route";
    const KIND: Kind = Kind::Transform;
}

impl ProcessorConfig for RouteConfig {
    fn outputs(&self) -> Vec<String> {
        let mut ports: Vec<String> = self.routes.keys().cloned().collect();
        ports.push(UNMATCHED.into());
        ports
    }

    fn validate(&self) -> Vec<ConfigError> {
        if self.routes.is_empty() {
            return vec![ConfigError::new(
                &["routes"],
                "there must be at least one route",
            )];
        }
        let mut errors = Vec::new();
        for (name, condition) in &self.routes {
            if name == FAILURE || name == UNMATCHED {
                let mut e = ConfigError::new(&["routes", name], format!("`{name}` is reserved"));
                e.help = Some(format!(
                    "`{FAILURE}` and `{UNMATCHED}` are ports of every route"
                ));
                errors.push(e);
            }
            if let Err(e) = Expr::compile(condition, ExprKind::Condition) {
                errors.extend(ConfigError::from_expr(&["routes", name], &e));
            }
        }
        errors
    }

    fn reads_only_top_level_fields(&self) -> bool {
        self.routes.values().all(|c| {
            Expr::compile(c, ExprKind::Condition).is_ok_and(|e| e.reads_only_top_level_fields())
        })
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        let routes = self
            .routes
            .values()
            .map(|c| Expr::compile(c, ExprKind::Condition))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Processor::Transform(Box::new(Route {
            unmatched: PortId(routes.len() + 1),
            routes,
            first_match: self.first_match,
            matches: Vec::new(),
        })))
    }
}

struct Route {
    /// Route `i` sends to port `i + 1`.
    routes: Vec<Expr>,
    unmatched: PortId,
    first_match: bool,
    /// Reused buffer of the ports a record matched.
    matches: Vec<PortId>,
}

impl Route {
    /// The routes `record` matches (into `matches`), from the fields its source indexed,
    /// without its structured view: `None` when a condition cannot be answered there (it
    /// needs the view, or VRL would fail on it to report the error), and `process` asks the
    /// view for every route again.
    fn match_fields(&mut self, record: &Record) -> Option<()> {
        let fields = record.fields()?;
        self.matches.clear();
        for (i, route) in self.routes.iter().enumerate() {
            if route.test_fields(fields)? {
                self.matches.push(PortId(i + 1));
                if self.first_match {
                    break;
                }
            }
        }
        Some(())
    }
}

impl Transform for Route {
    fn routes(&self) -> bool {
        self.routes.iter().all(Expr::reads_only_top_level_fields)
    }

    /// The one port a record goes to, when its indexed fields tell (a record matching several
    /// routes is handed to `process`, which copies it).
    fn route(&mut self, record: &Record) -> Option<PortId> {
        self.match_fields(record)?;
        match self.matches.as_slice() {
            [] => Some(self.unmatched),
            [port] => Some(*port),
            _ => None,
        }
    }

    fn process(&mut self, mut record: Record, out: &mut Output) {
        if self.match_fields(&record).is_some() {
            return self.push(record, out);
        }
        if let Err(e) = record.value() {
            return out.fail(record, &e);
        }
        let Some(value) = record.parsed_value() else {
            return out.fail(record, &"content was not parsed");
        };
        self.matches.clear();
        for (i, route) in self.routes.iter().enumerate() {
            match route.test(value, record.attributes()) {
                Ok(true) => {
                    self.matches.push(PortId(i + 1));
                    if self.first_match {
                        break;
                    }
                }
                Ok(false) => {}
                Err(e) => return out.fail(record, &e),
            }
        }
        self.push(record, out);
    }
}

impl Route {
    /// Send `record` to the ports in `matches` (copies to all but the last), or `unmatched`.
    fn push(&self, record: Record, out: &mut Output) {
        let Some((last, rest)) = self.matches.split_last() else {
            return out.push(self.unmatched, record);
        };
        for port in rest {
            out.push(*port, record.clone());
        }
        out.push(*last, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, contents, rec, run_transform, transform};
    use serde_json::json;

    fn route(first_match: bool) -> Box<dyn Transform> {
        // `json!` would sort the routes; parsing text keeps their order, as YAML does.
        let text = format!(
            r#"{{"routes": {{"hot": ".temperature > 90", "fast": ".rpm > 5000"}}, "first_match": {first_match}}}"#
        );
        let cfg: RouteConfig = serde_json::from_str(&text).expect("parses");
        assert_eq!(cfg.outputs(), ["hot", "fast", "unmatched"]);
        transform(&cfg)
    }

    const BOTH: &str = r#"{"temperature":95,"rpm":5500}"#;
    const FAST: &str = r#"{"temperature":20,"rpm":5500}"#;
    const NONE: &str = r#"{"temperature":20,"rpm":900}"#;

    #[test]
    fn sends_to_every_matching_route() {
        let mut r = route(false);
        let out = run_transform(r.as_mut(), vec![rec(BOTH), rec(FAST), rec(NONE)], 3);
        assert_eq!(contents(&out, PortId(1)), [BOTH]);
        assert_eq!(contents(&out, PortId(2)), [BOTH, FAST]);
        assert_eq!(contents(&out, PortId(3)), [NONE]);
        assert_eq!(out.port(PortId(1))[0].id(), out.port(PortId(2))[0].id());
    }

    #[test]
    fn first_match_sends_once() {
        let mut r = route(true);
        let out = run_transform(r.as_mut(), vec![rec(BOTH), rec(FAST), rec(NONE)], 3);
        assert_eq!(contents(&out, PortId(1)), [BOTH]);
        assert_eq!(contents(&out, PortId(2)), [FAST]);
        assert_eq!(contents(&out, PortId(3)), [NONE]);
    }

    /// A record whose source indexed its fields.
    fn indexed(content: &str) -> Record {
        use flow_core::record::JsonView;
        let r = Record::json(
            bytes::Bytes::copy_from_slice(content.as_bytes()),
            JsonView::Fields,
        )
        .unwrap_or_else(|(_, e)| panic!("{content}: {e}"));
        assert!(r.fields().is_some());
        r
    }

    /// Indexed records go where their structured views go, without making the views; a
    /// condition the index cannot answer (a type error VRL reports) still fails the record.
    #[test]
    fn indexed_fields_route_as_the_view_does() {
        const BAD: &str = r#"{"temperature":"x","rpm":1}"#;
        let all = [BOTH, FAST, NONE, BAD];
        for first_match in [false, true] {
            let mut r = route(first_match);
            assert!(r.routes(), "every condition reads top-level fields");
            let plain = run_transform(r.as_mut(), all.iter().map(|c| rec(c)).collect(), 3);
            let fast = run_transform(r.as_mut(), all.iter().map(|c| indexed(c)).collect(), 3);
            for p in 0..=3 {
                assert_eq!(
                    contents(&fast, PortId(p)),
                    contents(&plain, PortId(p)),
                    "port {p}"
                );
            }
            assert!(
                (1..=3).all(|p| fast
                    .port(PortId(p))
                    .iter()
                    .all(|r| r.parsed_value().is_none())),
                "routed without parsing"
            );
            // One port each, told by a look; several (not first_match) or an error: `process`.
            assert_eq!(r.route(&indexed(FAST)), Some(PortId(2)));
            assert_eq!(r.route(&indexed(NONE)), Some(PortId(3)));
            assert_eq!(r.route(&indexed(BOTH)), first_match.then_some(PortId(1)));
            assert_eq!(r.route(&indexed(BAD)), None);
            assert_eq!(r.route(&rec(FAST)), None, "not indexed");
        }
    }

    #[test]
    fn failures() {
        let mut r = route(false);
        let out = run_transform(
            r.as_mut(),
            vec![rec("[1,"), rec(r#"{"temperature":"x"}"#)],
            3,
        );
        assert_eq!(out.port(PortId::FAILURE).len(), 2);
        assert!((1..=3).all(|p| out.port(PortId(p)).is_empty()));
    }

    #[test]
    fn validate_rejects_reserved_names_empty_routes_and_bad_conditions() {
        let errors = config::<RouteConfig>(json!({"routes": {}})).validate();
        assert_eq!(errors[0].path, ["routes"]);
        let text = r#"{"routes": {"failure": "true", "unmatched": "true", "ok": ".a =="}}"#;
        let errors = serde_json::from_str::<RouteConfig>(text)
            .expect("parses")
            .validate();
        let paths: Vec<_> = errors.iter().map(|e| e.path.join(".")).collect();
        assert_eq!(paths, ["routes.failure", "routes.unmatched", "routes.ok"]);
    }
}
