//! `stdout`: write records to standard output as lines.

use async_trait::async_trait;
use flow_core::processor::{
    BuildContext, BuildError, Describe, Kind, Processor, ProcessorConfig, ProcessorError, Sink,
    SinkContext,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::write::{Lines, write_lines};

/// Write records to standard output, one per line (JSON lines).
///
/// Each record's content is written followed by a newline: a record that was not modified keeps
/// its exact original bytes, a modified one is written as compact JSON. It takes no options.
/// Write errors are handled as `file_sink`'s: retried while they may pass, otherwise the flow
/// stops (a closed pipe, as in `flow run ... | head`, stops it).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl Describe for StdoutConfig {
    const TYPE: &'static str = "stdout";
    const KIND: Kind = Kind::Sink;
}

impl ProcessorConfig for StdoutConfig {
    fn reads_values(&self) -> bool {
        false
    }

    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    fn build(&self, _: &BuildContext) -> Result<Processor, BuildError> {
        Ok(Processor::Sink(Box::new(Stdout)))
    }
}

struct Stdout;

#[async_trait]
impl Sink for Stdout {
    async fn run(self: Box<Self>, ctx: SinkContext) -> Result<(), ProcessorError> {
        let lines = Lines {
            target: std::io::stdout(),
            name: "standard output".into(),
            destination: "stdout".into(),
            len: 0,
            durable: false,
            commit: None,
        };
        write_lines(lines, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, rec, sink, sink_ctx};
    use serde_json::json;

    #[test]
    fn takes_no_options() {
        let _: StdoutConfig = config(json!({}));
        assert!(serde_json::from_value::<StdoutConfig>(json!({"path": "x"})).is_err());
    }

    #[tokio::test]
    async fn writes_and_counts() {
        let (ctx, tx, _failures, metrics) = sink_ctx();
        tx.send(vec![rec(r#"{"stdout":"test"}"#)])
            .await
            .expect("queued");
        drop(tx);
        sink(&StdoutConfig::default()).run(ctx).await.expect("runs");
        let m = metrics.snapshot();
        assert_eq!((m.received, m.sent), (1, 1));
    }
}
