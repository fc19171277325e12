//! `generate`: synthetic records for demos, tests and benchmarks.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use flow_core::ack::{AckTracker, Acks};
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, PortId, Processor, ProcessorConfig,
    ProcessorError, Source, SourceContext,
};
use flow_core::record::{Origin, Record};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, MissedTickBehavior};

/// Make synthetic records: car telemetry or a counter.
///
/// Deterministic for a given `seed`. With `rate`, records are paced to that many per second;
/// without it they are made as fast as the flow takes them (back-pressure applies).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// What to make.
    #[serde(default)]
    pub preset: Preset,
    /// How many records to make; unset, the source runs until the flow is stopped.
    #[serde(default)]
    pub count: Option<u64>,
    /// Records per second; unset, as fast as possible.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Seed of the random generator.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Records per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Epoch milliseconds of the first record; record `i` is at `start_ts + i` (the `sensors`
    /// preset jitters 10% of them by up to 2 s either way). The default is 2024-11-22T18:26:40Z.
    #[serde(default = "default_start_ts")]
    pub start_ts: i64,
}

/// A kind of synthetic record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Car telemetry, `{"device":"car-0042","ts":1732300000123,"temperature":71.3,"rpm":2310,
    /// "status":"ok"}`: 1000 devices picked uniformly, temperature ~ Normal(70, 12), rpm uniform
    /// in [800, 6000], status `error` 5%, `warn` 5%, `ok` otherwise. The event time is `ts`.
    #[default]
    Sensors,
    /// A counter, `{"n":0}`, `{"n":1}`, ...
    Sequence,
}

fn default_seed() -> u64 {
    1
}
fn default_batch_size() -> usize {
    1024
}
fn default_start_ts() -> i64 {
    1_732_300_000_000
}

impl Describe for GenerateConfig {
    const TYPE: &'static str = "generate";
    const KIND: Kind = Kind::Source;
}

impl ProcessorConfig for GenerateConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            errors.push(ConfigError::new(&["rate"], "must be a positive number"));
        }
        if self.batch_size == 0 {
            errors.push(ConfigError::new(&["batch_size"], "must be at least 1"));
        }
        errors
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Source(Box::new(Generate(self.clone()))))
    }
}

/// Makes the records, batch by batch.
struct Generator {
    preset: Preset,
    rng: SmallRng,
    temperature: Normal<f64>,
    start_ts: i64,
    next: u64,
    buf: BytesMut,
    source: u32,
}

impl Generator {
    fn new(cfg: &GenerateConfig, name: &str) -> Result<Self, ProcessorError> {
        let temperature =
            Normal::new(70.0, 12.0).map_err(|e| ProcessorError::Other(e.to_string()))?;
        Ok(Self {
            preset: cfg.preset,
            rng: SmallRng::seed_from_u64(cfg.seed),
            temperature,
            start_ts: cfg.start_ts,
            next: 0,
            buf: BytesMut::new(),
            source: Origin::source_id(name),
        })
    }

    /// The next `n` records. Their contents are slices of one buffer: one allocation per batch.
    fn batch(&mut self, n: usize, acks: &Acks) -> Vec<Record> {
        self.buf.reserve(n * 96);
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let event_time = match self.preset {
                Preset::Sensors => Some(self.sensor()),
                Preset::Sequence => {
                    self.buf.extend_from_slice(b"{\"n\":");
                    push_int(&mut self.buf, self.next as i128);
                    self.buf.extend_from_slice(b"}");
                    None
                }
            };
            let mut r = Record::from_bytes(self.buf.split().freeze()).with_acks(acks.clone());
            r.set_event_time(event_time);
            r.origin = Some(Origin {
                source: self.source,
                seq: self.next,
            });
            self.next += 1;
            batch.push(r);
        }
        batch
    }

    /// Write one sensor reading into the buffer; returns its `ts`.
    fn sensor(&mut self) -> i64 {
        let rng = &mut self.rng;
        let device: u32 = rng.random_range(0..1000);
        let mut ts = self.start_ts.saturating_add_unsigned(self.next);
        if rng.random::<f64>() < 0.10 {
            let j: i64 = rng.random_range(1..=2000);
            ts += if rng.random::<f64>() < 0.5 { j } else { -j };
        }
        let temperature = self.temperature.sample(rng);
        let rpm: u32 = rng.random_range(800..=6000);
        let r: f64 = rng.random();
        let status: &[u8] = if r < 0.05 {
            b"error"
        } else if r < 0.10 {
            b"warn"
        } else {
            b"ok"
        };
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"device\":\"car-");
        for d in [1000, 100, 10, 1] {
            b.put_u8(b'0' + (device / d % 10) as u8);
        }
        b.extend_from_slice(b"\",\"ts\":");
        push_int(b, ts as i128);
        b.extend_from_slice(b",\"temperature\":");
        push_tenths(b, temperature);
        b.extend_from_slice(b",\"rpm\":");
        push_int(b, rpm as i128);
        b.extend_from_slice(b",\"status\":\"");
        b.extend_from_slice(status);
        b.extend_from_slice(b"\"}");
        ts
    }
}

/// Write an integer in decimal.
fn push_int(b: &mut BytesMut, v: i128) {
    let mut digits = [0u8; 40];
    let mut i = digits.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        b.extend_from_slice(b"-");
    }
    b.extend_from_slice(&digits[i..]);
}

/// Write `x` rounded to 0.1 the way Python prints `round(x, 1)`: `71.3`, `70.0`, `-1.5`, `-0.0`.
fn push_tenths(b: &mut BytesMut, x: f64) {
    let tenths = (x * 10.0).round() as i128;
    if tenths < 0 || (tenths == 0 && x.is_sign_negative()) {
        b.extend_from_slice(b"-");
    }
    push_int(b, tenths.abs() / 10);
    b.extend_from_slice(b".");
    push_int(b, tenths.abs() % 10);
}

struct Generate(GenerateConfig);

/// Below this rate, one tick per record; above, ticks every 10 ms with several records each.
const MAX_TICK_RATE: f64 = 100.0;

#[async_trait]
impl Source for Generate {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError> {
        let cfg = self.0;
        let SourceContext {
            name,
            mut out,
            shutdown,
            metrics,
        } = ctx;
        let mut generator = Generator::new(&cfg, &name)?;
        let mut tracker = AckTracker::named(name.clone()).counting(metrics.acks());
        let count = cfg.count.unwrap_or(u64::MAX);
        let mut ticks = cfg.rate.map(|rate| {
            let period = Duration::from_secs_f64(1.0 / rate.min(MAX_TICK_RATE));
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            (t, rate)
        });
        let start = Instant::now();
        let mut seq = 0;
        'run: while generator.next < count {
            // How many records should exist by now.
            let due = match &mut ticks {
                Some((t, rate)) => {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break 'run,
                        _ = t.tick() => {}
                    }
                    (start.elapsed().as_secs_f64() * *rate) as u64 + 1
                }
                None => generator.next.saturating_add(cfg.batch_size as u64),
            };
            while generator.next < due.min(count) {
                let n = (due.min(count) - generator.next).min(cfg.batch_size as u64) as usize;
                let acks = Acks::one(tracker.token(seq));
                seq += 1;
                let batch = generator.batch(n, &acks);
                // This template's work is done; the records hold their own copies.
                acks.release();
                metrics.add_received(n as u64);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break 'run,
                    r = out.send(PortId::DEFAULT, batch) => {
                        r.map_err(|e| ProcessorError::Other(e.to_string()))?;
                    }
                }
                while tracker.try_next().is_some() {}
                tokio::task::coop::consume_budget().await;
            }
        }
        drop(out);
        while tracker.next().await.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, records, source, source_ctx};
    use serde_json::json;

    async fn generate(cfg: serde_json::Value) -> Vec<Record> {
        let mut h = source_ctx(1);
        let run = tokio::spawn(source(&config::<GenerateConfig>(cfg)).run(h.ctx));
        let made = records(&mut h.ports[1]).await;
        run.await.expect("joined").expect("runs");
        assert_eq!(h.metrics.snapshot().received, made.len() as u64);
        made
    }

    fn text(r: &Record) -> String {
        String::from_utf8_lossy(r.raw_content().map(|b| b.as_ref()).unwrap_or_default()).into()
    }

    #[tokio::test]
    async fn sensors_are_deterministic_ordered_and_distributed_like_gen_py() {
        let records = generate(json!({"count": 20_000, "batch_size": 999})).await;
        assert_eq!(records.len(), 20_000);
        let again = generate(json!({"count": 20_000})).await;
        assert!(records.iter().zip(&again).all(|(a, b)| text(a) == text(b)));
        let other = generate(json!({"count": 100, "seed": 2})).await;
        assert!(records.iter().zip(&other).any(|(a, b)| text(a) != text(b)));

        let (mut errors, mut warns, mut jittered, mut temp_sum) = (0, 0, 0, 0.0);
        for (i, r) in records.iter().enumerate() {
            let line = text(r);
            let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            let keys = ["device", "ts", "temperature", "rpm", "status"];
            let at = keys.map(|k| line.find(&format!("\"{k}\":")));
            assert!(at.iter().all(Option::is_some) && at.is_sorted(), "{line}");
            assert_eq!(v.as_object().map(|o| o.len()), Some(5));
            let ts = v["ts"].as_i64().expect("ts");
            assert_eq!(r.event_time(), Some(ts));
            let delta = ts - (1_732_300_000_000 + i as i64);
            assert!(delta.abs() <= 2000);
            jittered += usize::from(delta != 0);
            let device = v["device"].as_str().expect("device");
            assert!(device.len() == 8 && device.starts_with("car-"), "{device}");
            let rpm = v["rpm"].as_u64().expect("rpm");
            assert!((800..=6000).contains(&rpm));
            let t = v["temperature"].as_f64().expect("temperature");
            assert_eq!(
                format!("{t:?}"),
                line.split("\"temperature\":")
                    .nth(1)
                    .and_then(|s| s.split(',').next())
                    .unwrap_or_default()
            );
            temp_sum += t;
            match v["status"].as_str() {
                Some("error") => errors += 1,
                Some("warn") => warns += 1,
                Some("ok") => {}
                other => panic!("status {other:?}"),
            }
        }
        let pct = |n: usize| n as f64 / 200.0;
        assert!((4.5..5.5).contains(&pct(errors)), "{errors} errors");
        assert!((4.5..5.5).contains(&pct(warns)), "{warns} warns");
        assert!((9.0..11.0).contains(&pct(jittered)), "{jittered} jittered");
        assert!((temp_sum / 20_000.0 - 70.0).abs() < 0.5);
    }

    #[tokio::test]
    async fn sequence_counts_exactly() {
        let records =
            generate(json!({"preset": "sequence", "count": 2500, "batch_size": 1000})).await;
        let texts: Vec<String> = records.iter().map(text).collect();
        assert_eq!(texts.len(), 2500);
        assert_eq!(texts[0], r#"{"n":0}"#);
        assert_eq!(texts[2499], r#"{"n":2499}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_paces_and_shutdown_stops() {
        let mut h = source_ctx(1);
        let cfg: GenerateConfig = config(json!({"preset": "sequence", "rate": 1000.0}));
        let run = tokio::spawn(source(&cfg).run(h.ctx));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        h.shutdown.cancel();
        let n = records(&mut h.ports[1]).await.len();
        run.await.expect("joined").expect("runs");
        assert!((1400..=1600).contains(&n), "{n} records in 1.5 s at 1000/s");
    }

    #[test]
    fn formats_like_python() {
        let f = |x: f64| {
            let mut b = BytesMut::new();
            push_tenths(&mut b, x);
            String::from_utf8_lossy(&b).into_owned()
        };
        assert_eq!(f(71.34), "71.3");
        assert_eq!(f(69.96), "70.0");
        assert_eq!(f(-1.45), "-1.5");
        assert_eq!(f(-0.04), "-0.0");
        assert_eq!(f(0.04), "0.0");
        assert_eq!(f(105.0), "105.0");
    }

    #[test]
    fn validation() {
        let c: GenerateConfig = config(json!({"rate": 0.0, "batch_size": 0}));
        let paths: Vec<_> = c.validate().into_iter().map(|e| e.path.join(".")).collect();
        assert_eq!(paths, ["rate", "batch_size"]);
        assert!(serde_json::from_value::<GenerateConfig>(json!({"preset": "nope"})).is_err());
    }
}
