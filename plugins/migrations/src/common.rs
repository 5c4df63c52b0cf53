//! What the migrations plugins share: whether SQL drops data, and the
//! preview and confirmation that follow from it.

use rewind_plugin_sdk::*;

/// Whether some SQL drops data: a column, a table, a schema or rows.
pub fn drops_data(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(2).any(|w| {
        (w[0] == "DROP" && matches!(w[1], "COLUMN" | "TABLE" | "SCHEMA"))
            || (w[0] == "DELETE" && w[1] == "FROM")
            || (w[0] == "TRUNCATE")
    })
}

/// A change for a migration, with its SQL as the detail.
pub fn change(
    subject: String,
    summary: String,
    sql: String,
    now: u64,
    taken_at: u64,
) -> (Change, Option<u64>) {
    let loses = drops_data(&sql);
    (
        Change {
            subject,
            summary,
            detail: Some(sql),
            risk: if loses {
                Risk::DataLoss
            } else {
                Risk::Downtime
            },
        },
        loses.then(|| now.saturating_sub(taken_at)),
    )
}

pub fn preview(changes: Vec<(Change, Option<u64>)>) -> Preview {
    let window = changes.iter().filter_map(|(_, w)| *w).max();
    let changes: Vec<Change> = changes.into_iter().map(|(c, _)| c).collect();
    Preview {
        risk: max_risk(changes.iter().map(|c| c.risk)),
        changes,
        data_loss_window_seconds: window,
    }
}

pub fn needs_confirmation(
    target: &Target,
    preview: &Preview,
    options: &RestoreOptions,
) -> Result<(), PluginError> {
    if preview.risk == Risk::DataLoss && !options.confirm_data_loss {
        let dropping: Vec<&str> = preview
            .changes
            .iter()
            .filter(|c| c.risk == Risk::DataLoss)
            .map(|c| c.subject.as_str())
            .collect();
        return Err(PluginError::NeedsConfirmation(format!(
            "target {}: {} drop(s) data (a column, table or rows); confirm data loss to run it",
            target.name,
            dropping.join(", ")
        )));
    }
    Ok(())
}
