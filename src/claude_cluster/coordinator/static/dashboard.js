// claude-cluster dashboard: the overview's live part and a task's live log.
// No build step, no library: polling and Server-Sent Events.
"use strict";

function pollOverview(root) {
  const every = Number(root.dataset.every || 5000);
  async function refresh() {
    if (document.hidden) return;  // hidden tabs cost nothing
    try {
      const response = await fetch("/overview/live", { headers: { Accept: "text/html" } });
      if (response.ok) root.innerHTML = await response.text();
    } catch (_) { /* the coordinator restarts: try again next time */ }
  }
  setInterval(refresh, every);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
}

function followTask(root) {
  const taskId = root.dataset.task;
  const log = document.getElementById("log");
  const empty = document.getElementById("log-empty");
  const status = document.getElementById("status");
  const timeline = document.getElementById("timeline");
  const live = document.getElementById("live-state");
  const source = new EventSource(`/tasks/${taskId}/stream?after=${root.dataset.after || 0}`);

  function count(item) {
    const run = item.dataset.run;
    if (!run) return;
    const entry = document.querySelector(`li[data-run="${run}"]:not([data-kind])`);
    const bump = (name, by) => {
      const el = document.querySelector(`[data-run="${run}"] [data-tally="${name}"]`);
      if (el) el.textContent = name === "cost"
        ? "$" + (parseFloat(el.textContent.replace(/[^0-9.]/g, "")) + by).toFixed(4)
        : String(Number(el.textContent) + by);
    };
    // the round in progress: its newest round_progress is in the tally (kept on the run's
    // timeline entry); a newer one replaces it, the round's runner_finished takes it out
    const dropLive = (round) => {
      if (!entry || entry.dataset.liveRound === undefined) return;
      if (round !== undefined && entry.dataset.liveRound !== round) return;
      bump("turns", -Number(entry.dataset.liveTurns || "0"));
      bump("cost", -parseFloat(entry.dataset.liveCost || "0"));
      delete entry.dataset.liveRound;
      delete entry.dataset.liveEstimate;
    };
    const kind = item.dataset.kind;
    if (kind === "assistant_text") bump("messages", 1);
    if (kind === "tool_use") bump("tools", 1);
    if (item.classList.contains("fix")) bump("fixes", 1);
    if (kind === "runner_finished") dropLive(item.dataset.round);
    if (kind === "round_progress" && entry && item.dataset.round !== undefined) {
      dropLive();
      entry.dataset.liveRound = item.dataset.round;
      entry.dataset.liveTurns = item.dataset.liveTurns;
      entry.dataset.liveCost = item.dataset.liveCost;
      if (item.dataset.estimate) entry.dataset.liveEstimate = "1";
      bump("turns", Number(item.dataset.liveTurns || "0"));
      bump("cost", parseFloat(item.dataset.liveCost || "0"));
    }
    const turns = Number(item.dataset.turns || "0");
    if (turns) bump("turns", turns);
    const cost = parseFloat(item.dataset.cost || "0");
    if (cost) bump("cost", cost);
    // "~" while the round in progress is an estimate, once (other news leaves it as it is)
    const shown = document.querySelector(`[data-run="${run}"] [data-tally="cost"]`);
    if (shown) {
      const approx = entry && entry.dataset.liveEstimate ? "~" : "";
      shown.textContent = approx + shown.textContent.replace(/^~+/, "");
    }
  }

  source.addEventListener("open", () => { if (live) live.textContent = "live"; });
  source.addEventListener("error", () => { if (live) live.textContent = "reconnecting…"; });
  source.addEventListener("log", (message) => {
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    log.insertAdjacentHTML("beforeend", message.data);
    if (empty) empty.hidden = true;
    const item = log.lastElementChild;
    if (item.dataset.kind === "round_progress" && item.dataset.run) {
      // a run keeps only its newest report of the round in progress, on the page as stored
      log.querySelectorAll(`li[data-kind="round_progress"][data-run="${item.dataset.run}"]`)
        .forEach((older) => { if (older !== item) older.remove(); });
    }
    count(item);
    if (atBottom) item.scrollIntoView({ block: "end" });
  });
  source.addEventListener("task", async (message) => {
    const change = JSON.parse(message.data);
    status.textContent = change.status;
    status.className = "badge " + change.status;
    try {
      const response = await fetch(`/tasks/${taskId}?part=timeline`, { headers: { Accept: "text/html" } });
      if (response.ok) timeline.innerHTML = await response.text();
    } catch (_) { /* next change refreshes it */ }
  });
}

document.querySelectorAll("[data-poll-overview]").forEach(pollOverview);
document.querySelectorAll("[data-follow-task]").forEach(followTask);
