//! A throwaway certificate authority and a server certificate for `127.0.0.1` and
//! `localhost` (rcgen), written as PEM files for airlock, registries and clients.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::PathBuf;
use tempfile::TempDir;

/// PEM files: `ca` signs `cert` (with `key`), valid for 127.0.0.1 and localhost.
pub struct TestCerts {
    /// Holds the files.
    pub dir: TempDir,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl TestCerts {
    /// A fresh CA and server certificate.
    pub fn new() -> TestCerts {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "airlock test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write PEM");
            p
        };
        TestCerts {
            ca: write("ca.crt", ca_cert.pem()),
            cert: write("server.crt", cert.pem()),
            key: write("server.key", key.serialize_pem()),
            dir,
        }
    }

    /// A directory with only `ca.crt`, as `skopeo --src-cert-dir` and Docker's
    /// `certs.d/<host>/` expect.
    pub fn cert_dir(&self) -> TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&self.ca, d.path().join("ca.crt")).expect("copy ca.crt");
        d
    }
}
