// rewind's web view: actions with their confirmations, and a run's page
// following the run through server-sent events. No framework, no build.
"use strict";

const token = document.querySelector('meta[name="rewind-token"]').content;
const notice = document.getElementById("notice");

function say(text, ok) {
  notice.textContent = text;
  notice.className = ok ? "ok" : "failed";
}

const live = document.getElementById("live");
let refresh = () => {};

document.addEventListener("click", async (click) => {
  const button = click.target.closest("button[data-action]");
  if (!button) return;
  const action = button.dataset.action;
  if (action === "print") { window.print(); return; }
  if (!window.confirm(button.dataset.confirm)) return;
  button.disabled = true;
  try {
    const answer = await fetch(`/runs/${encodeURIComponent(button.dataset.run)}/${action}`, {
      method: "POST",
      headers: { "X-Rewind-Token": token },
    });
    say(await answer.text(), answer.ok);
  } catch (e) {
    say(`${action} failed: ${e}`, false);
  }
  button.disabled = false;
  refresh();
});

if (live) {
  const run = live.dataset.run;
  const events = document.getElementById("events");
  const gates = document.getElementById("gates");
  // The latest progress message of each step, shown again after each redraw.
  const progress = new Map();
  let pending = null;

  const paint = () => {
    for (const [step, message] of progress) {
      const cell = live.querySelector(`tr[data-step="${CSS.escape(step)}"] .progress`);
      if (cell) cell.textContent = message;
    }
  };

  // Redraw the live part from the coordinator's report, at most every 200 ms.
  refresh = () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        const answer = await fetch(`/runs/${encodeURIComponent(run)}/live`);
        if (answer.ok) {
          live.innerHTML = await answer.text();
          paint();
        }
      } catch (e) {
        say(`cannot reach rewind ui: ${e}`, false);
      }
    }, 200);
  };

  const clock = (ms) => new Date(ms).toISOString().substring(11, 19);
  const source = new EventSource(`/runs/${encodeURIComponent(run)}/events`);
  source.onmessage = (message) => {
    const e = JSON.parse(message.data);
    const where = [e.stage, e.agent, e.target].filter(Boolean).join(" ");
    const item = document.createElement("li");
    item.dataset.kind = e.kind;
    item.textContent = `${clock(e.unix_ms)} ${e.kind}${where ? " " + where : ""}${e.message ? ": " + e.message : ""}`;
    events.appendChild(item);
    events.scrollTop = events.scrollHeight;
    if (e.kind === "step-progress") progress.set(e.step_id, e.message);
    if (e.kind === "step-succeeded" || e.kind === "step-failed") progress.delete(e.step_id);
    if (e.kind === "health-passed" || e.kind === "health-failed") {
      const gate = document.createElement("li");
      gate.className = e.kind === "health-passed" ? "gate passed" : "gate failed error";
      gate.textContent = `${e.kind === "health-passed" ? "✔" : "✘"} stage ${e.stage}: ${e.message}`;
      gates.appendChild(gate);
    }
    refresh();
  };
  source.addEventListener("end", () => {
    source.close();
    live.dataset.ended = "true";
    refresh();
  });
  source.addEventListener("failure", (message) => {
    source.close();
    say(message.data, false);
  });
}
