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

/// The agent configurations shipped in deploy/ (copied with their plugins'
/// paths pointed at `plugins`).
fn shipped_configs(plugins: &Path, into: &Path) -> Vec<PathBuf> {
    let root = rewind_tests::root();
    let mut configs = vec![root.join("deploy/agent.example.toml")];
    for example in std::fs::read_dir(root.join("deploy/examples"))
        .unwrap()
        .flatten()
    {
        if !example.path().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(example.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with("agent") && name.ends_with(".toml") {
                configs.push(file.path());
            }
        }
    }
    configs.sort();
    configs
        .into_iter()
        .enumerate()
        .map(|(i, config)| {
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("/usr/lib/rewind/plugins", &plugins.display().to_string());
            let copy = into.join(format!(
                "{i}-{}",
                config.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&copy, text).unwrap();
            copy
        })
        .collect()
}

/// `plugins/build`, as a user runs it, into `out`.
fn build_plugins(out: &Path, sign_dev: bool) {
    let mut build = std::process::Command::new(rewind_tests::root().join("plugins/build"));
    if sign_dev {
        build.arg("--sign-dev");
    }
    let status = build
        .env("PLUGINS_OUT", out)
        .env("REWIND_AGENT", rewind_tests::binary("rewind-agent"))
        .status()
        .unwrap();
    assert!(status.success(), "plugins/build failed");
}

/// The example configurations start as shipped: every plugin they declare
/// loads, signed by the development key they trust (`plugins/build
/// --sign-dev`); unsigned, the refusal names the file and line and both
/// ways out.
#[test]
fn the_shipped_examples_load_their_plugins_signed_by_the_development_key() {
    let dir = tempfile::tempdir().unwrap();
    let (signed, unsigned) = (dir.path().join("signed"), dir.path().join("unsigned"));
    build_plugins(&signed, true);
    build_plugins(&unsigned, false);
    let configs = shipped_configs(&signed, dir.path());
    assert!(configs.len() >= 9, "{configs:?}");
    for config in &configs {
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
        let trusted: Vec<_> = table["agent"]["trusted_keys"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no trusted_keys", config.display()))
            .iter()
            .map(|k| signing::parse_public_key(k.as_str().unwrap()).unwrap())
            .collect();
        assert!(
            trusted
                .iter()
                .any(|k| hex::encode(k.as_bytes()) == signing::DEVELOPMENT_KEY),
            "{} trusts the development key",
            config.display()
        );
        let host = PluginHost::new(&dir.path().join("cache"), trusted).unwrap();
        let mut loaded_plugins = std::collections::BTreeMap::new();
        for (name, plugin) in table["plugins"].as_table().unwrap() {
            let entry = PluginConfig {
                origin: config.display().to_string(),
                name: name.clone(),
                path: PathBuf::from(plugin["path"].as_str().unwrap()),
                sha256: None,
                allow_unsigned: plugin
                    .get("allow_unsigned")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            };
            let loaded = host
                .load(&entry)
                .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
            assert!(loaded.signature.is_valid(), "{}: {name}", config.display());
            loaded_plugins.insert(name.clone(), loaded);
        }
        // Each target grants every capability its plugin imports (else
        // the agent refuses it when it starts).
        for (target, spec) in table["targets"].as_table().unwrap() {
            let plugin = &loaded_plugins[spec["plugin"].as_str().unwrap()];
            let grant = spec
                .get("grant")
                .and_then(|g| g.as_table())
                .cloned()
                .unwrap_or_default();
            for import in &plugin.imports {
                let needs = match rewind_agent::host::imports_capability(import) {
                    rewind_agent::host::Capability::Process => "process",
                    rewind_agent::host::Capability::Docker => "docker",
                    rewind_agent::host::Capability::Http => "http",
                    rewind_agent::host::Capability::Postgres => "postgres",
                    _ => continue,
                };
                assert!(
                    grant.contains_key(needs),
                    "{}: target {target} does not grant `{needs}`, which its plugin imports ({import})",
                    config.display()
                );
            }
        }
    }

    // The same configuration with the plugins as built, unsigned.
    let example = &shipped_configs(&unsigned, &dir.path().join("unsigned"))[0];
    let config = rewind_agent::config::load(example).unwrap();
    let host = PluginHost::new(&dir.path().join("cache"), config.trusted_keys.clone()).unwrap();
    let plugin = config.plugins.values().next().unwrap();
    let (status, text) = refused(host.load(plugin));
    assert_eq!(status, SignatureStatus::Unsigned);
    let line = format!("{}:", example.display());
    assert!(text.starts_with(&line), "names the file and line: {text}");
    assert!(
        text.contains("plugins/build --sign-dev") && text.contains("allow_unsigned = true"),
        "{text}"
    );
}

/// Compiled plugins are native code: the agent loads them only from a
/// directory of its own user that nobody else may write, and `plugin
/// inspect` without a configuration compiles into a private directory of
/// its own, never a fixed one under the shared temporary directory.
#[test]
fn compiled_plugins_are_loaded_only_from_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared-cache");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let error = PluginHost::new(&shared, Vec::new())
        .err()
        .expect("a cache others can write is refused");
    let text = error.to_string();
    assert!(
        text.contains("shared-cache") && text.contains("mode 777"),
        "{text}"
    );

    let fixed = std::env::temp_dir().join("rewind-agent-inspect-cache");
    let _ = std::fs::remove_dir_all(&fixed);
    let output = std::process::Command::new(rewind_tests::binary("rewind-agent"))
        .args(["plugin", "inspect"])
        .arg(plugin("fixture_noop"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!fixed.exists(), "inspect compiled into {}", fixed.display());
}
