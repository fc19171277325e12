//! Writing records as lines, shared by the `file_sink` and `stdout` sinks.

use std::future::Future;

use flow_core::processor::{Output, ProcessorError, SinkContext};
use flow_core::runtime::edge::Batch;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Where lines go.
pub(crate) trait LineWriter: AsyncWrite + Unpin + Send {
    /// Make what was written durable (fsync), when the sink was asked to.
    fn sync(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl LineWriter for tokio::fs::File {
    async fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data().await
    }
}

impl LineWriter for tokio::io::Stdout {
    async fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Write every batch from `ctx.input` to `w`, one line per record (its content, so records that
/// were not modified keep their exact bytes), one write per batch. A batch that cannot be written
/// goes to `failure` with the error; the sink keeps going.
pub(crate) async fn write_lines<W: LineWriter>(
    mut w: W,
    mut ctx: SinkContext,
    sync: bool,
) -> Result<(), ProcessorError> {
    let mut buf = Vec::new();
    while let Some(mut batch) = ctx.input.next().await {
        let n = batch.len() as u64;
        ctx.metrics.add_received(n);
        buf.clear();
        for r in batch.iter_mut() {
            buf.extend_from_slice(r.content());
            buf.push(b'\n');
        }
        match write_batch(&mut w, &buf, sync).await {
            Ok(()) => {
                flow_core::record::finish_all(batch);
                ctx.metrics.add_sent(n);
            }
            Err(e) => fail(&mut ctx, batch, &e).await?,
        }
    }
    w.flush().await.map_err(|source| ProcessorError::Io {
        context: "flushing".into(),
        source,
    })
}

async fn write_batch<W: LineWriter>(w: &mut W, buf: &[u8], sync: bool) -> std::io::Result<()> {
    w.write_all(buf).await?;
    w.flush().await?;
    if sync {
        w.sync().await?;
    }
    Ok(())
}

async fn fail(
    ctx: &mut SinkContext,
    batch: Batch,
    err: &std::io::Error,
) -> Result<(), ProcessorError> {
    let mut out = Output::new(ctx.name.clone(), ctx.failures.port_count().max(1));
    let msg = format!("write failed: {err}");
    for r in batch {
        out.fail(r, &msg);
    }
    ctx.failures
        .flush(&mut out)
        .await
        .map_err(|e| ProcessorError::Other(e.to_string()))
}
