//! TLS for the sidecar's API (`serve --tls-cert/--tls-key`) and for the CLI talking to it
//! (`--ca`), through rustls with the ring provider kube already builds (no second crypto
//! library, no cmake).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest certificate or key file read: PEM chains are a few KB.
const MAX_PEM: u64 = 1 << 20;

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let what = format!("{flag} {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| format!("{what}: {e}"))?;
    if meta.len() > MAX_PEM {
        return Err(format!("{what}: larger than {MAX_PEM} bytes"));
    }
    std::fs::read(path).map_err(|e| format!("{what}: {e}"))
}

fn certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration from a PEM certificate chain and its PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certs("--tls-cert", cert)?;
    let key_pem = read_pem("--tls-key", key)?;
    // The key's bytes never appear in an error: only the file's name and the kind of fault.
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "--tls-cert {} / --tls-key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// A client configuration trusting the certificates in `ca` (PEM) only.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("--ca", ca)? {
        roots
            .add(c)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
