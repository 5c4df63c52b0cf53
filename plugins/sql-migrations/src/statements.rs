//! SQL scripts as statements: split on `;` outside quotes ('...', "..."),
//! dollar quotes ($tag$...$tag$) and comments (-- and /* */), so that a
//! transaction-control statement is found wherever it is written
//! (`COMMIT WORK;`, `END TRANSACTION;`, `...; COMMIT;` on one line) and a
//! word inside a string or a function body is not mistaken for one.

/// The statements of a script, each trimmed, comments removed, empty ones left out.
pub fn split(script: &str) -> Vec<String> {
    let bytes = script.as_bytes();
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &script[i..];
        if rest.starts_with("--") {
            let end = rest.find('\n').map_or(script.len(), |e| i + e);
            current.push(' ');
            i = end;
        } else if rest.starts_with("/*") {
            // Block comments nest in PostgreSQL.
            let mut depth = 0;
            let mut j = i;
            while j < bytes.len() {
                if script[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if script[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            current.push(' ');
            i = j;
        } else if bytes[i] == b'\'' || bytes[i] == b'"' {
            let quote = bytes[i];
            let mut j = i + 1;
            while j < bytes.len() {
                if bytes[j] == quote {
                    // A doubled quote is one quote inside.
                    if bytes.get(j + 1) == Some(&quote) {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            let end = (j + 1).min(bytes.len());
            current.push_str(&script[i..end]);
            i = end;
        } else if let Some(tag) = dollar_tag(rest) {
            let body_start = i + tag.len();
            let end = script[body_start..]
                .find(tag)
                .map_or(script.len(), |e| body_start + e + tag.len());
            current.push_str(&script[i..end]);
            i = end;
        } else if bytes[i] == b';' {
            push(&mut statements, &mut current);
            i += 1;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            current.push(c);
            i += c.len_utf8();
        }
    }
    push(&mut statements, &mut current);
    statements
}

fn push(statements: &mut Vec<String>, current: &mut String) {
    let statement = current.split_whitespace().collect::<Vec<_>>().join(" ");
    if !statement.is_empty() {
        statements.push(statement);
    }
    current.clear();
}

/// `$tag$` or `$$` at the start of `text`.
fn dollar_tag(text: &str) -> Option<&str> {
    let rest = text.strip_prefix('$')?;
    let end = rest.find('$')?;
    let tag = &rest[..end];
    (tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !tag.starts_with(|c: char| c.is_ascii_digit()))
    .then(|| &text[..end + 2])
}

/// Whether a statement begins, ends or abandons a transaction (which would
/// end the one a migration runs in).
pub fn controls_transaction(statement: &str) -> bool {
    let words: Vec<String> = statement
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match word(0) {
        "BEGIN" | "COMMIT" | "END" | "ABORT" => true,
        "START" => word(1) == "TRANSACTION",
        // ROLLBACK TO [SAVEPOINT] stays inside the transaction.
        "ROLLBACK" => {
            let to =
                word(1) == "TO" || (matches!(word(1), "WORK" | "TRANSACTION") && word(2) == "TO");
            !to
        }
        "PREPARE" => word(1) == "TRANSACTION",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controls(script: &str) -> bool {
        split(script).iter().any(|s| controls_transaction(s))
    }

    #[test]
    fn every_way_of_ending_a_transaction_is_found() {
        for script in [
            "COMMIT;",
            "commit work;",
            "END TRANSACTION;",
            "ALTER TABLE t ADD c int; COMMIT;",
            "BEGIN; UPDATE t SET a = 1; END",
            "start transaction isolation level serializable;",
            "ABORT;",
            "ROLLBACK;",
            "ROLLBACK WORK;",
            "PREPARE TRANSACTION 'x';",
            "UPDATE t SET a = 1;\n  -- done\n  COMMIT\n",
        ] {
            assert!(controls(script), "{script}");
        }
    }

    #[test]
    fn words_in_strings_comments_and_bodies_are_not_statements() {
        for script in [
            "INSERT INTO log VALUES ('we COMMIT; later');",
            "-- COMMIT;\nALTER TABLE t ADD c int;",
            "/* BEGIN; /* nested */ COMMIT; */ SELECT 1;",
            "CREATE FUNCTION f() RETURNS void AS $body$ BEGIN PERFORM 1; END; $body$ LANGUAGE plpgsql;",
            "SAVEPOINT a; ROLLBACK TO SAVEPOINT a; ROLLBACK TO a;",
            "CREATE TABLE \"commit\" (id int);",
        ] {
            assert!(!controls(script), "{script}: {:?}", split(script));
        }
        assert_eq!(
            split("SELECT 1; SELECT 'a;b';;  "),
            vec!["SELECT 1", "SELECT 'a;b'"]
        );
    }
}
