//! Unit conversion: numeric fields converted in place, from one unit to another.
//!
//! ```yaml
//! config:
//!   fields:
//!     temperature: { from: celsius, to: fahrenheit }
//!     pressure: { from: kpa, to: psi }
//!   decimals: 2
//! ```
//! A record without one of the fields keeps going without it; a field that is not a number
//! fails the record. Converting between dimensions (celsius to psi) refuses the config.

use std::collections::BTreeMap;

use flow_plugin::{Error, Map, Value};

/// Which fields to convert, and how.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Field name to the conversion applied to it.
    pub fields: BTreeMap<String, Conversion>,
    /// Round results to this many decimals (default 3).
    #[serde(default = "default_decimals")]
    #[schemars(range(max = 12))]
    pub decimals: u32,
}

fn default_decimals() -> u32 {
    3
}

/// A conversion.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conversion {
    /// The unit the field is in.
    pub from: Unit,
    /// The unit it is converted to.
    pub to: Unit,
}

/// Units by dimension.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Celsius,
    Fahrenheit,
    Kelvin,
    Pa,
    Kpa,
    Bar,
    Psi,
    Ms,
    Kmh,
    Mph,
    M,
    Km,
    Mi,
    Ft,
}

#[derive(PartialEq, Eq, Debug)]
enum Dimension {
    Temperature,
    Pressure,
    Speed,
    Distance,
}

impl Unit {
    fn dimension(self) -> Dimension {
        use Unit::*;
        match self {
            Celsius | Fahrenheit | Kelvin => Dimension::Temperature,
            Pa | Kpa | Bar | Psi => Dimension::Pressure,
            Ms | Kmh | Mph => Dimension::Speed,
            M | Km | Mi | Ft => Dimension::Distance,
        }
    }

    /// To the dimension's base unit (kelvin, pascal, m/s, metre).
    fn base_of(self, v: f64) -> f64 {
        use Unit::*;
        match self {
            Celsius => v + 273.15,
            Fahrenheit => (v - 32.0) * 5.0 / 9.0 + 273.15,
            Kelvin | Pa | Ms | M => v,
            Kpa => v * 1_000.0,
            Bar => v * 100_000.0,
            Psi => v * 6_894.757_293_168,
            Kmh => v / 3.6,
            Mph => v * 0.447_04,
            Km => v * 1_000.0,
            Mi => v * 1_609.344,
            Ft => v * 0.3048,
        }
    }

    fn of_base(self, v: f64) -> f64 {
        use Unit::*;
        match self {
            Celsius => v - 273.15,
            Fahrenheit => (v - 273.15) * 9.0 / 5.0 + 32.0,
            Kelvin | Pa | Ms | M => v,
            Kpa => v / 1_000.0,
            Bar => v / 100_000.0,
            Psi => v / 6_894.757_293_168,
            Kmh => v * 3.6,
            Mph => v / 0.447_04,
            Km => v / 1_000.0,
            Mi => v / 1_609.344,
            Ft => v / 0.3048,
        }
    }
}

pub struct Units {
    fields: Vec<(String, Unit, Unit)>,
    scale: f64,
}

impl Map for Units {
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {
        let mut fields = Vec::new();
        for (name, c) in config.fields {
            if c.from.dimension() != c.to.dimension() {
                return Err(Error::new(format!(
                    "`{name}`: cannot convert {:?} ({:?}) to {:?} ({:?})",
                    c.from,
                    c.from.dimension(),
                    c.to,
                    c.to.dimension()
                )));
            }
            fields.push((name, c.from, c.to));
        }
        Ok(Units {
            fields,
            scale: 10f64.powi(config.decimals as i32),
        })
    }

    fn map(&mut self, mut value: Value) -> Result<Value, Error> {
        let Value::Object(obj) = &mut value else {
            return Err(Error::new("not a JSON object"));
        };
        for (name, from, to) in &self.fields {
            let Some(v) = obj.get_mut(name) else {
                continue;
            };
            let Some(n) = v.as_f64() else {
                return Err(Error::new(format!("`{name}` is not a number")));
            };
            let converted = to.of_base(from.base_of(n));
            *v = ((converted * self.scale).round() / self.scale).into();
        }
        Ok(value)
    }
}

flow_plugin::export_map!(Units);
