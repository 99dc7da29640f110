//! Why a TLS handshake with a broker fails, in words an operator can act on.
//!
//! librdkafka reports a CA it does not trust, an expired certificate and a certificate
//! for another host alike, as "certificate verify failed". While the worker cannot reach
//! its cluster over TLS, it checks each bootstrap broker's certificate itself (rustls,
//! with the same trust store) and logs which of these it is (README "Connecting to your
//! cluster").

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::CertificateError;

/// How long one check may take to connect and shake hands.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `client` speaks TLS to the brokers, and the CA file it trusts ("" for the
/// system bundle, which churnwatch's client settings name `probe`).
fn tls_of(client: &rdkafka::ClientConfig) -> Option<String> {
    let protocol = client.get("security.protocol")?.to_ascii_lowercase();
    if protocol != "ssl" && protocol != "sasl_ssl" {
        return None;
    }
    Some(
        client
            .get("ssl.ca.location")
            .filter(|l| *l != "probe")
            .unwrap_or_default()
            .to_string(),
    )
}

/// The trust store: the CA file, else the Mozilla roots (what a system bundle holds).
fn roots(ca_file: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    }
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("ssl.ca.location: cannot read {ca_file}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("ssl.ca.location: {ca_file}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("ssl.ca.location: {ca_file}: {e}"))?;
    }
    Ok(roots)
}

/// One line per bootstrap broker whose certificate `client` (the settings librdkafka
/// runs with) would refuse, naming the broker and why; empty when TLS is off or every
/// certificate is acceptable (then librdkafka's own message says what else failed).
pub fn explain_failures(client: &rdkafka::ClientConfig) -> Vec<String> {
    let Some(ca_file) = tls_of(client) else {
        return Vec::new();
    };
    let roots = match roots(&ca_file) {
        Ok(r) => Arc::new(r),
        Err(e) => return vec![e],
    };
    let trusted = if ca_file.is_empty() {
        "the system CA bundle".to_string()
    } else {
        format!("ssl.ca.location {ca_file}")
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return Vec::new();
    };
    let config = Arc::new(builder.with_root_certificates(roots).with_no_client_auth());
    client
        .get("bootstrap.servers")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .filter_map(|broker| {
            let cause = check(broker, config.clone())?;
            Some(format!("{broker}: {}", describe(&cause, broker, &trusted)))
        })
        .collect()
}

/// The handshake's certificate error with `broker`, if any.
fn check(broker: &str, config: Arc<rustls::ClientConfig>) -> Option<CertificateError> {
    let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).ok()?;
    let addr = broker.to_socket_addrs().ok()?.next()?;
    let mut sock = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    sock.set_read_timeout(Some(TIMEOUT)).ok()?;
    sock.set_write_timeout(Some(TIMEOUT)).ok()?;
    let mut conn = rustls::ClientConnection::new(config, name).ok()?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            let inner = e.into_inner()?.downcast::<rustls::Error>().ok()?;
            return match *inner {
                rustls::Error::InvalidCertificate(c) => Some(c),
                _ => None,
            };
        }
    }
    None
}

/// What an operator reads for a certificate error.
fn describe(e: &CertificateError, broker: &str, trusted: &str) -> String {
    let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
    match e {
        CertificateError::UnknownIssuer => format!(
            "TLS: the broker's certificate is not signed by a CA this client trusts ({trusted})"
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "TLS: the broker's certificate has expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "TLS: the broker's certificate is not valid yet (check the clocks)".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "TLS: the broker's certificate is not for the host name {host} (hostname mismatch)"
            )
        }
        other => format!("TLS: the broker's certificate was refused: {other:?}"),
    }
}
