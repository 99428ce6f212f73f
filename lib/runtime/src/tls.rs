//! The process-wide rustls crypto provider: reqwest and kube use rustls
//! without choosing one.

/// Installs ring as rustls's crypto provider unless one is installed.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing one is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
