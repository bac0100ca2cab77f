/* Herald dashboard: the operator actions (cleanup, cache, streams, drain).
 *
 * Separate from dashboard.js (the charts and the "try it" panel): it only reads the
 * admin token that page keeps in sessionStorage, and talks to /api/admin/* with fetch.
 *
 * Why things are done the way they are:
 * - The token travels in the Authorization header of each request, never in a
 *   cookie: a cross-site page cannot make the browser attach a header, so there is
 *   nothing to forge (no CSRF), and the server never sets or reads an admin cookie.
 * - Every action is confirmed in a <dialog> of the page (not window.confirm, which
 *   tests and some kiosks suppress) that says what will happen on how many workers.
 * - The answer is shown as it came: a summary line (who answered, who did not) and
 *   the JSON, so what the operator reads is what the server did.
 */
"use strict";

(() => {
  const TOKEN_KEY = "herald.adminToken";
  const $ = (id) => document.getElementById(id);

  const dialog = $("action-confirm");
  const result = $("action-result");
  const output = $("action-output");
  let pending = null;

  function show(state, text, body) {
    result.dataset.state = state;
    result.textContent = text;
    output.textContent = body === undefined ? "" : JSON.stringify(body, null, 2);
  }

  function summary(answer) {
    const parts = [`${answer.action}: ${answer.answered} worker(s) did it`];
    if (answer.missing.length) parts.push(`no answer from ${answer.missing.join(", ")}`);
    const failed = Object.keys(answer.failed);
    if (failed.length) parts.push(`failed on ${failed.join(", ")}`);
    parts.push(`total ${JSON.stringify(answer.total)}`);
    return parts.join("; ");
  }

  async function run(action) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      show("error", "enter the admin token above first");
      return;
    }
    show("connecting", `${action.label}: asking every worker...`);
    let response;
    try {
      const init = {
        method: action.method,
        headers: { Authorization: `Bearer ${token}` },
        credentials: "omit",
        cache: "no-store",
      };
      if (action.body !== null) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(action.body);
      }
      response = await fetch(action.path, init);
    } catch {
      show("error", `${action.label}: server unreachable`);
      return;
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (response.status !== 200 || body === null) {
      const detail = body && body.detail !== undefined ? JSON.stringify(body.detail) : "";
      show("error", `${action.label} refused (${response.status}) ${detail}`, body ?? undefined);
      return;
    }
    show(body.complete ? "done" : "error", summary(body), body);
  }

  function ask(action) {
    pending = action;
    $("action-confirm-text").textContent = action.confirm;
    dialog.showModal();
  }

  $("action-confirm-ok").addEventListener("click", () => {
    dialog.close();
    const action = pending;
    pending = null;
    if (action) run(action);
  });
  $("action-confirm-cancel").addEventListener("click", () => {
    dialog.close();
    if (pending) show("idle", `${pending.label}: cancelled, nothing was done`);
    pending = null;
  });

  function optional(id) {
    const value = $(id).value.trim();
    return value === "" ? undefined : value;
  }

  const ACTIONS = {
    "action-cleanup-light": () => ({
      label: "light cleanup", method: "POST", path: "/api/admin/cleanup",
      body: { level: "light" },
      confirm: "Run the light cleanup (what the guard runs at warning) on every worker?",
    }),
    "action-cleanup-aggressive": () => ({
      label: "aggressive cleanup", method: "POST", path: "/api/admin/cleanup",
      body: { level: "aggressive" },
      confirm: "Run the aggressive cleanup (what the guard runs at critical: the cache is " +
        "emptied, histories cut to a few events) on every worker?",
    }),
    "action-cache-clear": () => {
      const conversation = optional("action-conversation");
      return {
        label: "clear cache", method: "POST", path: "/api/admin/cache/clear",
        body: conversation ? { conversation_id: conversation } : null,
        confirm: conversation
          ? `Drop the cached answers of conversation ${conversation} on every worker?`
          : "Empty the response cache on every worker?",
      };
    },
    "action-streams-close": () => {
      const channel = optional("action-channel");
      const client = optional("action-client");
      const retry = optional("action-retry");
      const body = {};
      if (channel) body.channel = channel;
      if (client) body.client = client;
      if (retry) body.retry_ms = Number(retry);
      const named = [channel && `channel ${channel}`, client && `client ${client}`]
        .filter(Boolean).join(" and ") || "(nothing named: the server will refuse)";
      return {
        label: "close streams", method: "POST", path: "/api/admin/streams/close", body,
        confirm: `Close the streams of ${named} on every worker? Clients reconnect and ` +
          "resume from their last event.",
      };
    },
    "action-drain": () => ({
      label: "drain", method: "POST", path: "/api/admin/drain", body: null,
      confirm: "Drain every worker: refuse new streams (503) and close the open ones?",
    }),
    "action-undrain": () => ({
      label: "end drain", method: "DELETE", path: "/api/admin/drain", body: null,
      confirm: "End the drain: accept new streams again on every worker?",
    }),
  };

  for (const [id, describe] of Object.entries(ACTIONS)) {
    $(id).addEventListener("click", () => ask(describe()));
  }
})();
