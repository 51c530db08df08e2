// The page's entry point: tabs, the API key field, the error panel, keyboard shortcuts, and each tab's module.

import { getApiKey, onApiError, setApiKey } from "./api.js";
import { initAuto, runAuto } from "./auto.js";
import { clearObjects, initClick, newObject, undo } from "./click.js";
import { initConcept, runConcepts } from "./concept.js";
import { initExport } from "./export.js";
import { downloadOverlay, loadImage, render, setMode, stage } from "./image.js";
import { initJobs, refreshJobs } from "./jobs.js";
import { initLibrary, refreshLibrary } from "./library.js";
import { startStatus } from "./status.js";
import { $, dropZone, hideError, showError } from "./ui.js";
import { initVideo, videoKey } from "./video.js";

const TABS = ["image", "video", "jobs"];
let tab = "image";

export function showTab(name) {
  tab = name;
  for (const t of TABS) {
    $(`tab-${t}`).hidden = t !== name;
    $(`tab-btn-${t}`).setAttribute("aria-selected", String(t === name));
  }
  if (name === "jobs") refreshJobs();
  if (name === "video") refreshLibrary();
  window.history.replaceState(null, "", `#${name}`);
}

function initApiKey() {
  const input = $("api-key");
  input.value = getApiKey();
  input.addEventListener("change", () => {
    setApiKey(input.value.trim());
    document.querySelector(".apikey").classList.remove("needed");
  });
}

function runCurrentMode() {
  if (stage.mode === "concept") runConcepts();
  else if (stage.mode === "auto") runAuto();
}

/** Single-key shortcuts, ignored while typing in a field (Ctrl+Enter and Esc work everywhere). */
function onKey(e) {
  if (e.key === "Escape") { hideError(); return; }
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); if (tab === "image") runCurrentMode(); return; }
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName)) && t.type !== "range"
      && t.type !== "checkbox" && t.type !== "radio") return;
  if (document.querySelector("dialog[open]")) return;
  const k = e.key;
  if (k === "?") { $("help-dialog").showModal(); return; }
  if (k === "i") return showTab("image");
  if (k === "v") return showTab("video");
  if (k === "j") return showTab("jobs");
  if (tab === "image") {
    if (k === "o") $("image-file").click();
    else if (k === "c") setMode("concept");
    else if (k === "k") setMode("click");
    else if (k === "a") { if (stage.mode === "auto") runAuto(); else setMode("auto"); }
    else if (k === "n" && stage.mode === "click") newObject();
    else if (k === "z" && stage.mode === "click") undo();
    else if (k === "m") { $("multimask").checked = !$("multimask").checked; $("multimask").dispatchEvent(new Event("change")); }
    else if (k === "b") { $("show-boxes").checked = !$("show-boxes").checked; render(); }
    else if (k === "d") downloadOverlay();
    else return;
    e.preventDefault();
  } else if (tab === "video") {
    if (k === "o") $("video-file").click();
    else if (k === "r") refreshLibrary();
    else if (!videoKey(e)) return;
    e.preventDefault();
  } else if (tab === "jobs" && k === "r") {
    refreshJobs();
  }
}

function init() {
  initApiKey();
  onApiError(showError);
  window.addEventListener("unhandledrejection", (e) => {
    if (e.reason && e.reason.name === "ApiError") { e.preventDefault(); return; } // shown in the panel already
  });
  $("error-close").addEventListener("click", hideError);
  $("help-open").addEventListener("click", () => $("help-dialog").showModal());
  for (const t of TABS) $(`tab-btn-${t}`).addEventListener("click", () => showTab(t));
  for (const m of ["concept", "click", "auto"]) $(`mode-${m}`).addEventListener("change", () => setMode(m));
  $("show-boxes").addEventListener("change", render);
  $("download-overlay").addEventListener("click", downloadOverlay);
  dropZone($("image-drop"), $("image-file"), (file) => { hideError(); clearObjects(); loadImage(file); });
  initConcept();
  initClick();
  initAuto();
  initVideo();
  initExport();
  initLibrary();
  initJobs();
  document.addEventListener("keydown", onKey);
  startStatus();
  const start = window.location.hash.slice(1);
  showTab(TABS.includes(start) ? start : "image");
  document.body.dataset.ready = "1";
}

init();
