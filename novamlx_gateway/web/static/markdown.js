// A small Markdown renderer that builds DOM nodes from text: model output never becomes markup,
// so <img onerror=...> shows as the characters it is. Links keep only http(s) and mailto targets;
// images are shown as links (no request leaves the page for a model's picture).
// Blocks: fenced code, headings, lists, block quotes, rules, tables, paragraphs.
// Inline: `code`, **bold**, *italic* / _italic_, ~~strike~~, [text](url), bare http(s) URLs.
"use strict";

const SAFE_URL = /^(https?:\/\/|mailto:)/i;

function renderMarkdown(src) {
  const frag = document.createDocumentFragment();
  const lines = String(src).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  const isBlockStart = (l) => /^(```|~~~|#{1,6}\s|>\s?|\s*([-*+]|\d+[.)])\s+|\s*(---|\*\*\*|___)\s*$|\|)/.test(l);
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = line.match(/^(```|~~~)\s*([\w+#.-]*)/))) {
      const fence = m[1], lang = m[2], code = [];
      i++;
      while (i < lines.length && !lines[i].startsWith(fence)) code.push(lines[i++]);
      i++;
      frag.append(codeBlock(code.join("\n"), lang));
    } else if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
      frag.append(h(`h${m[1].length}`, {}, inline(m[2]))); i++;
    } else if (/^\s*(---|\*\*\*|___)\s*$/.test(line)) {
      frag.append(h("hr")); i++;
    } else if (/^>\s?/.test(line)) {
      const quoted = [];
      while (i < lines.length && /^>\s?/.test(lines[i])) quoted.push(lines[i++].replace(/^>\s?/, ""));
      frag.append(h("blockquote", {}, renderMarkdown(quoted.join("\n"))));
    } else if ((m = line.match(/^\s*([-*+]|\d+[.)])\s+/))) {
      const ordered = /\d/.test(m[1]);
      const list = h(ordered ? "ol" : "ul");
      while (i < lines.length && (m = lines[i].match(/^\s*([-*+]|\d+[.)])\s+(.*)$/)) && /\d/.test(m[1]) === ordered) {
        list.append(h("li", {}, inline(m[2]))); i++;
      }
      frag.append(list);
    } else if (/^\|.*\|\s*$/.test(line) && i + 1 < lines.length && /^\|[\s:|-]+\|\s*$/.test(lines[i + 1])) {
      const cells = (l) => l.trim().slice(1, -1).split("|").map((c) => c.trim());
      const table = h("table", {}, h("thead", {}, h("tr", {}, cells(line).map((c) => h("th", {}, inline(c))))));
      const body = h("tbody");
      i += 2;
      while (i < lines.length && /^\|.*\|\s*$/.test(lines[i])) body.append(h("tr", {}, cells(lines[i++]).map((c) => h("td", {}, inline(c)))));
      table.append(body);
      frag.append(h("div", {class: "table-wrap"}, table));
    } else if (!line.trim()) {
      i++;
    } else {
      const para = [line];
      i++;
      while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i])) para.push(lines[i++]);
      const p = h("p");
      para.forEach((l, k) => { if (k) p.append(h("br")); p.append(inline(l)); });
      frag.append(p);
    }
  }
  return frag;
}

const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|~~([^~]+)~~|\*([^*\s][^*]*)\*|(?<![\w])_([^_\s][^_]*)_(?![\w])|!?\[([^\]]*)\]\(([^)\s]+)(?:\s+"[^"]*")?\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g;

function inline(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) frag.append(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[1]) frag.append(h("code", {}, m[2]));
    else if (m[3] || m[4]) frag.append(h("strong", {}, inline(m[3] || m[4])));
    else if (m[5]) frag.append(h("del", {}, inline(m[5])));
    else if (m[6] || m[7]) frag.append(h("em", {}, inline(m[6] || m[7])));
    else if (m[9] !== undefined) frag.append(link(m[8] || m[9], m[9]));
    else if (m[10]) frag.append(link(m[10], m[10]));
  }
  if (last < text.length) frag.append(text.slice(last));
  return frag;
}

function link(label, url) {
  if (!SAFE_URL.test(url)) return document.createTextNode(label === url ? url : `${label} (${url})`);
  return h("a", {href: url, target: "_blank", rel: "noopener noreferrer nofollow"}, label);
}

function codeBlock(code, lang) {
  const codeEl = h("code", {class: lang ? `lang-${lang}` : ""}, highlight(code, lang));
  const copy = h("button", {class: "copy", type: "button", "data-i18n": "chat.copy"}, t("chat.copy"));
  copy.addEventListener("click", () => copyText(code, copy));
  return h("div", {class: "code"}, h("div", {class: "code-head"}, h("span", {}, lang || "text"), copy), h("pre", {}, codeEl));
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea", {}, text);
    document.body.append(area); area.select(); document.execCommand("copy"); area.remove();
  }
  button.textContent = t("chat.copied");
  setTimeout(() => { button.textContent = t("chat.copy"); }, 1500);
}

// Highlighting: one tokenizer for C-like, Python and shell code; good enough to read, never markup.
const KEYWORDS = new Set(("and as assert async await break case catch class const continue def default del do elif else " +
  "enum except export extends false finally fn for from func function go if impl import in interface is lambda let " +
  "match mut new nil none None not null or package pass private protected pub public raise return self static struct " +
  "super switch this throw true True False try type typeof use var void while with yield").split(" "));
const TOKENS = /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|\b(\d+(?:\.\d+)?(?:e[+-]?\d+)?|0x[\da-f]+)\b|\b([A-Za-z_][\w]*)\b/gi;

function highlight(code, lang) {
  const frag = document.createDocumentFragment();
  const hashComments = /^(py|python|sh|bash|shell|zsh|rb|ruby|yaml|yml|toml|r|perl|pl|dockerfile|make|makefile)$/i.test(lang || "");
  let last = 0;
  for (const m of code.matchAll(TOKENS)) {
    let cls = null;
    if (m[1] && (m[1][0] !== "#" || hashComments)) cls = "tok-comment";
    else if (m[1]) continue;
    else if (m[2]) cls = "tok-string";
    else if (m[3]) cls = "tok-number";
    else if (m[4] && KEYWORDS.has(m[4])) cls = "tok-keyword";
    if (!cls) continue;
    if (m.index > last) frag.append(code.slice(last, m.index));
    frag.append(h("span", {class: cls}, m[0]));
    last = m.index + m[0].length;
  }
  if (last < code.length) frag.append(code.slice(last));
  return frag;
}
