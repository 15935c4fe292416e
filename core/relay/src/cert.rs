//! The relay's self-signed certificate: generated on first start, kept in the data directory,
//! so its fingerprint (what devices pin) stays the same across restarts.

use std::fs;
use std::io::Write;
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::RelayError;

/// File of the certificate (DER).
pub(crate) const CERT_FILE: &str = "relay-cert.der";
/// File of the certificate's private key (PKCS#8 DER), readable by the owner only.
pub(crate) const KEY_FILE: &str = "relay-key.der";

/// The certificate and its key.
pub(crate) struct Identity {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    pub(crate) fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.cert).into()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Loads a certificate and its key given by the operator (DER files).
pub(crate) fn load_files(cert_path: &Path, key_path: &Path) -> Result<Identity, RelayError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|e| RelayError::Certificate(format!("reading {}: {e}", p.display())))
    };
    let cert = read(cert_path)?;
    let key = zeroize::Zeroizing::new(read(key_path)?);
    if cert.is_empty() || key.is_empty() {
        return Err(RelayError::Certificate(
            "empty certificate or key file".into(),
        ));
    }
    Ok(Identity {
        cert: CertificateDer::from(cert),
        key: PrivatePkcs8KeyDer::from(key.to_vec()),
    })
}

/// Loads the certificate from `dir`, or generates and stores one if there is none.
pub(crate) fn load_or_generate(dir: &Path) -> Result<Identity, RelayError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = fs::read(&cert_path)?;
            let key = zeroize::Zeroizing::new(fs::read(&key_path)?);
            if cert.is_empty() || key.is_empty() {
                return Err(RelayError::Certificate(
                    "empty certificate or key file".into(),
                ));
            }
            Ok(Identity {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key.to_vec()),
            })
        }
        (false, false) => {
            let certified = rcgen::generate_simple_self_signed(vec!["viska-relay.invalid".into()])
                .map_err(|e| RelayError::Certificate(e.to_string()))?;
            let cert = certified.cert.der().to_vec();
            let key = zeroize::Zeroizing::new(certified.signing_key.serialize_der());
            write_new(&key_path, &key, true)?;
            write_new(&cert_path, &cert, false)?;
            tracing::info!("generated a new relay certificate");
            Ok(Identity {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key.to_vec()),
            })
        }
        _ => Err(RelayError::Certificate(format!(
            "only one of {CERT_FILE} and {KEY_FILE} exists in the data directory"
        ))),
    }
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it into place.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), RelayError> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    Ok(())
}
