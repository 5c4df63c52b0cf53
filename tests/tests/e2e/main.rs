//! rewind's end-to-end tests, in one test binary so that the suite links
//! once: a module per area. Filter by module, e.g.
//! `cargo test -p rewind-tests compose::`.

mod cdn_bucket;
mod cdn_plugin;
mod cdn_providers;
mod compose;
mod conformance;
mod drills;
mod errors;
mod etcd_plugin;
mod fault_sweep;
mod files_plugin;
mod forgery;
mod ha;
mod hooks;
mod hostile;
mod journal_postgres;
mod json_output;
mod metrics;
mod migrations;
mod notifications;
mod pg_restore;
mod postgres_capability;
mod python_plugin;
mod refusals;
mod release_dir;
mod restored;
mod rollback;
mod runbooks;
mod sandbox;
mod scaffold;
mod signatures;
mod testkit;
mod web_ui;
