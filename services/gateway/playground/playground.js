/* The BOIG playground: score creatives, run generation jobs and read the checkpoint registry
   through the public /v1 API, with the key the user pasted (kept in this tab's session storage).
   Whatever the server sends is put into the page as text (textContent), never parsed as HTML;
   requests use paths relative to the page, so it also works behind a path prefix. */
(() => {
  "use strict";

  const KEY_STORAGE = "boig.playground.key";
  const POLL_MS = 1000;
  const DECISIONS_PAGE = 10;
  const FINAL_STATES = new Set(["succeeded", "failed", "canceled"]);
  const TABS = ["score", "generate", "checkpoints"];

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // --- formatting and DOM --------------------------------------------------------------

  const number = (value, digits = 3) =>
    typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
  const signed = (value, digits = 3) => (value > 0 ? "+" : "") + number(value, digits);
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
  const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;

  /** An element with text and children; strings become text nodes, falsy children are skipped. */
  function el(tag, options = {}, children = []) {
    const node = document.createElement(tag);
    if (options.class) node.className = options.class;
    if (options.text !== undefined) node.textContent = options.text;
    for (const [name, value] of Object.entries(options.attrs || {})) node.setAttribute(name, value);
    for (const child of children) if (child) node.append(child);
    return node;
  }

  /** Object URLs of images shown from memory, released when their view is redrawn. */
  class ObjectUrls {
    constructor() { this.urls = []; }
    of(blob) { const url = URL.createObjectURL(blob); this.urls.push(url); return url; }
    release() { this.urls.forEach((url) => URL.revokeObjectURL(url)); this.urls = []; }
  }

  // --- the key ---------------------------------------------------------------------------

  function sessionStore() {
    try { return window.sessionStorage; } catch { return null; } // storage disabled
  }
  const apiKey = () => $("api-key").value.trim();

  function saveKey() {
    const store = sessionStore();
    if (!store) return;
    if (apiKey()) store.setItem(KEY_STORAGE, apiKey());
    else store.removeItem(KEY_STORAGE);
  }

  function restoreKey() {
    const store = sessionStore();
    $("api-key").value = (store && store.getItem(KEY_STORAGE)) || "";
  }

  // --- errors ----------------------------------------------------------------------------

  /** An error in the API's shape: {"error": {"type", "message", "request_id"}}. */
  class ApiError extends Error {
    constructor(type, message, { status = 0, requestId = null, retryAfter = null } = {}) {
      super(message);
      this.type = type;
      this.status = status;
      this.requestId = requestId;
      this.retryAfter = retryAfter;
    }
  }

  function showError(error) {
    $("error-type").textContent = error instanceof ApiError ? error.type : "error";
    $("error-message").textContent = error.message || String(error);
    $("error-request").textContent = error.requestId ? `request id ${error.requestId}` : "";
    $("error").hidden = false;
  }

  const clearError = () => { $("error").hidden = true; };

  async function errorOf(response) {
    const options = {
      status: response.status,
      requestId: response.headers.get("X-Request-ID"),
      retryAfter: Number(response.headers.get("Retry-After")) || null,
    };
    let body = null;
    try { body = await response.json(); } catch { /* not JSON: a proxy's own page */ }
    const detail = body && body.error;
    if (detail && typeof detail.message === "string") {
      const requestId = detail.request_id || options.requestId;
      return new ApiError(detail.type || `http_${response.status}`, detail.message, { ...options, requestId });
    }
    const message = `the gateway answered ${response.status} ${response.statusText}`.trim();
    return new ApiError(`http_${response.status}`, message, options);
  }

  // --- the API ---------------------------------------------------------------------------

  async function call(path, { method = "GET", body, headers = {}, as = "json" } = {}) {
    const key = apiKey();
    if (!key) throw new ApiError("no_key", "Paste an API key first: every /v1 call needs one.");
    if (/[^\x21-\x7e]/.test(key)) {
      throw new ApiError("invalid_key", "An API key is printable ASCII without spaces.");
    }
    let response;
    try {
      response = await fetch(path, {
        method,
        body,
        headers: { ...headers, Authorization: `Bearer ${key}` },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (error) {
      throw new ApiError("network_error", `the gateway did not answer (${error.message})`);
    }
    if (!response.ok) throw await errorOf(response);
    return as === "blob" ? response.blob() : response.json();
  }

  /** Run one user action: its button disabled meanwhile, any failure in the error box. */
  async function run(button, action) {
    clearError();
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  }

  const valid = (...forms) => forms.every((form) => form.reportValidity());

  // --- context and target ----------------------------------------------------------------

  function context() {
    const keywords = $("keywords").value.split(",").map((word) => word.trim()).filter(Boolean);
    const value = { account: $("account").value.trim(), text: $("post-text").value.trim(), keywords };
    const posted = $("posted-at").value; // local time, as the user reads it
    if (posted) value.posted_at = new Date(posted).toISOString();
    return value;
  }

  const target = () => ({ name: $("kpi-name").value.trim(), level: $("kpi-level").value });

  // --- score -------------------------------------------------------------------------------

  const previewUrls = new ObjectUrls();
  const rankingUrls = new ObjectUrls();

  function previewFiles() {
    previewUrls.release();
    $("score-previews").replaceChildren(
      ...[...$("score-files").files].map((file) =>
        el("img", { attrs: { src: previewUrls.of(file), alt: file.name, title: file.name } })),
    );
  }

  async function score() {
    const files = [...$("score-files").files];
    const reward = $("reward").value;
    const maxEdits = reward === "likelihood" ? 0 : Number($("max-edits").value || 0);
    const form = new FormData();
    form.append("request", JSON.stringify({
      context: context(), target: target(), reward, max_edits: maxEdits,
    }));
    const creatives = new Map();
    files.forEach((file, index) => {
      // Ids of the page's own making, which the gateway keeps as they are: it would sanitize
      // and de-duplicate the files' own names, and the results could not find their files.
      const id = `creative-${index + 1}`;
      creatives.set(id, file);
      form.append("creatives", file, id);
    });
    $("score-busy").hidden = false;
    try {
      renderScore(await call("v1/score", { method: "POST", body: form }), creatives, maxEdits);
    } finally {
      $("score-busy").hidden = true;
    }
  }

  function renderScore(answer, creatives, maxEdits) {
    rankingUrls.release();
    const targets = answer.targets.map(renderTarget);
    if (!targets.length) {
      targets.push(el("p", {
        class: "none",
        text: "The likelihood reward compares with no description: it predicts each creative's KPI level.",
      }));
    }
    $("score-targets").replaceChildren(...targets);
    const weights = Object.entries(answer.weights).map(([name, weight]) => `${name} ${number(weight, 2)}`);
    $("score-weights").textContent = `Reward ${answer.reward}; weights in the total: ${weights.join(", ") || "—"}.`;
    // A contrastive total and its components are differences, in [-1, 1].
    const low = answer.reward === "contrastive" ? -1 : 0;
    $("ranking").tBodies[0].replaceChildren(
      ...answer.results.map((item) => renderRow(item, creatives.get(item.id), low, maxEdits)),
    );
    const models = Object.entries(answer.models).map(([role, model]) => `${role}: ${model.name} (${model.version})`);
    $("score-models").textContent = models.length ? `Models: ${models.join("; ")}.` : "";
    $("score-result").hidden = false;
  }

  function renderTarget(description) {
    const swatches = description.verbalization.colors.map((color) => {
      const chip = el("i");
      chip.style.backgroundColor = `rgb(${color.rgb.join(",")})`; // CSSOM: allowed by the CSP
      return el("span", { class: "swatch" }, [chip, `${color.name} ${Math.round(color.coverage * 100)}%`]);
    });
    return el("div", { class: "target", attrs: { "data-level": description.level } }, [
      el("strong", { text: `KPI level ${description.level}` }),
      description.model ? el("span", { class: "hint", text: ` — written by ${description.model.name}` }) : null,
      el("pre", { class: "brief", text: description.text }),
      el("div", { class: "swatches" }, swatches),
    ]);
  }

  function renderRow(item, file, low, maxEdits) {
    const thumbnail = file ? el("img", { attrs: { src: rankingUrls.of(file), alt: file.name } }) : null;
    const caption = item.verbalization.caption;
    const about = el("div", {}, [
      el("div", { class: "name", text: file ? file.name : item.id }),
      caption ? el("div", { class: "caption", text: caption }) : null,
      ...item.notes.map((note) => el("div", { class: "note", text: note })),
    ]);
    const total = el("td", { class: "total" }, [
      el("div", { class: "value", text: number(item.total) }),
      item.total_with_edits !== null && item.total_with_edits !== undefined
        ? el("div", { class: "with-edits", text: `${number(item.total_with_edits)} with the edits` })
        : null,
    ]);
    return el("tr", { attrs: { "data-id": item.id } }, [
      el("td", { class: "rank", text: String(item.rank) }),
      el("td", { class: "creative" }, [el("div", { class: "creative-cell" }, [thumbnail, about])]),
      total,
      el("td", { class: "breakdown" }, [renderBars(item.breakdown, low)]),
      el("td", { class: "edits" }, [renderEdits(item.edits, maxEdits)]),
    ]);
  }

  function renderBars(breakdown, low) {
    const cells = Object.entries(breakdown).flatMap(([name, value]) => [
      el("span", { class: "component", text: name }),
      el("meter", {
        attrs: {
          min: String(low), max: "1", value: String(Math.min(1, Math.max(low, value))),
          title: `${name}: ${number(value)}`,
        },
      }),
      el("span", { class: "number", text: number(value) }),
    ]);
    return el("div", { class: "bars" }, cells);
  }

  function renderEdits(edits, maxEdits) {
    if (!edits.length) {
      return el("span", { class: "none", text: maxEdits ? "no edit raises the reward" : "not asked for" });
    }
    return el("ol", { class: "edits" }, edits.map((edit) => el("li", { attrs: { "data-kind": edit.kind } }, [
      `${edit.summary} `,
      el("span", { class: "gain", text: `${signed(edit.gain)} → ${number(edit.reward)}` }),
    ])));
  }

  // --- generate ----------------------------------------------------------------------------

  const imageUrls = new ObjectUrls();
  const pending = { body: null, key: null };
  let currentJob = null; // { id, stopped }

  /** One Idempotency-Key per request body until the gateway accepts it: sending the same
   *  body again after a lost answer returns the job it made, not a second one. */
  function idempotencyKey(body) {
    if (pending.body !== body) {
      const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs https
      pending.body = body;
      pending.key = `playground-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
    }
    return pending.key;
  }

  function setNumber(body, name, input) {
    if (input && !input.disabled && input.value !== "") body[name] = Number(input.value);
  }

  async function generate() {
    const body = { context: context(), target: target(), count: Number($("count").value) };
    const strategy = $("strategy").value;
    if (strategy) body.strategy = strategy;
    setNumber(body, "candidates", $("candidates"));
    setNumber(body, "steps", $("steps"));
    setNumber(body, "seed", $("seed"));
    const json = JSON.stringify(body);
    const accepted = await call("v1/generate", {
      method: "POST",
      body: json,
      headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey(json) },
    });
    pending.body = null;
    followJob(accepted);
  }

  function followJob(accepted) {
    if (currentJob) currentJob.stopped = true;
    const job = { id: accepted.job_id, stopped: false };
    currentJob = job;
    imageUrls.release();
    $("job-id").textContent = job.id;
    $("job-outcome").replaceChildren();
    $("job-images").replaceChildren();
    renderJobState({ state: accepted.state, queue_position: null, progress: null, cancel_requested: false, images: [] });
    $("job").hidden = false;
    pollJob(job);
  }

  async function pollJob(job) {
    let delay = POLL_MS / 4;
    while (!job.stopped) {
      await sleep(delay);
      if (job.stopped) return;
      let status;
      try {
        status = await call(`v1/jobs/${encodeURIComponent(job.id)}`);
      } catch (error) {
        if (error.status === 429 || error.status === 503 || error.type === "network_error") {
          // Busy or briefly away: wait as told, then ask again.
          delay = Math.max(POLL_MS, (error.retryAfter || 2) * 1000);
          $("job-detail").textContent = `— ${error.message}; asking again in ${Math.round(delay / 1000)} s`;
          continue;
        }
        showError(error);
        return;
      }
      delay = POLL_MS;
      if (job.stopped) return;
      await renderJob(status, job);
      if (FINAL_STATES.has(status.state)) job.stopped = true;
    }
  }

  function renderJobState(status) {
    const progress = $("job-progress");
    const step = status.progress;
    let detail = "";
    if (status.state === "queued") {
      progress.removeAttribute("value"); // indeterminate
      if (status.queue_position) detail = `— number ${status.queue_position} in the queue`;
    } else if (status.state === "running") {
      if (step && step.total) {
        progress.max = step.total;
        progress.value = step.step;
      } else {
        progress.removeAttribute("value");
      }
      detail = step ? `— ${step.stage}` : "— starting";
      if (step && step.total) detail += `, step ${step.step} of ${step.total}`;
      if (step && step.eta_seconds !== null && step.eta_seconds !== undefined) {
        detail += `, about ${Math.ceil(step.eta_seconds)} s left`;
      }
    } else if (status.state === "succeeded") {
      progress.max = 1;
      progress.value = 1;
      detail = `— ${plural(status.images.length, "image")}`;
    } else {
      progress.max = 1;
      progress.value = 0;
    }
    if (status.cancel_requested && !FINAL_STATES.has(status.state)) detail += " (cancel asked)";
    $("job-state").textContent = status.state;
    $("job-detail").textContent = detail;
    $("job-cancel").hidden = FINAL_STATES.has(status.state);
  }

  async function renderJob(status, job) {
    renderJobState(status);
    if (status.state === "failed" && status.error) {
      showError(new ApiError(status.error.type, `the job failed: ${status.error.message}`));
    }
    if (status.outcome) renderOutcome(status.outcome);
    if (status.state === "succeeded") await renderImages(status, job);
  }

  function renderOutcome(outcome) {
    const facts = [
      `Strategy ${outcome.strategy}`,
      `${outcome.width}×${outcome.height}`,
      plural(outcome.steps, "step"),
      `seed ${outcome.seed}`,
      plural(outcome.candidates, "candidate"),
    ];
    if (outcome.reward) facts.push(`ranked by the ${outcome.reward} reward`);
    $("job-outcome").replaceChildren(el("div", { class: "outcome" }, [
      el("p", { text: `${facts.join(", ")}.` }),
      outcome.target_description ? el("strong", { text: "Target description" }) : null,
      outcome.target_description ? el("pre", { class: "brief", text: outcome.target_description }) : null,
      el("strong", { text: "Prompt" }),
      el("pre", { class: "prompt", text: outcome.prompt }),
      outcome.negative_prompt ? el("strong", { text: "Negative prompt" }) : null,
      outcome.negative_prompt ? el("pre", { text: outcome.negative_prompt }) : null,
      ...outcome.notes.map((note) => el("p", { class: "note", text: note })),
    ]));
  }

  async function renderImages(status, job) {
    const low = status.outcome && status.outcome.reward === "contrastive" ? -1 : 0;
    const images = [...status.images].sort((a, b) => a.rank - b.rank);
    const figures = images.map((image) => {
      const picture = el("img", { attrs: { alt: `image ${image.rank}`, width: "192", height: "192" } });
      const caption = el("figcaption", {}, [
        el("div", { text: `#${image.rank} · reward ${number(image.reward)} · seed ${image.seed}` }),
        renderBars(image.breakdown, low),
      ]);
      return { image, picture, figure: el("figure", { attrs: { "data-id": image.id } }, [picture, caption]) };
    });
    $("job-images").replaceChildren(...figures.map(({ figure }) => figure));
    // Images need the key, which an <img src> cannot send: fetched, then shown from memory.
    const loads = await Promise.allSettled(figures.map(async ({ image, picture }) => {
      const blob = await call(`v1/images/${encodeURIComponent(image.id)}`, { as: "blob" });
      if (currentJob === job) picture.src = imageUrls.of(blob);
    }));
    const failed = loads.find((load) => load.status === "rejected");
    if (failed && currentJob === job) showError(failed.reason);
  }

  async function cancelJob() {
    const job = currentJob;
    if (!job) return;
    await renderJob(await call(`v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" }), job);
  }

  // --- checkpoints ---------------------------------------------------------------------------

  const decisionPages = { name: null, cursor: null };

  async function loadCheckpoints() {
    const name = $("checkpoint-name").value;
    const query = `checkpoint=${encodeURIComponent(name)}&limit=${DECISIONS_PAGE}`;
    const [list, decisions] = await Promise.all([
      call(`v1/checkpoints?name=${encodeURIComponent(name)}`),
      call(`v1/retrain/decisions?${query}`),
    ]);
    renderCheckpoints(list);
    $("decisions").replaceChildren();
    decisionPages.name = name;
    appendDecisions(decisions);
    $("checkpoint-result").hidden = false;
  }

  async function moreDecisions() {
    const query = `checkpoint=${encodeURIComponent(decisionPages.name)}&limit=${DECISIONS_PAGE}`
      + `&cursor=${encodeURIComponent(decisionPages.cursor)}`;
    appendDecisions(await call(`v1/retrain/decisions?${query}`));
  }

  function renderCheckpoints(list) {
    $("checkpoint-recorded").textContent = list.recorded_at
      ? `As the training worker recorded the registry at ${when(list.recorded_at)}; serving ${list.current || "no version"}.`
      : `The training worker has recorded no ${list.name} checkpoints yet.`;
    const rows = list.items.map((item) => {
      const dataset = el("td", {}, [
        item.dataset_version,
        el("div", { class: "hint", text: `sha256 ${item.dataset_sha256.slice(0, 12)}…`, attrs: { title: item.dataset_sha256 } }),
      ]);
      const metrics = el("ul", { class: "metrics" }, Object.entries(item.metrics).map(
        ([name, value]) => el("li", { text: `${name} ${number(value, 4)}` })));
      return el("tr", { class: item.current ? "current" : "", attrs: { "data-version": item.version } }, [
        el("td", {}, [el("code", { text: item.version }), item.current ? el("span", { class: "badge serving", text: "serving" }) : null]),
        el("td", { text: when(item.created_at) }),
        el("td", { text: item.kind }),
        el("td", { text: item.base_model }),
        dataset,
        el("td", {}, [metrics]),
      ]);
    });
    if (!rows.length) {
      rows.push(el("tr", {}, [el("td", { class: "none", text: "No published checkpoints.", attrs: { colspan: "6" } })]));
    }
    $("checkpoint-table").tBodies[0].replaceChildren(...rows);
  }

  function appendDecisions(page) {
    const box = $("decisions");
    box.append(...page.items.map(renderDecision));
    if (!box.children.length) box.append(el("p", { class: "none", text: "No decisions recorded yet." }));
    decisionPages.cursor = page.next_cursor;
    $("decisions-more").hidden = !page.next_cursor;
  }

  function renderDecision(decision) {
    const who = decision.trigger === "operator" ? "by an operator" : "by the retraining rule";
    const moved = `Serving ${decision.previous_version || "nothing"} → ${decision.current_version || "nothing"}`;
    const dataset = decision.dataset_version
      ? `; trained on dataset ${decision.dataset_version}`
        + (decision.dataset_sha256 ? ` (sha256 ${decision.dataset_sha256.slice(0, 12)}…)` : "")
      : "";
    const fold = decision.feedback;
    return el("article", { class: "decision", attrs: { "data-id": decision.id, "data-action": decision.action } }, [
      el("header", {}, [
        el("span", { class: `badge ${decision.action}`, text: decision.action }),
        el("code", { text: decision.candidate_version || "—" }),
        el("span", { class: "hint", text: `${who}, ${when(decision.decided_at)}` }),
      ]),
      el("p", { class: "reason", text: decision.reason }),
      el("p", { class: "hint", text: `${moved}${dataset}.` }),
      fold ? el("p", {
        class: "hint",
        text: `KPI feedback folded in: ${plural(fold.rows, "row")} (${fold.new} new, ${fold.removed} removed, `
          + `${fold.skipped} skipped) from ${fold.trusted_keys === null ? "every key" : plural(fold.trusted_keys, "trusted key")}.`,
      }) : null,
      decision.evaluation ? renderEvaluation(decision.evaluation) : null,
    ]);
  }

  function renderEvaluation(evaluation) {
    const level = `${Math.round(evaluation.confidence * 100)}%`;
    const window = evaluation.window_start
      ? `, posted ${when(evaluation.window_start)} – ${when(evaluation.window_end)}` : "";
    const names = [...new Set([
      ...Object.keys(evaluation.current), ...Object.keys(evaluation.candidate), ...Object.keys(evaluation.improvement),
    ])];
    const rows = names.map((name) => {
      const change = evaluation.improvement[name];
      let verdict = "";
      if (change && change.low > 0) verdict = "better";
      else if (change && change.high < 0) verdict = "worse";
      return el("tr", { attrs: { "data-metric": name } }, [
        el("td", {}, [name === evaluation.metric ? el("strong", { text: name }) : name]),
        el("td", { class: "current", text: number(evaluation.current[name], 4) }),
        el("td", { class: "candidate", text: number(evaluation.candidate[name], 4) }),
        el("td", { class: `improvement ${verdict}`, text: change ? signed(change.value, 4) : "—" }),
        el("td", { class: `interval ${verdict}`, text: change ? `[${signed(change.low, 4)}, ${signed(change.high, 4)}]` : "—" }),
      ]);
    });
    return el("div", { class: "evaluation" }, [
      el("p", {
        text: `Measured on ${plural(evaluation.posts, "held-out post")}${window}: decided by ${evaluation.metric} `
          + `(${evaluation.better} is better); ${level} intervals from ${evaluation.resamples} bootstrap resamples, `
          + "improvements positive when the candidate is better.",
      }),
      el("table", {}, [
        el("thead", {}, [el("tr", {}, ["Metric", "Current", "Candidate", "Improvement", `${level} interval`].map(
          (title) => el("th", { text: title, attrs: { scope: "col" } })))]),
        el("tbody", {}, rows),
      ]),
    ]);
  }

  // --- tabs and wiring -----------------------------------------------------------------------

  function selectTab(name) {
    for (const tab of TABS) {
      $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
      $(tab).hidden = tab !== name;
    }
    history.replaceState(null, "", `#${name}`);
    if (name === "checkpoints" && apiKey() && $("checkpoint-result").hidden) {
      run($("checkpoints-submit"), loadCheckpoints);
    }
  }

  function onSubmit(formId, buttonId, action, ...forms) {
    $(formId).addEventListener("submit", (event) => {
      event.preventDefault();
      if (valid(...forms, $(formId))) run($(buttonId), action);
    });
  }

  restoreKey();
  // The context is sent by the actions below; pressing Enter in it submits nothing itself.
  $("context-form").addEventListener("submit", (event) => event.preventDefault());
  $("api-key").addEventListener("input", saveKey);
  $("key-forget").addEventListener("click", () => { $("api-key").value = ""; saveKey(); });
  $("error-close").addEventListener("click", clearError);
  $("score-files").addEventListener("change", previewFiles);
  $("reward").addEventListener("change", () => { $("max-edits").disabled = $("reward").value === "likelihood"; });
  $("strategy").addEventListener("change", () => { $("candidates").disabled = $("strategy").value !== "best_of_n"; });
  $("job-cancel").addEventListener("click", () => run($("job-cancel"), cancelJob));
  $("decisions-more").addEventListener("click", () => run($("decisions-more"), moreDecisions));
  onSubmit("score-form", "score-submit", score, $("context-form"));
  onSubmit("generate-form", "generate-submit", generate, $("context-form"));
  onSubmit("checkpoints-form", "checkpoints-submit", loadCheckpoints);
  for (const tab of TABS) $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
  const asked = window.location.hash.slice(1);
  if (TABS.includes(asked)) selectTab(asked);
  document.documentElement.dataset.ready = "true";
})();
