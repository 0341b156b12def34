// Conveyor operations dashboard: plain JS over the JSON API. Every value reaches the page through
// textContent or attribute setters, never as markup. Calls carry the session cookie; state-changing
// calls also carry the anti-forgery token from /dashboard/api/session.
"use strict";

(function () {
  const OVERVIEW_REFRESH_MS = 3000;
  const QUEUE_REFRESH_MS = 5000;
  const OPERATION_POLL_MS = 1000;
  const JOB_REFRESH_MS = 3000;
  const TERMINAL_JOB = ["succeeded", "dead-lettered", "cancelled"];
  const JOB_STATUSES = ["scheduled", "queued", "running", "retry-scheduled", "succeeded", "dead-lettered", "cancelled"];
  const JOB_KINDS = ["charge-payment", "deliver-webhook", "generate-report"];

  let session = null;
  let timers = [];
  let renderToken = 0;

  // ---- helpers -------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "checked" || key === "disabled" || key === "hidden") node[key] = Boolean(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const view = () => document.getElementById("view");
  const fmtNumber = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
  const fmtRate = (r) => (r ? Number(r).toFixed(1) : "0");
  const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "–");

  function badge(text) { return el("span", { class: "badge " + text, text: text }); }

  // True only while a refresh tick starts its requests (synchronously, before its first await): api()
  // then marks them, and the server does not count them as activity toward the session's idle limit.
  let inRefreshTick = false;

  function every(ms, fn) {
    const token = renderToken;
    let wait = ms;
    const tick = async () => {
      if (token !== renderToken) return;
      wait = ms;
      try {
        inRefreshTick = true;
        const run = fn();
        inRefreshTick = false;
        await run;
      } catch (e) { inRefreshTick = false; showBanner(e.message); wait = retryDelay(e, ms); }
      if (token === renderToken) timers.push(setTimeout(tick, wait));
    };
    timers.push(setTimeout(tick, ms));
  }

  function showBanner(text) {
    const banner = document.getElementById("banner");
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  class ApiError extends Error {
    constructor(status, problem, retryAfter) {
      super(problem && (problem.detail || problem.title) ? (problem.title + (problem.detail ? ": " + problem.detail : "")) : "HTTP " + status);
      this.status = status;
      this.problem = problem;
      // Seconds the Api asked to wait before asking again (a 429 over the client's read allowance, a 503); null if none.
      this.retryAfter = retryAfter;
    }
  }

  // Retry-After in whole seconds, as the Api writes it; null when absent or not a number.
  function retryAfterOf(response) {
    const seconds = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    return Number.isFinite(seconds) && seconds > 0 ? seconds : null;
  }

  // How long to wait before asking again after error e: the Api's Retry-After when it is longer than the usual pause ms.
  function retryDelay(e, ms) {
    return e && e.retryAfter ? Math.max(ms, e.retryAfter * 1000) : ms;
  }

  // Whether e asks for the same read later (over the read allowance, or the Api briefly unable), rather than failing it.
  function isTryLater(e) {
    return e instanceof ApiError && (e.status === 429 || e.status === 503) && e.retryAfter !== null;
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (inRefreshTick) headers["X-Conveyor-Refresh"] = "1";
    if (method !== "GET") {
      headers[session.csrfHeader] = session.csrfToken;
      if (body !== undefined) headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      window.location.assign("/dashboard/login");
      throw new ApiError(401, { title: "Signed out" });
    }
    const text = await response.text();
    const data = text ? JSON.parse(text, exactTotals) : null;
    if (!response.ok) throw new ApiError(response.status, data, retryAfterOf(response));
    return data;
  }

  // A report's totalMinor can exceed what a JavaScript number holds exactly (2^53): kept as the digits the API wrote,
  // where the browser gives the parser the source text (elsewhere it stays a number).
  function exactTotals(key, value, context) {
    return key === "totalMinor" && context && typeof context.source === "string" ? context.source : value;
  }

  const hasScope = (scope) => session.scopes.includes("admin") || session.scopes.includes(scope);

  // ---- confirmation dialog -------------------------------------------------------------------

  function confirmDialog(title, text, { danger = false, typeToConfirm = null, confirmLabel = "Confirm" } = {}) {
    return new Promise((resolve) => {
      const dialog = document.getElementById("dialog");
      const confirm = document.getElementById("dialog-confirm");
      const cancel = document.getElementById("dialog-cancel");
      const extra = document.getElementById("dialog-extra");
      document.getElementById("dialog-title").textContent = title;
      document.getElementById("dialog-text").textContent = text;
      extra.replaceChildren();
      confirm.textContent = confirmLabel;
      confirm.className = danger ? "danger" : "primary";
      let input = null;
      if (typeToConfirm) {
        input = el("input", { id: "dialog-input", "aria-label": "Type " + typeToConfirm + " to confirm", placeholder: typeToConfirm, autocomplete: "off" });
        extra.append(el("p", { class: "muted" }, "Type ", el("strong", { text: typeToConfirm }), " to confirm."), input);
        confirm.disabled = true;
        input.addEventListener("input", () => { confirm.disabled = input.value !== typeToConfirm; });
      } else {
        confirm.disabled = false;
      }
      const close = (result) => {
        dialog.hidden = true;
        confirm.onclick = null;
        cancel.onclick = null;
        resolve(result);
      };
      confirm.onclick = () => close(true);
      cancel.onclick = () => close(false);
      dialog.hidden = false;
      (input || confirm).focus();
    });
  }

  // Reads an operation until it has ended, handing each reading to onUpdate; null once the view was left.
  async function pollOperation(token, id, onUpdate) {
    let waited = false;
    for (;;) {
      let op;
      try {
        op = await api("GET", "/api/operations/" + id);
      } catch (e) {
        // The operation goes on in the Api whatever this read was told: wait as asked and read it again.
        if (!isTryLater(e) || token !== renderToken) throw e;
        showBanner(e.message);
        waited = true;
        await new Promise((r) => setTimeout(r, retryDelay(e, OPERATION_POLL_MS)));
        continue;
      }
      if (waited) { showBanner(null); waited = false; }
      if (token !== renderToken) return null;
      onUpdate(op);
      if (op.state !== "running") return op;
      await new Promise((r) => setTimeout(r, OPERATION_POLL_MS));
    }
  }

  // ---- overview ------------------------------------------------------------------------------

  async function renderOverview(token) {
    const table = el("tbody");
    const updated = el("span", { class: "muted", id: "overview-updated" });
    const alarms = el("p", { class: "error", hidden: true });
    view().replaceChildren(el("section", { class: "card" },
      el("div", { class: "row" }, el("h1", { class: "grow", text: "Queues" }), updated),
      alarms,
      el("table", { id: "overview" },
        el("thead", {}, el("tr", {},
          el("th", { text: "Queue" }), el("th", { text: "Kind" }), el("th", { class: "num", text: "Messages" }),
          el("th", { class: "num", text: "Ready" }), el("th", { class: "num", text: "Unacked" }), el("th", { class: "num", text: "Consumers" }),
          el("th", { class: "num", text: "In/s" }), el("th", { class: "num", text: "Out/s" }), el("th", { class: "num", text: "Ack/s" }))),
        table)));

    const load = async () => {
      const data = await api("GET", "/dashboard/api/overview");
      if (token !== renderToken) return;
      table.replaceChildren(...data.queues.map((q) => el("tr", { "data-queue": q.name },
        el("td", {}, q.kind === "job" ? q.name : el("a", { href: "#/error-queues/" + encodeURIComponent(q.name), text: q.name })),
        el("td", {}, badge(q.kind)),
        el("td", { class: "num", "data-col": "messages", text: fmtNumber(q.messages) }),
        el("td", { class: "num", text: fmtNumber(q.ready) }),
        el("td", { class: "num", text: fmtNumber(q.unacknowledged) }),
        el("td", { class: "num", text: fmtNumber(q.consumers) }),
        el("td", { class: "num", text: fmtRate(q.publishRate) }),
        el("td", { class: "num", text: fmtRate(q.deliverRate) }),
        el("td", { class: "num", text: fmtRate(q.ackRate) }))));
      if (data.queues.length === 0) table.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "muted", text: "No queues yet." })));
      alarms.hidden = data.alarms.length === 0;
      alarms.textContent = data.alarms.length ? "Broker alarms: " + data.alarms.join(", ") : "";
      updated.textContent = "Updated " + new Date().toLocaleTimeString() + " · refreshes every " + OVERVIEW_REFRESH_MS / 1000 + " s";
      showBanner(null);
    };
    await load();
    every(OVERVIEW_REFRESH_MS, load);
  }

  // ---- error queues --------------------------------------------------------------------------

  async function renderErrorQueues(token) {
    if (!hasScope("admin")) return renderForbidden("Error queues need an API key with the admin scope.");
    const body = el("tbody");
    view().replaceChildren(el("section", { class: "card" }, el("h1", { text: "Error queues" }),
      el("table", { id: "error-queues" }, el("thead", {}, el("tr", {},
        el("th", { text: "Queue" }), el("th", { text: "Kind" }), el("th", { text: "Source queue" }),
        el("th", { class: "num", text: "Messages" }), el("th", { class: "num", text: "Consumers" }))), body)));
    const load = async () => {
      const queues = await api("GET", "/api/error-queues");
      if (token !== renderToken) return;
      body.replaceChildren(...queues.map((q) => el("tr", { "data-queue": q.name },
        el("td", {}, el("a", { href: "#/error-queues/" + encodeURIComponent(q.name), text: q.name })),
        el("td", {}, badge(q.kind)), el("td", { text: q.sourceQueue }),
        el("td", { class: "num", "data-col": "messages", text: fmtNumber(q.messages) }),
        el("td", { class: "num", text: fmtNumber(q.consumers) }))));
      if (queues.length === 0) body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No error queues." })));
    };
    await load();
    every(QUEUE_REFRESH_MS, load);
  }

  async function renderErrorQueue(token, queue) {
    if (!hasScope("admin")) return renderForbidden("Error queues need an API key with the admin scope.");
    const state = { selected: new Set(), messages: [], groups: [], depth: null };
    const depth = el("strong", { id: "queue-depth", text: "…" });
    const groupsBody = el("tbody");
    const messagesBody = el("tbody");
    const detail = el("div", { id: "message-detail" }, el("p", { class: "muted", text: "Select a message to see its headers, stack trace and body." }));
    const operationBox = el("div", { id: "operation" });
    const selectAll = el("input", { type: "checkbox", id: "select-all", "aria-label": "Select all shown messages" });
    const moveSelected = el("button", { type: "button", id: "move-selected", disabled: true, text: "Move selected" });
    const purgeSelected = el("button", { type: "button", id: "purge-selected", class: "danger", disabled: true, text: "Purge selected" });
    const moveAll = el("button", { type: "button", id: "move-all", text: "Move all" });
    const purgeAll = el("button", { type: "button", id: "purge-all", class: "danger", text: "Purge all" });
    const reload = el("button", { type: "button", id: "reload", text: "Reload messages" });
    const inspectNote = el("span", { class: "muted" });
    const selectionNote = el("span", { class: "muted", id: "selection-note" });

    view().replaceChildren(
      el("section", { class: "card" },
        el("div", { class: "row" },
          el("h1", { class: "grow" }, el("a", { href: "#/error-queues", text: "Error queues" }), " / ", queue),
          el("span", {}, "Messages: ", depth)),
        operationBox),
      el("section", { class: "card" },
        el("div", { class: "row" }, el("h2", { class: "grow", text: "Groups by fault" }), inspectNote, reload),
        el("table", { id: "groups" }, el("thead", {}, el("tr", {},
          el("th", { text: "Exception" }), el("th", { text: "Message" }), el("th", { class: "num", text: "Count" }),
          el("th", { text: "Last seen" }), el("th", { text: "" }))), groupsBody)),
      el("div", { class: "split" },
        el("section", { class: "card" },
          el("div", { class: "row" }, el("h2", { class: "grow", text: "Messages" }), selectionNote, moveSelected, purgeSelected, moveAll, purgeAll),
          el("table", { id: "messages" }, el("thead", {}, el("tr", {},
            el("th", {}, selectAll), el("th", { text: "Message id" }), el("th", { text: "Type" }),
            el("th", { text: "Exception" }), el("th", { text: "Faulted" }))), messagesBody)),
        el("section", { class: "card" }, el("h2", { text: "Message" }), detail)));

    // Selection is by message id, the only thing a move or purge can name; several shown messages may share one
    // (duplicate publishes, redeliveries, a producer's own ids). They are selected together, the counts are
    // messages, and an action on them carries a limit of that many: the walk goes from the head of the queue,
    // so it acts on exactly the messages shown and never on a later one with the same id.
    const selectedShown = () => state.messages.filter((m) => m.messageId && state.selected.has(m.messageId)).length;
    const updateButtons = () => {
      const n = selectedShown();
      moveSelected.disabled = n === 0;
      purgeSelected.disabled = n === 0;
      moveSelected.textContent = n ? "Move selected (" + n + ")" : "Move selected";
      purgeSelected.textContent = n ? "Purge selected (" + n + ")" : "Purge selected";
      selectAll.checked = n > 0 && n === state.messages.filter((m) => m.messageId).length;
      selectionNote.textContent = n > state.selected.size ? "Messages that share a message id are selected together." : "";
    };

    const showDetail = (m) => {
      const fields = [
        ["Message id", m.messageId], ["Message type", m.messageType], ["Job", m.jobId], ["Job kind", m.jobKind],
        ["Job status", m.jobStatus === "missing" ? "missing: its row was swept, so moving this message back runs the job again" : m.jobStatus],
        ["Original queue", m.originalQueue], ["Attempts", m.attempts], ["Faulted at", fmtTime(m.faultedAt)],
        ["Exception", m.exceptionType], ["Exception message", m.exceptionMessage], ["Reason", m.reason],
        ["Dead-letter reason", m.deadLetterReason], ["Group", m.groupId], ["Content type", m.contentType],
        ["Body size", fmtNumber(m.bodyBytes) + " bytes" + (m.bodyTruncated ? " (preview truncated)" : "")],
      ];
      detail.replaceChildren(...[
        el("dl", {}, fields.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [el("dt", { text: k }),
          // The job's page: its status, and from there a way to move just this job back.
          k === "Job" && hasScope("jobs:read")
            ? el("dd", {}, el("a", { id: "message-job", href: "#/jobs/" + encodeURIComponent(v), text: v }))
            : el("dd", { text: v })])),
        el("h3", { text: "Stack trace" }), el("pre", { id: "stack-trace", text: m.stackTrace || "(none)" }),
        m.faultHistory ? [el("h3", { text: "Fault history" }), el("pre", { text: JSON.stringify(m.faultHistory, null, 2) })] : null,
        el("h3", { text: "Body" }), el("pre", { id: "message-body", text: prettyBody(m.bodyPreview) }),
      ].flat().filter(Boolean));
    };

    const renderMessages = () => {
      messagesBody.replaceChildren(...state.messages.map((m) => {
        const box = el("input", { type: "checkbox", "aria-label": "Select message " + (m.messageId || ""), checked: state.selected.has(m.messageId), disabled: !m.messageId });
        const row = el("tr", { class: "clickable" + (state.selected.has(m.messageId) ? " selected" : ""), "data-message-id": m.messageId || "" },
          el("td", {}, box), el("td", { class: "id", text: m.messageId || "(none)" }), el("td", { text: shortType(m.messageType) }),
          el("td", { text: (m.exceptionType || "") + (m.exceptionMessage ? ": " + m.exceptionMessage : "") }),
          el("td", { text: fmtTime(m.faultedAt) }));
        box.addEventListener("click", (e) => {
          e.stopPropagation();
          if (box.checked) state.selected.add(m.messageId); else state.selected.delete(m.messageId);
          // Every shown message with this id follows.
          messagesBody.querySelectorAll("tr[data-message-id]").forEach((other) => {
            if (other.getAttribute("data-message-id") !== m.messageId) return;
            other.classList.toggle("selected", box.checked);
            const otherBox = other.querySelector("input[type=checkbox]");
            if (otherBox) otherBox.checked = box.checked;
          });
          updateButtons();
        });
        row.addEventListener("click", () => showDetail(m));
        return row;
      }));
      if (state.messages.length === 0) messagesBody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "The queue is empty." })));
      updateButtons();
    };

    const renderGroups = () => {
      groupsBody.replaceChildren(...state.groups.map((g) => el("tr", { "data-group-id": g.groupId },
        el("td", { text: g.exceptionType || "(none)" }), el("td", { text: g.exampleMessage || g.normalisedMessage }),
        el("td", { class: "num", "data-col": "count", text: fmtNumber(g.count) }), el("td", { text: fmtTime(g.lastSeen) }),
        el("td", { class: "actions" },
          el("button", { type: "button", class: "move-group", onclick: () => start("move", { groupId: g.groupId }, "the " + fmtNumber(g.count) + " message(s) of group “" + (g.exceptionType || "") + "”") , text: "Move group" }),
          el("button", { type: "button", class: "danger purge-group", onclick: () => start("purge", { groupId: g.groupId }, "the " + fmtNumber(g.count) + " message(s) of group “" + (g.exceptionType || "") + "”"), text: "Purge group" })))));
      if (state.groups.length === 0) groupsBody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No faults." })));
    };

    const loadDepth = async () => {
      const queues = await api("GET", "/api/error-queues");
      if (token !== renderToken) return;
      const q = queues.find((x) => x.name === queue);
      depth.textContent = q ? fmtNumber(q.messages) : "(no such queue)";
    };

    const inspect = async () => {
      try {
        const [groups, messages] = [await api("GET", "/api/error-queues/" + encodeURIComponent(queue) + "/groups"),
          await api("GET", "/api/error-queues/" + encodeURIComponent(queue) + "/messages?limit=50")];
        if (token !== renderToken) return;
        state.groups = groups.groups;
        state.messages = messages.messages;
        const ids = new Set(state.messages.map((m) => m.messageId));
        state.selected = new Set([...state.selected].filter((id) => ids.has(id)));
        depth.textContent = fmtNumber(messages.queueDepth);
        inspectNote.textContent = "Examined " + fmtNumber(groups.examined) + " message(s) at " + new Date().toLocaleTimeString();
        renderGroups();
        renderMessages();
      } catch (e) {
        if (e.status === 409) inspectNote.textContent = "An operation is using this queue; reload when it has finished.";
        else throw e;
      }
    };

    async function start(kind, filter, what, limit) {
      const move = kind === "move";
      const ok = await confirmDialog(
        (move ? "Move " : "Purge ") + what,
        move ? "They go back to their original queue to be processed again. Messages not matched keep their place."
          : "They are deleted for good. This cannot be undone.",
        { danger: !move, typeToConfirm: move ? null : queue, confirmLabel: move ? "Move" : "Purge" });
      if (!ok) return;
      const body = filter ? { filter } : {};
      if (limit) body.limit = limit;
      if (!move) body.confirm = queue;
      try {
        const accepted = await api("POST", "/api/error-queues/" + encodeURIComponent(queue) + "/" + kind, body);
        await followOperation(accepted.operationId);
      } catch (e) {
        showBanner(e.message);
      }
    }

    async function followOperation(id) {
      const title = el("h3", { text: "Operation" });
      const bar = el("div");
      const numbers = el("p", { id: "operation-numbers" });
      const stateText = el("span", { id: "operation-state" });
      operationBox.replaceChildren(el("div", { class: "card" }, el("div", { class: "row" }, title, stateText), el("div", { class: "progress" }, bar), numbers));
      const ended = await pollOperation(token, id, (op) => {
        title.textContent = (op.kind === "move" ? "Move" : "Purge") + " " + op.operationId.slice(0, 8) + " by " + op.requestedBy;
        stateText.replaceChildren(badge(op.state));
        const done = op.moved + op.purged;
        const total = Math.max(1, op.queueDepthAtStart);
        bar.style.width = Math.min(100, Math.round(100 * (op.state === "running" ? done / total : 1))) + "%";
        numbers.textContent = "Examined " + fmtNumber(op.examined) + " · matched " + fmtNumber(op.matched) + " · moved " + fmtNumber(op.moved)
          + " · purged " + fmtNumber(op.purged) + " · failed " + fmtNumber(op.failed) + (op.left !== null ? " · left " + fmtNumber(op.left) : "")
          + (op.jobsMissing !== null ? " · jobs missing " + fmtNumber(op.jobsMissing)
            + (op.jobsMissing > 0 ? (op.kind === "move"
              ? " (their rows were swept: moving their messages back runs those jobs again)"
              : " (their rows were swept: these messages were their last record, and a purge deletes them for good)") : "") : "")
          + (op.detail ? " · " + op.detail : "");
      });
      if (!ended) return;
      state.selected.clear();
      await inspect();
    }

    selectAll.addEventListener("change", () => {
      state.selected = selectAll.checked ? new Set(state.messages.map((m) => m.messageId).filter(Boolean)) : new Set();
      renderMessages();
    });
    const startSelected = (kind) => {
      const n = selectedShown();
      start(kind, { messageIds: [...state.selected] }, n + " selected message(s)", n);
    };
    moveSelected.addEventListener("click", () => startSelected("move"));
    purgeSelected.addEventListener("click", () => startSelected("purge"));
    moveAll.addEventListener("click", () => start("move", null, "every message in " + queue));
    purgeAll.addEventListener("click", () => start("purge", null, "every message in " + queue));
    reload.addEventListener("click", () => inspect().catch((e) => showBanner(e.message)));

    await inspect();
    every(QUEUE_REFRESH_MS, loadDepth);
  }

  function shortType(type) {
    if (!type) return "";
    const first = type.split(";")[0];
    return first.replace(/^urn:message:/, "");
  }

  function prettyBody(text) {
    if (!text) return "(empty)";
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
  }

  // ---- jobs ----------------------------------------------------------------------------------

  async function renderJobs(token, params) {
    if (!hasScope("jobs:read")) return renderForbidden("Jobs need an API key with the jobs:read scope.");
    const status = params.get("status") || "";
    const lookup = el("input", { id: "job-id", placeholder: "Job id, or a paymentId, webhookId or reportId", "aria-label": "Job id or business key", size: 44, autocomplete: "off" });
    const lookupBy = el("select", { id: "lookup-by", "aria-label": "Look up by" },
      el("option", { value: "id", text: "Job id" }),
      el("option", { value: "key", text: "Business key" }));
    const filter = el("select", { id: "status-filter", "aria-label": "Status" },
      el("option", { value: "", text: "All statuses" }),
      JOB_STATUSES.map((s) => el("option", { value: s, text: s, selected: s === status ? "selected" : null })));
    const body = el("tbody");
    const more = el("button", { type: "button", id: "more-jobs", text: "Older", hidden: true });
    const form = el("form", { class: "row", id: "job-lookup" }, lookupBy, lookup, el("button", { type: "submit", class: "primary", text: "Open job" }));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const value = lookup.value.trim();
      if (!value) return;
      window.location.hash = (lookupBy.value === "key" ? "#/jobs/by-key/" : "#/jobs/") + encodeURIComponent(value);
    });
    filter.addEventListener("change", () => { window.location.hash = "#/jobs" + (filter.value ? "?status=" + encodeURIComponent(filter.value) : ""); });
    // Jobs waiting in the store (after an outage, the redeliveries it left): one kind's, made due now.
    let runNow = null;
    const runNowResult = el("p", { id: "run-now-result", class: "muted" });
    if ((status === "retry-scheduled" || status === "scheduled") && hasScope("jobs:publish")) {
      const kind = el("select", { id: "run-now-kind", "aria-label": "Kind to run now" }, JOB_KINDS.map((k) => el("option", { value: k, text: k })));
      const button = el("button", { type: "button", id: "run-now", text: "Run now" });
      button.addEventListener("click", () => runKindNow(kind.value).catch((e) => showBanner(e.message)));
      runNow = [kind, button];
    }
    async function runKindNow(kind) {
      const ok = await confirmDialog("Run " + status + " " + kind + " jobs now",
        "Up to 1,000 of them, soonest first, run now instead of at their time, each with the retry budget it has.", { confirmLabel: "Run now" });
      if (!ok) return;
      const made = await api("POST", "/api/jobs/run-now", { kind, status });
      runNowResult.textContent = made.released + " " + kind + " job(s) made due now" +
        (made.stillWaiting > 0 ? "; " + made.stillWaiting + " still wait: run now again to release them." : ".");
      await load(false);
    }
    view().replaceChildren(
      el("section", { class: "card" }, el("h1", { text: "Jobs" }), form),
      el("section", { class: "card" },
        el("div", { class: "row" }, el("h2", { class: "grow", text: "Recent jobs" }), runNow, filter),
        runNowResult,
        el("table", { id: "jobs" }, el("thead", {}, el("tr", {},
          el("th", { text: "Job" }), el("th", { text: "Kind" }), el("th", { text: "Status" }), el("th", { class: "num", text: "Attempts" }),
          el("th", { text: "Last error" }), el("th", { text: "Created" }), el("th", { text: "Updated" }))), body),
        el("div", { class: "actions" }, more)));

    let cursor = null;
    const load = async (append) => {
      const query = new URLSearchParams({ limit: "50" });
      if (status) query.set("status", status);
      if (append && cursor) query.set("cursor", cursor);
      const page = await api("GET", "/api/jobs?" + query.toString());
      if (token !== renderToken) return;
      const rows = page.items.map((j) => el("tr", { "data-job-id": j.jobId },
        el("td", {}, el("a", { href: "#/jobs/" + encodeURIComponent(j.jobId), text: j.jobId })),
        el("td", { text: j.kind }), el("td", {}, badge(j.status)), el("td", { class: "num", text: j.attempts }),
        el("td", { text: j.lastError || "" }), el("td", { text: fmtTime(j.createdAt) }), el("td", { text: fmtTime(j.updatedAt) })));
      if (append) body.append(...rows); else body.replaceChildren(...rows);
      if (!append && rows.length === 0) body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No jobs." })));
      cursor = page.nextCursor;
      more.hidden = !cursor;
    };
    more.addEventListener("click", () => load(true).catch((e) => showBanner(e.message)));
    await load(false);
  }

  async function renderJob(token, id) {
    if (!hasScope("jobs:read")) return renderForbidden("Jobs need an API key with the jobs:read scope.");
    const box = el("section", { class: "card", id: "job" }, el("p", { class: "muted", text: "Loading…" }));
    const moveResult = el("p", { id: "job-move-result", class: "muted" });
    view().replaceChildren(el("p", {}, el("a", { href: "#/jobs", text: "← Jobs" })), box, moveResult);
    const load = async () => {
      let job;
      try {
        job = await api("GET", "/api/jobs/" + encodeURIComponent(id));
      } catch (e) {
        if (e.status === 404 || e.status === 400) {
          box.replaceChildren(el("h1", { text: "Job not found" }), el("p", { class: "muted", text: "There is no job " + id + "." }));
          return false;
        }
        throw e;
      }
      let result = null;
      if (job.status === "succeeded") {
        try {
          result = await api("GET", "/api/jobs/" + encodeURIComponent(id) + "/result");
        } catch (e) {
          // 409: moved on since it was read (no longer succeeded); 404: the record of its effect is gone.
          if (e.status !== 404 && e.status !== 409) throw e;
        }
      }
      if (token !== renderToken) return false;
      const events = [el("li", {}, el("strong", { text: "Created" }), " ", fmtTime(job.createdAt))];
      if (job.attempts > 0) events.push(el("li", {}, el("strong", { text: job.attempts + " attempt(s)" }), " · last change ", fmtTime(job.updatedAt)));
      if (job.lastError) events.push(el("li", { class: "bad" }, el("strong", { text: "Last error" }), el("pre", { id: "job-last-error", text: job.lastError })));
      if (job.nextAttemptAt && !TERMINAL_JOB.includes(job.status)) {
        events.push(el("li", { class: "future" }, el("strong", { text: job.status === "scheduled" ? "Due" : "Next attempt" }), " ", fmtTime(job.nextAttemptAt)));
      }
      if (job.finishedAt) events.push(el("li", { class: job.status === "succeeded" ? "" : "bad" }, el("strong", { text: "Finished (" + job.status + ")" }), " ", fmtTime(job.finishedAt)));
      let action = null;
      if (job.status === "dead-lettered" && hasScope("admin")) {
        action = el("button", { type: "button", class: "primary", id: "job-move-back", text: "Move back" });
        action.addEventListener("click", () => moveJobBack(token, job).catch((e) => showBanner(e.message)));
      } else if ((job.status === "scheduled" || job.status === "retry-scheduled") && hasScope("jobs:publish")) {
        action = el("button", { type: "button", class: "primary", id: "job-run-now", text: "Run now" });
        action.addEventListener("click", () => runJobNow(job).catch((e) => showBanner(e.message)));
      }
      box.replaceChildren(
        el("div", { class: "row" }, el("h1", { class: "grow", text: job.kind + " " + job.jobId }), action, badge(job.status)),
        el("dl", {},
          el("dt", { text: "Status" }), el("dd", { id: "job-status", text: job.status }),
          job.businessKey ? [el("dt", { text: "Business key" }), el("dd", { id: "job-business-key", text: job.businessKey })] : null,
          el("dt", { text: "Attempts" }), el("dd", { id: "job-attempts", text: job.attempts }),
          job.progress !== null && job.progress !== undefined ? [el("dt", { text: "Progress" }), el("dd", { text: job.progress + "%" })] : null),
        el("h2", { text: "Timeline" }), el("ul", { class: "timeline" }, events),
        ...resultSection(result));
      return !TERMINAL_JOB.includes(job.status);
    };

    // A dead-lettered job's command waits in <kind>_error: move exactly that one back (filter by job id).
    async function moveJobBack(token, job) {
      const queue = job.kind + "_error";
      const ok = await confirmDialog("Move back job " + job.jobId,
        "Its command goes from " + queue + " back to " + job.kind + " and runs again with a fresh retry budget.", { confirmLabel: "Move" });
      if (!ok) return;
      const accepted = await api("POST", "/api/error-queues/" + encodeURIComponent(queue) + "/move", { filter: { jobIds: [job.jobId] } });
      const op = await pollOperation(token, accepted.operationId, () => {});
      if (!op) return;
      moveResult.textContent = op.moved > 0 ? "Moved back by operation " + op.operationId.slice(0, 8) + " (" + op.state + ")."
        : "Nothing moved: no message of this job is in " + queue + " (" + op.state + ").";
      // The job runs again: follow it until the page is left.
      await load();
      if (op.moved > 0) refresh();
    }

    // A job waiting in the store (scheduled, or a delayed redelivery ahead): its command is published within moments.
    async function runJobNow(job) {
      const ok = await confirmDialog("Run job " + job.jobId + " now",
        (job.status === "scheduled" ? "It runs now instead of at its scheduled time" : "Its next attempt runs now instead of at its time")
          + ", with the retry budget it has.", { confirmLabel: "Run now" });
      if (!ok) return;
      await api("POST", "/api/jobs/" + encodeURIComponent(job.jobId) + "/run-now");
      moveResult.textContent = "Due now: a worker runs it next.";
      await load();
      refresh();
    }

    let refreshing = false;
    const refresh = () => {
      if (refreshing) return;
      refreshing = true;
      every(JOB_REFRESH_MS, async () => { await load(); });
    };
    if (await load()) refresh();
  }

  // What a succeeded job did (GET /api/jobs/{id}/result): its charge, its webhook's answer or its report's totals.
  function resultSection(result) {
    if (!result) return [];
    const rows = [];
    const add = (label, value) => rows.push(el("dt", { text: label }), el("dd", { text: value === null || value === undefined ? "–" : value }));
    let totals = null;
    if (result.charge) {
      const c = result.charge;
      add("Gateway charge", c.gatewayChargeId);
      add("Amount", c.amountMinor + " " + c.currency + " (minor units)");
      add("Account", c.accountId);
      add("Charged", fmtTime(c.chargedAt));
    } else if (result.webhook) {
      const w = result.webhook;
      add("Receiver", w.receiverOrigin);
      add("Answered", w.statusCode);
      add("Event type", w.eventType);
      add("Delivered", fmtTime(w.deliveredAt));
    } else if (result.report) {
      const r = result.report;
      add("Account", r.accountId || "all");
      add("Currency", r.currency || "all");
      add("Rows scanned", fmtNumber(r.rowsScanned));
      add("Completed", fmtTime(r.completedAt));
      const items = Array.isArray(r.totals) ? r.totals : [];
      totals = el("table", { id: "report-totals" },
        el("thead", {}, el("tr", {}, el("th", { text: "Currency" }), el("th", { class: "num", text: "Charges" }), el("th", { class: "num", text: "Total (minor units)" }))),
        el("tbody", {}, items.length === 0
          ? el("tr", {}, el("td", { colspan: 3, class: "muted", text: "No charges matched." }))
          : items.map((t) => el("tr", {}, el("td", { text: t.currency }), el("td", { class: "num", text: fmtNumber(t.count) }), el("td", { class: "num", text: String(t.totalMinor) })))));
    }
    return [el("h2", { text: "Result" }), el("dl", { id: "job-result" }, rows), totals].filter((node) => node !== null);
  }

  // The jobs whose command has this business key, one kind at a time (the key is unique per kind).
  async function renderJobsByKey(token, key) {
    if (!hasScope("jobs:read")) return renderForbidden("Jobs need an API key with the jobs:read scope.");
    const box = el("section", { class: "card", id: "job" }, el("p", { class: "muted", text: "Loading…" }));
    view().replaceChildren(el("p", {}, el("a", { href: "#/jobs", text: "← Jobs" })), box);
    // Every kind's business key is a UUID (the API refuses anything else with a 400).
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(key)) {
      box.replaceChildren(el("h1", { text: "Job not found" }),
        el("p", { class: "muted", text: "A business key is a UUID (a paymentId, webhookId or reportId); " + key + " is not one." }));
      return;
    }
    const found = [];
    for (const kind of JOB_KINDS) {
      try {
        const page = await api("GET", "/api/jobs?" + new URLSearchParams({ kind: kind, businessKey: key, limit: "1" }).toString());
        found.push(...page.items);
      } catch (e) {
        if (e.status !== 400) throw e;
      }
    }
    if (token !== renderToken) return;
    if (found.length === 1) {
      window.location.replace("#/jobs/" + encodeURIComponent(found[0].jobId));
      return;
    }
    if (found.length === 0) {
      box.replaceChildren(el("h1", { text: "Job not found" }), el("p", { class: "muted", text: "There is no job with the business key " + key + "." }));
      return;
    }
    box.replaceChildren(el("h1", { text: "Jobs with business key " + key }),
      el("ul", { id: "jobs-by-key" }, found.map((j) => el("li", {},
        el("a", { href: "#/jobs/" + encodeURIComponent(j.jobId), text: j.kind + " " + j.jobId }), " ", badge(j.status)))));
  }

  function renderForbidden(text) {
    view().replaceChildren(el("section", { class: "card" }, el("h1", { text: "Not allowed" }), el("p", { text: text })));
  }

  function renderBadAddress(hash) {
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.remove("active"));
    view().replaceChildren(el("section", { class: "card", id: "bad-address" },
      el("h1", { text: "Not a valid address" }),
      el("p", { text: "The part after # is not valid percent-encoding: " + hash }),
      el("p", {}, el("a", { href: "#/overview", text: "Go to the overview" }))));
  }

  // ---- routing -------------------------------------------------------------------------------

  async function route() {
    timers.forEach(clearTimeout);
    timers = [];
    const token = ++renderToken;
    showBanner(null);
    const hash = window.location.hash || "#/overview";
    const [path, query] = hash.slice(1).split("?");
    const params = new URLSearchParams(query || "");
    let parts;
    try {
      parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    } catch (e) {
      // A hand-edited or truncated link ("%E0%A4"): say so, rather than leave the last view standing.
      renderBadAddress(hash);
      return;
    }
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === (parts[0] || "overview")));
    try {
      if (parts[0] === "error-queues" && parts[1]) await renderErrorQueue(token, parts[1]);
      else if (parts[0] === "error-queues") await renderErrorQueues(token);
      else if (parts[0] === "jobs" && parts[1] === "by-key" && parts[2]) await renderJobsByKey(token, parts[2]);
      else if (parts[0] === "jobs" && parts[1]) await renderJob(token, parts[1]);
      else if (parts[0] === "jobs") await renderJobs(token, params);
      else await renderOverview(token);
    } catch (e) {
      if (token === renderToken) {
        if (e.status === 403) renderForbidden("Your API key's scopes do not allow this.");
        else showBanner(e.message);
      }
    }
  }

  async function start() {
    let response;
    for (;;) {
      response = await fetch("/dashboard/api/session", { credentials: "same-origin", cache: "no-store" });
      const retryAfter = retryAfterOf(response);
      if (response.ok || response.status === 401 || retryAfter === null) break;
      // Signed in, but asked to wait (a 429 over the read allowance, a 503): the sign-in page would only send the
      // browser back here, each round another read. Say why, and ask again when told.
      let problem = null;
      try { problem = await response.json(); } catch { /* a gateway's page: "HTTP 429" */ }
      showBanner(new ApiError(response.status, problem, retryAfter).message);
      await new Promise((r) => setTimeout(r, retryAfter * 1000));
    }
    if (!response.ok) {
      window.location.assign("/dashboard/login");
      return;
    }
    showBanner(null);
    session = await response.json();
    document.getElementById("who-name").textContent = session.name;
    document.getElementById("who-scopes").textContent = "(" + session.scopes.join(", ") + ")";
    document.getElementById("sign-out").addEventListener("click", async () => {
      try {
        await api("POST", "/dashboard/logout");
        window.location.assign("/dashboard/login");
      } catch (e) {
        // Never silently: the session is still live until this succeeds.
        showBanner("Not signed out: " + e.message);
      }
    });
    window.addEventListener("hashchange", route);
    await route();
  }

  document.addEventListener("DOMContentLoaded", () => { start().catch((e) => showBanner(e.message)); });
})();
