//! Previews of a file change: a unified diff with secret values masked.

use rewind_plugin_sdk::mask::Masker;
use similar::TextDiff;

/// A one-line summary and a detail (diff) of changing `current` to `wanted`.
pub fn describe(
    path: &str,
    current: Option<&[u8]>,
    wanted: Option<&[u8]>,
    secrets: &Masker,
) -> (String, String) {
    let summary = match (current, wanted) {
        (None, Some(_)) => "would be recreated".to_string(),
        (Some(_), None) => "would be removed (absent in the snapshot)".to_string(),
        _ => "would be changed".to_string(),
    };
    let (Some(current_text), Some(wanted_text)) = (
        text_or_empty(as_text(current)),
        text_or_empty(as_text(wanted)),
    ) else {
        let hash = |b: Option<&[u8]>| {
            b.map_or("absent".to_string(), |b| {
                format!("sha256 {}", rewind_plugin_sdk::sha256_hex(b))
            })
        };
        return (
            format!("{summary} (binary)"),
            format!("binary file: {} -> {}", hash(current), hash(wanted)),
        );
    };
    let mask = |text: &str| {
        text.lines()
            .map(|l| secrets.mask(l) + "\n")
            .collect::<String>()
    };
    let (before, after) = (mask(current_text), mask(wanted_text));
    let diff = TextDiff::from_lines(&before, &after);
    let (mut added, mut removed) = (0, 0);
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => added += 1,
            similar::ChangeTag::Delete => removed += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    let detail = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("{path} (now)"), &format!("{path} (snapshot)"))
        .to_string();
    (format!("{summary}: +{added} -{removed} lines"), detail)
}

fn as_text(bytes: Option<&[u8]>) -> Option<Option<&str>> {
    bytes.map(|b| std::str::from_utf8(b).ok())
}

/// Text for a present UTF-8 file, "" for an absent one, None for binary.
fn text_or_empty(text: Option<Option<&str>>) -> Option<&str> {
    match text {
        None => Some(""),
        Some(inner) => inner,
    }
}
