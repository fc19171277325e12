//! The `provenance:` section of a flow file.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use schemars::JsonSchema;
use serde::Deserialize;

/// Provenance: what happened to every record (created, received, routed, forked, dropped,
/// failed, sent), recorded by the runtime into an embedded store that `flow provenance`
/// queries. On unless `enabled: false` or `flow run --no-provenance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceConfig {
    /// Record provenance (default `true`).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The store's directory. Default: `$XDG_STATE_HOME/flow/provenance/<flow name>`
    /// (`~/.local/state/...` when `XDG_STATE_HOME` is unset), so that running a flow writes
    /// nothing beside it or in the working directory.
    #[serde(default)]
    pub path: Option<String>,
    /// Events older than this are deleted, a whole segment at a time (default `24h`).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub max_age: Option<Duration>,
    /// The store is kept under this size by deleting its oldest segments (default `1GiB`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_size: Option<ByteSize>,
    /// The processors whose received records' (for a source: created records') content and
    /// attributes are kept in the store (a CONTENT event per batch), so that `flow provenance
    /// replay` can write them out again. Off unless a processor is named here: content costs store space, and may hold
    /// what should not be kept (see `secret_attributes`, `secret_fields`).
    #[serde(default)]
    pub content: Vec<String>,
    /// At most this much of each record's content is kept (default `64KiB`); a longer one is
    /// cut there and marked `truncated` (replay refuses it).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_content_bytes: Option<ByteSize>,
    /// Attributes that never reach the store: left out of kept content, and their values
    /// replaced by `[secret]` in failure messages (`error.message` here leaves failure
    /// messages out altogether).
    #[serde(default)]
    pub secret_attributes: Vec<String>,
    /// Fields of JSON content (paths such as `password` or `user.token`) left out of kept
    /// content. While any is set, content that is not JSON is not kept at all.
    #[serde(default)]
    pub secret_fields: Vec<String>,
    /// When the store's writer cannot keep up: `block` (the flow waits, nothing is lost; the
    /// default) or `sample` (events are dropped and counted). Either way it shows on
    /// `/metrics` and as one warning per burst.
    #[serde(default)]
    pub when_full: Option<super::WhenFull>,
}

/// The keys of [`ProvenanceConfig`].
pub const KEYS: &[&str] = &[
    "enabled",
    "path",
    "max_age",
    "max_size",
    "content",
    "max_content_bytes",
    "secret_attributes",
    "secret_fields",
    "when_full",
];

/// The default `max_content_bytes`.
pub const DEFAULT_MAX_CONTENT_BYTES: u64 = 64 << 10;

/// The default `max_age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The default `max_size`.
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;

/// Settings with the defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The store's directory.
    pub dir: PathBuf,
    /// Retention by age.
    pub max_age: Duration,
    /// Retention by size, in bytes.
    pub max_size: u64,
}

impl ProvenanceConfig {
    /// Whether provenance is on (the default).
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// The settings for the flow named `flow`, defaults filled in.
    pub fn settings(&self, flow: &str) -> Settings {
        Settings {
            dir: self
                .path
                .as_ref()
                .map_or_else(|| default_dir(flow), PathBuf::from),
            max_age: self.max_age.unwrap_or(DEFAULT_MAX_AGE),
            max_size: self.max_size.map_or(DEFAULT_MAX_SIZE, |s| s.as_u64()),
        }
    }
}

impl ProvenanceConfig {
    /// What never reaches the store.
    pub fn secrets(&self) -> crate::provenance::Secrets {
        crate::provenance::Secrets {
            attributes: self.secret_attributes.clone(),
            fields: self
                .secret_fields
                .iter()
                .map(|f| {
                    f.trim_start_matches('.')
                        .split('.')
                        .map(str::to_owned)
                        .collect()
                })
                .collect(),
        }
    }

    /// How much of a record's content is kept at the processors named in `content`.
    pub fn max_content_bytes(&self) -> usize {
        let max = self
            .max_content_bytes
            .map_or(DEFAULT_MAX_CONTENT_BYTES, |b| b.as_u64());
        usize::try_from(max).unwrap_or(usize::MAX)
    }
}

/// `$XDG_STATE_HOME/flow/provenance/<flow>` (or `$HOME/.local/state/...`; the system's
/// temporary directory when neither is set).
pub fn default_dir(flow: &str) -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|s| !s.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(std::env::temp_dir);
    let name: String = flow
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if name.is_empty() || name.starts_with('.') {
        format!("flow{name}")
    } else {
        name
    };
    state.join("flow").join("provenance").join(name)
}
