//! Credentials masked wherever a value leaves its host: previews, reports,
//! the journal, events, notifications and pages. Two kinds are found in any
//! text: the value of a key that names a secret (`DATABASE_PASSWORD=...`,
//! `"api_token": "..."`, `password=...` inside a connection string) and the
//! password of a URL (`postgresql://user:...@host/db`). A masked value reads
//! `[secret]`, or `[secret <digest>]` with a digest keyed by the caller (the
//! same value gives the same digest within one preview, so a change still
//! shows, and no dictionary finds the value from it). Never a bare hash.
//!
//! The agent, the coordinator and the plugins' SDK share this one crate, so
//! what one masks the others mask alike.

/// What a masked value reads.
pub const MASK: &str = "[secret]";

/// Key patterns (`*` wildcard, case-insensitive) whose values are secret.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "*PASSWORD*",
    "*PASSWD*",
    "PWD",
    "PASS",
    "*_PASS",
    "*SECRET*",
    "*TOKEN*",
    "*PRIVATE*",
    "*_KEY",
    "*APIKEY*",
    "*API-KEY*",
    "*CREDENTIAL*",
    "AUTHORIZATION",
];

/// A keyed digest of a secret value, or None for a plain `[secret]`.
type Digest = Box<dyn Fn(&str) -> Option<String>>;

/// Masks secrets in text.
pub struct Masker {
    patterns: Vec<String>,
    digest: Option<Digest>,
}

impl Default for Masker {
    fn default() -> Self {
        Masker::new(&[])
    }
}

impl Masker {
    /// The default patterns and `extra` ones (e.g. `STRIPE_*`).
    pub fn new(extra: &[String]) -> Masker {
        let patterns = DEFAULT_PATTERNS
            .iter()
            .map(|p| p.to_string())
            .chain(extra.iter().cloned())
            .map(|p| p.to_ascii_uppercase())
            .collect();
        Masker {
            patterns,
            digest: None,
        }
    }

    /// Show masked values as `[secret <digest(value)>]` (`[secret]` where
    /// it gives none); `digest` must be keyed with a secret that does not
    /// leave the host.
    pub fn with_digest(mut self, digest: impl Fn(&str) -> Option<String> + 'static) -> Masker {
        self.digest = Some(Box::new(digest));
        self
    }

    /// Whether a key names a secret.
    pub fn is_secret(&self, key: &str) -> bool {
        let key = key.to_ascii_uppercase();
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), key.as_bytes()))
    }

    fn masked(&self, value: &str) -> String {
        match self.digest.as_ref().and_then(|digest| digest(value)) {
            Some(digest) => format!("[secret {digest}]"),
            None => MASK.to_string(),
        }
    }

    /// `text` with every secret value and URL password masked.
    pub fn mask(&self, text: &str) -> String {
        let mut spans = url_passwords(text);
        spans.extend(self.keyed_values(text));
        if spans.is_empty() {
            return text.to_string();
        }
        spans.sort();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in spans {
            if start < at {
                continue;
            }
            out.push_str(&text[at..start]);
            out.push_str(&self.masked(&text[start..end]));
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// Byte ranges of the values of secret keys: `key=value`, `key: value`,
    /// `"key": "value"`, `export KEY="value"`.
    fn keyed_values(&self, text: &str) -> Vec<(usize, usize)> {
        let bytes = text.as_bytes();
        let mut spans = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if !is_key_byte(bytes[i]) || (i > 0 && is_key_byte(bytes[i - 1])) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && is_key_byte(bytes[i]) {
                i += 1;
            }
            let key = &text[start..i];
            let mut j = i;
            if j < bytes.len() && (bytes[j] == b'"' || bytes[j] == b'\'') {
                j += 1;
            }
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
            let Some(&sep) = bytes.get(j) else { break };
            if !(sep == b'=' || sep == b':') || text[j..].starts_with("://") {
                continue;
            }
            if !self.is_secret(key) {
                continue;
            }
            j += 1;
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
            let (value_start, value_end) = match bytes.get(j) {
                Some(&q) if q == b'"' || q == b'\'' => {
                    let end = text[j + 1..]
                        .find(q as char)
                        .map_or(bytes.len(), |e| j + 1 + e);
                    (j + 1, end)
                }
                _ => {
                    let end = text[j..]
                        .find(|c: char| {
                            c.is_whitespace()
                                || matches!(c, ';' | '&' | ',' | '"' | '\'' | ')' | '}' | ']')
                        })
                        .map_or(bytes.len(), |e| j + e);
                    (j, end)
                }
            };
            // A URL's value keeps its shape: only its password goes.
            let value = &text[value_start..value_end];
            if value_end > value_start && !value.contains("://") {
                spans.push((value_start, value_end));
            }
            i = value_end.max(i);
        }
        spans
    }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Byte ranges of the passwords of `scheme://user:password@host` URLs.
fn url_passwords(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let authority_start = from + found + 3;
        let authority_end = text[authority_start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | ')'))
            .map_or(text.len(), |e| authority_start + e);
        let authority = &text[authority_start..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            spans.push((authority_start + colon + 1, authority_start + at));
        }
        from = authority_end.max(authority_start);
    }
    spans
}

/// `text` masked with the default patterns.
pub fn mask(text: &str) -> String {
    Masker::default().mask(text)
}

/// `*`-wildcard match of a whole text.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_lose_their_values_and_others_keep_them() {
        let m = Masker::new(&["STRIPE_*".to_string()]);
        assert!(m.is_secret("DATABASE_PASSWORD"));
        assert!(m.is_secret("stripe_live"));
        assert!(!m.is_secret("PORT"));
        assert_eq!(
            m.mask("DATABASE_PASSWORD=hunter2"),
            "DATABASE_PASSWORD=[secret]"
        );
        assert_eq!(m.mask("PORT=8080"), "PORT=8080");
        assert_eq!(m.mask("  api_token: abc"), "  api_token: [secret]");
        assert_eq!(
            m.mask("export JWT_SECRET=\"x y\""),
            "export JWT_SECRET=\"[secret]\""
        );
        assert_eq!(
            m.mask(r#"{"stripe_live": "sk_1", "port": 80}"#),
            r#"{"stripe_live": "[secret]", "port": 80}"#
        );
    }

    #[test]
    fn passwords_inside_urls_and_connection_strings_are_masked() {
        let m = Masker::default();
        assert_eq!(
            m.mask("DATABASE_URL=postgresql://sowknow:pw@db:5432/sowknow"),
            "DATABASE_URL=postgresql://sowknow:[secret]@db:5432/sowknow"
        );
        assert_eq!(
            m.mask("-DATABASE_URL=postgres://u:p%40ss@h/db?sslmode=require"),
            "-DATABASE_URL=postgres://u:[secret]@h/db?sslmode=require"
        );
        assert_eq!(
            m.mask("host=db user=app password=hunter2 dbname=x"),
            "host=db user=app password=[secret] dbname=x"
        );
        assert_eq!(
            m.mask("Server=db;User Id=sa;Password=Pa55;Database=x"),
            "Server=db;User Id=sa;Password=[secret];Database=x"
        );
        assert_eq!(
            m.mask("https://api.example.com/v1?token=abc&page=2"),
            "https://api.example.com/v1?token=[secret]&page=2"
        );
        assert_eq!(m.mask("http://host:8080/health"), "http://host:8080/health");
        assert_eq!(
            m.mask("redis://:pw@cache:6379"),
            "redis://:[secret]@cache:6379"
        );
    }

    #[test]
    fn a_keyed_digest_shows_a_change_without_the_value() {
        let m = Masker::default().with_digest(|v| Some(format!("{:x}", v.len() * 7919)));
        let a = m.mask("API_TOKEN=one");
        let b = m.mask("API_TOKEN=other");
        assert_ne!(a, b);
        assert!(
            a.starts_with("API_TOKEN=[secret ") && !a.contains("one"),
            "{a}"
        );
    }
}
