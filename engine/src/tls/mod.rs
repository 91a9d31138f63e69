//! TLS (wss://) on the engine's own I/O: rustls through its unbuffered (sans-IO) API, so the ring still does
//! every read and write and a connection keeps no TLS buffers of its own while it is idle.
//!
//! What the public side sees: [`TlsServer`] (what [`Config::tls`](crate::Config::tls) holds: a rustls
//! `ServerConfig`, from PEM files with [`TlsServer::from_pem_files`], whose certificate
//! [`TlsServer::reload`] swaps for new connections without touching open ones) and [`ClientTls`] (what a
//! [`ConnectRequest`](crate::ConnectRequest) carries to connect to a wss:// server). `conn.rs` is the
//! per-connection driver the shard calls (`shard/tls.rs`).
//!
//! The crypto provider is *ring* (rustls' `ring` feature), chosen explicitly here rather than through the
//! process-wide default, so another crate enabling aws-lc-rs cannot make the choice ambiguous.

/// One connection's TLS driven without I/O. Public only for the fuzz target (`fuzz/fuzz_targets/tls.rs`);
/// not part of the API.
#[doc(hidden)]
pub mod conn;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The crypto provider every config made here uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS configuration problem: a file that cannot be read or parsed, a key that does not match its
/// certificate, a bad server name.
#[derive(Debug, Clone)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn err(what: impl fmt::Display) -> TlsError {
    TlsError(what.to_string())
}

/// The server side of TLS: a rustls `ServerConfig` shared by every shard. Cheap to clone.
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    /// The certificate store when it came from PEM files (reloadable).
    certs: Option<Arc<PemCert>>,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.certs {
            Some(c) => write!(f, "TlsServer(cert={}, key={})", c.cert_path.display(), c.key_path.display()),
            None => f.write_str("TlsServer(custom ServerConfig)"),
        }
    }
}

impl TlsServer {
    /// TLS 1.3 and 1.2 with the certificate chain in `cert` (PEM, leaf first) and its private key in `key`
    /// (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC). No client certificates, no ALPN (WebSocket needs none).
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<TlsServer, TlsError> {
        let provider = provider();
        let store = Arc::new(PemCert {
            cert_path: cert.as_ref().to_path_buf(),
            key_path: key.as_ref().to_path_buf(),
            current: RwLock::new(load_pem(cert.as_ref(), key.as_ref(), &provider)?),
            provider: provider.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        // Stateless resumption: a returning client (a reconnect storm) skips the certificate signature, and
        // the server keeps nothing per session (the ticket carries the state, encrypted with a key rotated
        // every 6 hours); rustls' default instead keeps the last 256 sessions in memory.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(err)?;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(TlsServer { config: Arc::new(config), certs: Some(store) })
    }

    /// Any rustls `ServerConfig` (client certificates, ALPN, a resolver of your own). [`reload`](Self::reload)
    /// then has nothing to re-read.
    pub fn from_config(config: Arc<ServerConfig>) -> TlsServer {
        TlsServer { config, certs: None }
    }

    /// Re-read the PEM files this was made from: new connections get the new certificate, open ones keep
    /// theirs. On error the old certificate stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some(store) = &self.certs else { return Err(err("TLS config was not made from PEM files")) };
        let fresh = load_pem(&store.cert_path, &store.key_path, &store.provider)?;
        *store.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The rustls config new connections use.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

/// The certificate from PEM files, swapped whole on reload.
struct PemCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PemCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PemCert({})", self.cert_path.display())
    }
}

impl ResolvesServerCert for PemCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn load_pem(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(err(format!("{}: no certificate in the file", cert.display())));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::from_der(chain, der, provider)
        .map_err(|e| err(format!("{} / {}: {e}", cert.display(), key.display())))?;
    Ok(Arc::new(certified))
}

/// The client side of TLS for one target: the rustls `ClientConfig` (shareable by many connections) and the
/// name the server's certificate must carry (also sent as SNI).
#[derive(Clone)]
pub struct ClientTls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTls({})", self.server_name.to_str())
    }
}

impl ClientTls {
    /// The rustls config it connects with.
    pub fn rustls_config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// Any rustls `ClientConfig`, for `server_name` (a DNS name or an IP address).
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<ClientTls, TlsError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| err(format!("server name {server_name:?}: {e}")))?;
        Ok(ClientTls { config, server_name })
    }

    /// Trust the CA certificates in the PEM file `ca` (and nothing else).
    pub fn with_ca_file(ca: impl AsRef<Path>, server_name: &str) -> Result<ClientTls, TlsError> {
        let ca = ca.as_ref();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| err(format!("{}: {e}", ca.display())))? {
            let cert = cert.map_err(|e| err(format!("{}: {e}", ca.display())))?;
            roots.add(cert).map_err(|e| err(format!("{}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(err(format!("{}: no certificate in the file", ca.display())));
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientTls::new(Arc::new(config), server_name)
    }

    /// Accept whatever certificate the server shows (signatures are still checked): for load tests against
    /// self-signed servers, never for anything that matters.
    pub fn insecure(server_name: &str) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        ClientTls::new(Arc::new(config), server_name)
    }
}

/// The verifier behind [`ClientTls::insecure`].
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
