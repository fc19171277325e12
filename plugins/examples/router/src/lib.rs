//! A router with several ports: readings go to `ok`, `warn` or `error` by their `status`, and
//! hot ones (temperature above `hot_above`) are also copied to `hot`, so one input may make
//! two outputs. A reading without a known status fails.

use flow_plugin::{Emit, Error, Plugin, Record};

/// Where readings go.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Readings hotter than this also go to `hot` (default 95).
    #[serde(default = "default_hot")]
    pub hot_above: f64,
}

fn default_hot() -> f64 {
    95.0
}

#[derive(serde::Deserialize)]
struct Reading<'a> {
    #[serde(borrow)]
    status: Option<&'a str>,
    temperature: Option<f64>,
}

pub struct Router {
    hot_above: f64,
}

impl Plugin for Router {
    type Config = Config;
    const OUTPUTS: &'static [&'static str] = &["ok", "warn", "error", "hot"];

    fn new(config: Config) -> Result<Self, Error> {
        Ok(Router {
            hot_above: config.hot_above,
        })
    }

    fn process(&mut self, record: &Record, out: &mut Emit) -> Result<(), Error> {
        let r: Reading = flow_plugin::serde_json::from_slice(record.content())?;
        let port = match r.status {
            Some(s @ ("ok" | "warn" | "error")) => s,
            Some(other) => return Err(Error::new(format!("unknown status `{other}`"))),
            None => return Err(Error::new("no status")),
        };
        out.pass(port).attribute("route", port);
        if r.temperature.is_some_and(|t| t > self.hot_above) {
            out.pass("hot").attribute("route", "hot");
        }
        Ok(())
    }
}

flow_plugin::export_plugin!(Router);
