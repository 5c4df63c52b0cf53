//! Plugin integrity: SHA-256 digests and ed25519 signatures.
//!
//! A plugin `x.wasm` is signed by a detached file `x.wasm.sig` (JSON) that
//! holds the digest of the signed bytes, the signer's public key and an
//! ed25519 signature over a domain-separated message containing the digest.
//! The agent accepts a plugin only when the file's digest equals the signed
//! digest and the signer is one of its trusted keys.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Signed messages start with this, so a plugin signature can never be
/// replayed as a signature of something else.
const DOMAIN: &[u8] = b"rewind-plugin-signature-v1\0";

/// The public half of rewind's published development key
/// (deploy/dev-signing/rewind-dev.pub), which the example configurations
/// trust: an agent that trusts it warns when it starts.
pub const DEVELOPMENT_KEY: &str =
    "5d1ccc3ad701a6d54fa309a275708abaf680ae6c5cb079cc0d9d859b1f6306f6";

/// The lowercase hex SHA-256 of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The detached signature file, `<plugin>.wasm.sig`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub version: u32,
    pub algorithm: String,
    /// `sha256:<hex>` of the signed plugin.
    pub digest: String,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The ed25519 signature, hex.
    pub signature: String,
}

/// What checking a plugin's signature found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum SignatureStatus {
    /// Signed by a trusted key over exactly these bytes.
    Valid { public_key: String },
    /// No signature file beside the plugin.
    Unsigned,
    /// A well-formed signature by a key the agent does not trust.
    UnknownKey { public_key: String },
    /// The signature file is for other bytes (another file, or this file tampered with).
    DigestMismatch { signed: String, actual: String },
    /// The signature does not verify (forged or corrupted).
    BadSignature { reason: String },
    /// The signature file cannot be read or parsed.
    Malformed { reason: String },
}

impl SignatureStatus {
    pub fn is_valid(&self) -> bool {
        matches!(self, SignatureStatus::Valid { .. })
    }
}

impl std::fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureStatus::Valid { public_key } => {
                write!(f, "signed by trusted key {public_key}")
            }
            SignatureStatus::Unsigned => write!(f, "unsigned (no .sig file beside it)"),
            SignatureStatus::UnknownKey { public_key } => {
                write!(
                    f,
                    "signed by key {public_key}, which is not among the agent's trusted_keys"
                )
            }
            SignatureStatus::DigestMismatch { signed, actual } => write!(
                f,
                "the signature is for sha256:{signed} but the file is sha256:{actual} (tampered with, or the signature of another file)"
            ),
            SignatureStatus::BadSignature { reason } => {
                write!(f, "the signature does not verify: {reason}")
            }
            SignatureStatus::Malformed { reason } => {
                write!(f, "the signature file is malformed: {reason}")
            }
        }
    }
}

/// The conventional signature path of a plugin file.
pub fn signature_path(plugin: &Path) -> PathBuf {
    let mut name = plugin.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Parse a public key written as `<64 hex>` or `ed25519:<64 hex>`.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let hex_text = text.trim().trim_start_matches("ed25519:");
    let bytes: [u8; 32] = hex::decode(hex_text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{text}` is not an ed25519 public key (64 hex digits)"))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| format!("`{text}` is not a valid ed25519 key: {e}"))
}

/// Parse a secret key file's contents (64 hex digits).
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "not an ed25519 secret key (64 hex digits)".to_string())?;
    Ok(SigningKey::from_bytes(&bytes))
}

fn message(digest_hex: &str) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(digest_hex.as_bytes());
    message
}

/// Sign plugin bytes.
pub fn sign(bytes: &[u8], key: &SigningKey) -> SignatureFile {
    let digest = digest(bytes);
    let signature = key.sign(&message(&digest));
    SignatureFile {
        version: 1,
        algorithm: "ed25519".into(),
        digest: format!("sha256:{digest}"),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(signature.to_bytes()),
    }
}

/// Check plugin bytes against their signature file (if any) and the trusted keys.
pub fn verify(
    bytes: &[u8],
    signature_file: Option<&[u8]>,
    trusted: &[VerifyingKey],
) -> SignatureStatus {
    let Some(raw) = signature_file else {
        return SignatureStatus::Unsigned;
    };
    let file: SignatureFile = match serde_json::from_slice(raw) {
        Ok(file) => file,
        Err(e) => {
            return SignatureStatus::Malformed {
                reason: e.to_string(),
            };
        }
    };
    if file.version != 1 || file.algorithm != "ed25519" {
        return SignatureStatus::Malformed {
            reason: format!(
                "unsupported version {} / algorithm {}",
                file.version, file.algorithm
            ),
        };
    }
    let actual = digest(bytes);
    let signed = file
        .digest
        .trim_start_matches("sha256:")
        .to_ascii_lowercase();
    if signed != actual {
        return SignatureStatus::DigestMismatch { signed, actual };
    }
    let key = match parse_public_key(&file.public_key) {
        Ok(key) => key,
        Err(reason) => return SignatureStatus::Malformed { reason },
    };
    let public_key = hex::encode(key.as_bytes());
    if !trusted.contains(&key) {
        return SignatureStatus::UnknownKey { public_key };
    }
    let signature = match hex::decode(&file.signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
    {
        Some(signature) => signature,
        None => {
            return SignatureStatus::Malformed {
                reason: "the signature is not 64 hex bytes".into(),
            };
        }
    };
    match key.verify(&message(&actual), &signature) {
        Ok(()) => SignatureStatus::Valid { public_key },
        Err(e) => SignatureStatus::BadSignature {
            reason: e.to_string(),
        },
    }
}

/// A new random signing key.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip_and_refusals() {
        let key = generate_key();
        let other = generate_key();
        let trusted = [key.verifying_key()];
        let plugin = b"\0asm plugin bytes".to_vec();
        let sig = serde_json::to_vec(&sign(&plugin, &key)).unwrap();

        assert!(verify(&plugin, Some(&sig), &trusted).is_valid());
        assert_eq!(verify(&plugin, None, &trusted), SignatureStatus::Unsigned);

        let mut tampered = plugin.clone();
        tampered[3] ^= 1;
        assert!(matches!(
            verify(&tampered, Some(&sig), &trusted),
            SignatureStatus::DigestMismatch { .. }
        ));

        let by_other = serde_json::to_vec(&sign(&plugin, &other)).unwrap();
        assert!(matches!(
            verify(&plugin, Some(&by_other), &trusted),
            SignatureStatus::UnknownKey { .. }
        ));

        // A signature whose digest field was edited to match must still fail.
        let mut forged = sign(b"other file", &key);
        forged.digest = format!("sha256:{}", digest(&plugin));
        let forged = serde_json::to_vec(&forged).unwrap();
        assert!(matches!(
            verify(&plugin, Some(&forged), &trusted),
            SignatureStatus::BadSignature { .. }
        ));

        assert!(matches!(
            verify(&plugin, Some(b"{"), &trusted),
            SignatureStatus::Malformed { .. }
        ));
    }
}
