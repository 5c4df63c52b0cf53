//! The state of one plugin call's store: the WASI contexts (no ambient
//! authority), the resource limiter, the target's grant, and what the call
//! logged. A store lives for exactly one call.

use crate::config::TargetConfig;
use crate::host::ProgressSink;
use crate::host::caps::http::HttpGate;
use crate::host::caps::log::CallLog;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// How much of a plugin's stdout/stderr is kept (the tail), for crash reports.
const OUTPUT_TAIL: usize = 16 * 1024;

pub struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_gate: HttpGate,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) target: Arc<TargetConfig>,
    pub(crate) plugin: String,
    pub(crate) log: CallLog,
    pub(crate) progress: Option<ProgressSink>,
    pub(crate) last_progress: Option<Instant>,
    /// The percent of the last report passed on.
    pub(crate) last_percent: Option<u8>,
    /// Reports dropped by the rate limit.
    pub(crate) progress_dropped: u64,
    /// When the whole call must be over; host calls never wait past it.
    pub(crate) deadline: Instant,
    pub(crate) stderr: TailPipe,
    /// Secret values handed to the plugin in this call, masked in its
    /// log lines and errors.
    pub(crate) revealed: Vec<String>,
    /// This call's PostgreSQL connection (at most one), by database.
    pub(crate) pg: std::collections::BTreeMap<String, sqlx::postgres::PgConnection>,
    /// The capability calls made, when a conformance check records them
    /// (shared with the HTTP gate).
    tape: Option<Arc<Mutex<Tape>>>,
    /// The bytes and files in the target's state directory, counted at the
    /// call's first write there and kept up to date by its writes (one
    /// action per target runs at a time).
    pub(crate) state_usage: Option<(u64, u64)>,
}

/// One capability call of a plugin, as a conformance check sees it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct CapCall {
    /// files, process, docker, postgres, http or secrets.
    pub capability: &'static str,
    /// The function, e.g. `write`, `run`, `recreate`.
    pub op: &'static str,
    /// What it was called on: a path, a program, a container, a URL.
    pub subject: String,
    /// What it may do to the world: see [`Effect`].
    pub effect: Effect,
}

/// What a capability call may do.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Reads only.
    Reads,
    /// Writes the plugin's own state directory (its bookkeeping), not the target.
    State,
    /// Changes the target: a file written, a container recreated, a
    /// statement executed, a PUT or DELETE.
    Writes,
    /// Cannot be told from the call: a program run, an HTTP POST.
    MayWrite,
}

/// The record of a call's capability calls. With `stop_at = Some(n)`, the
/// n-th call (from 0) and every later one are not made: the plugin gets an
/// `interrupted` error, as if the agent had died there, and the world sees
/// only what came before.
#[derive(Debug, Default, Clone)]
pub struct Tape {
    pub calls: Vec<CapCall>,
    pub stop_at: Option<usize>,
    /// Faults injected on chosen calls.
    pub faults: Vec<FaultRule>,
    /// When set, the process capability answers from this script and runs
    /// nothing (a test of the plugin's logic, not of the programs).
    pub process_script: Option<Vec<ScriptedRun>>,
}

/// A fault a test injects on a capability call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The call times out (the capability's own `timed-out` error).
    Timeout,
    /// The call is refused (`denied`; for HTTP, the request is denied).
    Refuse,
    /// The call does half its work and fails: a file written half, a
    /// program's output cut in half as if it was killed. Other calls: refused.
    HalfWrite,
}

/// Where a fault strikes, and which.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The call's index (from 0) in the action's capability calls.
    pub call: Option<usize>,
    /// Or the first call of `capability op` (e.g. `process run`, `files
    /// write`) whose subject (path, program, URL, ...) contains `subject`.
    pub on: Option<String>,
    pub subject: Option<String>,
    pub fault: Fault,
}

impl FaultRule {
    /// The fault on the first call of `capability op` (`files write`).
    pub fn on(what: &str, fault: Fault) -> FaultRule {
        FaultRule {
            call: None,
            on: Some(what.to_string()),
            subject: None,
            fault,
        }
    }

    /// Only where the call's subject contains `text`.
    pub fn subject(mut self, text: &str) -> FaultRule {
        self.subject = Some(text.to_string());
        self
    }

    /// The fault on the call of this index.
    pub fn at_call(index: usize, fault: Fault) -> FaultRule {
        FaultRule {
            call: Some(index),
            on: None,
            subject: None,
            fault,
        }
    }

    fn hits(&self, index: usize, call: &CapCall) -> bool {
        let named = format!("{} {}", call.capability, call.op);
        self.call.is_none_or(|n| n == index)
            && self.on.as_ref().is_none_or(|on| *on == named)
            && self
                .subject
                .as_ref()
                .is_none_or(|s| call.subject.contains(s.as_str()))
    }
}

/// A scripted answer of the process capability.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedRun {
    /// The program as the plugin names it.
    pub program: String,
    /// The arguments it must be given; any when left out.
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub exit: i32,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
}

/// What a capability call is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Go,
    /// Not made: the call is being interrupted.
    Stop,
    Fault(Fault),
}

/// What a plugin is told of a call the conformance check did not make.
pub const INTERRUPTED: &str =
    "interrupted: the conformance check stopped this call here, as a crash of the agent would";
/// What a plugin is told of a call a test made fail.
pub const INJECTED: &str = "(a fault the test injected)";

impl Tape {
    /// Note a capability call; what it is to do.
    pub(crate) fn note(
        tape: &Option<Arc<Mutex<Tape>>>,
        capability: &'static str,
        op: &'static str,
        subject: &str,
        effect: Effect,
    ) -> Verdict {
        let Some(tape) = tape else {
            return Verdict::Go;
        };
        let mut tape = tape.lock().unwrap_or_else(|e| e.into_inner());
        let index = tape.calls.len();
        tape.calls.push(CapCall {
            capability,
            op,
            subject: subject.to_string(),
            effect,
        });
        if tape.stop_at.is_some_and(|n| index >= n) {
            return Verdict::Stop;
        }
        // Each rule strikes once: the first call it names.
        let call = tape.calls[index].clone();
        let Some(at) = tape.faults.iter().position(|r| r.hits(index, &call)) else {
            return Verdict::Go;
        };
        Verdict::Fault(tape.faults.remove(at).fault)
    }
}

impl CallState {
    /// Note a capability call; false when it must not be made (the call is
    /// being interrupted). Without a tape, every call is made.
    pub(crate) fn record(
        &mut self,
        capability: &'static str,
        op: &'static str,
        subject: &str,
        effect: Effect,
    ) -> Verdict {
        Tape::note(&self.tape, capability, op, subject, effect)
    }

    /// The scripted answer to a program run, when the process capability
    /// is scripted: Some(Ok(exit, stdout, stderr)), or Some(Err(why)) when
    /// the script has no answer for it.
    pub(crate) fn scripted_run(
        &self,
        program: &str,
        args: &[String],
    ) -> Option<Result<ScriptedRun, String>> {
        let tape = self
            .tape
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let script = tape.process_script.as_ref()?;
        Some(
            script
                .iter()
                .find(|r| r.program == program && r.args.as_ref().is_none_or(|a| a == args))
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<String> = script
                        .iter()
                        .map(|r| match &r.args {
                            Some(a) => format!("{} {}", r.program, a.join(" ")),
                            None => format!("{} (any arguments)", r.program),
                        })
                        .collect();
                    format!(
                        "the test's process script has no answer for `{program} {}` (it answers: {})",
                        args.join(" "),
                        if known.is_empty() { "nothing".to_string() } else { known.join("; ") }
                    )
                }),
        )
    }

    /// Record this call's capability calls on `tape`.
    pub(crate) fn set_tape(&mut self, tape: Option<Tape>) {
        self.tape = tape.map(|t| Arc::new(Mutex::new(t)));
        self.http_gate.tape = self.tape.clone();
    }

    /// The record, once the call is over.
    pub(crate) fn take_tape(&mut self) -> Option<Tape> {
        self.http_gate.tape = None;
        self.tape.take().map(|t| match Arc::try_unwrap(t) {
            Ok(tape) => tape.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(shared) => shared.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

impl CallState {
    pub fn new(
        plugin: &str,
        target: Arc<TargetConfig>,
        progress: Option<ProgressSink>,
        deadline: Instant,
    ) -> CallState {
        let stdout = TailPipe::default();
        let stderr = TailPipe::default();
        // Nothing is inherited: no environment, no arguments, no stdin, no
        // preopened directories, no sockets, no name lookups. Files go
        // through the `files` capability, HTTP through the gate below.
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        CallState {
            wasi,
            http: WasiHttpCtx::new(),
            http_gate: HttpGate::new(plugin, &target, deadline),
            table: ResourceTable::new(),
            limiter: Limiter::new(target.memory_limit.0 as usize),
            log: CallLog::default(),
            plugin: plugin.to_string(),
            target,
            progress,
            last_progress: None,
            last_percent: None,
            progress_dropped: 0,
            deadline,
            stderr,
            revealed: Vec::new(),
            pg: std::collections::BTreeMap::new(),
            tape: None,
            state_usage: None,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_gate,
        }
    }
}

/// Bounds a call's memories, tables and instances, and remembers when the
/// memory limit was what stopped a plugin so the error can say so.
pub struct Limiter {
    memory_limit: usize,
    memory_in_use: usize,
    pub(crate) memory_refused: Option<usize>,
}

impl Limiter {
    fn new(memory_limit: usize) -> Limiter {
        Limiter {
            memory_limit,
            memory_in_use: 0,
            memory_refused: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The limit is on the sum of all of the instance's memories.
        let total = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if total > self.memory_limit {
            self.memory_refused = Some(total);
            return Ok(false);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        // A component instantiates a handful of core instances (the plugin,
        // its adapters, shims).
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

/// A stdout/stderr sink that keeps only the last bytes written, so a chatty
/// plugin can never fill the agent's memory nor be killed for its output.
#[derive(Clone, Default)]
pub struct TailPipe {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl TailPipe {
    pub fn contents(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buffer.extend_from_slice(bytes);
        if buffer.len() > OUTPUT_TAIL {
            let excess = buffer.len() - OUTPUT_TAIL;
            buffer.drain(..excess);
        }
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
