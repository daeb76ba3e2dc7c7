// phxq dashboard: live updates over Server-Sent Events, buttons that call the API.
// No framework, no build step. Pages are rendered (and escaped) by the server; this
// script only swaps in server-rendered fragments, sets progress values and appends log
// text as text nodes: nothing a job controls is ever put into the page as HTML here.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const live = document.getElementById("live");
  const notice = document.getElementById("notice");
  const part = document.querySelector("[data-fragment]");
  const logBox = document.getElementById("log");

  function say(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  // ------------------------------------------------------------ fragments
  let refreshing = false;
  let again = false;
  let timer = null;
  async function refresh() {
    if (!part) return;
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const r = await fetch(part.dataset.fragment, { credentials: "same-origin" });
      if (r.ok) part.innerHTML = await r.text();
    } catch (e) {
      /* the next event tries again */
    } finally {
      refreshing = false;
      if (again) { again = false; soon(); }
    }
  }
  // at most one refresh a second, however many events come
  function soon() {
    if (timer === null) timer = setTimeout(() => { timer = null; refresh(); }, 1000);
  }

  // -------------------------------------------------------------- progress
  function showProgress(ev) {
    const p = ev.progress;
    if (!p) return;
    let pct = null;
    if (p.percent !== undefined && p.percent !== null) pct = p.percent;
    else if (p.done !== undefined && p.total) pct = (100 * p.done) / p.total;
    for (const row of document.querySelectorAll('[data-job-id="' + ev.id + '"]')) {
      const bar = row.querySelector("progress");
      if (bar && pct !== null) bar.value = Math.max(0, Math.min(100, pct));
      const label = row.querySelector(".pct");
      if (label && pct !== null) label.textContent = Math.round(pct) + "%";
      const step = row.querySelector(".step");
      if (step && p.step) {
        let text = p.step;
        if (p.done !== undefined && p.done !== null) text += " (" + p.done + (p.total ? "/" + p.total : "") + ")";
        step.textContent = text;
      }
    }
  }

  // ---------------------------------------------------------------- events
  function listen() {
    let url = "/api/v1/events";
    const page = document.body.dataset.page;
    if (page === "job") url += "?ids=" + encodeURIComponent(part.dataset.jobId);
    else if (page !== "overview") return;
    const source = new EventSource(url);
    // "ready": phxqd listens for this page; every event from now on reaches it
    source.addEventListener("ready", () => { live.classList.add("on"); live.classList.remove("off"); });
    source.onerror = () => { live.classList.add("off"); live.classList.remove("on"); };
    source.onmessage = (msg) => {
      const ev = JSON.parse(msg.data);
      if (ev.event === "progress") { showProgress(ev); return; }
      soon();
      if (ev.event === "started" && logBox) follow();
    };
  }

  // ------------------------------------------------------------ log follow
  let following = null;
  function follow() {
    if (!logBox || following) return;
    const id = logBox.dataset.jobId;
    const source = new EventSource(
      "/api/v1/jobs/" + encodeURIComponent(id) + "/log/follow?offset=" + encodeURIComponent(logBox.dataset.offset));
    following = source;
    const append = (msg) => {
      const chunk = JSON.parse(msg.data);
      if (chunk.data) {
        const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
        logBox.appendChild(document.createTextNode(chunk.data));
        if (atEnd) logBox.scrollTop = logBox.scrollHeight;
      }
      logBox.dataset.offset = chunk.offset;
    };
    source.addEventListener("chunk", append);
    source.addEventListener("end", (msg) => { append(msg); source.close(); following = null; });
    source.onerror = () => { source.close(); following = null; };
  }

  // --------------------------------------------------------------- buttons
  const actions = {
    retry: (b) => ["/api/v1/jobs/" + encodeURIComponent(b.dataset.id) + "/retry", {}],
    cancel: (b) => ["/api/v1/jobs/" + encodeURIComponent(b.dataset.id) + "/cancel", {}],
    "retry-failed": () => ["/api/v1/retry-failed", {}],
    pause: (b) => ["/api/v1/queues/" + encodeURIComponent(b.dataset.queue) + "/pause", {}],
    resume: (b) => ["/api/v1/queues/" + encodeURIComponent(b.dataset.queue) + "/resume", {}],
  };
  document.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const make = actions[button.dataset.action];
    if (!make) return;
    const [url, body] = make(button);
    button.disabled = true;
    try {
      const r = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
      if (!r.ok) {
        const answer = await r.json().catch(() => null);
        say(answer && answer.error ? answer.error.message : "failed: HTTP " + r.status);
      } else {
        say("");
      }
    } catch (err) {
      say("phxqd cannot be reached");
    } finally {
      button.disabled = false;
      refresh();
    }
  });

  listen();
  // a job that is not running has written all it will until it starts again ("started")
  if (logBox && logBox.dataset.running === "yes") follow();
})();
