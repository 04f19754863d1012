// One catalogue per language (assets/i18n/LANG.json), English as the fallback for a missing key.
// Markup names its strings with data-i18n (text), data-i18n-placeholder, data-i18n-title and
// data-i18n-aria; scripts call t(KEY, {name: value}) for "{name}" in the text.
"use strict";
const ASSET_BASE = document.currentScript.src.replace(/\/[^/]*$/, "");
const LANGUAGES = {"en": "English", "zh-Hans": "简体中文", "zh-Hant-HK": "繁體中文 (香港)",
  "zh-Hant-TW": "繁體中文 (台灣)", "ja": "日本語", "ko": "한국어", "fr": "Français", "de": "Deutsch", "ru": "Русский"};
const I18N = {lang: "en", strings: {}, fallback: {}};

function browserLanguage() {
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const l = tag.toLowerCase();
    if (l.startsWith("zh")) {
      if (l.includes("hk") || l.includes("mo")) return "zh-Hant-HK";
      if (l.includes("tw") || l.includes("hant")) return "zh-Hant-TW";
      return "zh-Hans";
    }
    const base = l.split("-")[0];
    if (base in LANGUAGES) return base;
  }
  return "en";
}

async function loadCatalogue(lang) {
  const r = await fetch(`${ASSET_BASE}/i18n/${lang}.json`);
  return r.ok ? r.json() : {};
}

async function setLanguage(lang) {
  if (!(lang in LANGUAGES)) lang = "en";
  if (!Object.keys(I18N.fallback).length) I18N.fallback = await loadCatalogue("en");
  I18N.strings = lang === "en" ? I18N.fallback : await loadCatalogue(lang);
  I18N.lang = lang;
  localStorage.setItem("novamlx.lang", lang);
  document.documentElement.lang = lang;
  applyI18n(document);
  document.dispatchEvent(new CustomEvent("languagechange"));
}

function t(key, vars) {
  let s = I18N.strings[key] ?? I18N.fallback[key] ?? key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

function applyI18n(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-aria]")) el.setAttribute("aria-label", t(el.dataset.i18nAria));
}

function languagePicker(select) {
  for (const [code, name] of Object.entries(LANGUAGES)) select.append(new Option(name, code));
  select.value = I18N.lang;
  select.addEventListener("change", () => setLanguage(select.value));
}

function initI18n() {
  return setLanguage(localStorage.getItem("novamlx.lang") || browserLanguage());
}
