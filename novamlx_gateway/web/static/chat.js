// /chat: streams /v1/chat/completions into a conversation kept in localStorage (newest 50).
"use strict";
const MAX_CONVERSATIONS = 50;
const MAX_IMAGE_BYTES = 20 * 1024 * 1024;
const state = {conversations: [], current: null, attachments: [], controller: null};

// --- storage -----------------------------------------------------------------------------
function loadConversations() {
  try {
    const list = JSON.parse(localStorage.getItem("novamlx.conversations") || "[]").slice(0, MAX_CONVERSATIONS);
    for (const c of list) for (const msg of c.messages) if (msg.streaming) { msg.streaming = false; msg.stopped = true; }
    return list;
  } catch { return []; }
}

function saveConversations() {
  state.conversations = state.conversations.slice(0, MAX_CONVERSATIONS);
  for (let attempt = 0; attempt < 3; attempt++) {
    try { localStorage.setItem("novamlx.conversations", JSON.stringify(state.conversations)); return; }
    catch {  // over the browser's quota: images leave the oldest conversations first, then all
      for (const c of state.conversations) {
        if (attempt === 0 && c === state.current) continue;
        for (const msg of c.messages) if (msg.images?.length) { msg.images = []; msg.imagesDropped = true; }
      }
    }
  }
}

function apiHeaders() {
  const key = localStorage.getItem("novamlx.apiKey");
  return {"content-type": "application/json", ...(key ? {authorization: `Bearer ${key}`} : {})};
}

async function apiError(r) {
  const body = await r.json().catch(() => null);
  const msg = body?.error?.message || body?.message || `${r.status} ${r.statusText}`;
  return r.status === 401 ? `${msg} ${t("chat.needKey")}` : msg;
}

function setStatus(text, isError) {
  $("status").textContent = text || "";
  $("status").classList.toggle("error", !!isError);
}

// --- models ------------------------------------------------------------------------------
async function loadModels() {
  const select = $("model");
  try {
    const r = await fetch("/v1/models", {headers: apiHeaders()});
    if (!r.ok) { setStatus(await apiError(r), true); return; }
    const models = (await r.json()).data || [];
    select.replaceChildren(...models.map((m) => new Option(m.id, m.id)));
    const wanted = state.current?.model || localStorage.getItem("novamlx.model");
    if (wanted && models.some((m) => m.id === wanted)) select.value = wanted;
    setStatus("");
  } catch {
    setStatus(t("chat.serverDown"), true);
  }
}

// --- conversations -----------------------------------------------------------------------
function newConversation() {
  const c = {id: crypto.randomUUID?.() || String(Date.now()), title: "", model: $("model").value,
    system: localStorage.getItem("novamlx.system") || "", messages: [], updated: Date.now()};
  state.conversations.unshift(c);
  state.current = c;
  return c;
}

function openConversation(c) {
  state.current = c;
  if (c.model && [...$("model").options].some((o) => o.value === c.model)) $("model").value = c.model;
  $("sidebar").classList.remove("open");
  render();
}

function deleteConversation(c) {
  state.conversations = state.conversations.filter((x) => x !== c);
  if (state.current === c) state.current = null;
  saveConversations();
  render();
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren(...state.conversations.map((c) => h("div",
    {class: `history-item${c === state.current ? " active" : ""}`, onclick: () => openConversation(c), title: c.title},
    h("span", {class: "title"}, c.title || t("chat.untitled")),
    h("button", {"aria-label": t("chat.delete"), title: t("chat.delete"),
      onclick: (e) => { e.stopPropagation(); deleteConversation(c); }}, "×"))));
}

// --- messages ----------------------------------------------------------------------------
function openLightbox(src) {
  $("lightbox-img").src = src;
  $("lightbox").classList.remove("hidden");
}

function thumbs(images) {
  return h("div", {class: "thumbs"}, images.map((src) => h("img", {src, alt: "", onclick: () => openLightbox(src)})));
}

function messageView(msg) {
  if (msg.role === "user") {
    return h("div", {class: "msg user"}, msg.images?.length ? thumbs(msg.images) : null,
      msg.imagesDropped ? h("span", {class: "meta"}, t("chat.imagesDropped")) : null,
      msg.content ? h("div", {class: "bubble"}, msg.content) : null);
  }
  const view = h("div", {class: "msg assistant"});
  fillAssistant(view, msg);
  return view;
}

function fillAssistant(view, msg) {
  const parts = [];
  if (msg.reasoning) {
    const open = view.querySelector("details.thinking")?.open ?? !msg.content;
    parts.push(h("details", {class: "thinking", open},
      h("summary", {}, msg.content || !msg.streaming ? t("chat.thought") : t("chat.thinking")),
      h("div", {class: "thought"}, msg.reasoning)));
  }
  if (msg.content || (!msg.reasoning && !msg.tool_calls?.length && !msg.error)) {
    parts.push(h("div", {class: "bubble"}, msg.content ? renderMarkdown(msg.content) : h("span", {class: "muted"}, "…")));
  }
  for (const call of msg.tool_calls || []) {
    parts.push(h("div", {class: "tool-call"}, h("span", {}, `${t("chat.toolCall")}: `),
      h("span", {class: "name"}, call.function?.name || "?"), h("pre", {}, call.function?.arguments || "")));
  }
  if (msg.error) parts.push(h("div", {class: "msg error"}, h("div", {class: "bubble"}, msg.error)));
  const meta = [];
  if (msg.stopped) meta.push(t("chat.stopped"));
  if (msg.usage) meta.push(t("chat.tokens", {n: msg.usage.completion_tokens}));
  if (msg.tokPerSec) meta.push(`${msg.tokPerSec.toFixed(1)} tok/s`);
  if (meta.length) parts.push(h("div", {class: "meta"}, meta.join(" · ")));
  view.replaceChildren(...parts);
}

function render() {
  renderHistory();
  const inner = $("messages-inner");
  const msgs = state.current?.messages || [];
  if (!msgs.length) {
    inner.replaceChildren(h("div", {class: "empty"}, h("h1", {}, t("chat.welcome")), h("p", {}, t("chat.welcomeHint"))));
    return;
  }
  inner.replaceChildren(...msgs.map(messageView));
  scrollDown();
}

function scrollDown() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

// --- sending -----------------------------------------------------------------------------
function wireMessages(c) {
  const out = c.system ? [{role: "system", content: c.system}] : [];
  for (const msg of c.messages) {
    if (msg.role === "user") {
      const content = msg.images?.length
        ? [...(msg.content ? [{type: "text", text: msg.content}] : []), ...msg.images.map((url) => ({type: "image_url", image_url: {url}}))]
        : msg.content;
      out.push({role: "user", content});
    } else if (msg.content && !msg.streaming) {
      out.push({role: "assistant", content: msg.content});
    }
  }
  return out;
}

function* sseData(buffer) {
  // yields each complete event's data and leaves the partial tail in buffer.rest
  let cut;
  while ((cut = buffer.rest.indexOf("\n\n")) >= 0) {
    const event = buffer.rest.slice(0, cut);
    buffer.rest = buffer.rest.slice(cut + 2);
    const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
    if (data) yield data;
  }
}

function applyDelta(reply, chunk) {
  if (chunk.error) throw new Error(chunk.error.message || String(chunk.error));
  if (chunk.usage) reply.usage = chunk.usage;
  for (const choice of chunk.choices || []) {
    const d = choice.delta || {};
    if (d.content) reply.content += d.content;
    const thought = d.reasoning_content ?? d.reasoning;
    if (thought) reply.reasoning += thought;
    for (const tc of d.tool_calls || []) {
      const slot = reply.tool_calls[tc.index ?? reply.tool_calls.length] ||= {id: tc.id, function: {name: "", arguments: ""}};
      if (tc.function?.name) slot.function.name += tc.function.name;
      if (tc.function?.arguments) slot.function.arguments += tc.function.arguments;
    }
  }
}

async function send() {
  const text = $("input").value.trim();
  if ((!text && !state.attachments.length) || state.controller) return;
  const model = $("model").value;
  if (!model) { setStatus(t("chat.noModel"), true); return; }
  const c = state.current || newConversation();
  c.model = model;
  c.title ||= (text || t("chat.image")).slice(0, 60);
  c.updated = Date.now();
  state.conversations = [c, ...state.conversations.filter((x) => x !== c)];
  c.messages.push({role: "user", content: text, images: state.attachments});
  const reply = {role: "assistant", content: "", reasoning: "", tool_calls: [], streaming: true};
  const body = JSON.stringify({model, messages: wireMessages(c), stream: true, stream_options: {include_usage: true}});
  c.messages.push(reply);
  state.attachments = [];
  $("input").value = "";
  renderAttachments();
  saveConversations();
  render();
  const view = $("messages-inner").lastElementChild;
  const controller = state.controller = new AbortController();
  setBusy(true);
  let firstToken = null, frame = null;
  const paint = () => { frame = null; fillAssistant(view, reply); scrollDown(); };
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: apiHeaders(), body, signal: controller.signal});
    if (!r.ok) throw new Error(await apiError(r));
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    const buffer = {rest: ""};
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer.rest += value.replace(/\r\n?/g, "\n");
      for (const data of sseData(buffer)) {
        if (data === "[DONE]") continue;
        applyDelta(reply, JSON.parse(data));
        firstToken ??= performance.now();
      }
      frame ??= requestAnimationFrame(paint);
    }
  } catch (e) {
    if (e.name === "AbortError") reply.stopped = true;
    else reply.error = e.message || String(e);
  } finally {
    state.controller = null;
    reply.streaming = false;
    const n = reply.usage?.completion_tokens;
    if (n && firstToken) reply.tokPerSec = n / Math.max((performance.now() - firstToken) / 1000, 1e-3);
    if (!reply.tool_calls.length) delete reply.tool_calls;
    setBusy(false);
    saveConversations();
    if (frame) cancelAnimationFrame(frame);
    paint();
    renderHistory();
  }
}

function setBusy(busy) {
  $("send").classList.toggle("hidden", busy);
  $("stop").classList.toggle("hidden", !busy);
  setStatus(busy ? t("chat.generating") : "");
}

// --- images ------------------------------------------------------------------------------
function addFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) { setStatus(t("chat.notImage", {name: file.name}), true); continue; }
    if (file.size > MAX_IMAGE_BYTES) { setStatus(t("chat.imageTooBig", {name: file.name}), true); continue; }
    const reader = new FileReader();
    reader.onload = () => { state.attachments.push(reader.result); renderAttachments(); };
    reader.readAsDataURL(file);
  }
}

function renderAttachments() {
  $("attachments").replaceChildren(...state.attachments.map((src, i) => h("div", {class: "thumb"},
    h("img", {src, alt: "", onclick: () => openLightbox(src)}),
    h("button", {"aria-label": t("chat.remove"), onclick: () => { state.attachments.splice(i, 1); renderAttachments(); }}, "×"))));
}

// --- wiring ------------------------------------------------------------------------------
function wire() {
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("input").addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (files.length) { e.preventDefault(); addFiles(files); }
  });
  const composer = $("composer");
  composer.addEventListener("dragover", (e) => { e.preventDefault(); composer.classList.add("dragover"); });
  composer.addEventListener("dragleave", () => composer.classList.remove("dragover"));
  composer.addEventListener("drop", (e) => {
    e.preventDefault(); composer.classList.remove("dragover"); addFiles([...e.dataTransfer.files]);
  });
  $("attach").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  $("new-chat").addEventListener("click", () => { state.current = null; $("sidebar").classList.remove("open"); render(); $("input").focus(); });
  $("menu").addEventListener("click", () => $("sidebar").classList.toggle("open"));
  $("backdrop").addEventListener("click", () => $("sidebar").classList.remove("open"));
  $("model").addEventListener("change", () => localStorage.setItem("novamlx.model", $("model").value));
  $("lightbox").addEventListener("click", () => $("lightbox").classList.add("hidden"));
  const key = $("api-key");
  key.value = localStorage.getItem("novamlx.apiKey") || "";
  key.addEventListener("change", () => {
    if (key.value) localStorage.setItem("novamlx.apiKey", key.value); else localStorage.removeItem("novamlx.apiKey");
    loadModels();
  });
  $("system-btn").addEventListener("click", () => {
    $("system-text").value = state.current ? state.current.system : localStorage.getItem("novamlx.system") || "";
    $("system-modal").classList.remove("hidden");
    $("system-text").focus();
  });
  $("system-cancel").addEventListener("click", () => $("system-modal").classList.add("hidden"));
  $("system-save").addEventListener("click", () => {
    const text = $("system-text").value;
    localStorage.setItem("novamlx.system", text);
    if (state.current) { state.current.system = text; saveConversations(); }
    $("system-modal").classList.add("hidden");
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { $("system-modal").classList.add("hidden"); $("lightbox").classList.add("hidden"); }
  });
  document.addEventListener("languagechange", render);
}

async function main() {
  state.conversations = loadConversations();
  state.current = state.conversations[0] || null;
  wire();
  await initI18n();
  languagePicker($("lang"));
  await loadModels();
  render();
}

main();
