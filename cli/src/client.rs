//! A small client of the control API, for `flow top` and `flow tap`.

use std::time::Duration;

use anyhow::Context as _;
use serde::de::DeserializeOwned;

/// Where `flow top` and `flow tap` look when no URL is given.
pub fn default_url() -> String {
    format!("http://127.0.0.1:{}", crate::api::DEFAULT_PORT)
}

/// A client of one flow's API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `url` (`http://HOST:PORT`; `HOST:PORT` works too).
    pub fn new(url: Option<&str>, token: Option<String>) -> anyhow::Result<Self> {
        // reqwest's TLS wants a process-wide crypto provider even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = url.map_or_else(default_url, str::to_owned);
        let base = if url.contains("://") {
            url
        } else {
            format!("http://{url}")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .context("cannot make an HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, checked: a clear error for a refused connection, a 401, or another status.
    pub async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(reqwest::Method::GET, path).await
    }

    /// `POST path` (no body), checked as [`Client::get`].
    pub async fn post(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(reqwest::Method::POST, path).await
    }

    async fn send(&self, method: reqwest::Method, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!(
                    "no flow API at {} (start a flow with `flow run FILE --api`)",
                    self.base
                )
            } else {
                anyhow::anyhow!("{url}: {e}")
            }
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            anyhow::bail!(
                "{}: the API needs a token (--token or FLOW_API_TOKEN)",
                self.base
            );
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            anyhow::bail!("{url}: {status}: {message}");
        }
        Ok(resp)
    }

    /// `GET path` as JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.get(path).await?;
        let bytes = resp.bytes().await.context("reading the answer")?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{}{path}: not the expected JSON", self.base))
    }
}
