//! Plugins are verified before they run: pinned digests and ed25519
//! signatures against the agent's trusted keys.

use rewind_agent::config::PluginConfig;
use rewind_agent::host::{LoadError, PluginHost};
use rewind_agent::signing::{self, SignatureStatus};
use rewind_tests::plugin;
use std::path::{Path, PathBuf};

struct Case {
    _dir: tempfile::TempDir,
    wasm: PathBuf,
    host: PluginHost,
}

/// A copy of the noop fixture in a fresh directory, and a host trusting `trusted`.
fn case(trusted: &[&ed25519_dalek::SigningKey]) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("noop.wasm");
    std::fs::copy(plugin("fixture_noop"), &wasm).unwrap();
    let keys = trusted.iter().map(|k| k.verifying_key()).collect();
    let host = PluginHost::new(&dir.path().join("cache"), keys).unwrap();
    Case {
        _dir: dir,
        wasm,
        host,
    }
}

fn sign(wasm: &Path, key: &ed25519_dalek::SigningKey) {
    let signature = signing::sign(&std::fs::read(wasm).unwrap(), key);
    std::fs::write(
        signing::signature_path(wasm),
        serde_json::to_vec(&signature).unwrap(),
    )
    .unwrap();
}

fn entry(wasm: &Path, allow_unsigned: bool) -> PluginConfig {
    PluginConfig {
        origin: "test".into(),
        name: "noop".into(),
        path: wasm.to_path_buf(),
        sha256: None,
        allow_unsigned,
    }
}

fn refused(result: Result<impl Sized, LoadError>) -> (SignatureStatus, String) {
    match result {
        Err(e @ LoadError::Signature { .. }) => {
            let text = e.to_string();
            let LoadError::Signature { status, .. } = e else {
                unreachable!()
            };
            (status, text)
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("the plugin was accepted"),
    }
}

#[test]
fn a_plugin_signed_by_a_trusted_key_is_accepted() {
    let key = signing::generate_key();
    let case = case(&[&key]);
    sign(&case.wasm, &key);
    let loaded = case
        .host
        .load(&entry(&case.wasm, false))
        .expect("a validly signed plugin loads");
    assert!(loaded.signature.is_valid());
}

#[test]
fn an_unsigned_plugin_is_refused_unless_allowed() {
    let key = signing::generate_key();
    let case = case(&[&key]);
    let (status, text) = refused(case.host.load(&entry(&case.wasm, false)));
    assert_eq!(status, SignatureStatus::Unsigned);
    assert!(
        text.contains("plugin noop: refused") && text.contains("allow_unsigned = true"),
        "{text}"
    );
    let loaded = case
        .host
        .load(&entry(&case.wasm, true))
        .expect("allow_unsigned lets it run");
    assert_eq!(loaded.signature, SignatureStatus::Unsigned);
}

#[test]
fn a_plugin_signed_by_an_unknown_key_is_refused() {
    let trusted = signing::generate_key();
    let stranger = signing::generate_key();
    let case = case(&[&trusted]);
    sign(&case.wasm, &stranger);
    let (status, text) = refused(case.host.load(&entry(&case.wasm, true)));
    assert!(
        matches!(status, SignatureStatus::UnknownKey { .. }),
        "{status:?}"
    );
    assert!(
        text.contains("not among the agent's trusted_keys"),
        "{text}"
    );
}

#[test]
fn a_tampered_plugin_is_refused_even_where_unsigned_plugins_are_allowed() {
    let key = signing::generate_key();
    let case = case(&[&key]);
    sign(&case.wasm, &key);
    let mut bytes = std::fs::read(&case.wasm).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&case.wasm, bytes).unwrap();
    let (status, text) = refused(case.host.load(&entry(&case.wasm, true)));
    assert!(
        matches!(status, SignatureStatus::DigestMismatch { .. }),
        "{status:?}"
    );
    assert!(text.contains("tampered with"), "{text}");
}

#[test]
fn the_signature_of_another_file_is_refused() {
    let key = signing::generate_key();
    let case = case(&[&key]);
    let other = case.wasm.with_file_name("panic.wasm");
    std::fs::copy(plugin("fixture_panic"), &other).unwrap();
    sign(&other, &key);
    std::fs::copy(
        signing::signature_path(&other),
        signing::signature_path(&case.wasm),
    )
    .unwrap();
    let (status, _) = refused(case.host.load(&entry(&case.wasm, false)));
    assert!(
        matches!(status, SignatureStatus::DigestMismatch { .. }),
        "{status:?}"
    );
}

#[test]
fn a_pinned_digest_must_match() {
    let case = case(&[]);
    let mut pinned = entry(&case.wasm, true);
    pinned.sha256 = Some("0".repeat(64));
    let error = match case.host.load(&pinned) {
        Err(e) => e,
        Ok(_) => panic!("a plugin with another digest was accepted"),
    };
    assert!(matches!(error, LoadError::PinMismatch { .. }), "{error}");
    pinned.sha256 = Some(signing::digest(&std::fs::read(&case.wasm).unwrap()));
    case.host.load(&pinned).expect("the pinned digest matches");
}
