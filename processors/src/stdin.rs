//! `stdin`: read records from standard input, one per line.

use async_trait::async_trait;
use bytesize::ByteSize;
use flow_core::processor::{
    BuildContext, BuildError, ConfigError, Describe, Kind, Processor, ProcessorConfig,
    ProcessorError, Source, SourceContext,
};
use flow_core::record::JsonView;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::lines::{self, Format, LineInput, NoCheckpoint, Position};

/// Read records from standard input, one per line (JSON lines, raw lines or CSV).
///
/// What was read is sent as soon as it arrives (no waiting for a full batch), so typing a line
/// sends a record. The source ends at the end of input. Blank lines are skipped. Lines that cannot
/// be read, and lines longer than `max_record_size` (only their first 1 KiB is kept), go to
/// `failure` with `error.message` ("line N: ...") and `stdin.line` attributes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// How each line becomes a record.
    #[serde(default)]
    pub format: Format,
    /// Most records per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The longest line taken, like `1MiB`; a longer line goes to `failure` with its first 1 KiB
    /// (it is skipped without being held in memory).
    #[serde(default = "crate::record_size::default_max_record_size")]
    #[schemars(with = "String")]
    pub max_record_size: ByteSize,
}

fn default_batch_size() -> usize {
    1024
}

impl Describe for StdinConfig {
    const TYPE: &'static str = "stdin";
    const KIND: Kind = Kind::Source;
}

impl ProcessorConfig for StdinConfig {
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.batch_size == 0 {
            errors.push(ConfigError::new(&["batch_size"], "must be at least 1"));
        }
        crate::record_size::validate(self.max_record_size, None, &mut errors);
        errors
    }

    fn build(&self, ctx: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Source(Box::new(Stdin(
            self.clone(),
            ctx.json_view(),
        ))))
    }
}

struct Stdin(StdinConfig, JsonView);

#[async_trait]
impl Source for Stdin {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ProcessorError> {
        let input = LineInput {
            format: self.0.format,
            json_view: self.1,
            batch_size: self.0.batch_size,
            flush_each_read: true,
            start: Position::default(),
            header: None,
            line_attribute: "stdin.line",
            max_record_size: self.0.max_record_size,
        };
        let mut stdin = tokio::io::stdin();
        lines::run(input, &mut stdin, ctx, &mut NoCheckpoint).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::config;
    use serde_json::json;

    #[test]
    fn defaults_and_validation() {
        let c: StdinConfig = config(json!({}));
        assert_eq!(c.format, Format::Json);
        assert_eq!(c.batch_size, 1024);
        assert!(c.validate().is_empty());
        let c: StdinConfig = config(json!({"format": "lines", "batch_size": 0}));
        assert_eq!(c.format, Format::Lines);
        assert_eq!(c.validate()[0].path, ["batch_size"]);
        assert!(serde_json::from_value::<StdinConfig>(json!({"path": "x"})).is_err());
    }
}
