// The playground: chats with the server through its own OpenAI routes, streams the answer, and
// shows the request's cache statistics and head map as they arrive. Plain browser JS, no build.

const $ = (id) => document.getElementById(id);
const state = { model: null, defaultCache: "full", messages: [], abort: null, chunks: 0 };

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function addMessage(who, text) {
  const div = document.createElement("div");
  div.className = `msg ${who}`;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(label, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return body;
}

function formatStat(key, value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (key === "device_kv_bytes" || key === "bytes_moved") {
    if (value >= 1 << 20) return `${(value / (1 << 20)).toFixed(2)} MiB`;
    if (value >= 1 << 10) return `${(value / (1 << 10)).toFixed(1)} KiB`;
    return `${value} B`;
  }
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function showStats(hc) {
  for (const cell of document.querySelectorAll("[data-stat]")) {
    const key = cell.dataset.stat;
    if (key in hc) cell.textContent = formatStat(key, hc[key]);
  }
}

/** Head roles as the server names them (hc.heads.roles), in the legend's order. */
const ROLES = [
  ["full", "full (every token)"],
  ["volatile", "volatile (full)"],
  ["pivot", "pivot (full, watches drift)"],
  ["anchor", "anchor (budget)"],
  ["satellite", "satellite (budget, refreshed)"],
  ["compressed", "compressed (budget)"],
  ["refreshed", "refreshed in this request"],
];

/** The legend, with the roles the map shows now emphasised. */
function showLegend(present) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const [role, text] of ROLES) {
    const item = document.createElement("span");
    item.dataset.role = role;
    if (!present.has(role)) item.className = "absent";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    item.append(swatch, text);
    legend.append(item);
  }
}

/** Draws layers x KV heads from the server's head map (GET /v1/hc/heads or a response's hc.heads). */
function showHeads(map) {
  const root = $("heads");
  root.replaceChildren();
  root.dataset.layers = String(map.layers);
  root.dataset.kvHeads = String(map.kv_heads);
  root.dataset.cache = map.cache;
  for (let l = 0; l < map.layers; l++) {
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "layer";
    label.textContent = `L${l}`;
    row.append(label);
    for (let h = 0; h < map.kv_heads; h++) {
      const cell = document.createElement("span");
      const role = map.roles[l][h];
      const budget = map.budget_tokens[l][h];
      const refreshed = map.refreshed[l][h];
      cell.className = "cell" + (refreshed ? " refreshed" : "");
      cell.dataset.role = role;
      cell.dataset.layer = String(l);
      cell.dataset.head = String(h);
      cell.textContent = budget === null ? "" : String(budget);
      cell.title = `layer ${l}, KV head ${h}: ${role}` +
        (budget === null ? ", every token on the device" : `, budget ${budget} tokens`) +
        (refreshed ? ", refreshed in this request" : "");
      row.append(cell);
    }
    root.append(row);
  }
  $("heads-shape").textContent = `${map.layers} layers x ${map.kv_heads} KV heads, ${map.cache}`;
  const present = new Set(map.roles.flat());
  if (map.refreshed.flat().some(Boolean)) present.add("refreshed");
  showLegend(present);
}

/**
 * A request with another policy than the map shows starts from that policy's own map (its
 * roles; budgets come with the answer), so no head keeps the previous request's colour.
 */
async function resetHeads(cache) {
  const root = $("heads");
  if (root.dataset.cache === cache) return;
  root.dataset.cache = cache;
  for (const cell of root.querySelectorAll(".cell")) {
    cell.removeAttribute("data-role");
    cell.classList.remove("refreshed");
    cell.textContent = "";
  }
  try {
    const map = await getJson(`/v1/hc/heads?cache=${encodeURIComponent(cache)}`);
    if (root.dataset.cache === cache) showHeads(map);
  } catch {
    // The request itself will say what is wrong with the policy.
  }
}

async function getJson(path) {
  const res = await fetch(path);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error?.message ?? `HTTP ${res.status}`);
  return body;
}

async function waitUntilReady() {
  for (;;) {
    try {
      const res = await fetch("/health");
      const body = await res.json();
      if (res.ok) return;
      if (body.status === "error") throw new Error(body.error);
      setStatus(`loading model ${Math.round((body.progress ?? 0) * 100)}%`, "loading");
    } catch (e) {
      if (e instanceof Error && !(e instanceof TypeError)) throw e;
      setStatus("server unreachable, retrying…", "loading");
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function init() {
  try {
    await waitUntilReady();
    const models = await getJson("/v1/models");
    const card = models.data[0];
    state.model = card.id;
    state.defaultCache = card.hc?.default_cache ?? "full";
    $("model").textContent = card.id;
    const select = $("cache");
    for (const p of card.hc?.cache_policies ?? []) {
      const o = document.createElement("option");
      o.value = p;
      o.textContent = p;
      o.selected = p === card.hc.default_cache;
      select.append(o);
    }
    showHeads(await getJson("/v1/hc/heads"));
    setStatus("ready", "ready");
    $("send").disabled = false;
  } catch (e) {
    setStatus(`error: ${e.message}`, "error");
  }
}

/** Yields the `data` payloads of an SSE response body. */
async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    for (let i = buf.indexOf("\n\n"); i >= 0; i = buf.indexOf("\n\n")) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data:")) yield line.slice(5).trim();
      }
    }
  }
}

async function send(promptText) {
  const mode = $("mode").value;
  const body = {
    model: state.model,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($("max-tokens").value) || 128,
    temperature: Number($("temperature").value),
    cache: $("cache").value || undefined,
  };
  let path;
  if (mode === "chat") {
    state.messages.push({ role: "user", content: promptText });
    body.messages = state.messages;
    path = "/v1/chat/completions";
    addMessage("user", promptText);
  } else {
    body.prompt = promptText;
    path = "/v1/completions";
    addMessage("prompt", promptText);
  }
  const out = addMessage("assistant", "");
  const log = $("log");
  log.dataset.chunks = "0";
  log.dataset.done = "false";
  state.chunks = 0;
  state.abort = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  let answer = "";
  try {
    await resetHeads(body.cache ?? state.defaultCache);
    const res = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: state.abort.signal,
    });
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      throw new Error(err.error?.message ?? `HTTP ${res.status}`);
    }
    for await (const data of sseData(res.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      const piece = choice ? (mode === "chat" ? choice.delta?.content : choice.text) ?? "" : "";
      if (piece) {
        answer += piece;
        out.textContent = answer;
        state.chunks++;
        log.dataset.chunks = String(state.chunks);
        log.scrollTop = log.scrollHeight;
      }
      if (chunk.hc) {
        showStats(chunk.hc);
        if (chunk.hc.heads) showHeads(chunk.hc.heads);
      }
    }
    if (mode === "chat") state.messages.push({ role: "assistant", content: answer });
  } catch (e) {
    if (e.name === "AbortError") {
      out.textContent = answer + " [stopped]";
    } else {
      out.parentElement.classList.add("error");
      out.textContent = `error: ${e.message}`;
      if (mode === "chat") state.messages.pop();
    }
  } finally {
    log.dataset.done = "true";
    state.abort = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || $("send").disabled) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("form").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.abort?.abort());
$("clear").addEventListener("click", () => {
  state.messages = [];
  $("log").replaceChildren();
});

init();
