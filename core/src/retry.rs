//! Retrying what a sink could not do because its destination is unavailable: capped
//! exponential backoff, one log line per burst of failures, and a bounded stop.
//!
//! Every sink uses the same [`Retry`], so they all behave alike: an attempt whose error says
//! [`RetryHint::WithBackoff`] is tried again after 100 ms, 200 ms, ... up to the cap (or after
//! the `Retry-After` the server sent, capped at five minutes, never sooner than the backoff);
//! an error that says [`RetryHint::NoRetry`] is returned at once. The first failure of a burst
//! is logged as a warning, then a reminder every minute while it lasts, and once more when it
//! recovers. Several attempts may run at once (a sink uploading objects in parallel): they share
//! the burst. When the flow is asked to stop, a failing attempt is not retried: the caller gets
//! [`ProcessorError::Stopped`] and leaves its records unacknowledged (so they are read again on
//! the next run) instead of holding the stop up for as long as the outage lasts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::processor::{ProcessorError, RetryHint, SinkContext};

/// The first wait after a failed attempt.
pub const FIRST: Duration = Duration::from_millis(100);
/// The default longest wait between attempts.
pub const MAX: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// While a burst lasts, a reminder this often.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// A sink's retry policy and the state of its current burst of failures.
pub struct Retry {
    node: Arc<str>,
    shutdown: CancellationToken,
    first: Duration,
    max: Duration,
    /// Give up (an error, not a stop) after this many failed attempts of one operation.
    max_attempts: Option<u32>,
    burst: Mutex<Burst>,
}

/// The attempts of one operation (see [`Retry::attempts`]).
pub struct Attempts<'a> {
    retry: &'a Retry,
    what: &'a str,
    failures: u32,
    wait: Duration,
}

impl Attempts<'_> {
    /// How many attempts failed so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The last attempt failed with `e`: `Ok` once it is time to try again (after the
    /// backoff), or the error to give up with (`e` itself when retrying cannot help, an error
    /// after `max_attempts`, or [`ProcessorError::Stopped`] when the flow is stopping).
    pub async fn failed(&mut self, e: ProcessorError) -> Result<(), ProcessorError> {
        let r = self.retry;
        if e.retry_hint() == RetryHint::NoRetry {
            if self.failures > 0 {
                r.ended();
            }
            return Err(e);
        }
        self.failures += 1;
        let attempt = self.failures;
        if r.max_attempts.is_some_and(|m| attempt >= m) {
            if attempt > 1 {
                r.ended();
            }
            return Err(ProcessorError::other(format!(
                "{} failed {attempt} times, giving up: {e}",
                self.what
            )));
        }
        let delay = e
            .retry_after()
            .map_or(self.wait, |a| a.min(MAX_RETRY_AFTER).max(self.wait));
        r.failed(self.what, &e, attempt, delay);
        tokio::select! {
            biased;
            () = r.shutdown.cancelled() => {
                r.ended();
                return Err(r.stopped(self.what, &e));
            }
            () = tokio::time::sleep(delay) => {}
        }
        self.wait = (self.wait * 2).min(r.max);
        Ok(())
    }

    /// The last attempt worked.
    pub fn succeeded(self) {
        if self.failures > 0 {
            self.retry.recovered(self.what);
        }
    }
}

#[derive(Default)]
struct Burst {
    /// Operations failing right now.
    failing: usize,
    /// Failed attempts in this burst.
    attempts: u64,
    last_warning: Option<Instant>,
}

impl Retry {
    /// The default policy (100 ms doubling up to 30 s, for ever) for the sink of `ctx`.
    pub fn new(ctx: &SinkContext) -> Self {
        Self::for_node(ctx.name.clone(), ctx.shutdown.clone())
    }

    /// The default policy for `node`, giving up when `shutdown` is cancelled.
    pub fn for_node(node: Arc<str>, shutdown: CancellationToken) -> Self {
        Self {
            node,
            shutdown,
            first: FIRST,
            max: MAX,
            max_attempts: None,
            burst: Mutex::new(Burst::default()),
        }
    }

    /// Wait `first` after the first failure, doubling up to `max`.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first = first.max(Duration::from_millis(1));
        self.max = max.max(self.first);
        self
    }

    /// Give an operation up after this many failed attempts (the error is returned).
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Whether the flow was asked to stop.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Run `op` (given the number of failed attempts so far) until it succeeds, retrying the
    /// errors that say [`RetryHint::WithBackoff`]. `what` names the operation in logs and
    /// errors ("writing to `out.jsonl`").
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, ProcessorError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ProcessorError>>,
    {
        let mut attempts = self.attempts(what);
        loop {
            match op(attempts.failures()).await {
                Ok(v) => {
                    attempts.succeeded();
                    return Ok(v);
                }
                Err(e) => attempts.failed(e).await?,
            }
        }
    }

    /// The attempts of one operation, for callers that drive the loop themselves (when each
    /// attempt needs `&mut` state): call [`Attempts::failed`] after each failure (it waits,
    /// or says to give up) and [`Attempts::succeeded`] once it worked.
    pub fn attempts<'a>(&'a self, what: &'a str) -> Attempts<'a> {
        Attempts {
            retry: self,
            what,
            failures: 0,
            wait: self.first,
        }
    }

    /// An operation that was failing ended without recovering.
    fn ended(&self) {
        let mut b = self.burst.lock();
        b.failing = b.failing.saturating_sub(1);
    }

    fn stopped(&self, what: &str, e: &ProcessorError) -> ProcessorError {
        ProcessorError::Stopped(format!(
            "asked to stop while {what} kept failing ({e}): what it had not written stays \
             unacknowledged and is read again on the next run"
        ))
    }

    fn failed(&self, what: &str, e: &ProcessorError, attempt: u32, delay: Duration) {
        let mut b = self.burst.lock();
        if attempt == 1 {
            b.failing += 1;
        }
        b.attempts += 1;
        if b.last_warning.is_some_and(|t| t.elapsed() < REMIND_EVERY) {
            tracing::debug!(node = &*self.node, attempt, error = %e, "{what} failed; retrying");
            return;
        }
        b.last_warning = Some(Instant::now());
        tracing::warn!(
            node = &*self.node,
            failed_attempts = b.attempts,
            retry_in = ?delay,
            error = %e,
            "{what} failed; retrying with backoff until it works (the sink takes no more input \
             meanwhile, and nothing it has not written is committed)"
        );
    }

    fn recovered(&self, what: &str) {
        let mut b = self.burst.lock();
        b.failing = b.failing.saturating_sub(1);
        if b.failing == 0 {
            tracing::info!(
                node = &*self.node,
                failed_attempts = b.attempts,
                "{what} works again"
            );
            *b = Burst::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn retry() -> (Retry, CancellationToken) {
        let stop = CancellationToken::new();
        (Retry::for_node("sink".into(), stop.clone()), stop)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_capped_backoff() {
        let (r, _) = retry();
        let r = r.backoff(Duration::from_millis(100), Duration::from_millis(400));
        let start = Instant::now();
        let calls = AtomicU32::new(0);
        let v = r
            .run("writing", |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt < 5 {
                        Err(ProcessorError::unavailable("down"))
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await
            .expect("works in the end");
        assert_eq!(v, 5);
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        // 100 + 200 + 400 + 400 + 400.
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        assert_eq!(r.burst.lock().failing, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_but_never_below_the_backoff() {
        let (r, _) = retry();
        let start = Instant::now();
        r.run("posting", |attempt| async move {
            match attempt {
                0 => Err(ProcessorError::Unavailable {
                    message: "429".into(),
                    retry_after: Some(Duration::from_secs(3)),
                }),
                1 => Err(ProcessorError::Unavailable {
                    message: "429".into(),
                    retry_after: Some(Duration::ZERO),
                }),
                _ => Ok(()),
            }
        })
        .await
        .expect("works");
        assert_eq!(start.elapsed(), Duration::from_millis(3000 + 200));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_retrying_cannot_fix_are_returned_at_once() {
        let (r, _) = retry();
        let calls = AtomicU32::new(0);
        let e = r
            .run("writing", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<(), _>(ProcessorError::io(
                        "writing",
                        std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                    ))
                }
            })
            .await
            .expect_err("fatal");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(e, ProcessorError::Io { .. }), "{e}");
        let full = ProcessorError::io("w", std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(full.retry_hint(), RetryHint::WithBackoff);
        let eio = ProcessorError::io("w", std::io::Error::from_raw_os_error(5));
        assert_eq!(eio.retry_hint(), RetryHint::NoRetry);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_retries() {
        let (r, stop) = retry();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stop.cancel();
        });
        let start = Instant::now();
        let e = r
            .run("uploading", |_| async {
                Err::<(), _>(ProcessorError::unavailable("connection refused"))
            })
            .await
            .expect_err("gave up");
        stopper.await.expect("joined");
        assert!(matches!(e, ProcessorError::Stopped(_)), "{e}");
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(r.burst.lock().failing, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_attempts_gives_up_with_an_error() {
        let (r, _) = retry();
        let r = r.max_attempts(Some(3));
        let calls = AtomicU32::new(0);
        let e = r
            .run("posting", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(ProcessorError::unavailable("503")) }
            })
            .await
            .expect_err("gave up");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(e.to_string().contains("failed 3 times"), "{e}");
        assert_eq!(r.burst.lock().failing, 0);
    }
}
