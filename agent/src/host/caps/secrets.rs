//! `rewind:plugin/secrets`: the target's own secrets, read at each call from
//! the file its `secrets` setting names. Every value handed to the plugin is
//! remembered so that the call's log lines and errors can be masked.

use crate::host::bindings::rewind::plugin::secrets::Host;
use crate::host::state::CallState;
use std::collections::BTreeMap;
use std::path::Path;

/// What replaces a secret value in log lines and errors.
pub const MASK: &str = "[secret]";

/// Parse a secrets file: `KEY=VALUE` lines, blank lines and `#` comments;
/// values may be quoted with `"` or `'`.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_string(), unquoted.to_string())
        })
        .collect()
}

pub(crate) fn read(path: &Path) -> BTreeMap<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read the target's secrets: {e}");
            BTreeMap::new()
        }
    }
}

impl CallState {
    /// Replace every secret value handed out in this call by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        let mut masked = text.to_string();
        for value in &self.revealed {
            masked = masked.replace(value.as_str(), MASK);
        }
        masked
    }
}

impl Host for CallState {
    async fn get(&mut self, name: String) -> Option<String> {
        let verdict = self.record("secrets", "get", &name, crate::host::state::Effect::Reads);
        if verdict != crate::host::state::Verdict::Go {
            return None;
        }
        let path = self.target.secrets.as_deref()?;
        let value = read(path).remove(&name)?;
        // Very short values would mask unrelated text; they are still
        // returned, and only values of 4 bytes or more are masked.
        if value.len() >= 4 && !self.revealed.contains(&value) {
            self.revealed.push(value.clone());
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_files_are_key_value_lines() {
        let parsed = super::parse(
            "# etcd\nETCD_USER=root\nexport ETCD_PASSWORD=\"p=ss word\"\n\nTOKEN='abc'\nbroken line\n",
        );
        assert_eq!(parsed["ETCD_USER"], "root");
        assert_eq!(parsed["ETCD_PASSWORD"], "p=ss word");
        assert_eq!(parsed["TOKEN"], "abc");
        assert_eq!(parsed.len(), 3);
    }
}
