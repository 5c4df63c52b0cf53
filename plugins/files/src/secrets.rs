//! Which configuration keys hold secrets, so previews show their values only
//! as hashes.

/// Key patterns treated as secret unless the settings add more.
const DEFAULT_PATTERNS: &[&str] = &[
    "*PASSWORD*",
    "*PASSWD*",
    "*SECRET*",
    "*TOKEN*",
    "*PRIVATE*",
    "*_KEY",
    "*APIKEY*",
    "*CREDENTIAL*",
];

pub struct Matcher {
    patterns: Vec<String>,
}

impl Matcher {
    pub fn new(extra: &[String]) -> Matcher {
        let patterns = DEFAULT_PATTERNS
            .iter()
            .map(|p| p.to_string())
            .chain(extra.iter().cloned())
            .map(|p| p.to_ascii_uppercase())
            .collect();
        Matcher { patterns }
    }

    pub fn is_secret(&self, key: &str) -> bool {
        let key = key.to_ascii_uppercase();
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), key.as_bytes()))
    }

    /// The line with a secret value replaced by a short hash of it. Handles
    /// `KEY=value`, `export KEY=value` and `key: value` lines.
    pub fn mask_line(&self, line: &str) -> String {
        let Some(split) = line.find(['=', ':']) else {
            return line.to_string();
        };
        let (left, rest) = line.split_at(split);
        let key = left
            .trim()
            .trim_start_matches("export ")
            .trim()
            .trim_matches('"');
        if key.is_empty() || key.contains(' ') || !self.is_secret(key) {
            return line.to_string();
        }
        let value = rest[1..].trim();
        if value.is_empty() {
            return line.to_string();
        }
        let hash = rewind_plugin_sdk::sha256_hex(value.as_bytes());
        format!("{left}{}<secret sha256:{}>", &rest[..1], &hash[..12])
    }
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
    fn secret_values_are_hashed_and_others_kept() {
        let m = Matcher::new(&["STRIPE_*".to_string()]);
        assert!(m.is_secret("DATABASE_PASSWORD"));
        assert!(m.is_secret("stripe_live"));
        assert!(!m.is_secret("PORT"));
        let masked = m.mask_line("DATABASE_PASSWORD=hunter2");
        assert!(
            masked.starts_with("DATABASE_PASSWORD=<secret sha256:"),
            "{masked}"
        );
        assert!(!masked.contains("hunter2"));
        assert_eq!(m.mask_line("PORT=8080"), "PORT=8080");
        assert!(!m.mask_line("  api_token: abc").contains("abc"));
        assert!(!m.mask_line("export JWT_SECRET=\"x y\"").contains("x y"));
    }
}
