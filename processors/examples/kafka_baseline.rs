//! The baseline of `bench/kafka.sh`: what `kcat -P` and `kcat -C -e` do, on the same bundled
//! librdkafka (2.12, through `rdkafka`) as flow's `kafka_sink` and `kafka_source`.
//!
//! Why it exists: Debian's `kcat` is linked to librdkafka 2.0.2, which cannot parse the
//! ApiVersions v3 reply of tansu (the broker of the tests and benchmarks), so it cannot be the
//! baseline. This program is a plain librdkafka client with no flow machinery in between, the
//! way kcat is one in C:
//!
//! - `kafka_baseline produce BROKERS TOPIC FILE`: every line of FILE is one message (no key),
//!   sent with flow's `kafka_sink` defaults (`acks=all`, idempotence, lz4, `linger.ms=5`,
//!   batches of 10,000 messages or 1 MB, 100,000 messages queued at most, eager connections);
//!   exits once every delivery report came back, like `kcat -P`.
//! - `kafka_baseline consume BROKERS TOPIC N FILE`: reads TOPIC from the beginning in a new
//!   consumer group (no commits) until N messages came, writing each value as a line to FILE,
//!   like `kcat -C -G group -o beginning -c N`. librdkafka's consumer defaults, as kcat has.
//!
//! `-X key=value` before the mode sets any other librdkafka property, as in kcat.
//! Both print what they did to stderr; `bench/kafka.sh` times the whole process.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::util::Timeout;

fn usage() -> ! {
    eprintln!(
        "usage: kafka_baseline [-X key=value]... produce BROKERS TOPIC FILE\n       \
         kafka_baseline [-X key=value]... consume BROKERS TOPIC N FILE"
    );
    std::process::exit(2)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `-X key=value` pairs, as kcat takes them.
    let mut extra = Vec::new();
    while args.first().map(String::as_str) == Some("-X") && args.len() >= 2 {
        let kv = args.remove(1);
        args.remove(0);
        let (k, v) = kv.split_once('=').unwrap_or_else(|| usage());
        extra.push((k.to_owned(), v.to_owned()));
    }
    let mut config = ClientConfig::new();
    config.set_log_level(RDKafkaLogLevel::Warning);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["produce", brokers, topic, file] => {
            config
                .set("bootstrap.servers", brokers)
                // flow's kafka_sink defaults (processors/src/kafka/sink.rs, `client_config`).
                .set("client.id", "kafka-baseline")
                .set("compression.type", "lz4")
                .set("linger.ms", "5")
                .set("batch.num.messages", "10000")
                .set("batch.size", "1000000")
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "300000")
                .set("queue.buffering.max.messages", "100000")
                .set("enable.sparse.connections", "false");
            for (k, v) in &extra {
                config.set(k, v);
            }
            produce(&config, topic, file);
        }
        ["consume", brokers, topic, n, file] => {
            let n: u64 = n.parse().unwrap_or_else(|_| usage());
            // A group of its own, so the topic is read from the beginning; nothing committed.
            let group = format!("kafka-baseline-{}", std::process::id());
            config
                .set("bootstrap.servers", brokers)
                .set("client.id", "kafka-baseline")
                .set("group.id", &group)
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false");
            for (k, v) in &extra {
                config.set(k, v);
            }
            consume(&config, topic, n, file);
        }
        _ => usage(),
    }
}

/// Counts delivery reports, as kcat's delivery callback does.
#[derive(Default)]
struct Reports {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("delivery failed: {e}");
                }
                0
            }
        };
    }
}

fn produce(config: &ClientConfig, topic: &str, file: &str) {
    let producer: BaseProducer<Reports> = config
        .create_with_context(Reports::default())
        .unwrap_or_else(|e| fail(&format!("producer: {e}")));
    let start = Instant::now();
    let input = std::fs::File::open(file).unwrap_or_else(|e| fail(&format!("{file}: {e}")));
    let mut sent = 0u64;
    for line in BufReader::with_capacity(1 << 20, input).split(b'\n') {
        let line = line.unwrap_or_else(|e| fail(&format!("{file}: {e}")));
        if line.is_empty() {
            continue;
        }
        // librdkafka copies the payload (RD_KAFKA_MSG_F_COPY), as kcat's line mode does.
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(&line[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: serve delivery reports, then offer it again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => fail(&format!("produce: {e}")),
            }
        }
        sent += 1;
        // Serve delivery reports as they come (a non-blocking poll, as kcat does per line).
        producer.poll(Duration::ZERO);
    }
    // Wait for every delivery report.
    producer
        .flush(Timeout::After(Duration::from_secs(300)))
        .unwrap_or_else(|e| fail(&format!("flush: {e}")));
    let ctx = producer.context();
    let (ok, failed) = (
        ctx.ok.load(Ordering::Relaxed),
        ctx.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "produced {sent} messages: {ok} delivered, {failed} failed, in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    if ok != sent {
        std::process::exit(1);
    }
}

fn consume(config: &ClientConfig, topic: &str, n: u64, file: &str) {
    let consumer: BaseConsumer = config
        .create()
        .unwrap_or_else(|e| fail(&format!("consumer: {e}")));
    consumer
        .subscribe(&[topic])
        .unwrap_or_else(|e| fail(&format!("subscribe: {e}")));
    let start = Instant::now();
    let output = std::fs::File::create(file).unwrap_or_else(|e| fail(&format!("{file}: {e}")));
    let mut out = BufWriter::with_capacity(1 << 20, output);
    let mut got = 0u64;
    while got < n {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                out.write_all(m.payload().unwrap_or_default())
                    .and_then(|()| out.write_all(b"\n"))
                    .unwrap_or_else(|e| fail(&format!("{file}: {e}")));
                got += 1;
            }
            // Partition EOF and transient broker errors: librdkafka goes on by itself.
            Some(Err(e)) => eprintln!("consumer: {e}"),
        }
    }
    out.flush()
        .unwrap_or_else(|e| fail(&format!("{file}: {e}")));
    eprintln!(
        "consumed {got} messages in {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("kafka_baseline: {msg}");
    std::process::exit(1)
}
