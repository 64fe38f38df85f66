// The dashboard: sign-in, the job list (refreshed every few seconds), one job's details with its live
// loss curve, and the form that uploads a file and starts a job. Everything from the API is rendered
// with textContent, never parsed as HTML.

import { ApiError, followEvents, getBlob, getJson, key, postJson } from "./api.js";
import { drawCurve } from "./curve.js";

const REFRESH_MS = 3000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

let selected = null; // {id, job, points, controller}
let refreshTimer = null;

function showError(error) {
  $("error").hidden = !error;
  $("error").textContent = error ? String(error.message || error) : "";
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell ?? "";
    tr.append(td);
  }
  return tr;
}

const time = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "");
const number = (value, digits = 4) => (typeof value === "number" ? value.toFixed(digits) : "");

function progressText(job) {
  const { step, total_steps: total } = job.progress;
  return total ? `${step}/${total}` : "";
}

async function start() {
  try {
    await getJson("/v1/fine_tuning/jobs?limit=1");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      showSignIn(key.get() ? "That key was refused; sign in again." : null);
      return;
    }
    showError(error);
  }
  $("sign-in").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = !key.get();
  $("who").textContent = key.get() ? "signed in with an API key" : "authentication is off";
  await Promise.all([loadModels(), refresh()]);
  refreshTimer ??= setInterval(refresh, REFRESH_MS);
}

function showSignIn(message) {
  key.clear();
  $("sign-in").hidden = false;
  $("dashboard").hidden = true;
  showError(message);
}

async function loadModels() {
  const models = await getJson("/v1/models");
  const select = $("model");
  select.replaceChildren();
  for (const model of models.data.filter((m) => m.status === "ready")) {
    select.append(new Option(model.id, model.id));
  }
}

async function refresh() {
  try {
    const jobs = await getJson("/v1/fine_tuning/jobs?limit=50");
    $("job-rows").replaceChildren(...jobs.data.map(jobRow));
    if (selected) await refreshJob();
    showError(null);
  } catch (error) {
    showError(error);
  }
}

function jobRow(job) {
  const link = document.createElement("button");
  link.type = "button";
  link.className = "link";
  link.textContent = job.id;
  link.addEventListener("click", () => selectJob(job.id));
  const status = document.createElement("span");
  status.className = `status ${job.status}`;
  status.textContent = job.status;
  const tr = row([link, job.model, status, progressText(job), time(job.created_at)]);
  tr.dataset.jobId = job.id;
  tr.dataset.status = job.status;
  return tr;
}

function selectJob(jobId) {
  if (selected) selected.controller.abort();
  selected = { id: jobId, job: null, points: [], controller: new AbortController() };
  $("job").hidden = false;
  $("job-id").textContent = jobId;
  $("events").replaceChildren();
  $("checkpoints").replaceChildren();
  $("evaluations").replaceChildren();
  $("stability-plot").hidden = true;
  $("stability-note").textContent = "";
  drawCurve($("loss-curve"), []);
  refreshJob().catch(showError);
  const current = selected;
  followEvents(jobId, (event) => addEvent(current, event), current.controller.signal)
    .then(() => current === selected && refreshJob())
    .catch((error) => current.controller.signal.aborted || showError(error));
}

function addEvent(current, event) {
  if (current !== selected) return;
  const item = document.createElement("li");
  item.className = `event ${event.level}`;
  item.dataset.type = event.type;
  item.textContent = `${time(event.created_at)}  ${event.type}  ${event.message}`;
  $("events").prepend(item);
  if (event.type === "progress" && event.data && typeof event.data.loss === "number") {
    current.points.push({ step: event.data.step, loss: event.data.loss });
    drawCurve($("loss-curve"), current.points);
    const eta = event.data.eta_seconds ? `, ETA ${Math.round(event.data.eta_seconds)} s` : "";
    const speed = number(event.data.tokens_per_second, 0);
    $("job-progress").textContent =
      `step ${event.data.step}/${event.data.total_steps}, loss ${number(event.data.loss)}, ${speed} tokens/s${eta}`;
  }
}

async function refreshJob() {
  const current = selected;
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(current.id)}`;
  const [job, checkpoints, evaluations] = await Promise.all([
    getJson(path),
    getJson(`${path}/checkpoints?limit=100`),
    getJson("/v1/evaluations?limit=100"),
  ]);
  if (current !== selected) return;
  const wasTerminal = current.job && TERMINAL.has(current.job.status);
  current.job = job;
  $("job-status").textContent = job.status;
  $("job-status").className = `status ${job.status}`;
  $("job-status").dataset.status = job.status;
  $("job-error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  $("download-adapter").hidden = job.status !== "succeeded";
  $("cancel-job").hidden = TERMINAL.has(job.status);
  $("checkpoints").replaceChildren(
    ...checkpoints.data.map((c) =>
      row([c.id, c.step_number, number(c.metrics.train_loss), number(c.metrics.learning_rate, 6),
        number(c.metrics.tokens_per_second, 0)]),
    ),
  );
  $("evaluations").replaceChildren(
    ...evaluations.data
      .filter((e) => e.fine_tuning_job === job.id)
      .map((e) => row([e.id, e.status, e.tasks.join(", "), e.results ? JSON.stringify(e.results) : ""])),
  );
  if (TERMINAL.has(job.status) && !wasTerminal) await loadStability(current);
}

async function loadStability(current) {
  try {
    const plot = await getBlob(`/v1/fine_tuning/jobs/${encodeURIComponent(current.id)}/stability.png`);
    if (current !== selected) return;
    $("stability-plot").src = URL.createObjectURL(plot);
    $("stability-plot").hidden = false;
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    $("stability-note").textContent = "This job has no stability report.";
  }
}

async function saveBlob(path, filename) {
  const url = URL.createObjectURL(await getBlob(path));
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function uploadFile(input) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", input.files[0]);
  return (await postJson("/v1/files", form)).id;
}

async function createJob(event) {
  event.preventDefault();
  const button = $("create-button");
  button.disabled = true;
  try {
    $("create-status").textContent = "Uploading…";
    const trainingFile = await uploadFile($("training-file"));
    const validationFile = $("validation-file").files.length ? await uploadFile($("validation-file")) : null;
    const body = {
      model: $("model").value,
      training_file: trainingFile,
      hyperparameters: {
        n_epochs: Number($("n-epochs").value),
        batch_size: Number($("batch-size").value),
        max_seq_len: Number($("max-seq-len").value),
      },
      lora: { r: Number($("lora-r").value) },
    };
    if (validationFile) body.validation_file = validationFile;
    if ($("suffix").value) body.suffix = $("suffix").value;
    const job = await postJson("/v1/fine_tuning/jobs", body);
    $("create-status").textContent = `Started ${job.id}`;
    selectJob(job.id);
    await refresh();
  } catch (error) {
    $("create-status").textContent = "";
    showError(error);
  } finally {
    button.disabled = false;
  }
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key.set($("api-key").value.trim());
  start();
});
$("sign-out").addEventListener("click", () => {
  key.clear();
  location.reload();
});
$("create-form").addEventListener("submit", createJob);
$("download-adapter").addEventListener("click", () =>
  saveBlob(`/v1/fine_tuning/jobs/${encodeURIComponent(selected.id)}/adapter`, `${selected.id}-adapter.tar.gz`).catch(
    showError,
  ),
);
$("cancel-job").addEventListener("click", () =>
  postJson(`/v1/fine_tuning/jobs/${encodeURIComponent(selected.id)}/cancel`).then(refresh, showError),
);
start();
