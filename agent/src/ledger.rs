//! The agent's step ledger: a record per step, written durably before a
//! step acts and after it finishes. A step delivered twice returns its
//! recorded result instead of acting twice; a step that was running when
//! the agent died is found at the next start and settled without acting
//! again (see `daemon::recover`).
//!
//! The records are appended to one file, `<state_dir>/ledger/log`, each
//! followed by an fdatasync: one write and one sync per record. What the
//! file says is kept in memory, so reading the ledger costs no I/O. The
//! file is rewritten without what is no longer needed (results older than
//! a week, records a later one replaced) when the agent starts and when it
//! has grown well past what it holds.
//!
//! Each record is framed as its body's length and CRC-32, then the body: a
//! kind (running or done), the time it was written, and the step's
//! request or result. It fails closed:
//! - a last record cut short (the agent died while writing it) was never
//!   synced, so its step never acted on it: it is dropped;
//! - a damaged record anywhere else could have been any step's: the file
//!   is kept aside as `log.<time>.damaged`, and while such a file is there
//!   no step acts that the ledger does not hold as done; each is settled by
//!   the plugin's verify instead. An operator removes the file once they
//!   have checked the agent's targets.
//!
//! The file is opened for each record rather than held open: a host that
//! runs many agents (a test fleet) would otherwise need a descriptor per
//! agent for it, beside each agent's connection.

use prost::Message;
use rewind_proto::v1::{StepRequest, StepResult};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Finished records older than this are pruned at start.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// A snapshot's result (up to 16 MiB of data) is kept this long: long past
/// the coordinator's wait for it (15 min), which is the only time the same
/// step can be delivered again.
const KEEP_SNAPSHOT: Duration = Duration::from_secs(3600);

fn carries_snapshot(result: &StepResult) -> bool {
    matches!(
        result.outcome,
        Some(rewind_proto::v1::step_result::Outcome::Captured(_))
    )
}
/// At most this many finished results are re-announced to the coordinator.
const ANNOUNCE: usize = 1000;
/// The file is rewritten when it holds at least this many more records than it needs.
const SLACK: usize = if cfg!(test) { 16 } else { 10_000 };
/// A record's frame: the body's length and its CRC-32, little-endian.
const FRAME: usize = 8;
/// A body's head, before the request or result: its kind and time.
const HEAD: usize = 9;
/// A body larger than this is not a record (a damaged length).
const MAX_BODY: usize = 64 << 20;

const RUNNING: u8 = 1;
const DONE: u8 = 2;

#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

/// What the ledger says about a step that was just delivered.
pub enum Begin {
    /// Never seen (or a new attempt): it is now recorded as running; act.
    Act,
    /// Already finished: here is its result; do not act again.
    Done(StepResult),
    /// It may have acted already (a previous agent process was running it,
    /// or the ledger is damaged): settle it without acting again.
    Unsure(String),
}

struct Inner {
    dir: PathBuf,
    /// The file's length after its last whole record.
    len: u64,
    /// Records in the file.
    records: usize,
    steps: HashMap<String, Entry>,
    /// Records the steps need (a running record and a result each at most).
    live: usize,
    /// Set while a damaged log is kept aside: why no unknown step may act.
    damaged: Option<String>,
    /// A write failed and its part could not be cut off: nothing more is
    /// written until the agent restarts (and drops that part as a torn tail).
    broken: Option<String>,
}

#[derive(Default)]
struct Entry {
    running: Option<StepRequest>,
    done: Option<(StepResult, u64)>,
}

impl Entry {
    fn live(&self) -> usize {
        usize::from(self.running.is_some()) + usize::from(self.done.is_some())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn frame(kind: u8, at_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(HEAD + payload.len());
    body.push(kind);
    body.extend_from_slice(&at_ms.to_le_bytes());
    body.extend_from_slice(payload);
    let mut record = Vec::with_capacity(FRAME + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What reading a log found: each record's kind, time and request or result.
struct Parsed<'a> {
    records: Vec<(u8, u64, &'a [u8])>,
    /// Where the whole records end.
    end: u64,
    /// A damaged record (not a torn last one): where, and what.
    damage: Option<String>,
}

fn parse(bytes: &[u8]) -> Parsed<'_> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME {
            break; // a torn frame: the last write did not complete
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
        if !(HEAD..=MAX_BODY).contains(&len) {
            return Parsed {
                records,
                end: at as u64,
                damage: Some(format!(
                    "a record at byte {at} has an impossible length {len}"
                )),
            };
        }
        if rest.len() < FRAME + len {
            break; // torn: the last write did not complete
        }
        let body = &rest[FRAME..FRAME + len];
        let last = at + FRAME + len == bytes.len();
        let kind = body[0];
        if crc32fast::hash(body) != crc || !matches!(kind, RUNNING | DONE) {
            if last {
                break; // torn: the last write's bytes did not all reach the disk
            }
            return Parsed {
                records,
                end: at as u64,
                damage: Some(format!("the record at byte {at} is damaged (checksum)")),
            };
        }
        let at_ms = u64::from_le_bytes(body[1..HEAD].try_into().unwrap());
        records.push((kind, at_ms, &body[HEAD..]));
        at += FRAME + len;
    }
    Parsed {
        records,
        end: at as u64,
        damage: None,
    }
}

impl Ledger {
    pub fn open(state_dir: &Path) -> std::io::Result<Ledger> {
        let dir = state_dir.join("ledger");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("log");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let read = parse(&bytes);
        let mut inner = Inner {
            dir,
            len: read.end,
            records: 0,
            steps: HashMap::new(),
            live: 0,
            damaged: None,
            broken: None,
        };
        let mut damage = read.damage;
        let records = read.records.len();
        for (kind, at_ms, payload) in read.records {
            let decoded = match kind {
                RUNNING => StepRequest::decode(payload).map(|r| inner.set_running(r)),
                _ => StepResult::decode(payload).map(|r| inner.set_done(r, at_ms)),
            };
            if let Err(e) = decoded {
                damage = Some(format!("a record does not decode ({e})"));
                break;
            }
        }
        if let Some(damage) = damage {
            let kept = inner.dir.join(format!("log.{}.damaged", now_ms()));
            std::fs::copy(&path, &kept)?;
            File::open(&kept)?.sync_all()?;
            tracing::error!(
                kept = %kept.display(),
                "the agent's ledger is damaged: {damage}; it keeps what it could read, and until {} is removed no step acts that the ledger does not hold as done",
                kept.display()
            );
        } else if read.end < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                "dropped a ledger record cut short at byte {} (the agent stopped while writing it; its step had not acted on it)",
                read.end
            );
        }
        // Records of the earlier layout are removed once the log holds them.
        let migrated = inner.migrate()?;
        match inner.compact() {
            Ok(()) => {
                for path in &migrated {
                    std::fs::remove_file(path)?;
                }
                if !migrated.is_empty() {
                    sync_dir(&inner.dir)?;
                }
            }
            Err(e) => {
                // A full disk must not keep the agent from starting the day a
                // rollback is needed: it reads what the file holds, and a
                // step acts only once its record is written.
                tracing::warn!(
                    path = %path.display(),
                    "the ledger could not be rewritten ({e}); the agent starts on it as it is"
                );
                if read.end < bytes.len() as u64 {
                    // The record cut short goes (shortening takes no space).
                    OpenOptions::new()
                        .write(true)
                        .open(&path)?
                        .set_len(read.end)?;
                }
                inner.records = records;
            }
        }
        inner.damaged = inner.damaged_files()?;
        Ok(Ledger {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is known of a step before it may act: its recorded result (for
    /// this attempt or a later one), or a doubt, or nothing.
    pub fn check(&self, request: &StepRequest) -> Option<Begin> {
        self.lock().check(request)
    }

    /// Record that a step is about to act, unless it already did (or may have).
    pub fn begin(&self, request: &StepRequest) -> std::io::Result<Begin> {
        let mut inner = self.lock();
        if let Some(known) = inner.check(request) {
            return Ok(known);
        }
        inner.append(RUNNING, now_ms(), &request.encode_to_vec())?;
        inner.set_running(request.clone());
        Ok(Begin::Act)
    }

    /// Record a step's result; it replaces the running record.
    pub fn finish(&self, result: &StepResult) -> std::io::Result<()> {
        let mut inner = self.lock();
        let at_ms = now_ms();
        inner.append(DONE, at_ms, &result.encode_to_vec())?;
        if carries_snapshot(result) {
            // Snapshots are large: older ones leave memory as a new one comes.
            inner.prune();
        }
        inner.set_done(result.clone(), at_ms);
        // Rewritten when more than a third of it is replaced records: each
        // record is rewritten about twice over its life.
        if inner.records.saturating_sub(inner.live) > SLACK.max(inner.live / 2) {
            inner.compact()?;
        }
        Ok(())
    }

    /// Steps that were running when the agent stopped.
    pub fn interrupted(&self) -> Vec<StepRequest> {
        self.lock()
            .steps
            .values()
            .filter_map(|e| e.running.clone())
            .collect()
    }

    /// The most recent finished results, to announce after (re)connecting.
    pub fn recent_results(&self) -> Vec<StepResult> {
        let inner = self.lock();
        let mut done: Vec<&(StepResult, u64)> = inner
            .steps
            .values()
            .filter_map(|e| e.done.as_ref())
            .collect();
        done.sort_by_key(|(_, at_ms)| std::cmp::Reverse(*at_ms));
        done.into_iter()
            .take(ANNOUNCE)
            .map(|(result, _)| result)
            // Results of runs only: checkpoints and previews are not waited for after a restart.
            .filter(|r| !r.run_id.is_empty())
            .cloned()
            .collect()
    }
}

impl Inner {
    fn set_running(&mut self, request: StepRequest) {
        let entry = self.steps.entry(request.step_id.clone()).or_default();
        self.live += usize::from(entry.running.is_none());
        entry.running = Some(request);
    }

    /// A result replaces the step's running record.
    fn set_done(&mut self, result: StepResult, at_ms: u64) {
        let entry = self.steps.entry(result.step_id.clone()).or_default();
        self.live -= usize::from(entry.running.is_some());
        self.live += usize::from(entry.done.is_none());
        entry.running = None;
        entry.done = Some((result, at_ms));
    }

    fn check(&self, request: &StepRequest) -> Option<Begin> {
        let entry = self.steps.get(&request.step_id);
        match entry.and_then(|e| e.done.as_ref()) {
            // A later attempt is a deliberate retry; anything else gets the record.
            Some((done, _)) if request.attempt <= done.attempt => {
                return Some(Begin::Done(done.clone()));
            }
            _ => {}
        }
        if entry.is_some_and(|e| e.running.is_some()) {
            return Some(Begin::Unsure(format!(
                "a previous agent process was running this step (ledger {})",
                self.dir.join("log").display()
            )));
        }
        self.damaged.as_ref().map(|why| Begin::Unsure(why.clone()))
    }

    /// Append one record and sync it. A write that fails is cut off, so
    /// that the file never holds half a record before a whole one.
    fn append(&mut self, kind: u8, at_ms: u64, payload: &[u8]) -> std::io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(std::io::Error::other(why.clone()));
        }
        let record = frame(kind, at_ms, payload);
        let mut file = OpenOptions::new().append(true).open(self.dir.join("log"))?;
        let written = file.write_all(&record).and_then(|()| file.sync_data());
        if let Err(e) = written {
            if let Err(cut) = file.set_len(self.len) {
                self.broken = Some(format!(
                    "a ledger write failed ({e}) and its part could not be removed ({cut}); the agent writes nothing more until it restarts"
                ));
            }
            return Err(e);
        }
        self.len += record.len() as u64;
        self.records += 1;
        Ok(())
    }

    /// Rewrite the file with what it must keep: results of the last week
    /// (of the last hour for snapshots) and running records. Written beside
    /// it, synced, then renamed over it.
    fn compact(&mut self) -> std::io::Result<()> {
        self.prune();
        let mut bytes = Vec::new();
        let mut records = 0;
        for entry in self.steps.values() {
            if let Some((result, at_ms)) = &entry.done {
                bytes.extend(frame(DONE, *at_ms, &result.encode_to_vec()));
                records += 1;
            }
            // After the result: a running record is of a later attempt.
            if let Some(request) = &entry.running {
                bytes.extend(frame(RUNNING, now_ms(), &request.encode_to_vec()));
                records += 1;
            }
        }
        let path = self.dir.join("log");
        let temp = self.dir.join("log.tmp");
        let mut file = File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, &path)?;
        sync_dir(&self.dir)?;
        self.len = bytes.len() as u64;
        self.records = records;
        Ok(())
    }

    /// Forget results past their keeping: a week, an hour for a snapshot's.
    fn prune(&mut self) {
        let now = now_ms();
        let oldest = now.saturating_sub(KEEP.as_millis() as u64);
        let oldest_snapshot = now.saturating_sub(KEEP_SNAPSHOT.as_millis() as u64);
        self.steps.retain(|_, e| {
            if e.done.as_ref().is_some_and(|(result, at_ms)| {
                *at_ms < oldest || (carries_snapshot(result) && *at_ms < oldest_snapshot)
            }) {
                e.done = None;
            }
            e.live() > 0
        });
        self.live = self.steps.values().map(Entry::live).sum();
    }

    /// Records in the one-file-per-record layout of earlier versions
    /// (`<key>.running`, `<key>.done`) are taken in; the caller removes
    /// them once the log holds them. One that cannot be read is kept aside
    /// as damaged.
    fn migrate(&mut self) -> std::io::Result<Vec<PathBuf>> {
        let mut migrated = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let running = match path.extension().and_then(|e| e.to_str()) {
                Some("running") => true,
                Some("done") => false,
                _ => continue,
            };
            let bytes = std::fs::read(&path)?;
            let at_ms = std::fs::metadata(&path)?
                .modified()
                .ok()
                .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            let read = if running {
                StepRequest::decode(bytes.as_slice()).map(|request| {
                    let entry = self.steps.entry(request.step_id.clone()).or_default();
                    entry.running = Some(request);
                })
            } else {
                StepResult::decode(bytes.as_slice()).map(|result| {
                    let entry = self.steps.entry(result.step_id.clone()).or_default();
                    let newer = entry
                        .done
                        .as_ref()
                        .is_none_or(|(d, _)| d.attempt <= result.attempt);
                    if newer {
                        entry.done = Some((result, at_ms));
                    }
                })
            };
            match read {
                Ok(()) => migrated.push(path),
                Err(e) => {
                    let kept = path.with_extension(format!(
                        "{}.damaged",
                        path.extension().unwrap_or_default().to_string_lossy()
                    ));
                    tracing::error!(path = %path.display(), "an unreadable ledger record ({e}) is kept as {}", kept.display());
                    std::fs::rename(&path, kept)?;
                }
            }
        }
        // Both records of one step: the earlier layout wrote the result,
        // then removed the running record. A running record stands only
        // for a later attempt than the result's.
        for entry in self.steps.values_mut() {
            if let (Some(request), Some((done, _))) = (&entry.running, &entry.done)
                && request.attempt <= done.attempt
            {
                entry.running = None;
            }
        }
        Ok(migrated)
    }

    /// Why unknown steps may not act: the damaged records kept aside.
    fn damaged_files(&self) -> std::io::Result<Option<String>> {
        let mut kept = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "damaged") {
                kept.push(path.display().to_string());
            }
        }
        kept.sort();
        Ok((!kept.is_empty()).then(|| {
            format!(
                "the agent's ledger was found damaged (kept as {}): a step it does not hold as done is not run until an operator has checked this agent's targets and removed that file",
                kept.join(", ")
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(step: &str, attempt: u32) -> StepRequest {
        StepRequest {
            run_id: "run-1".into(),
            step_id: step.into(),
            attempt,
            ..Default::default()
        }
    }

    fn result(step: &str, attempt: u32) -> StepResult {
        StepResult {
            run_id: "run-1".into(),
            step_id: step.into(),
            attempt,
            ..Default::default()
        }
    }

    fn acts(ledger: &Ledger, step: &str, attempt: u32) -> bool {
        matches!(ledger.begin(&request(step, attempt)).unwrap(), Begin::Act)
    }

    fn unsure(ledger: &Ledger, step: &str) -> String {
        match ledger.begin(&request(step, 1)).unwrap() {
            Begin::Unsure(why) => why,
            Begin::Act => panic!("{step} acted"),
            Begin::Done(_) => panic!("{step} was answered as done"),
        }
    }

    fn answered_done(ledger: &Ledger, step: &str) -> bool {
        matches!(ledger.begin(&request(step, 1)).unwrap(), Begin::Done(_))
    }

    /// Bytes added to the log as a write that did not complete leaves them.
    fn append_bytes(dir: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).open(log(dir)).unwrap();
        file.write_all(bytes).unwrap();
    }

    /// A record as earlier versions kept it: a file per step and kind,
    /// named by a digest of the step id.
    fn write_earlier_layout(dir: &Path, step: &str, kind: &str, bytes: Vec<u8>) {
        let key = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(step.as_bytes())[..16]);
        std::fs::write(dir.join(format!("{key}.{kind}")), bytes).unwrap();
    }

    fn log(dir: &Path) -> PathBuf {
        dir.join("ledger").join("log")
    }

    fn damaged(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("ledger"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "damaged"))
            .collect()
    }

    #[test]
    fn what_it_records_holds_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(acts(&ledger, "a/1", 1));
        ledger.finish(&result("a/1", 1)).unwrap();
        assert!(acts(&ledger, "b", 1));
        drop(ledger);

        let ledger = Ledger::open(dir.path()).unwrap();
        // Delivered again: the recorded result, not a second action.
        assert!(
            matches!(ledger.begin(&request("a/1", 1)).unwrap(), Begin::Done(r) if r.step_id == "a/1")
        );
        // b was running when the agent stopped.
        let interrupted: Vec<String> = ledger
            .interrupted()
            .into_iter()
            .map(|r| r.step_id)
            .collect();
        assert_eq!(interrupted, ["b"]);
        assert!(unsure(&ledger, "b").contains("previous agent process"));
        // A later attempt of a finished step is a deliberate retry.
        assert!(acts(&ledger, "a/1", 2));
        assert_eq!(ledger.recent_results().len(), 1);
        assert!(damaged(dir.path()).is_empty());
    }

    #[test]
    fn a_last_record_cut_short_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(acts(&ledger, "a", 1));
        ledger.finish(&result("a", 1)).unwrap();
        assert!(acts(&ledger, "b", 1));
        drop(ledger);
        // The agent died while writing b's result: half of it is there.
        let record = frame(DONE, now_ms(), &result("b", 1).encode_to_vec());
        append_bytes(dir.path(), &record[..record.len() / 2]);

        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(answered_done(&ledger, "a"));
        // b's result was never synced: b is still running from before.
        assert!(unsure(&ledger, "b").contains("previous agent process"));
        // Not damage: other steps act.
        assert!(acts(&ledger, "c", 1));
        assert!(damaged(dir.path()).is_empty());
        drop(ledger);

        // A running record cut short: that step never acted; it may act.
        let record = frame(RUNNING, now_ms(), &request("d", 1).encode_to_vec());
        append_bytes(dir.path(), &record[..record.len() - 1]);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(acts(&ledger, "d", 1));
        assert!(unsure(&ledger, "c").contains("previous agent process"));
    }

    #[test]
    fn a_damaged_record_lets_no_unknown_step_act_until_an_operator_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        for step in ["a", "b"] {
            assert!(acts(&ledger, step, 1));
            ledger.finish(&result(step, 1)).unwrap();
        }
        drop(ledger);
        // A byte of the first record flipped on disk.
        let mut bytes = std::fs::read(log(dir.path())).unwrap();
        bytes[FRAME + 12] ^= 0xff;
        std::fs::write(log(dir.path()), &bytes).unwrap();

        let ledger = Ledger::open(dir.path()).unwrap();
        let kept = damaged(dir.path());
        assert_eq!(kept.len(), 1, "the damaged log is kept aside");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), bytes);
        let why = unsure(&ledger, "a");
        assert!(why.contains(&kept[0].display().to_string()), "{why}");
        // A step never seen may have been in the damaged part: not run either.
        unsure(&ledger, "new");
        // What it records from now on holds.
        ledger.finish(&result("z", 1)).unwrap();
        drop(ledger);

        // Still in force after a restart, until the kept file is removed.
        let ledger = Ledger::open(dir.path()).unwrap();
        unsure(&ledger, "other");
        assert!(answered_done(&ledger, "z"));
        drop(ledger);
        std::fs::remove_file(&kept[0]).unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(acts(&ledger, "other", 1));
        assert!(answered_done(&ledger, "z"));
    }

    #[test]
    fn records_of_the_one_file_per_record_layout_are_taken_in() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("ledger");
        std::fs::create_dir_all(&old).unwrap();
        write_earlier_layout(&old, "a", "done", result("a", 1).encode_to_vec());
        write_earlier_layout(&old, "b", "running", request("b", 1).encode_to_vec());
        // Finished, but the agent died before removing its running record.
        write_earlier_layout(&old, "c", "done", result("c", 1).encode_to_vec());
        write_earlier_layout(&old, "c", "running", request("c", 1).encode_to_vec());

        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(answered_done(&ledger, "a"));
        assert!(answered_done(&ledger, "c"));
        assert!(unsure(&ledger, "b").contains("previous agent process"));
        assert!(acts(&ledger, "new", 1));
        drop(ledger);
        let left: Vec<_> = std::fs::read_dir(&old)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            ["log"],
            "the old records are removed once the log holds them"
        );
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(answered_done(&ledger, "a"));
        assert!(unsure(&ledger, "b").contains("previous agent process"));
        drop(ledger);

        // An old record that cannot be read: fail closed.
        write_earlier_layout(&old, "d", "done", b"\xff\xff\xff garbage".to_vec());
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(damaged(dir.path()).len(), 1);
        unsure(&ledger, "d");
        unsure(&ledger, "another");
    }

    #[test]
    fn the_log_is_rewritten_without_what_it_no_longer_needs() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        // A result older than a week, written as it was then, and a recent one.
        let old = now_ms() - KEEP.as_millis() as u64 - 1000;
        ledger
            .lock()
            .append(DONE, old, &result("old", 1).encode_to_vec())
            .unwrap();
        ledger
            .lock()
            .append(DONE, now_ms(), &result("recent", 1).encode_to_vec())
            .unwrap();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(
            acts(&ledger, "old", 1),
            "a result older than a week is pruned"
        );
        assert!(answered_done(&ledger, "recent"));
        ledger.finish(&result("old", 1)).unwrap();
        let mut most = 0;
        for i in 0..100 {
            let step = format!("s{i}");
            assert!(acts(&ledger, &step, 1));
            ledger.finish(&result(&step, 1)).unwrap();
            most = most.max(ledger.lock().records);
        }
        // Each step left a running record and a result: half of them
        // replaced. The file was rewritten along the way.
        // Without being rewritten it would hold 203 records.
        assert!(most <= 102 + 51 + 1, "the log grew to {most} records");
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.lock().records, 102, "one result per step");
        for i in 0..100 {
            assert!(answered_done(&ledger, &format!("s{i}")));
        }
    }

    #[test]
    fn a_snapshots_result_is_kept_an_hour_and_leaves_memory_as_the_next_comes() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let snapshot = |step: &str| StepResult {
            outcome: Some(rewind_proto::v1::step_result::Outcome::Captured(
                rewind_proto::v1::Captured {
                    data: "x".repeat(1 << 20),
                    summary: "a snapshot".into(),
                },
            )),
            ..result(step, 1)
        };
        let two_hours_ago = now_ms() - 2 * 3600 * 1000;
        ledger
            .lock()
            .append(
                DONE,
                two_hours_ago,
                &snapshot("old-snapshot").encode_to_vec(),
            )
            .unwrap();
        ledger
            .lock()
            .append(
                DONE,
                two_hours_ago,
                &result("old-restore", 1).encode_to_vec(),
            )
            .unwrap();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(acts(&ledger, "old-snapshot", 1), "its data is gone");
        assert!(
            answered_done(&ledger, "old-restore"),
            "a restore's result stays a week"
        );
        let size = std::fs::metadata(log(dir.path())).unwrap().len();
        assert!(
            size < 64 << 10,
            "the log keeps no old snapshot: {size} bytes"
        );
        // In memory: an older snapshot goes when a new one is recorded.
        ledger.lock().set_done(snapshot("held"), two_hours_ago);
        ledger.finish(&snapshot("new")).unwrap();
        assert!(!ledger.lock().steps.contains_key("held"));
        assert!(answered_done(&ledger, "new"));
    }

    #[test]
    fn an_agent_starts_on_its_ledger_when_it_cannot_be_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.finish(&result("done-before", 1)).unwrap();
        drop(ledger);
        let valid = std::fs::metadata(log(dir.path())).unwrap().len();
        append_bytes(dir.path(), &[0, 0, 1, 0, 9, 9]);
        // Where the rewrite goes cannot be written (as on a full disk).
        std::fs::create_dir(dir.path().join("ledger/log.tmp")).unwrap();
        let ledger = Ledger::open(dir.path()).expect("it starts");
        assert!(answered_done(&ledger, "done-before"));
        assert_eq!(
            std::fs::metadata(log(dir.path())).unwrap().len(),
            valid,
            "the record cut short is dropped all the same"
        );
        assert!(
            acts(&ledger, "new", 1),
            "a step whose record is written acts"
        );
    }
}
