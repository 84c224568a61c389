//! HTTPS for the listener: a rustls acceptor from PEM files, offering HTTP/2 and HTTP/1.1 by
//! ALPN.

use crate::config::TlsConfig;
use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The acceptor for `[server.tls]`, or an error naming the file that is wrong.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .with_context(|| format!("server.tls.cert: cannot read {}", config.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "server.tls.cert: {} is not a PEM certificate chain",
                config.cert.display()
            )
        })?;
    anyhow::ensure!(
        !certs.is_empty(),
        "server.tls.cert: {} holds no certificate",
        config.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&config.key).with_context(|| {
        format!(
            "server.tls.key: {} holds no PEM private key",
            config.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls: the certificate and key do not fit together")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}
