//! The `api:` section of a flow file: the control API's settings (`flow run --api` and
//! `--api-token` override them).

use schemars::JsonSchema;
use serde::Deserialize;

/// The control API (`/metrics`, `/api/v1/...`): served while the flow runs when this section
/// is present (or `flow run --api` is given).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on: `127.0.0.1:9420` (the default), `:0` for any free port, or a
    /// host. Anything but a loopback address requires `token`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Bearer token every endpoint but `/health` requires (`Authorization: Bearer TOKEN`);
    /// take it from the environment: `token: ${FLOW_API_TOKEN}`.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub token: Option<String>,
}

/// The keys of [`ApiConfig`].
pub(super) const KEYS: &[&str] = &["listen", "token"];
