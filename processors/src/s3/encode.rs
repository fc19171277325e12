//! Rows (JSON lines, CSV) and the streaming compressors objects are written through.

use std::io::Write;

use flow_core::record::{Record, Value, encode_json};

use super::{Compression, Format};
use crate::template::lookup;

/// A compressor writing into memory; what it produced so far is taken part by part.
enum Encoder {
    Plain(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    pub fn new(c: Compression) -> std::io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::Plain(Vec::new()),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
        })
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Plain(v) => {
                v.extend_from_slice(data);
                Ok(())
            }
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// The compressed bytes produced so far and not taken yet (the compressors only append to
    /// it, so it may be taken at any time).
    pub fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Plain(v) => v,
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// End the stream; the rest of the output.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Plain(v) => Ok(v),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// An object's body: rows are kept as they are while the object is small, and go through a
/// compressor once it reaches [`Body::STREAM_AT`] (so a thousand small open objects do not hold
/// a thousand compressor states of a few hundred KiB each).
pub(super) struct Body {
    compression: Compression,
    raw: Vec<u8>,
    enc: Option<Encoder>,
}

impl Body {
    /// Uncompressed bytes held before switching to streaming compression.
    pub const STREAM_AT: usize = 1 << 20;

    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            raw: Vec::new(),
            enc: None,
        }
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.enc {
            Some(e) => e.write(data),
            None => {
                self.raw.extend_from_slice(data);
                if self.raw.len() >= Self::STREAM_AT {
                    let mut e = Encoder::new(self.compression)?;
                    e.write(&std::mem::take(&mut self.raw))?;
                    self.enc = Some(e);
                }
                Ok(())
            }
        }
    }

    /// Compressed output ready to be uploaded as a part (empty while the object is small).
    pub fn output(&mut self) -> Option<&mut Vec<u8>> {
        self.enc.as_mut().map(Encoder::output)
    }

    /// The size so far: compressed output not yet taken, or the raw rows while small.
    pub fn pending_len(&mut self) -> usize {
        match &mut self.enc {
            Some(e) => e.output().len(),
            None => self.raw.len(),
        }
    }

    /// End the stream; the rest of the (compressed) body.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        let e = match self.enc {
            Some(e) => e,
            None => {
                let mut e = Encoder::new(self.compression)?;
                e.write(&self.raw)?;
                e
            }
        };
        e.finish()
    }
}

/// One encoded row, reused from record to record.
#[derive(Default)]
pub(super) struct Row(Vec<u8>);

impl Row {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Encode `r` as one row.
    pub fn encode(
        &mut self,
        r: &mut Record,
        format: Format,
        columns: Option<&[String]>,
    ) -> Result<(), String> {
        match format {
            Format::Json => {
                let content = r.content();
                if content.contains(&b'\n') {
                    // Pretty-printed JSON content: re-encode it on one line.
                    let v = r.value().map_err(|e| e.to_string())?;
                    self.0.extend_from_slice(&encode_json(v));
                } else {
                    self.0.extend_from_slice(content);
                }
                self.0.push(b'\n');
            }
            Format::Csv => {
                let v = r.value().map_err(|e| e.to_string())?;
                for (i, c) in columns.unwrap_or_default().iter().enumerate() {
                    if i > 0 {
                        self.0.push(b',');
                    }
                    let cell = match lookup(v, c) {
                        None | Some(Value::Null) => String::new(),
                        Some(x @ (Value::Bytes(_) | Value::String(_))) => {
                            x.to_str_lossy().unwrap_or_default().into_owned()
                        }
                        Some(x @ (Value::Object(_) | Value::Array(_))) => {
                            String::from_utf8_lossy(&encode_json(x)).into_owned()
                        }
                        Some(x) => x.to_string(),
                    };
                    csv_cell(&mut self.0, &cell);
                }
                self.0.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }
}

/// A CSV cell, quoted when it holds a comma, a quote, a line break or edge spaces (RFC 4180).
fn csv_cell(out: &mut Vec<u8>, s: &str) {
    let quote = s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ');
    if quote {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// The header row.
pub(super) fn csv_header(out: &mut Vec<u8>, columns: &[String]) {
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_cell(out, c);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rec;

    #[test]
    fn rows_and_compressors() {
        let mut row = Row::default();
        let raw = r#"{"a": 1,  "s":"x,\"y\""}"#;
        row.encode(&mut rec(raw), Format::Json, None).expect("json");
        assert_eq!(row.bytes(), format!("{raw}\n").as_bytes());
        row.clear();
        row.encode(&mut rec("{\n\"a\": 1\n}"), Format::Json, None)
            .expect("json");
        assert_eq!(row.bytes(), b"{\"a\":1}\n");
        row.clear();
        let cols = [
            "a".to_owned(),
            "s".to_owned(),
            "n.x".to_owned(),
            "m".to_owned(),
        ];
        row.encode(&mut rec(raw), Format::Csv, Some(&cols))
            .expect("csv");
        assert_eq!(row.bytes(), b"1,\"x,\"\"y\"\"\",,\r\n");
        assert!(
            row.encode(&mut rec("nope"), Format::Csv, Some(&cols))
                .is_err()
        );
        let mut h = Vec::new();
        csv_header(&mut h, &cols);
        assert_eq!(h, b"a,s,n.x,m\r\n");

        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut e = Encoder::new(c).expect("encoder");
            let mut out = Vec::new();
            for i in 0..2000 {
                e.write(format!("line {i}\n").as_bytes()).expect("written");
                if i % 500 == 0 {
                    out.append(e.output());
                }
            }
            out.extend(e.finish().expect("finished"));
            let text = super::super::tests::decompress(c, &out);
            assert_eq!(text.lines().count(), 2000, "{c:?}");
            assert!(text.ends_with("line 1999\n"));

            // A body switches to streaming past STREAM_AT and stays one valid stream.
            let mut b = Body::new(c);
            let mut out = Vec::new();
            let line = "x".repeat(999) + "\n";
            for _ in 0..3000 {
                b.write(line.as_bytes()).expect("written");
                if let Some(o) = b.output() {
                    out.append(o);
                }
            }
            out.extend(b.finish().expect("finished"));
            assert_eq!(super::super::tests::decompress(c, &out), line.repeat(3000));
        }
    }
}
