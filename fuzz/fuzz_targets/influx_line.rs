//! Line-protocol encoding: an arbitrary point is written and read back by the independent
//! reference reader (exactly the same, or refused cleanly); an arbitrary record's content is
//! encoded as `influxdb_sink` does and must read back.
#![no_main]

use arbitrary::Arbitrary;
use flow_processors::fuzzing::InfluxField;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Field {
    Float(f64),
    Integer(i64),
    Boolean(bool),
    String(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Field)>,
    timestamp: Option<i64>,
    record: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let fields: Vec<(String, InfluxField)> = input
        .fields
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Field::Float(f) => InfluxField::Float(f),
                Field::Integer(i) => InfluxField::Integer(i),
                Field::Boolean(b) => InfluxField::Boolean(b),
                Field::String(s) => InfluxField::String(s),
            };
            (k, v)
        })
        .collect();
    flow_processors::fuzzing::influx_round_trip(
        &input.measurement,
        &input.tags,
        &fields,
        input.timestamp,
    );
    flow_processors::fuzzing::influx_encode(&input.record);
});
