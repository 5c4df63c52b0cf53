//! A small Alembic project for the migrations plugin's tests: four
//! revisions on a real PostgreSQL (a1 creates `orders`, b2 adds
//! `orders.note`, c3 creates `audit`, d4 adds `orders.priority`), with one
//! transaction per migration, as many projects configure it.

use crate::postgres::PgServer;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct AlembicProject {
    pub dir: PathBuf,
}

const REVISIONS: &[(&str, Option<&str>, &str, &str)] = &[
    (
        "a1",
        None,
        "op.create_table('orders', sa.Column('id', sa.Integer, primary_key=True), sa.Column('item', sa.Text, nullable=False))",
        "op.drop_table('orders')",
    ),
    (
        "b2",
        Some("a1"),
        "op.add_column('orders', sa.Column('note', sa.Text))",
        "op.drop_column('orders', 'note')",
    ),
    (
        "c3",
        Some("b2"),
        "op.create_table('audit', sa.Column('id', sa.Integer, primary_key=True), sa.Column('what', sa.Text))",
        "op.drop_table('audit')",
    ),
    (
        "d4",
        Some("c3"),
        "op.add_column('orders', sa.Column('priority', sa.Integer, server_default='0'))",
        "op.drop_column('orders', 'priority')",
    ),
];

impl AlembicProject {
    /// Write the project into `dir` for database `database` of `pg`.
    pub fn create(dir: &Path, pg: &PgServer, database: &str) -> AlembicProject {
        std::fs::create_dir_all(dir.join("migrations/versions")).unwrap();
        std::fs::write(
            dir.join("alembic.ini"),
            format!(
                "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = postgresql+psycopg2://rewind@/{database}?host={}&port=5432\n\n\
                 [loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\nkeys = generic\n\
                 [logger_root]\nlevel = WARN\nhandlers = console\n[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\nlevel = NOTSET\nformatter = generic\n\
                 [formatter_generic]\nformat = %(levelname)s %(message)s\n",
                pg.socket_dir().display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("migrations/env.py"),
            r#"from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config

if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("migrations/script.py.mako"),
            "\"\"\"${message}\"\"\"\n",
        )
        .unwrap();
        for (rev, down, upgrade, downgrade) in REVISIONS {
            std::fs::write(
                dir.join(format!("migrations/versions/{rev}.py")),
                format!(
                    "from alembic import op\nimport sqlalchemy as sa\n\nrevision = '{rev}'\ndown_revision = {}\nbranch_labels = None\ndepends_on = None\n\n\
                     def upgrade():\n    {upgrade}\n\n\ndef downgrade():\n    {downgrade}\n",
                    down.map_or("None".to_string(), |d| format!("'{d}'"))
                ),
            )
            .unwrap();
        }
        AlembicProject {
            dir: dir.to_path_buf(),
        }
    }

    /// Run `alembic <args>` in the project, as an operator would.
    pub fn run(&self, args: &[&str]) -> String {
        let output = Command::new("alembic")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("alembic is not installed: run scripts/install-deps");
        assert!(
            output.status.success(),
            "alembic {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The grant that lets the migrations plugin run alembic here.
    pub fn grant(&self) -> String {
        format!(
            r#"grant = {{ process = [{{ program = "alembic", args = [["-c", "alembic.ini", "current"], ["-c", "alembic.ini", "downgrade", "*", "--sql"], ["-c", "alembic.ini", "upgrade", "*", "--sql"], ["-c", "alembic.ini", "downgrade", "*"], ["-c", "alembic.ini", "upgrade", "*"]] }}], process_dir = "{}" }}"#,
            self.dir.display()
        )
    }
}
