// eyefuse page: pick two photographs, POST them to /v1/predict (bars) and /v1/explain (heatmaps).
// Vanilla JS, no external resources. Server text is always inserted with textContent, never as HTML.
"use strict";

const SIDES = ["left", "right"];
const $ = (id) => document.getElementById(id);

let model = null; // GET /v1/model
let run = 0; // increases with every submission: answers to an older one are ignored

function percent(p) {
  return (100 * p).toFixed(1) + " %";
}

function element(tag, props = {}, children = []) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") el.textContent = value;
    else if (key === "class") el.className = value;
    else if (key === "style") Object.assign(el.style, value);
    else el.setAttribute(key, value);
  }
  for (const child of children) el.appendChild(child);
  return el;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function readJson(response) {
  // Every error of the service is JSON {"error": message}; anything else is reported as such.
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : "the service answered " + response.status;
    throw new Error(message + " (HTTP " + response.status + ")");
  }
  return body;
}

function labelName(code) {
  const entry = model && model.labels.find((l) => l.label === code);
  return entry ? entry.name : code;
}

async function loadModel() {
  try {
    model = await readJson(await fetch("/v1/model"));
    const arch = model.architecture || {};
    const parts = [
      model.checkpoint,
      model.model_kind === "onnx" ? "ONNX Runtime" : "PyTorch",
      [arch.backbone, arch.attention, arch.fusion].filter(Boolean).join(" + "),
      model.input_size + " px",
      "eyefuse " + model.eyefuse_version,
    ];
    $("model-info").textContent = "Model: " + parts.filter(Boolean).join(" · ");
  } catch (e) {
    $("model-info").textContent = "The model description could not be loaded: " + e.message;
  }
}

function chosenFiles() {
  const files = {};
  for (const side of SIDES) {
    const input = $(side + "-file");
    if (input.files && input.files.length > 0) files[side] = input.files[0];
  }
  return files;
}

function showPreview(side) {
  const input = $(side + "-file");
  const img = $(side + "-preview");
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  if (input.files && input.files.length > 0) {
    img.dataset.url = URL.createObjectURL(input.files[0]);
    img.src = img.dataset.url;
    img.hidden = false;
  } else {
    delete img.dataset.url;
    img.removeAttribute("src");
    img.hidden = true;
  }
  $("analyse").disabled = Object.keys(chosenFiles()).length === 0;
}

function formData(files, extra = {}) {
  const form = new FormData();
  for (const [side, file] of Object.entries(files)) form.append(side, file, file.name);
  for (const [key, value] of Object.entries(extra)) form.append(key, value);
  return form;
}

function renderBars(prediction) {
  const list = $("bars");
  list.replaceChildren();
  const codes = model ? model.label_names : Object.keys(prediction.probabilities);
  for (const code of codes) {
    const p = prediction.probabilities[code];
    const threshold = prediction.thresholds[code];
    const positive = prediction.labels.includes(code);
    const name = labelName(code);
    const fill = element("div", { class: "fill", style: { width: (100 * p).toFixed(2) + "%" } });
    const marker = element("div", {
      class: "threshold",
      style: { left: (100 * threshold).toFixed(2) + "%" },
      title: "threshold " + percent(threshold),
    });
    const track = element(
      "div",
      {
        class: "track",
        role: "meter",
        "aria-valuemin": "0",
        "aria-valuemax": "100",
        "aria-valuenow": (100 * p).toFixed(1),
        "aria-valuetext": percent(p),
        "aria-label": code + " " + name + ", threshold " + percent(threshold),
      },
      [fill, marker],
    );
    const row = element(
      "li",
      { class: "bar-row" + (positive ? " positive" : ""), id: "bar-" + code, "data-label": code },
      [
        element("span", { class: "code", text: code }),
        element("span", { class: "name", text: name }),
        track,
        element("span", {
          class: "value",
          id: "prob-" + code,
          "data-label": code,
          "data-probability": String(p),
          text: percent(p),
        }),
        element("span", { class: "decision", text: positive ? "positive" : "below threshold" }),
      ],
    );
    list.appendChild(row);
  }
  $("decided").textContent =
    "Decided positive: " +
    (prediction.labels.length ? prediction.labels.map((c) => c + " (" + labelName(c) + ")").join(", ") : "none");
  const warnings = $("warnings");
  warnings.replaceChildren(...prediction.warnings.map((w) => element("li", { class: "warning", text: w })));
  $("results").hidden = false;
}

function renderHeatmaps(explanation) {
  const box = $("heatmaps");
  box.replaceChildren();
  for (const overlay of explanation.overlays) {
    const decision = overlay.positive ? "positive" : "negative";
    const img = element("img", {
      id: "heatmap-" + overlay.label,
      "data-label": overlay.label,
      width: String(overlay.width),
      height: String(overlay.height),
      alt:
        "Grad-CAM heatmaps of the left and right eye for " + overlay.label + " (" + overlay.name + "), " +
        "probability " + percent(overlay.probability) + ", " + decision,
      src: "data:" + overlay.media_type + ";base64," + overlay.png_base64,
    });
    const caption = element("figcaption", {
      text:
        overlay.label + " (" + overlay.name + "): probability " + percent(overlay.probability) +
        ", threshold " + percent(overlay.threshold) + ", " + decision +
        ". Red: regions that raised this label's score; the two eyes share one colour scale.",
    });
    box.appendChild(element("figure", {}, [img, caption]));
  }
}

async function analyse(event) {
  event.preventDefault();
  const files = chosenFiles();
  if (Object.keys(files).length === 0) {
    showError("Choose at least one photograph.");
    return;
  }
  const mine = ++run;
  showError("");
  $("analyse").disabled = true;
  $("heatmaps").replaceChildren();
  $("heatmaps-section").hidden = true;
  setStatus("Predicting…");
  try {
    const prediction = await readJson(await fetch("/v1/predict", { method: "POST", body: formData(files) }));
    if (mine !== run) return;
    renderBars(prediction);
    setStatus("Prediction done.");
  } catch (e) {
    if (mine === run) {
      showError("Prediction failed: " + e.message);
      setStatus("");
      $("analyse").disabled = false;
    }
    return;
  }
  $("heatmaps-section").hidden = false;
  if (model && !model.explain_available) {
    $("heatmap-status").textContent =
      "Heatmaps need the PyTorch checkpoint; this service runs an ONNX model.";
    $("analyse").disabled = false;
    return;
  }
  $("heatmap-status").textContent = "Computing Grad-CAM heatmaps…";
  try {
    const extra = {};
    if ($("explain-labels").value === "all" && model) extra.labels = model.label_names.join(",");
    const explanation = await readJson(
      await fetch("/v1/explain", { method: "POST", body: formData(files, extra) }),
    );
    if (mine !== run) return;
    renderHeatmaps(explanation);
    $("heatmap-status").textContent = "Heatmaps for " + explanation.explained.join(", ") + ".";
  } catch (e) {
    if (mine === run) $("heatmap-status").textContent = "Heatmaps failed: " + e.message;
  } finally {
    if (mine === run) $("analyse").disabled = Object.keys(chosenFiles()).length === 0;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const side of SIDES) $(side + "-file").addEventListener("change", () => showPreview(side));
  $("upload-form").addEventListener("submit", analyse);
  loadModel();
  // A browser may keep chosen files across a reload: show them.
  for (const side of SIDES) showPreview(side);
});
