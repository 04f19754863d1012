// /admin/dashboard: the admin API on one page, refreshed every 5 s. The admin key is asked for,
// kept in sessionStorage and sent as a header; it never appears in a URL.
"use strict";
const REFRESH_MS = 5000;
let timer = null;

function adminKey() { return sessionStorage.getItem("novamlx.adminKey") || ""; }

async function api(path, options = {}) {
  const r = await fetch(path, {...options, headers: {"content-type": "application/json", authorization: `Bearer ${adminKey()}`}});
  const body = await r.json().catch(() => null);
  if (r.status === 401) { signOut(t("dash.wrongKey")); throw new Error(t("dash.wrongKey")); }
  if (!r.ok) throw new Error(body?.error?.message || `${r.status} ${r.statusText}`);
  return body;
}

const post = (path, body) => api(path, {method: "POST", body: JSON.stringify(body ?? {})});

async function act(what) {
  try { await what(); $("dash-error").textContent = ""; await refresh(); }
  catch (e) { $("dash-error").textContent = e.message; }
}

// --- sign in -----------------------------------------------------------------------------
function signOut(message) {
  sessionStorage.removeItem("novamlx.adminKey");
  clearInterval(timer);
  $("dash").classList.add("hidden");
  $("login").classList.remove("hidden");
  $("login-error").textContent = message || "";
}

async function signIn(key) {
  sessionStorage.setItem("novamlx.adminKey", key);
  const r = await fetch("/admin/api/status", {headers: {authorization: `Bearer ${key}`}});
  if (!r.ok) { signOut(r.status === 401 ? t("dash.wrongKey") : `${r.status}`); return; }
  $("login").classList.add("hidden");
  $("dash").classList.remove("hidden");
  await refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

// --- rendering ---------------------------------------------------------------------------
function card(label, value, sub, cls) {
  return h("div", {class: "card"}, h("div", {class: "label"}, label), h("div", {class: `value ${cls || ""}`}, value),
    sub ? h("div", {class: "sub"}, sub) : null);
}

function rows(table, head, body) {
  table.replaceChildren(h("thead", {}, h("tr", {}, head.map((x) => h("th", {}, x)))),
    h("tbody", {}, body.length ? body : h("tr", {}, h("td", {colspan: head.length, class: "muted"}, t("dash.none")))));
}

function kv(table, pairs) {
  table.replaceChildren(h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v ?? "–")))));
}

function renderStatus(s) {
  const hl = s.health, w = hl.worker, live = hl.health || {};
  const ok = hl.status === "ok";
  $("cards").replaceChildren(
    card(t("dash.health"), t(`dash.status.${hl.status}`), `${t("dash.uptime")} ${duration(hl.uptime_s)}`, ok ? "status-ok" : "status-bad"),
    card(t("dash.worker"), w.pid ? `PID ${w.pid}` : "–", t("dash.restarts", {n: w.restarts}), w.ready ? "status-ok" : "status-warn"),
    card(t("dash.requests"), String(hl.requests.running), t("dash.queued", {n: hl.requests.queued})),
    card(t("dash.memory"), formatBytes(live.rss_bytes), t("dash.limit", {n: formatBytes(live.memory?.limit_bytes)})),
    card(t("dash.mlxMemory"), formatBytes(live.mlx_active_bytes), t("dash.peak", {n: formatBytes(live.mlx_peak_bytes)})),
    card(t("dash.throughput"), `${(live.tokens_per_s ?? 0).toFixed(1)} tok/s`, t("dash.pressure", {level: live.memory?.pressure?.level ?? "–"})));
  const up = hl.update || {};
  $("update").classList.toggle("hidden", !up.available);
  if (up.available) {
    $("update").textContent = t("dash.updateAvailable", {latest: up.latest});
    if (/^https?:\/\//.test(up.url || "")) $("update").href = up.url; else $("update").removeAttribute("href");
  }
  const d = s.device;
  kv($("device"), [[t("dash.chip"), d.chip], [t("dash.os"), d.os], [t("dash.arch"), d.machine],
    [t("dash.cores"), `${d.cpu_cores ?? "–"} / ${d.cpu_threads ?? "–"}`], [t("dash.ram"), formatBytes(d.memory_bytes)],
    [t("dash.available"), formatBytes(d.memory_available_bytes)], ["MLX", live.device || "–"], ["NovaMLX", up.enabled && !up.available && up.latest ? `${d.version} (${t("dash.upToDate")})` : d.version]]);
}

function duration(s) {
  s = Math.floor(s || 0);
  const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), mm = Math.floor(s % 3600 / 60);
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${mm}m` : `${mm}m ${s % 60}s`;
}

function renderStats(st) {
  const line = (x) => [x.requests, x.prompt_tokens, x.completion_tokens, `${x.avg_tokens_per_s}`, `${(x.cache_hit_rate * 100).toFixed(1)}%`];
  rows($("stats"), ["", t("dash.reqs"), t("dash.promptTokens"), t("dash.completionTokens"), "tok/s", t("dash.cacheHits")],
    [["session", st.session], ["all_time", st.all_time]].map(([k, x]) => h("tr", {}, h("th", {}, t(`dash.${k}`)), line(x).map((v) => h("td", {}, String(v))))));
}

function renderModels(models) {
  rows($("models"), [t("dash.model"), t("dash.kind"), t("dash.state"), t("dash.size"), ""], models.map((m) => {
    const pinned = !!m.settings?.is_pinned;
    return h("tr", {dataset: {model: m.id}}, h("td", {}, h("code", {}, m.id)), h("td", {}, m.kind),
      h("td", {}, m.loaded ? t("dash.loaded") : t("dash.notLoaded"), pinned ? ` · ${t("dash.pinned")}` : ""),
      h("td", {}, formatBytes(m.size_bytes)),
      h("td", {class: "actions"},
        m.loaded ? h("button", {onclick: () => act(() => post("/admin/models/unload", {model: m.id}))}, t("dash.unload"))
                 : h("button", {onclick: () => act(() => post("/admin/models/load", {model: m.id}))}, t("dash.load")),
        h("button", {onclick: () => act(() => api(`/admin/models/${encodeURIComponent(m.id)}/settings`,
          {method: "PUT", body: JSON.stringify({is_pinned: !pinned})}))}, pinned ? t("dash.unpin") : t("dash.pin")),
        h("button", {class: "settings", onclick: () => openSettings(m)}, t("dash.settings"))));
  }));
  for (const id of ["bench-model", "ppl-model"]) {
    const sel = $(id), keep = sel.value;
    sel.replaceChildren(...models.filter((m) => m.kind === "llm" || m.kind === "vlm").map((m) => new Option(m.id, m.id)));
    if (keep) sel.value = keep;
  }
}

function renderDownloads(tasks) {
  rows($("downloads"), [t("dash.repo"), t("dash.state"), t("dash.progress"), ""], tasks.slice().reverse().map((d) => h("tr", {dataset: {task: d.id}},
    h("td", {}, h("code", {}, d.repo_id)), h("td", {class: "task-status"}, t(`dash.dl.${d.status}`), d.error ? h("div", {class: "error"}, d.error) : null),
    h("td", {}, h("progress", {value: d.progress, max: 1, title: `${formatBytes(d.downloaded_bytes)} / ${formatBytes(d.total_bytes)}`}),
      h("span", {class: "muted pct"}, ` ${Math.round(d.progress * 100)}%`)),
    h("td", {class: "actions"}, d.status === "downloading" || d.status === "queued"
      ? h("button", {class: "danger", onclick: () => act(() => post(`/admin/models/downloads/${d.id}/cancel`))}, t("common.cancel")) : null))));
}

function renderJob(el, job) {
  el.textContent = job.state === "idle" ? t("dash.none") : JSON.stringify(
    {state: job.state, progress: job.progress, summary: job.summary, error: job.error, results: job.results}, null, 1);
}

function renderMcp(list) {
  rows($("mcp"), [t("dash.name"), t("dash.state"), t("dash.tools"), ""], list.map((s) => h("tr", {},
    h("td", {}, h("code", {}, s.name)), h("td", {class: s.status === "ready" ? "status-ok" : "status-warn"}, s.status, s.last_error ? ` · ${s.last_error}` : ""),
    h("td", {}, (s.tools || []).join(", ")),
    h("td", {class: "actions"}, h("button", {onclick: () => act(() => post(`/admin/api/mcp/servers/${encodeURIComponent(s.name)}/${s.enabled === false ? "enable" : "disable"}`))},
      s.enabled === false ? t("dash.enable") : t("dash.disable"))))));
}

async function refresh() {
  if (!adminKey()) return;
  try {
    const [status, stats, models, downloads, bench, ppl, mcp] = await Promise.all([api("/admin/api/status"),
      api("/admin/api/stats"), api("/admin/models"), api("/admin/models/downloads"), api("/admin/api/bench/status"),
      api("/admin/api/ppl/status"), api("/admin/api/mcp/servers")]);
    renderStatus(status); renderStats(stats); renderModels(models.data); renderDownloads(downloads.data);
    renderJob($("bench-status"), bench); renderJob($("ppl-status"), ppl); renderMcp(mcp.servers);
    $("refreshed").textContent = t("dash.refreshed", {time: new Date().toLocaleTimeString(I18N.lang)});
    $("dash-error").textContent = "";
  } catch (e) {
    $("dash-error").textContent = e.message;
  }
}

// --- settings and hub --------------------------------------------------------------------
function openSettings(m) {
  $("settings-model").textContent = m.id;
  $("settings-text").value = JSON.stringify(m.settings || {}, null, 2);
  $("settings-error").textContent = "";
  $("settings-modal").classList.remove("hidden");
}

async function saveSettings(e) {
  e.preventDefault();
  let body;
  try { body = JSON.parse($("settings-text").value || "{}"); }
  catch (err) { $("settings-error").textContent = t("dash.badJson", {error: err.message}); return; }
  try {
    await api(`/admin/models/${encodeURIComponent($("settings-model").textContent)}/settings`, {method: "PUT", body: JSON.stringify(body)});
    $("settings-modal").classList.add("hidden");
    await refresh();
  } catch (err) { $("settings-error").textContent = err.message; }
}

async function searchHub(e) {
  e.preventDefault();
  const q = new URLSearchParams({q: $("hub-query").value, mlx_only: String($("hub-mlx").checked), limit: "20"});
  rows($("hub-results"), [t("dash.repo")], [h("tr", {}, h("td", {class: "muted"}, t("dash.searching")))]);
  try {
    const found = (await api(`/admin/models/search?${q}`)).data;
    rows($("hub-results"), [t("dash.repo"), t("dash.downloadsCount"), t("dash.likes"), ""], found.map((m) => h("tr", {},
      h("td", {}, h("code", {}, m.id)), h("td", {}, String(m.downloads ?? "–")), h("td", {}, String(m.likes ?? "–")),
      h("td", {class: "actions"}, h("button", {class: "primary", onclick: () => act(() => post("/admin/models/download", {repo_id: m.id}))}, t("dash.download"))))));
  } catch (err) {
    rows($("hub-results"), [t("dash.repo")], [h("tr", {}, h("td", {class: "error"}, err.message))]);
  }
}

function wire() {
  $("login").addEventListener("submit", (e) => { e.preventDefault(); signIn($("admin-key").value); });
  $("sign-out").addEventListener("click", () => signOut());
  $("settings-form").addEventListener("submit", saveSettings);
  $("settings-cancel").addEventListener("click", () => $("settings-modal").classList.add("hidden"));
  $("hub-form").addEventListener("submit", searchHub);
  $("rescan").addEventListener("click", () => act(() => post("/admin/models/discover")));
  $("clear-session").addEventListener("click", () => act(() => post("/admin/api/stats/clear", {scope: "session"})));
  $("clear-all-time").addEventListener("click", () => confirm(t("dash.confirmClear")) && act(() => post("/admin/api/stats/clear", {scope: "all_time"})));
  $("bench-form").addEventListener("submit", (e) => { e.preventDefault(); act(() => post("/admin/api/bench/start",
    {model: $("bench-model").value, prompt_lengths: $("bench-lengths").value.split(",").map((x) => parseInt(x, 10)).filter((x) => x > 0), max_tokens: 32})); });
  $("bench-cancel").addEventListener("click", () => act(() => post("/admin/api/bench/cancel")));
  $("ppl-form").addEventListener("submit", (e) => { e.preventDefault(); act(() => post("/admin/api/ppl/start", {model: $("ppl-model").value})); });
  $("ppl-cancel").addEventListener("click", () => act(() => post("/admin/api/ppl/cancel")));
  document.addEventListener("languagechange", refresh);
}

async function main() {
  wire();
  await initI18n();
  languagePicker($("lang"));
  if (adminKey()) await signIn(adminKey()); else signOut();
}

main();
