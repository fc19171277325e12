//! Anomaly detection: the z-score of a reading against the device's last `window` readings.
//!
//! For each record, the value of `field` is compared with the mean and standard deviation of
//! the same device's previous `window` values: when `|value - mean| / std` is at least
//! `threshold` (and the window holds at least `min_samples` values), the record goes to
//! `anomaly` with `zscore`, `mean` and `std` added; otherwise it goes on unchanged to
//! `normal`. The value then joins the window. State lives in the instance: after a failed
//! call (the instance is rebuilt) the windows start empty again.

use std::collections::{HashMap, VecDeque};

use flow_plugin::{Emit, Error, Plugin, Record, Value};

/// How anomalies are found.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The numeric field to watch (default `temperature`).
    #[serde(default = "default_field")]
    pub field: String,
    /// The field naming the device: one window per device (default `device`).
    #[serde(default = "default_key")]
    pub key: String,
    /// How many previous readings per device make the window (default 20).
    #[serde(default = "default_window")]
    #[schemars(range(min = 2, max = 100000))]
    pub window: usize,
    /// Readings at least this many standard deviations away are anomalies (default 3).
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 0.0))]
    pub threshold: f64,
    /// No verdict before the window holds this many readings (default 5).
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 2))]
    pub min_samples: usize,
    /// At most this many devices are tracked; the least recently seen is forgotten beyond
    /// (default 100000).
    #[serde(default = "default_max_devices")]
    #[schemars(range(min = 1))]
    pub max_devices: usize,
}

fn default_field() -> String {
    "temperature".into()
}
fn default_key() -> String {
    "device".into()
}
fn default_window() -> usize {
    20
}
fn default_threshold() -> f64 {
    3.0
}
fn default_min_samples() -> usize {
    5
}
fn default_max_devices() -> usize {
    100_000
}

/// A device's recent values with their running sums.
#[derive(Default)]
struct Window {
    values: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    seen: u64,
}

impl Window {
    fn stats(&self) -> (f64, f64) {
        let n = self.values.len() as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        (mean, var.sqrt())
    }

    fn push(&mut self, v: f64, cap: usize) {
        self.values.push_back(v);
        self.sum += v;
        self.sum_sq += v * v;
        if self.values.len() > cap
            && let Some(old) = self.values.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
    }
}

pub struct ZScore {
    config: Config,
    windows: HashMap<String, Window>,
    clock: u64,
}

impl Plugin for ZScore {
    type Config = Config;
    const OUTPUTS: &'static [&'static str] = &["normal", "anomaly"];

    fn new(config: Config) -> Result<Self, Error> {
        if config.min_samples > config.window {
            return Err(Error::new(format!(
                "min_samples ({}) is larger than window ({})",
                config.min_samples, config.window
            )));
        }
        Ok(ZScore {
            config,
            windows: HashMap::new(),
            clock: 0,
        })
    }

    fn process(&mut self, record: &Record, out: &mut Emit) -> Result<(), Error> {
        let json = record.json()?;
        let Some(value) = json.get(&self.config.field).and_then(Value::as_f64) else {
            return Err(Error::new(format!("no numeric `{}`", self.config.field)));
        };
        let device = match json.get(&self.config.key) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return Err(Error::new(format!("no `{}`", self.config.key))),
        };
        self.clock += 1;
        if !self.windows.contains_key(&device) && self.windows.len() >= self.config.max_devices {
            self.forget_oldest();
        }
        let w = self.windows.entry(device).or_default();
        w.seen = self.clock;
        let verdict = (w.values.len() >= self.config.min_samples).then(|| {
            let (mean, std) = w.stats();
            let z = if std > 0.0 { (value - mean) / std } else { 0.0 };
            (z, mean, std)
        });
        w.push(value, self.config.window);
        match verdict {
            Some((z, mean, std)) if z.abs() >= self.config.threshold => {
                let mut anomaly = json.clone();
                if let Value::Object(m) = &mut anomaly {
                    m.insert("zscore".into(), round(z).into());
                    m.insert("mean".into(), round(mean).into());
                    m.insert("std".into(), round(std).into());
                }
                out.json("anomaly", &anomaly)?;
            }
            _ => {
                out.pass("normal");
            }
        }
        Ok(())
    }
}

impl ZScore {
    fn forget_oldest(&mut self) {
        let oldest = self
            .windows
            .iter()
            .min_by_key(|(_, w)| w.seen)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.windows.remove(&k);
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

flow_plugin::export_plugin!(ZScore);
