// volsynth studio page: talks to the studio's HTTP API (server.py) and shows volumes with NiiVue, which is
// loaded from this server (static/vendor/niivue.js, copied there by `make setup`), never from the network.

const $ = (id) => document.getElementById(id);
const state = { card: null, mode: "none", uploadId: null, job: null, events: null, result: null, view: "multiplanar" };
let Niivue = null, SLICE_TYPE = null;
let drawView = null, resultView = null, maskView = null;

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function showError(message) { $("error").textContent = message || ""; }
function setStatus(message) { $("status").textContent = message || ""; }

function colourMap(classes) {
  // a NiiVue label colour map: index 0 transparent, each class id in its card colour
  const ids = [0, ...classes.map((c) => c.id)];
  const rgb = [[0, 0, 0], ...classes.map((c) => [1, 3, 5].map((i) => parseInt(c.colour.slice(i, i + 2), 16)))];
  return { R: rgb.map((c) => c[0]), G: rgb.map((c) => c[1]), B: rgb.map((c) => c[2]),
           A: ids.map((i) => (i === 0 ? 0 : 255)), I: ids, labels: ["", ...classes.map((c) => c.name)] };
}

async function loadViewer() {
  const status = await api("/api/status");
  if (!status.viewer) {
    $("viewer-hint").textContent = status.viewer_hint;
    $("viewer-hint").hidden = false;
    return;
  }
  ({ Niivue, SLICE_TYPE } = await import("/static/vendor/niivue.js"));
  const options = { backColor: [0, 0, 0, 1], dragAndDropEnabled: false, isColorbar: false, show3Dcrosshair: false,
                    crosshairWidth: 0.5, crosshairColor: [0.9, 0.8, 0.2, 0.6] };
  resultView = new Niivue({ ...options });
  await resultView.attachToCanvas($("result"));
  maskView = new Niivue({ ...options });
  await maskView.attachToCanvas($("input-mask"));
  drawView = new Niivue({ ...options, isFilledPen: true });
  await drawView.attachToCanvas($("draw"));
  const datasets = status.datasets || [];
  $("mode-case-label").hidden = datasets.length === 0;
  $("dataset").innerHTML = datasets.map((d) => `<option value="${d.id}">${d.name}</option>`).join("");
  $("dataset").onchange = () => {
    const dataset = datasets.find((d) => d.id === $("dataset").value);
    $("case").innerHTML = (dataset ? dataset.cases : []).map((c) => `<option>${c}</option>`).join("");
  };
  $("dataset").onchange();
}

async function loadModels() {
  const models = await api("/api/models");
  $("model").innerHTML = models.map((m) => `<option value="${m.id}">${m.id} (${m.kind}, ${m.source})</option>`).join("");
  const preferred = models.find((m) => m.id === new URLSearchParams(location.search).get("model"));
  if (preferred) $("model").value = preferred.id;
  await chooseModel();
}

async function chooseModel() {
  showError("");
  const card = state.card = await api(`/api/models/${encodeURIComponent($("model").value)}`);
  const defaults = Object.entries(card.sampling).map(([k, v]) => `${k} ${v}`).join(", ");
  const withMask = card.sampling_with_mask ? `; with a mask: ${Object.entries(card.sampling_with_mask)
    .filter(([k, v]) => card.sampling[k] !== v).map(([k, v]) => `${k} ${v}`).join(", ")}` : "";
  $("card").innerHTML = `<div><b>${card.name}</b>: ${card.kind} model, grid ${card.grid.size.join("×")} at `
    + `${card.grid.spacing.join("×")} mm, ${card.modalities.join("/")}</div>`
    + `<div>classes: ${card.classes.map((c) => `<span class="swatch" style="background:${c.colour}"></span>${c.name}`)
      .join(" ")}</div><div>sampling: ${defaults}${withMask}</div>`
    + `<div>${card.takes_mask ? "takes a mask" : "text only (no mask guidance)"}</div>`;
  $("examples").innerHTML = "";
  for (const example of card.examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = example;
    button.onclick = () => { $("prompt").value = example; };
    $("examples").append(button);
  }
  for (const label of document.querySelectorAll("#settings [data-option]")) {
    const option = label.dataset.option;
    label.hidden = option !== "seed" && !card.options.includes(option);
  }
  // empty fields show the model's default and are not sent, so the model's own settings (and the ones it
  // recommends with a mask) apply unless the user types a value
  for (const input of document.querySelectorAll("#settings input[type=number]:not(#seed)")) {
    input.value = "";
    input.placeholder = card.sampling[input.id] ?? "model's";
  }
  $("refine").checked = true;
  $("sampler").innerHTML = `<option value="">${card.sampling.sampler || "model's"}</option>`
    + card.samplers.map((s) => `<option value="${s}">${s}</option>`).join("");
  $("modality").innerHTML = card.modalities.map((m) => `<option>${m}</option>`).join("");
  $("mask-section").hidden = !card.takes_mask;
  if (!card.takes_mask) setMode("none");
  $("pens").innerHTML = "";
  for (const c of card.classes) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.pen = c.id;
    button.innerHTML = `<span class="swatch" style="background:${c.colour}"></span>${c.name}`;
    button.onclick = () => choosePen(c.id);
    $("pens").append(button);
  }
  if (drawView) await loadCanvas();
  document.body.dataset.state = "ready";
}

async function loadCanvas() {
  // an empty volume in the model's grid to draw on; the drawing is uploaded as the mask when generating
  const modality = $("modality").value ? `?modality=${encodeURIComponent($("modality").value)}` : "";
  await drawView.loadVolumes([{ url: `/api/models/${encodeURIComponent(state.card.id)}/canvas.nii${modality}`,
                                name: "canvas.nii" }]);
  drawView.createEmptyDrawing();
  drawView.setDrawColormap(colourMap(state.card.classes));
  drawView.setDrawOpacity(0.8);
  drawView.setSliceType(SLICE_TYPE[$("draw-plane").value.toUpperCase()]);
  drawView.setDrawingEnabled(state.mode === "draw");
  choosePen(state.card.classes[0].id);
}

function choosePen(value) {
  if (!drawView) return;
  drawView.setPenValue(value, value !== 0 && $("filled").checked);
  for (const button of document.querySelectorAll("#pens button, #erase")) {
    button.classList.toggle("active", Number(button.dataset.pen ?? 0) === value && (value !== 0 || button.id === "erase"));
  }
  state.pen = value;
}

function setMode(mode) {
  state.mode = mode;
  $(`mode-${mode}`).checked = true;
  $("draw-panel").hidden = mode !== "draw";
  $("upload-panel").hidden = mode !== "upload";
  $("case-panel").hidden = mode !== "case";
  if (drawView) {
    drawView.setDrawingEnabled(mode === "draw");
    if (mode === "draw") drawView.resizeListener();  // the canvas had no size while its panel was hidden
  }
}

async function uploadMask(body, filename) {
  return api(`/api/masks?filename=${encodeURIComponent(filename)}`, { method: "POST", body,
    headers: { "Content-Type": "application/octet-stream" } });
}

async function maskFields() {
  if (!state.card.takes_mask || state.mode === "none") return {};
  if (state.mode === "upload") {
    if (!state.uploadId) throw new Error("choose a mask file to upload first");
    return { mask: state.uploadId };
  }
  if (state.mode === "case") return { dataset: $("dataset").value, case: $("case").value };
  if (!drawView || !drawView.drawBitmap || !drawView.drawBitmap.some((v) => v > 0)) {
    throw new Error("draw a mask first (choose a class, then drag on the slice)");
  }
  const bytes = await drawView.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
  const gz = bytes[0] === 0x1f && bytes[1] === 0x8b;
  const record = await uploadMask(bytes, gz ? "drawing.nii.gz" : "drawing.nii");
  return { mask: record.id };
}

function settings() {
  const values = { seed: Number($("seed").value || 0) };
  for (const option of state.card.options) {
    const input = $(option);
    if (!input) continue;
    if (input.type === "checkbox") { if (!input.checked) values[option] = false; }
    else if (input.type === "number") { if (input.value !== "") values[option] = Number(input.value); }
    else if (input.value) values[option] = input.value;
  }
  return values;
}

async function generate() {
  showError("");
  try {
    $("generate").disabled = true;
    const body = { model: state.card.id, prompt: $("prompt").value, ...settings(), ...(await maskFields()) };
    const job = await api("/api/jobs", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    follow(job.id);
  } catch (error) {
    showError(error.message);
    $("generate").disabled = false;
  }
}

function follow(jobId) {
  state.job = jobId;
  $("cancel").disabled = false;
  $("progress").value = 0;
  document.body.dataset.state = "running";
  setStatus("queued");
  const events = state.events = new EventSource(`/api/jobs/${jobId}/events`);
  const finish = (message, error) => {
    events.close();
    $("cancel").disabled = true;
    $("generate").disabled = false;
    setStatus(message);
    if (error) showError(error);
  };
  events.addEventListener("queued", (e) => setStatus(`queued (position ${JSON.parse(e.data).position})`));
  events.addEventListener("started", () => setStatus("starting"));
  events.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    $("progress").max = p.total;
    $("progress").value = p.step;
    setStatus(`${p.stage > 1 ? `stage ${p.stage}: ` : ""}sampling step ${p.step} of ${p.total}`);
  });
  events.addEventListener("warning", (e) => showError(`warning: ${JSON.parse(e.data).message}`));
  events.addEventListener("done", async () => {
    finish("done");
    await showResult(jobId);
    loadHistory();
  });
  events.addEventListener("failed", (e) => { document.body.dataset.state = "failed"; finish("failed", JSON.parse(e.data).error); });
  events.addEventListener("cancelled", () => { document.body.dataset.state = "cancelled"; finish("cancelled"); });
  events.onerror = () => { if (events.readyState === EventSource.CLOSED) finish("connection lost"); };
}

async function cancel() {
  if (state.job) await api(`/api/jobs/${state.job}/cancel`, { method: "POST" });
}

function applyView(view) {
  state.view = view;
  for (const nv of [resultView, maskView]) {
    if (nv) nv.setSliceType(SLICE_TYPE[view.toUpperCase()]);
  }
  for (const button of document.querySelectorAll("[data-view]")) button.classList.toggle("active", button.dataset.view === view);
}

async function showResult(id) {
  const record = state.result = await api(`/api/results/${id}`);
  $("result-name").textContent = `${record.model} · seed ${record.seed}${record.prompt ? ` · “${record.prompt}”` : ""}`;
  const base = `/api/results/${id}`;
  const links = [["image.nii.gz", "volume (NIfTI)"], ["label.nii.gz", "label map (NIfTI)"], ["sidecar.json", "sidecar"],
                 ["image.dicom.zip", "volume (DICOM zip)"], ["label.dicom.zip", "label map (DICOM zip)"]];
  $("downloads").innerHTML = links.filter(([name]) => record.files.includes(name.replace(".dicom.zip", ".nii.gz")))
    .map(([name, text]) => `<a href="${base}/${name}" download data-file="${name}">${text}</a>`).join("");
  if (!resultView) { document.body.dataset.state = "result"; return; }
  const card = state.card && state.card.id === record.model ? state.card : await api(`/api/models/${record.model}`);
  const ct = card.modalities[0] === "CT";
  const volumes = [{ url: `${base}/image.nii.gz`, name: "image.nii.gz", colormap: "gray",
                     ...(ct ? { cal_min: -250, cal_max: 300 } : {}) }];
  if (record.files.includes("label.nii.gz")) volumes.push({ url: `${base}/label.nii.gz`, name: "label.nii.gz", opacity: 0.5 });
  await resultView.loadVolumes(volumes);
  if (volumes.length > 1) resultView.volumes[1].setColormapLabel(colourMap(card.classes));
  setOverlay();
  if (record.files.includes("mask.nii.gz")) {
    await maskView.loadVolumes([{ url: `${base}/mask.nii.gz`, name: "mask.nii.gz" }]);
    maskView.volumes[0].setColormapLabel(colourMap(card.classes));
    maskView.updateGLVolume();
  } else {
    await maskView.loadVolumes([]);
  }
  applyView(state.view);
  document.body.dataset.state = "result";
}

function setOverlay() {
  if (resultView && resultView.volumes.length > 1) {
    resultView.setOpacity(1, $("overlay").checked ? 0.5 : 0);
    resultView.updateGLVolume();
  }
}

async function loadHistory() {
  const items = await api("/api/results");
  $("history").innerHTML = "";
  for (const item of items) {
    const li = document.createElement("li");
    const when = new Date(item.created * 1000).toLocaleString();
    li.textContent = `${when} · ${item.model} · seed ${item.seed} · ${item.prompt || "(no report)"} `;
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "open";
    open.onclick = () => showResult(item.id).catch((e) => showError(e.message));
    li.append(open);
    $("history").append(li);
  }
}

function wire() {
  $("model").onchange = () => chooseModel().catch((e) => showError(e.message));
  $("modality").onchange = () => { if (drawView) loadCanvas(); };
  for (const radio of document.querySelectorAll("input[name=mask-mode]")) radio.onchange = () => setMode(radio.value);
  $("erase").onclick = () => choosePen(0);
  $("undo").onclick = () => drawView && drawView.drawUndo();
  $("clear").onclick = () => { if (drawView) { drawView.createEmptyDrawing(); drawView.drawScene(); } };
  $("filled").onchange = () => choosePen(state.pen ?? 1);
  $("draw-plane").onchange = () => drawView && drawView.setSliceType(SLICE_TYPE[$("draw-plane").value.toUpperCase()]);
  $("mask-file").onchange = async () => {
    const file = $("mask-file").files[0];
    state.uploadId = null;
    $("upload-info").textContent = "";
    if (!file) return;
    showError("");
    try {
      const record = await uploadMask(file, file.name);
      state.uploadId = record.id;
      $("upload-info").textContent = `${record.name}: ${record.shape.join("×")} voxels, labels ${record.labels.join(", ")}`;
      if (maskView) {
        await maskView.loadVolumes([{ url: `/api/masks/${record.id}/mask.nii.gz`, name: "mask.nii.gz" }]);
        maskView.volumes[0].setColormapLabel(colourMap(state.card.classes));
        maskView.updateGLVolume();
      }
    } catch (error) {
      showError(error.message);
    }
  };
  $("generate").onclick = generate;
  $("cancel").onclick = () => cancel().catch((e) => showError(e.message));
  $("overlay").onchange = setOverlay;
  for (const button of document.querySelectorAll("[data-view]")) button.onclick = () => applyView(button.dataset.view);
}

wire();
loadViewer().then(loadModels).then(loadHistory).catch((error) => {
  showError(error.message);
  document.body.dataset.state = "error";
});
window.studio = { state, views: () => ({ drawView, resultView, maskView }) };
