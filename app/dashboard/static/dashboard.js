/* Herald dashboard: live charts from the admin stream, and a panel to try the API.
 *
 * Plain browser JavaScript, no build step, nothing from another origin. The page's
 * Content-Security-Policy allows 'self' only, so everything is built with DOM calls:
 * no inline handlers, no style attributes, no HTML strings.
 *
 * Why things are done the way they are:
 * - EventSource cannot send headers. The admin token is sent once, in a header, to
 *   POST /api/admin/ticket; the stream URL carries the short-lived ticket it returns.
 * - EventSource reconnects by itself after a network drop (readyState CONNECTING)
 *   and sends Last-Event-ID. It gives up for good on any non-200 answer (readyState
 *   CLOSED) without telling us the status, so the page then asks the server itself
 *   (one fetch) to show why: 503 from the memory guard, an expired ticket, ...
 * - Every list the page keeps is bounded: chart samples, received events.
 */
"use strict";

(() => {
  const TOKEN_KEY = "herald.adminToken";
  const RESPONSE_KEY = "herald.response";
  const MAX_SAMPLES = 90;
  const MAX_RECEIVED = 50;
  const MAX_FEED_RETRY_MS = 10000;
  const CHANNEL_PATTERN = /^[A-Za-z0-9._:/-]{1,128}$/;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MB = 1024 * 1024;

  const $ = (id) => document.getElementById(id);

  function setState(element, state, text) {
    element.dataset.state = state;
    element.textContent = text;
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch {
      return response.statusText || "";
    }
  }

  /** Why a stream URL would not open: its status, detail and Retry-After, or 0 when
   * the server cannot be reached. A 200 means it would open now; that probe stream is
   * aborted at once. */
  async function probe(url) {
    const controller = new AbortController();
    try {
      const response = await fetch(url, {
        signal: controller.signal,
        cache: "no-store",
        // As an API client: a refused stream then answers 503 with its reason, where a
        // browser's EventSource gets a 200 that only says when to come back.
        headers: { Accept: "application/json" },
      });
      if (response.status === 200) {
        controller.abort();
        return { status: 200, detail: "", retryAfter: null };
      }
      const retryAfter = Number(response.headers.get("Retry-After")) || null;
      return { status: response.status, detail: await detailOf(response), retryAfter };
    } catch {
      return { status: 0, detail: "server unreachable", retryAfter: null };
    }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  }

  function formatNumber(value, digits) {
    return value.toLocaleString("en", { maximumFractionDigits: digits });
  }

  // --- charts ---------------------------------------------------------------------

  /** The smallest of 1, 2, 2.5, 5 × a power of ten at or above value. */
  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const factor of [1, 2, 2.5, 5, 10]) {
      if (factor * power >= value) return factor * power;
    }
    return 10 * power;
  }

  /** A line chart in an inline SVG: named series over the last MAX_SAMPLES frames,
   * and horizontal guide lines (the memory thresholds). */
  class LineChart {
    constructor(figure, { format, legend, fixedMax = null, minMax = 1 }) {
      this.svg = figure.querySelector("svg");
      this.legend = legend;
      this.format = format;
      this.fixedMax = fixedMax;
      this.minMax = minMax;
      this.series = new Map(); // name -> {values: [], index}
      this.guides = [];
      this.top = null;
      this.samples = 0;
    }

    /** values: {name: number | null}; guides: [{name, value, kind}]; top: optional
     * value the y axis must reach (the memory limit). */
    push(values, guides = [], top = null) {
      for (const name of Object.keys(values)) {
        if (!this.series.has(name)) {
          const padding = new Array(Math.min(this.samples, MAX_SAMPLES)).fill(null);
          this.series.set(name, { values: padding, index: this.series.size % 4 });
        }
      }
      for (const [name, line] of this.series) {
        const value = values[name];
        line.values.push(typeof value === "number" ? value : null);
        if (line.values.length > MAX_SAMPLES) line.values.shift();
      }
      this.guides = guides;
      this.top = top;
      this.samples += 1;
      this.draw();
    }

    draw() {
      const [left, right, topY, bottomY] = [52, 590, 10, 150];
      const all = [...this.series.values()].flatMap((line) => line.values);
      const numbers = all.filter((value) => value !== null);
      let max = this.fixedMax;
      if (max === null && this.top !== null) {
        // Memory: the limit is the top, so the guide lines sit where they belong.
        max = Math.max(this.top, ...numbers.map((value) => value * 1.05));
      } else if (max === null) {
        max = niceCeiling(Math.max(this.minMax, ...numbers) * 1.1);
      }
      const y = (value) => bottomY - (value / max) * (bottomY - topY);
      const step = (right - left) / (MAX_SAMPLES - 1);

      const nodes = [
        svg("rect", { class: "frame", x: left, y: topY, width: right - left, height: bottomY - topY }),
        svg("line", { class: "grid", x1: left, x2: right, y1: y(max / 2), y2: y(max / 2) }),
      ];
      for (const [value, at] of [[max, topY + 4], [max / 2, y(max / 2) + 4], [0, bottomY]]) {
        const label = svg("text", { class: "axis", x: left - 6, y: at, "text-anchor": "end" });
        label.textContent = this.format(value);
        nodes.push(label);
      }
      for (const guide of this.guides) {
        const at = y(guide.value);
        nodes.push(svg("line", {
          class: `guide guide-${guide.kind}`, x1: left, x2: right, y1: at, y2: at,
        }));
        // Warning labelled on the left, critical on the right: close lines stay legible.
        const onLeft = guide.kind === "warning";
        const label = svg("text", {
          class: `guide-label guide-${guide.kind}`,
          x: onLeft ? left + 4 : right - 4,
          y: at - 4,
          "text-anchor": onLeft ? "start" : "end",
        });
        label.textContent = `${guide.name} ${this.format(guide.value)}`;
        nodes.push(label);
      }
      for (const line of this.series.values()) {
        const offset = MAX_SAMPLES - line.values.length;
        let path = "";
        let pen = "M";
        line.values.forEach((value, i) => {
          if (value === null) {
            pen = "M"; // a gap: a worker that was not reporting
            return;
          }
          path += `${pen}${(left + (offset + i) * step).toFixed(1)},${y(value).toFixed(1)} `;
          const alone = pen === "M" && (i + 1 === line.values.length || line.values[i + 1] === null);
          if (alone) path += "h0.01 "; // with round caps, a lone sample shows as a dot
          pen = "L";
        });
        if (path) nodes.push(svg("path", { class: `series series-${line.index}`, d: path }));
      }
      if (!numbers.length) {
        const empty = svg("text", {
          class: "empty", x: (left + right) / 2, y: (topY + bottomY) / 2, "text-anchor": "middle",
        });
        empty.textContent = "waiting for data…";
        nodes.push(empty);
      }
      this.svg.replaceChildren(...nodes);
      this.svg.dataset.samples = String(this.samples);
      this.drawLegend();
    }

    drawLegend() {
      const keys = [];
      for (const [name, line] of this.series) {
        const key = el("span", "key");
        key.append(el("span", `swatch series-${line.index}`), name);
        keys.push(key);
      }
      for (const guide of this.guides) {
        const key = el("span", "key");
        key.append(el("span", `swatch guide-${guide.kind}`), guide.name);
        keys.push(key);
      }
      this.legend.replaceChildren(...keys);
    }
  }

  const megabytes = (value) => `${formatNumber(value / MB, value < 10 * MB ? 1 : 0)} MB`;
  const charts = {
    memory: new LineChart($("chart-memory"), { format: megabytes, legend: $("legend-memory") }),
    connections: new LineChart($("chart-connections"), {
      format: (value) => formatNumber(value, 1), legend: $("legend-connections"), minMax: 4,
    }),
    events: new LineChart($("chart-events"), {
      format: (value) => formatNumber(value, 1), legend: $("legend-events"), minMax: 5,
    }),
    cache: new LineChart($("chart-cache"), {
      format: (value) => `${formatNumber(value, 0)} %`, fixedMax: 100, legend: $("legend-cache"),
    }),
  };

  function render(metrics) {
    const { memory, total, workers, rates } = metrics;
    const thresholds = memory.thresholds;
    const rss = {};
    for (const worker of workers) rss[worker.worker] = worker.rss_bytes;
    // Kernel socket buffers: one figure for the container (or host), added to RSS for
    // the level, so drawn once, beside the workers' RSS.
    if (typeof memory.socket_bytes === "number") rss["socket memory"] = memory.socket_bytes;
    charts.memory.push(
      rss,
      [
        { name: "warning", value: thresholds.warning_bytes, kind: "warning" },
        { name: "critical", value: thresholds.critical_bytes, kind: "critical" },
      ],
      memory.limit_bytes,
    );
    charts.connections.push({ "open streams": total.connections });
    charts.events.push({
      "published/s": rates.published_per_s,
      "delivered/s": rates.delivered_per_s,
    });
    const hitRate = rates.cache_hit_rate;
    charts.cache.push({ "hit rate": hitRate === null ? null : hitRate * 100 });

    const sockets = typeof memory.socket_bytes === "number"
      ? ` + ${megabytes(memory.socket_bytes)} sockets` : "";
    $("value-memory").textContent =
      `${megabytes(total.rss_bytes)}${sockets} · ${formatNumber(memory.percent, 1)} % of ${megabytes(memory.limit_bytes)}`;
    const worst = workers.some((w) => w.level === "critical") ? "critical"
      : workers.some((w) => w.level === "warning") ? "warning" : memory.level;
    const level = $("memory-level");
    level.dataset.level = worst;
    level.textContent = worst;
    $("value-connections").textContent = formatNumber(total.connections, 0);
    $("value-events").textContent = rates.published_per_s === null ? "–"
      : `${formatNumber(rates.published_per_s, 1)} published · ${formatNumber(rates.delivered_per_s, 1)} delivered`;
    $("value-cache").textContent = hitRate === null ? "no lookups yet"
      : `${formatNumber(hitRate * 100, 1)} % (${total.cache_hits} of ${total.cache_hits + total.cache_misses})`;

    const refusing = memory.refusing || workers.some((w) => w.refusing);
    $("refusing-banner").hidden = !refusing;
    const summary = $("summary");
    summary.hidden = false;
    summary.textContent =
      `${total.workers} worker${total.workers === 1 ? "" : "s"} · figures shared through ` +
      `${metrics.exchange.kind} (${metrics.exchange.state}) · answered by ${metrics.worker} · ` +
      `health ${memory.health_score}/100 · updated ${new Date().toLocaleTimeString("en-GB")}`;
  }

  // --- the admin feed ----------------------------------------------------------------

  const feed = { source: null, attempts: 0, retryTimer: null, retryMs: 1000, opened: false };
  const feedPill = $("feed-state");
  const tokenStatus = $("token-status");

  function feedState(state, text) {
    setState(feedPill, state, text);
    setState(tokenStatus, state, text);
  }

  function stopFeed() {
    clearTimeout(feed.retryTimer);
    feed.retryTimer = null;
    if (feed.source) feed.source.close();
    feed.source = null;
  }

  function retryFeed(reason) {
    stopFeed();
    const seconds = Math.round(feed.retryMs / 1000);
    feedState("lost", `connection lost (${reason}) — retrying in ${seconds} s`);
    feed.retryTimer = setTimeout(startFeed, feed.retryMs);
    feed.retryMs = Math.min(feed.retryMs * 2, MAX_FEED_RETRY_MS);
  }

  async function startFeed() {
    stopFeed();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      feedState("idle", "not connected: enter the admin token");
      return;
    }
    feedState("connecting", "connecting…");
    let response;
    try {
      response = await fetch("/api/admin/ticket", {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
        cache: "no-store",
      });
    } catch {
      retryFeed("server unreachable");
      return;
    }
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      feedState("refused", `token refused (${response.status}): ${await detailOf(response)}`);
      return;
    }
    if (response.status === 503) {
      feedState("disabled", `admin API unavailable (503): ${await detailOf(response)}`);
      return;
    }
    if (!response.ok) {
      retryFeed(`HTTP ${response.status}`);
      return;
    }
    const { stream_url: streamUrl } = await response.json();
    openFeed(streamUrl);
  }

  function openFeed(url) {
    const source = new EventSource(url);
    let openedOnce = false;
    feed.source = source;
    source.addEventListener("open", () => {
      openedOnce = true;
      const again = feed.opened;
      feed.opened = true;
      feed.attempts = 0;
      feed.retryMs = 1000;
      $("charts").hidden = false;
      feedState("live", again ? "live (reconnected)" : "live");
    });
    source.addEventListener("metrics", (event) => render(JSON.parse(event.data)));
    source.addEventListener("error", async () => {
      if (feed.source !== source) return;
      if (source.readyState === EventSource.CONNECTING) {
        feed.attempts += 1;
        feedState("reconnecting",
          `connection lost — reconnecting automatically (attempt ${feed.attempts})…`);
        return;
      }
      // CLOSED: a reconnect was answered with something other than a stream.
      const { status, detail, retryAfter } = await probe(url);
      if (feed.source !== source) return;
      if (status === 403 && openedOnce) {
        // The ticket expired while the connection was down: buy a new one at once.
        // (Only after it had worked: a ticket refused from the start would loop.)
        startFeed();
      } else if (status === 200 || status === 403 || status === 0 || status === 503) {
        if (status === 503 && retryAfter) feed.retryMs = retryAfter * 1000;
        retryFeed(status === 0 ? detail : `${status}: ${detail}`);
      } else {
        stopFeed();
        feedState("lost", `admin stream refused (${status}): ${detail}`);
      }
    });
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("admin-token");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    feed.retryMs = 1000;
    startFeed();
  });

  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    stopFeed();
    $("charts").hidden = true;
    $("summary").hidden = true;
    $("refusing-banner").hidden = true;
    feedState("idle", "token forgotten; not connected");
  });

  // --- try it: subscribe and publish --------------------------------------------------

  const subscription = {
    source: null, channel: "", lastId: null, names: new Set(), retryTimer: null, opens: 0,
  };
  const subscribeState = $("subscribe-state");
  const publishStatus = $("publish-status");

  function showEvent(event) {
    subscription.lastId = event.lastEventId || subscription.lastId;
    const item = el("li");
    item.dataset.id = event.lastEventId;
    item.dataset.event = event.type;
    if (event.lastEventId && event.lastEventId === publishStatus.dataset.id) {
      item.classList.add("mine");
      setState(publishStatus, "ok", `${publishStatus.textContent.split(" — ")[0]} — arrived ✓`);
    }
    const meta = el("div", "meta");
    meta.append(el("span", "event-id", event.lastEventId || "(no id)"), el("span", "event-name", event.type));
    item.append(meta, el("pre", "data", event.data));
    const list = $("received");
    list.prepend(item);
    while (list.children.length > MAX_RECEIVED) list.lastElementChild.remove();
  }

  function listenFor(name) {
    if (!subscription.source || subscription.names.has(name)) return;
    subscription.names.add(name);
    subscription.source.addEventListener(name, showEvent);
  }

  function closeSubscription() {
    clearTimeout(subscription.retryTimer);
    subscription.retryTimer = null;
    if (subscription.source) subscription.source.close();
    subscription.source = null;
  }

  function subscribe(channel, resumeFrom) {
    closeSubscription();
    subscription.channel = channel;
    subscription.names = new Set();
    const query = resumeFrom ? `?last_event_id=${encodeURIComponent(resumeFrom)}` : "";
    const url = `/events/${channel}${query}`;
    const source = new EventSource(url);
    subscription.source = source;
    // Unnamed events, Herald's own (reset, gap), and any name published from here.
    for (const name of ["message", "reset", "gap"]) listenFor(name);
    const name = $("event-name").value.trim();
    if (name) listenFor(name);
    setState(subscribeState, "connecting", `connecting to ${channel}…`);
    source.addEventListener("open", () => {
      subscription.opens += 1;
      const resumed = subscription.lastId ? `, resumed after ${subscription.lastId}` : "";
      setState(subscribeState, "live", subscription.opens > 1
        ? `reconnected to ${channel}${resumed}` : `live on ${channel}`);
    });
    source.addEventListener("error", async (event) => {
      if (subscription.source !== source || event.data !== undefined) return;
      if (source.readyState === EventSource.CONNECTING) {
        const from = subscription.lastId ? ` (sending Last-Event-ID ${subscription.lastId})` : "";
        setState(subscribeState, "reconnecting",
          `connection lost — the browser is reconnecting${from}…`);
        // A stream the server deferred (full, or low on memory) ends at once; say why.
        const { status, detail, retryAfter } = await probe(url);
        if (subscription.source === source && status === 503) {
          setState(subscribeState, "refused", `refused by the server (503): ${detail}`
            + ` — the browser is trying again in ${retryAfter || 3} s or more`);
        }
        return;
      }
      const retryUrl = subscription.lastId
        ? `/events/${channel}?last_event_id=${encodeURIComponent(subscription.lastId)}` : url;
      const { status, detail, retryAfter } = await probe(retryUrl);
      if (subscription.source !== source) return;
      if (status === 200 || status === 0 || status === 503) {
        const seconds = retryAfter || 3;
        const why = status === 503 ? `refused by the server (503): ${detail}`
          : status === 0 ? "server unreachable" : "stream closed";
        setState(subscribeState, status === 503 ? "refused" : "lost",
          `${why} — trying again in ${seconds} s`);
        subscription.retryTimer = setTimeout(
          () => subscribe(channel, subscription.lastId), seconds * 1000);
      } else {
        closeSubscription();
        setState(subscribeState, "error", `subscription refused (${status}): ${detail}`);
      }
    });
  }

  $("subscribe-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const channel = $("channel").value.trim();
    if (!CHANNEL_PATTERN.test(channel)) {
      setState(subscribeState, "error",
        "a channel is 1–128 letters, digits and . _ : / -");
      return;
    }
    subscription.lastId = null;
    subscription.opens = 0;
    $("received").replaceChildren();
    subscribe(channel, null);
  });

  $("unsubscribe").addEventListener("click", () => {
    closeSubscription();
    setState(subscribeState, "idle", "not subscribed");
  });

  $("publish-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const channel = $("channel").value.trim();
    if (!CHANNEL_PATTERN.test(channel)) {
      setState(publishStatus, "error", "enter a valid channel first");
      return;
    }
    const body = {};
    const text = $("event-data").value;
    if ($("as-json").checked) {
      try {
        body.data = JSON.parse(text);
      } catch (error) {
        setState(publishStatus, "error", `not JSON: ${error.message}`);
        return;
      }
    } else {
      body.data = text;
    }
    const name = $("event-name").value.trim();
    if (name) {
      body.event = name;
      listenFor(name);
    }
    const headers = { "Content-Type": "application/json" };
    const token = $("publish-token").value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    delete publishStatus.dataset.id;
    let response;
    try {
      response = await fetch(`/events/${channel}`, {
        method: "POST", headers, body: JSON.stringify(body),
      });
    } catch {
      setState(publishStatus, "error", "server unreachable");
      return;
    }
    if (response.status !== 202) {
      setState(publishStatus, "error", `refused (${response.status}): ${await detailOf(response)}`);
      return;
    }
    const published = await response.json();
    publishStatus.dataset.id = published.id;
    const arrived = document.querySelector(`#received li[data-id="${CSS.escape(published.id)}"]`);
    if (arrived) arrived.classList.add("mine");
    setState(publishStatus, "ok", `published ${published.id} to ${published.channel} ` +
      `(${published.subscribers} subscriber${published.subscribers === 1 ? "" : "s"} here)` +
      (arrived ? " — arrived ✓" : ""));
  });

  // --- try it: a streamed response ----------------------------------------------------

  const responseState = $("response-state");
  const responseText = $("response-text");
  let answer = null; // {id, url, text, lastId, deltas, done, cached, source}

  function saveAnswer() {
    const { source, ...kept } = answer;
    sessionStorage.setItem(RESPONSE_KEY, JSON.stringify(kept));
  }

  function follow(resuming) {
    const query = answer.lastId !== null ? `?last_event_id=${encodeURIComponent(answer.lastId)}` : "";
    const url = answer.url + query;
    const source = new EventSource(url);
    answer.source = source;
    responseText.textContent = answer.text;
    setState(responseState, resuming ? "resuming" : "streaming", resuming
      ? `resuming ${answer.id} after event ${answer.lastId}…` : `streaming ${answer.id}…`);
    source.addEventListener("delta", (event) => {
      answer.text += JSON.parse(event.data).text;
      answer.lastId = event.lastEventId;
      answer.deltas += 1;
      saveAnswer();
      responseText.textContent = answer.text;
      setState(responseState, "streaming",
        `streaming ${answer.id}: ${answer.deltas} deltas, last event ${answer.lastId}` +
        (resuming ? " (resumed)" : ""));
    });
    source.addEventListener("done", (event) => {
      const done = JSON.parse(event.data);
      source.close();
      answer.done = true;
      answer.cached = done.cached;
      answer.lastId = event.lastEventId;
      saveAnswer();
      responseText.textContent = answer.text;
      setState(responseState, "done",
        `done: ${answer.id}, ${answer.text.length} characters` +
        (done.cached ? " (from the cache)" : "") + (resuming ? " (resumed after a reload)" : ""));
    });
    source.addEventListener("error", async (event) => {
      if (answer.source !== source) return;
      if (event.data !== undefined) {
        source.close();
        answer.done = true;
        saveAnswer();
        setState(responseState, "error", `the producer failed: ${JSON.parse(event.data).detail}`);
        return;
      }
      if (source.readyState === EventSource.CONNECTING) {
        setState(responseState, "reconnecting", "connection lost — the browser is reconnecting…");
        return;
      }
      const { status, detail } = await probe(answer.url +
        (answer.lastId !== null ? `?last_event_id=${encodeURIComponent(answer.lastId)}` : ""));
      if (status === 204) {
        answer.done = true;
        saveAnswer();
        setState(responseState, "done", `${answer.id} had already been delivered in full`);
      } else {
        setState(responseState, "error", status === 0 ? "server unreachable"
          : `stream refused (${status}): ${detail}`);
      }
    });
  }

  $("ask-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (answer && answer.source) answer.source.close();
    let response;
    try {
      response = await fetch("/api/responses", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          input: $("ask-input").value, producer: "echo", cache: $("ask-cache").checked,
        }),
      });
    } catch {
      setState(responseState, "error", "server unreachable");
      return;
    }
    if (response.status !== 201) {
      const what = response.status === 503 ? "refused by the server" : "refused";
      setState(responseState, response.status === 503 ? "refused" : "error",
        `${what} (${response.status}): ${await detailOf(response)}`);
      return;
    }
    const created = await response.json();
    answer = {
      id: created.id, url: created.stream_url, text: "", lastId: null, deltas: 0,
      done: false, cached: created.cached, source: null,
    };
    saveAnswer();
    follow(false);
  });

  // --- start ---------------------------------------------------------------------------

  function restoreAnswer() {
    let saved = null;
    try {
      saved = JSON.parse(sessionStorage.getItem(RESPONSE_KEY) || "null");
    } catch {
      sessionStorage.removeItem(RESPONSE_KEY);
    }
    if (!saved) return;
    answer = { ...saved, source: null };
    responseText.textContent = answer.text;
    if (answer.done) {
      setState(responseState, "done", `done: ${answer.id}, ${answer.text.length} characters`);
    } else {
      follow(true); // a reload halfway: pick up after the last event this tab saw
    }
  }

  restoreAnswer();
  startFeed();
})();
