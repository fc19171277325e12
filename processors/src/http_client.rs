//! The HTTP client the processors share (`http_poll`, `influxdb_sink`, and `s3_sink` through
//! `object_store`).
//!
//! reqwest is built with rustls but without a built-in crypto provider (its default, aws-lc-rs,
//! is a long C build); [`install_crypto_provider`] makes `ring` the process default once, before
//! any client is made. Servers are verified against the system's trusted roots (reqwest's
//! platform verifier).

use std::time::Duration;

/// Make `ring` rustls's process-wide crypto provider, unless one already is.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: that one is used, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The system's trusted root certificates (for the MQTT and HTTP clients' rustls configs).
/// A root rustls cannot parse is skipped, as browsers do.
pub(crate) fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// A client builder with the crypto provider installed and this per-request timeout.
pub(crate) fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().timeout(timeout)
}

/// A client with this per-request timeout (and at most 10 s to connect).
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    builder(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
}
