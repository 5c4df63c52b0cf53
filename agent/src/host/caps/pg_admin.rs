//! What `admin = true` lets a plugin do on the `postgres` database: the
//! statements that create, rename, close and drop the granted databases,
//! end their sessions, and read the catalogue about databases. Nothing
//! else: no roles, no settings, no functions, no files, no `COPY`.
//!
//! Each statement is read into words (strings, identifiers, numbers,
//! punctuation; comments skipped) and matched against those forms. Where
//! the words could be read two ways, the statement is refused: a plain
//! string holding a backslash (read differently with
//! `standard_conforming_strings` off), dollar quoting, `U&` escapes.

/// One word of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    /// An unquoted identifier or keyword, in lower case as PostgreSQL
    /// folds it.
    Bare(String),
    /// A quoted identifier, exactly as written.
    Quoted(String),
    /// A string constant's value.
    Str(String),
    Number(String),
    Punct(&'static str),
}

impl Word {
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Word::Bare(w) if w == keyword)
    }

    /// The name this word stands for, quoted or not.
    fn name(&self) -> Option<&str> {
        match self {
            Word::Bare(w) | Word::Quoted(w) => Some(w),
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Word::Bare(w) | Word::Number(w) => w.clone(),
            Word::Quoted(w) => format!("\"{w}\""),
            Word::Str(s) => format!("'{s}'"),
            Word::Punct(p) => (*p).to_string(),
        }
    }
}

const PUNCT: [&str; 14] = [
    "<>", "!=", "<=", ">=", "::", "=", "<", ">", "(", ")", ",", ";", "*", ".",
];

/// Read `sql` into its statements' words.
fn words(sql: &str) -> Result<Vec<Vec<Word>>, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut statements = vec![Vec::new()];
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i = after_comment(&chars, i)?;
        } else if c == '\'' || (matches!(c, 'e' | 'E') && next == Some('\'')) {
            let (value, end) = string(&chars, i)?;
            push(&mut statements, Word::Str(value));
            i = end;
        } else if c == '"' {
            let (name, end) = quoted(&chars, i)?;
            push(&mut statements, Word::Quoted(name));
            i = end;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            if chars.get(i) == Some(&'$') || chars.get(i) == Some(&'&') {
                return Err(format!(
                    "`{}{}`: dollar quoting and escaped names are not among the forms",
                    chars[start..i].iter().collect::<String>(),
                    chars[i]
                ));
            }
            let word: String = chars[start..i].iter().collect();
            push(&mut statements, Word::Bare(word.to_lowercase()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            push(
                &mut statements,
                Word::Number(chars[start..i].iter().collect()),
            );
        } else if let Some(p) = PUNCT.iter().find(|p| {
            p.chars()
                .enumerate()
                .all(|(k, pc)| chars.get(i + k) == Some(&pc))
        }) {
            i += p.len();
            if *p == ";" {
                statements.push(Vec::new());
            } else {
                push(&mut statements, Word::Punct(p));
            }
        } else {
            return Err(format!("`{c}` is not among the forms"));
        }
    }
    statements.retain(|s| !s.is_empty());
    Ok(statements)
}

/// Where a `/* ... */` comment (nested ones included) starting at `i` ends.
fn after_comment(chars: &[char], mut i: usize) -> Result<usize, String> {
    let mut depth = 0usize;
    loop {
        match (chars.get(i), chars.get(i + 1)) {
            (Some('/'), Some('*')) => {
                depth += 1;
                i += 2;
            }
            (Some('*'), Some('/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            (Some(_), _) => i += 1,
            (None, _) => return Err("a comment is not closed".into()),
        }
    }
}

/// The value of a `'...'` or `E'...'` string starting at `i`, and where it
/// ends. A backslash in a plain string is refused: it reads differently
/// with `standard_conforming_strings` off.
fn string(chars: &[char], mut i: usize) -> Result<(String, usize), String> {
    let escapes = chars[i] != '\'';
    i += if escapes { 2 } else { 1 };
    let mut value = String::new();
    loop {
        match (chars.get(i), chars.get(i + 1)) {
            (Some('\''), Some('\'')) => {
                value.push('\'');
                i += 2;
            }
            (Some('\''), _) => return Ok((value, i + 1)),
            (Some('\\'), Some(&escaped)) if escapes => {
                if !matches!(escaped, '\\' | '\'') {
                    return Err(format!("the escape \\{escaped} in a string"));
                }
                value.push(escaped);
                i += 2;
            }
            (Some('\\'), _) => {
                return Err("a backslash in a plain string (write it as E'...' with \\\\)".into());
            }
            (Some(&ch), _) => {
                value.push(ch);
                i += 1;
            }
            (None, _) => return Err("a string is not closed".into()),
        }
    }
}

/// The name of a `"..."` identifier starting at `i`, and where it ends.
fn quoted(chars: &[char], mut i: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    i += 1;
    loop {
        match (chars.get(i), chars.get(i + 1)) {
            (Some('"'), Some('"')) => {
                name.push('"');
                i += 2;
            }
            (Some('"'), _) => return Ok((name, i + 1)),
            (Some(&ch), _) => {
                name.push(ch);
                i += 1;
            }
            (None, _) => return Err("a quoted name is not closed".into()),
        }
    }
}

fn push(statements: &mut [Vec<Word>], word: Word) {
    statements
        .last_mut()
        .expect("one statement at least")
        .push(word);
}

/// The words a catalogue query may use besides strings and numbers.
const SELECT_WORDS: &[&str] = &[
    // Keywords.
    "select",
    "from",
    "where",
    "and",
    "or",
    "not",
    "order",
    "by",
    "asc",
    "desc",
    "limit",
    "offset",
    "as",
    "is",
    "null",
    "true",
    "false",
    "in",
    "like",
    "distinct",
    "group",
    "having",
    // Types for casts.
    "text",
    "int",
    "integer",
    "bigint",
    "oid",
    "name",
    "boolean",
    // The catalogue about databases and their sessions.
    "pg_database",
    "pg_stat_activity",
    "datname",
    "datdba",
    "encoding",
    "datcollate",
    "datctype",
    "datallowconn",
    "datconnlimit",
    "datistemplate",
    "pid",
    "usename",
    "application_name",
    "state",
    "backend_type",
    // Functions without effects beyond reading that catalogue.
    "pg_database_size",
    "pg_get_userbyid",
    "pg_encoding_to_char",
    "starts_with",
    "pg_backend_pid",
    "pg_sleep",
    "count",
    "max",
    "min",
    "lower",
    "upper",
    "coalesce",
    "length",
];

/// Check every statement of `sql` against the forms; `granted` says
/// whether a database name is one the grant lists.
pub fn check(sql: &str, granted: &dyn Fn(&str) -> bool) -> Result<(), String> {
    let statements = words(sql)?;
    for statement in &statements {
        check_statement(statement, granted).map_err(|why| {
            let text: Vec<String> = statement.iter().take(12).map(Word::text).collect();
            format!("`{}`: {why}", text.join(" "))
        })?;
    }
    Ok(())
}

fn check_statement(words: &[Word], granted: &dyn Fn(&str) -> bool) -> Result<(), String> {
    let database = |word: Option<&Word>| -> Result<(), String> {
        let name = word
            .and_then(Word::name)
            .ok_or("a database name is missing")?;
        if granted(name) {
            Ok(())
        } else {
            Err(format!("database {name} is not granted"))
        }
    };
    let first = words.first().and_then(Word::name).unwrap_or_default();
    let keywords_only =
        |allowed: &[&str]| words[1..].iter().all(|w| allowed.iter().any(|k| w.is(k)));
    match first {
        "begin" | "commit" | "rollback" | "end" if keywords_only(&["work", "transaction"]) => {
            Ok(())
        }
        "create" if words.get(1).is_some_and(|w| w.is("database")) => {
            database(words.get(2))?;
            create_options(&words[3..], granted)
        }
        "drop" if words.get(1).is_some_and(|w| w.is("database")) => {
            let mut rest = &words[2..];
            if rest.len() >= 2 && rest[0].is("if") && rest[1].is("exists") {
                rest = &rest[2..];
            }
            database(rest.first())?;
            match &rest[1..] {
                [] => Ok(()),
                [w, Word::Punct("("), f, Word::Punct(")")] if w.is("with") && f.is("force") => {
                    Ok(())
                }
                _ => Err("DROP DATABASE takes a name and at most WITH (FORCE)".into()),
            }
        }
        "alter" if words.get(1).is_some_and(|w| w.is("database")) => {
            database(words.get(2))?;
            let mut rest = &words[3..];
            if rest.first().is_some_and(|w| w.is("with")) {
                rest = &rest[1..];
            }
            match rest {
                [r, t, _] if r.is("rename") && t.is("to") => database(rest.get(2)),
                [a, v] if a.is("allow_connections") && (v.is("true") || v.is("false")) => Ok(()),
                [c, l, Word::Number(_)] if c.is("connection") && l.is("limit") => Ok(()),
                _ => Err(
                    "ALTER DATABASE may rename, allow or refuse connections, or set a connection \
                     limit"
                        .into(),
                ),
            }
        }
        "select" => check_select(words, granted),
        "" => Err("not a statement".into()),
        _ => Err(format!("{} is not among the forms", first.to_uppercase())),
    }
    .map_err(|why| {
        format!(
            "{why}. With admin = true, the postgres database takes CREATE, ALTER (rename, \
             connections) and DROP DATABASE of the granted databases, ending their sessions, \
             transactions and reads of pg_database and pg_stat_activity"
        )
    })
}

/// `CREATE DATABASE name`'s options: a template that is a granted
/// database or a `template0`/`template1`, and settings of plain values.
fn create_options(words: &[Word], granted: &dyn Fn(&str) -> bool) -> Result<(), String> {
    let mut rest = words;
    if rest.first().is_some_and(|w| w.is("with")) {
        rest = &rest[1..];
    }
    while let Some(option) = rest.first() {
        let name = option.name().ok_or("an option is missing its name")?;
        rest = &rest[1..];
        if rest.first() == Some(&Word::Punct("=")) {
            rest = &rest[1..];
        }
        let value = rest.first().ok_or(format!("{name} has no value"))?;
        rest = &rest[1..];
        match name {
            "template" => {
                let template = value.name().ok_or("TEMPLATE takes a name")?;
                if !matches!(template, "template0" | "template1") && !granted(template) {
                    return Err(format!("template {template} is not granted"));
                }
            }
            "owner" | "encoding" | "lc_collate" | "lc_ctype" | "locale" | "strategy" => {
                if matches!(value, Word::Punct(_)) {
                    return Err(format!("{name} takes a value"));
                }
            }
            _ => {
                return Err(format!(
                    "CREATE DATABASE's option {name} is not among the forms"
                ));
            }
        }
    }
    Ok(())
}

fn check_select(words: &[Word], granted: &dyn Fn(&str) -> bool) -> Result<(), String> {
    // Ending a database's sessions: this one form only.
    if words.iter().any(|w| w.is("pg_terminate_backend")) {
        use Word::Punct as P;
        let b = |w: &str| Word::Bare(w.into());
        let head = [
            b("select"),
            b("pg_terminate_backend"),
            P("("),
            b("pid"),
            P(")"),
            b("from"),
            b("pg_stat_activity"),
            b("where"),
            b("datname"),
            P("="),
        ];
        let tail = [
            b("and"),
            b("pid"),
            P("<>"),
            b("pg_backend_pid"),
            P("("),
            P(")"),
        ];
        return match words.strip_prefix(&head[..]) {
            Some([Word::Str(name), rest @ ..]) if rest.is_empty() || rest == tail => {
                if granted(name) {
                    Ok(())
                } else {
                    Err(format!("database {name} is not granted"))
                }
            }
            _ => Err(
                "sessions are ended only with `SELECT pg_terminate_backend(pid) FROM \
                 pg_stat_activity WHERE datname = '<granted>' [AND pid <> pg_backend_pid()]`"
                    .into(),
            ),
        };
    }
    for word in words {
        match word {
            Word::Bare(w) if !SELECT_WORDS.contains(&w.as_str()) => {
                return Err(format!(
                    "`{w}` is not among the words a catalogue read may use"
                ));
            }
            Word::Quoted(w) => {
                return Err(format!("the quoted name \"{w}\" is not among the forms"));
            }
            Word::Punct(".") => return Err("qualified names are not among the forms".into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    fn granted(name: &str) -> bool {
        name == "shop" || name.starts_with("shop_rewind_")
    }

    #[track_caller]
    fn allowed(sql: &str) {
        if let Err(e) = check(sql, &granted) {
            panic!("{sql}: {e}");
        }
    }

    #[track_caller]
    fn refused(sql: &str, because: &str) {
        match check(sql, &granted) {
            Ok(()) => panic!("{sql} was allowed"),
            Err(e) => assert!(e.contains(because), "{sql}: {e}"),
        }
    }

    #[test]
    fn what_pg_restore_sends_is_allowed() {
        allowed("SELECT pg_database_size('shop')");
        allowed("SELECT oid::text FROM pg_database WHERE datname = 'shop'");
        allowed(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, \
             datctype FROM pg_database WHERE datname = 'shop'",
        );
        allowed(
            "CREATE DATABASE \"shop_rewind_new_1\" TEMPLATE template0 OWNER \"app\" ENCODING \
             'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'",
        );
        allowed("DROP DATABASE IF EXISTS \"shop_rewind_new_1\"");
        allowed("ALTER DATABASE \"shop\" ALLOW_CONNECTIONS false");
        allowed(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'shop' AND \
             pid <> pg_backend_pid(); BEGIN; ALTER DATABASE \"shop\" RENAME TO \
             \"shop_rewind_old_1\"; ALTER DATABASE \"shop_rewind_new_1\" RENAME TO \"shop\"; \
             COMMIT;",
        );
        allowed("ROLLBACK");
        allowed("SELECT pg_sleep(0.1)");
        allowed(
            "SELECT datname FROM pg_database WHERE starts_with(datname, 'shop_rewind_old_') \
             ORDER BY datname DESC",
        );
        allowed("SELECT datname FROM pg_database WHERE datname = E'it''s \\\\ here' -- a note");
    }

    #[test]
    fn anything_else_is_refused_naming_why() {
        refused(
            "ALTER DATABASE other RENAME TO shop_rewind_x",
            "database other is not granted",
        );
        refused(
            "ALTER DATABASE shop RENAME TO other",
            "database other is not granted",
        );
        refused(
            "DROP DATABASE customers",
            "database customers is not granted",
        );
        refused(
            "CREATE DATABASE shop_rewind_x TEMPLATE customers",
            "template customers",
        );
        refused(
            "CREATE ROLE boss SUPERUSER",
            "CREATE is not among the forms",
        );
        refused(
            "ALTER ROLE rewind SUPERUSER",
            "ALTER is not among the forms",
        );
        refused(
            "ALTER DATABASE shop OWNER TO boss",
            "ALTER DATABASE may rename",
        );
        refused(
            "ALTER SYSTEM SET archive_command = 'x'",
            "ALTER is not among",
        );
        refused(
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "COPY is not among the forms",
        );
        refused("DO $$BEGIN PERFORM 1; END$$", "`$` is not among");
        refused("DO 'BEGIN PERFORM 1; END'", "DO is not among");
        refused("SELECT pg_read_file('/etc/passwd')", "`pg_read_file`");
        refused(
            "SELECT pg_catalog.pg_read_file('/etc/passwd')",
            "`pg_catalog`",
        );
        refused("SELECT \"pg_read_file\"('/etc/passwd')", "quoted name");
        refused(
            "SELECT set_config('log_statement', 'all', false)",
            "`set_config`",
        );
        refused("SELECT datname INTO stolen FROM pg_database", "`into`");
        refused("SELECT 1; SET ROLE postgres", "SET is not among");
        refused(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'shop' OR true",
            "sessions are ended only with",
        );
        refused(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'other'",
            "database other is not granted",
        );
        refused(
            "SELECT 'a\\' ; DROP DATABASE x; --'",
            "backslash in a plain string",
        );
        refused("SELECT U&'\\0041'", "escaped names");
        refused("SELECT $q$x$q$", "`$` is not among");
        refused("SELECT 1 /* open", "comment is not closed");
    }
}
