//! Test helpers: the built example plugins, and a harness that runs the `wasm` processor over
//! batches with real edges and acknowledgement tokens.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use flow_core::ack::{AckStatus, AckTracker, Acks};
use flow_core::clock::Clock;
use flow_core::processor::{BuildContext, Processor, ProcessorConfig, TaskContext};
use flow_core::record::Record;
use flow_core::runtime::CancellationToken;
use flow_core::runtime::edge::{WhenFull, edge};
use flow_core::runtime::emit::{Emitter, Input};
use flow_core::runtime::metrics::{NodeMetrics, NodeSnapshot};
use flow_wasm::WasmConfig;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A built example plugin (`zscore`, `alerts_py`, ...), building them when it is missing.
pub fn plugin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let path = repo()
        .join("plugins/examples/target/plugins")
        .join(format!("{name}.wasm"));
    if !path.exists() {
        BUILD.call_once(|| {
            let status = std::process::Command::new("bash")
                .arg(repo().join("plugins/build.sh"))
                .status()
                .expect("run plugins/build.sh");
            assert!(status.success(), "plugins/build.sh failed");
        });
    }
    assert!(
        path.exists(),
        "{} is missing: `bash plugins/build.sh` builds the example plugins",
        path.display()
    );
    path
}

/// A config for plugin `name` with its `config:` and extra processor options (`limits`, ...).
pub fn config(
    name: &str,
    plugin_config: serde_json::Value,
    extra: serde_json::Value,
) -> WasmConfig {
    let mut v = serde_json::json!({
        "module": plugin(name),
        "config": plugin_config,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    serde_json::from_value(v).expect("config parses")
}

/// A record over JSON text.
pub fn rec(json: &str) -> Record {
    Record::from_bytes(json.as_bytes().to_vec())
}

/// What a run produced.
pub struct Run {
    /// Port names, `failure` first.
    pub ports: Vec<String>,
    /// Records per port, in order.
    pub records: Vec<Vec<Record>>,
    /// How each input batch finished (by batch number), once the outputs were dropped.
    pub finished: Vec<AckStatus>,
    /// The node's counters.
    pub metrics: NodeSnapshot,
    /// The task's result.
    pub result: Result<(), String>,
}

impl Run {
    /// The records on `port`.
    pub fn port(&self, port: &str) -> &[Record] {
        let i = self
            .ports
            .iter()
            .position(|p| p == port)
            .unwrap_or_else(|| panic!("no port `{port}` in {:?}", self.ports));
        &self.records[i]
    }

    /// The contents on `port`, as strings.
    pub fn contents(&self, port: &str) -> Vec<String> {
        self.port(port)
            .iter()
            .map(|r| {
                let mut r = r.clone();
                String::from_utf8_lossy(r.content()).into_owned()
            })
            .collect()
    }

    /// The `error.message` of each failed record.
    pub fn errors(&self) -> Vec<String> {
        self.port("failure")
            .iter()
            .map(|r| {
                r.attributes()
                    .get("error.message")
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// Build `config` and run it over `batches`; batch `i` carries acknowledgement token `i`.
pub async fn run(config: &WasmConfig, batches: Vec<Vec<Record>>) -> Run {
    run_at(config, batches, Clock::system()).await
}

/// [`run`], with the flow's processing time read from `clock`.
pub async fn run_at(config: &WasmConfig, batches: Vec<Vec<Record>>, clock: Clock) -> Run {
    let errors = config.validate();
    assert!(errors.is_empty(), "invalid config: {errors:?}");
    let mut ports = vec!["failure".to_owned()];
    ports.extend(config.outputs());
    let Live {
        input,
        ports: receivers,
        metrics,
        task,
    } = Live::start_at(config, clock);
    let in_tx = input.expect("a new processor takes input");
    let mut tracker = AckTracker::new();
    let n = batches.len();
    for (i, batch) in batches.into_iter().enumerate() {
        let token = tracker.token(i as u64);
        let batch = batch
            .into_iter()
            .map(|r| r.with_acks(Acks::one(token.clone())))
            .collect();
        drop(token);
        in_tx.send(batch).await.expect("the processor takes input");
    }
    drop(in_tx);
    let result = match task.await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("task: {e}")),
    };
    let mut records = Vec::new();
    for mut rx in receivers {
        let mut port = Vec::new();
        while let Some(b) = rx.recv().await {
            port.extend(b);
        }
        records.push(port);
    }
    // Copies of the outputs the test looks at, without tokens; the originals finish now, as a
    // sink finishes what it wrote.
    let kept: Vec<Vec<Record>> = records
        .iter()
        .map(|p| {
            p.iter()
                .map(|r| {
                    let mut c = r.clone();
                    c.take_acks().release();
                    c
                })
                .collect()
        })
        .collect();
    records.into_iter().flatten().for_each(Record::finish);
    let mut finished = vec![None; n];
    while let Some(f) = tracker.try_next() {
        finished[f.seq as usize] = Some(f.status);
    }
    let finished: Vec<AckStatus> = finished
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|| panic!("batch {i} never finished")))
        .collect();
    // A run that ended well finishes every input explicitly: forwarded, dropped on purpose or
    // failed, never lost.
    if result.is_ok() {
        assert!(
            !finished.contains(&AckStatus::Abandoned),
            "the processor abandoned an input: {finished:?}"
        );
    }
    Run {
        ports,
        records: kept,
        finished,
        metrics: metrics.snapshot(),
        result,
    }
}

/// A running processor fed batch by batch.
pub struct Live {
    pub input: Option<flow_core::runtime::edge::EdgeSender>,
    /// One receiver per port, `failure` first.
    pub ports: Vec<flow_core::runtime::edge::EdgeReceiver>,
    pub metrics: Arc<NodeMetrics>,
    pub task: tokio::task::JoinHandle<Result<(), flow_core::processor::ProcessorError>>,
}

impl Live {
    /// Build and start `config`.
    pub fn start(config: &WasmConfig) -> Live {
        Self::start_at(config, Clock::system())
    }

    /// Build and start `config`, with the flow's processing time read from `clock`.
    pub fn start_at(config: &WasmConfig, clock: Clock) -> Live {
        let mut ctx = BuildContext::new("plugin");
        ctx.clock = clock;
        let Processor::Task(task) = config.build(&ctx).unwrap_or_else(|e| panic!("build: {e}"))
        else {
            panic!("`wasm` is a task transform");
        };
        let mut ports = vec!["failure".to_owned()];
        ports.extend(config.outputs());
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for p in &ports {
            let (tx, rx, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
            senders.push((p.clone(), vec![tx]));
            receivers.push(rx);
        }
        let (in_tx, in_rx, _) = edge(usize::MAX, usize::MAX, WhenFull::Block);
        let metrics = Arc::new(NodeMetrics::default());
        let ctx = TaskContext {
            name: "plugin".into(),
            input: Input::new(vec![in_rx], metrics.clone()),
            out: Emitter::new("plugin".into(), senders, metrics.clone()),
            shutdown: CancellationToken::new(),
            metrics: metrics.clone(),
        };
        Live {
            input: Some(in_tx),
            ports: receivers,
            metrics,
            task: tokio::spawn(task.run(ctx)),
        }
    }

    /// Send a batch.
    pub async fn send(&self, batch: Vec<Record>) {
        if let Some(tx) = &self.input {
            tx.send(batch).await.expect("the processor takes input");
        }
    }

    /// The next batch on port `i`.
    pub async fn next(&mut self, i: usize) -> Vec<Record> {
        self.ports[i].recv().await.expect("a batch")
    }

    /// The plugin the node says it runs.
    pub fn plugin_name(&self) -> String {
        self.metrics.snapshot().status["plugin"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}
