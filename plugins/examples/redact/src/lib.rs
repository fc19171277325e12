//! PII redaction: e-mail addresses, phone numbers and card numbers masked wherever they
//! appear in a record's strings, and named fields masked whole.
//!
//! The record goes on with its personal data replaced by `mask` (default `[redacted]`) and an
//! attribute `redact.count` saying how many values were masked.

use flow_plugin::{Emit, Error, Plugin, Record, Value};
use regex::Regex;

/// What to mask.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Fields masked whole wherever they are (any depth), like `ssn` or `password`.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Kinds of data masked inside every string (default: all three).
    #[serde(default = "default_kinds")]
    pub detect: Vec<Kind>,
    /// What replaces masked data (default `[redacted]`).
    #[serde(default = "default_mask")]
    pub mask: String,
}

/// A kind of personal data.
#[derive(Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `someone@example.com`
    Email,
    /// Phone numbers: 7 to 15 digits, with `+`, spaces, dots, dashes or parentheses.
    Phone,
    /// Card numbers: 13 to 19 digits (spaces or dashes allowed) that pass the Luhn check.
    Card,
}

fn default_kinds() -> Vec<Kind> {
    vec![Kind::Email, Kind::Phone, Kind::Card]
}

fn default_mask() -> String {
    "[redacted]".into()
}

pub struct Redact {
    fields: Vec<String>,
    email: Option<Regex>,
    card: Option<Regex>,
    phone: Option<Regex>,
    mask: String,
}

impl Plugin for Redact {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        let re = |on: bool, pattern: &str| -> Result<Option<Regex>, Error> {
            Ok(if on { Some(Regex::new(pattern)?) } else { None })
        };
        Ok(Redact {
            fields: config.fields,
            email: re(
                config.detect.contains(&Kind::Email),
                r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
            )?,
            card: re(
                config.detect.contains(&Kind::Card),
                r"\b(?:\d[ -]?){12,18}\d\b",
            )?,
            phone: re(
                config.detect.contains(&Kind::Phone),
                r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,13}\b",
            )?,
            mask: config.mask,
        })
    }

    fn process(&mut self, record: &Record, out: &mut Emit) -> Result<(), Error> {
        let mut value = record.json()?.clone();
        let mut count = 0usize;
        self.walk(&mut value, &mut count);
        if count == 0 {
            out.pass("out");
        } else {
            out.json("out", &value)?
                .attribute("redact.count", count.to_string());
        }
        Ok(())
    }
}

impl Redact {
    fn walk(&self, v: &mut Value, count: &mut usize) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if self.fields.iter().any(|f| f == k) {
                        if !v.is_null() {
                            *v = Value::String(self.mask.clone());
                            *count += 1;
                        }
                    } else {
                        self.walk(v, count);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| self.walk(v, count)),
            Value::String(s) => {
                if let Some(masked) = self.mask_text(s, count) {
                    *s = masked;
                }
            }
            _ => {}
        }
    }

    /// `s` with its personal data masked, if it had any.
    fn mask_text(&self, s: &str, count: &mut usize) -> Option<String> {
        let mut text = s.to_owned();
        let mut changed = false;
        if let Some(re) = &self.email {
            let n = re.find_iter(&text).count();
            if n > 0 {
                text = re.replace_all(&text, self.mask.as_str()).into_owned();
                *count += n;
                changed = true;
            }
        }
        if let Some(re) = &self.card {
            let mut n = 0;
            let replaced = re.replace_all(&text, |c: &regex::Captures| {
                if luhn(&c[0]) {
                    n += 1;
                    self.mask.clone()
                } else {
                    c[0].to_owned()
                }
            });
            if n > 0 {
                text = replaced.into_owned();
                *count += n;
                changed = true;
            }
        }
        if let Some(re) = &self.phone {
            let n = re.find_iter(&text).count();
            if n > 0 {
                text = re.replace_all(&text, self.mask.as_str()).into_owned();
                *count += n;
                changed = true;
            }
        }
        changed.then_some(text)
    }
}

/// The Luhn checksum of the digits in `s`.
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    digits.len() >= 13 && sum.is_multiple_of(10)
}

flow_plugin::export_plugin!(Redact);
