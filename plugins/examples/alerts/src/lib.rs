//! The sensors alerts filter as a plugin: `.status != "error" && .temperature > 95`.

use flow_plugin::{Error, Filter, Record};

/// Which readings are alerts.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Readings hotter than this are alerts (default 95).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
}

fn default_threshold() -> f64 {
    95.0
}

/// Only the two fields the filter reads are parsed.
#[derive(serde::Deserialize)]
struct Reading<'a> {
    #[serde(borrow)]
    status: Option<&'a str>,
    temperature: f64,
}

pub struct Alerts {
    threshold: f64,
}

impl Filter for Alerts {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        Ok(Alerts {
            threshold: config.threshold,
        })
    }

    fn keep(&mut self, record: &Record) -> Result<bool, Error> {
        let r: Reading = serde_json_from(record.content())?;
        Ok(r.status != Some("error") && r.temperature > self.threshold)
    }
}

fn serde_json_from<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    flow_plugin::serde_json::from_slice(bytes)
        .map_err(|e| Error::new(format!("not a reading: {e}")))
}

flow_plugin::export_filter!(Alerts);
