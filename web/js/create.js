// New video: pick or drop a photo and a recording, see what the server found (POST /v1/videos/preview
// stores nothing), set the parameters the plan and engine allow, generate. With ?rerun=<id> the inputs
// are those of an earlier video and only the parameters are new.

import { api, ApiError, randomId } from "./api.js";
import { h, replace, fieldError, showError, clearError, icon } from "./dom.js";
import { t, errorText } from "./i18n.js";

const RESOLUTIONS = [256, 512, 768, 1024];

/** Sonic's parameters: the input kind, range and default of each. */
const PARAMS = {
  expand_ratio: { min: 0.1, max: 1.0, step: 0.05, value: 0.5 },
  dynamic_scale: { min: 0.5, max: 2.0, step: 0.1, value: 1.0 },
  motion_scale: { min: 0.5, max: 2.0, step: 0.1, value: 1.0 },
  lip_sync_offset: { min: -1.0, max: 1.0, step: 0.05, value: 0.0 },
};

export async function renderCreate(main, query, ctx) {
  const { me, signal } = ctx;
  const limits = me.limits;
  const rerunId = query.get("rerun");
  const [engineList, rerun] = await Promise.all([
    api("/v1/engines"),
    rerunId ? api(`/v1/videos/${encodeURIComponent(rerunId)}`) : Promise.resolve(null),
  ]);
  if (signal.aborted) return;
  const engines = engineList.items;
  const defaultEngine = (engines.find((e) => e.default) || engines[0])?.name;
  const files = { image: null, audio: null };
  let engineName = rerun ? rerun.engine : defaultEngine;
  let idempotencyKey = null;
  let previewTimer = null;
  let previewRun = 0;
  let photoUrl = null;
  signal.addEventListener("abort", () => photoUrl && URL.revokeObjectURL(photoUrl));

  const engine = () => engines.find((e) => e.name === engineName);
  const honours = (name) => (engine()?.honours || []).includes(name);

  // --- files -------------------------------------------------------------------------------------
  const errors = {};
  const dropZone = (name, labelKey, hintKey, accept) => {
    const input = h("input", { id: name === "image" ? "photo" : "audio", name, type: "file", accept, class: "visually-hidden",
      "aria-describedby": `${name}-hint ${name}-error` });
    const chosen = h("span", { class: "chosen" });
    const zone = h("div", { class: "drop" },
      h("label", { for: input.id, class: "drop-label" },
        h("span", { class: "drop-icon" }, icon(name === "image" ? "photo" : "audio")),
        h("span", { class: "drop-title" }, t(labelKey)),
        h("span", { class: "hint", id: `${name}-hint` }, t(hintKey)),
        h("span", { class: "drop-action" }, t("new.drop")),
        chosen),
      input);
    errors[name] = fieldError(`${name}-error`);
    const take = (file) => {
      if (!file) return;
      files[name] = file;
      idempotencyKey = null;
      zone.classList.add("has-file");
      replace(chosen, file.name);
      clearError(errors[name]);
      if (name === "image") {
        if (photoUrl) URL.revokeObjectURL(photoUrl);
        photoUrl = URL.createObjectURL(file);
      }
      schedulePreview(0);
    };
    input.addEventListener("change", () => take(input.files[0]));
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) {
        input.files = event.dataTransfer.files;
        take(file);
      }
    });
    return h("div", { class: "field" }, zone, errors[name]);
  };

  // --- parameters ----------------------------------------------------------------------------------
  const controls = {};
  const reasons = {};
  const paramField = (name, control, labelKey, extra) => {
    errors[name] = fieldError(`${name}-error`);
    reasons[name] = h("p", { class: "reason", id: `${name}-reason`, hidden: true });
    control.setAttribute("aria-describedby", `${name}-reason ${name}-error`);
    return h("div", { class: "field", "data-field": name },
      h("label", { for: name }, t(labelKey), extra || null), control, reasons[name], errors[name]);
  };
  const slider = (name, labelKey) => {
    const spec = PARAMS[name];
    const output = h("output", { for: name, class: "value" }, String(spec.value));
    const input = h("input", { id: name, name, type: "range", min: spec.min, max: spec.max, step: spec.step, value: spec.value });
    input.addEventListener("input", () => {
      output.textContent = Number(input.value).toFixed(2).replace(/0$/, "");
      schedulePreview();
    });
    controls[name] = input;
    return paramField(name, input, labelKey, output);
  };

  const resolutionReason = h("p", { class: "reason", id: "min_resolution-reason", hidden: true });
  errors.min_resolution = fieldError("min_resolution-error");
  const resolutionGroup = h("fieldset", { class: "field segmented-field", "aria-describedby": "min_resolution-reason min_resolution-error" },
    h("legend", {}, t("new.resolution")),
    h("div", { class: "segmented" },
      RESOLUTIONS.map((px) => {
        const id = `min_resolution-${px}`;
        const input = h("input", { type: "radio", name: "min_resolution", id, value: px, checked: px === 512 });
        input.addEventListener("change", () => schedulePreview());
        return h("span", { class: "segment" }, input, h("label", { for: id }, `${px} px`));
      })),
    resolutionReason, errors.min_resolution);

  const seed = h("input", { id: "seed", name: "seed", type: "number", min: 0, max: 2147483647, step: 1, value: 0, inputmode: "numeric" });
  seed.addEventListener("change", () => schedulePreview());
  controls.seed = seed;
  const steps = h("input", { id: "inference_steps", name: "inference_steps", type: "number", min: 1,
    max: limits.max_inference_steps, step: 1, value: Math.min(25, limits.max_inference_steps), inputmode: "numeric" });
  steps.addEventListener("change", () => schedulePreview());
  controls.inference_steps = steps;
  const lipSync = h("input", { id: "enable_lip_sync_correction", name: "enable_lip_sync_correction", type: "checkbox" });
  controls.enable_lip_sync_correction = lipSync;
  const engineSelect = h("select", { id: "engine", name: "engine" },
    engines.map((e) => h("option", { value: e.name, selected: e.name === engineName },
      e.name + (e.health.healthy ? "" : ` (${t("admin.queue.unhealthy")})`))));
  controls.engine = engineSelect;

  const paramsCard = h("section", { class: "card" },
    h("h2", {}, t("new.params")),
    engines.length > 1 ? paramField("engine", engineSelect, "new.engine") : null,
    resolutionGroup,
    h("div", { class: "grid-2" },
      slider("expand_ratio", "new.expand_ratio"),
      slider("dynamic_scale", "new.dynamic_scale"),
      slider("motion_scale", "new.motion_scale"),
      paramField("seed", seed, "new.seed"),
      paramField("inference_steps", steps, "new.inference_steps"),
      h("div", { class: "field checkbox-field", "data-field": "enable_lip_sync_correction" },
        h("span", { class: "checkbox" }, lipSync, h("label", { for: "enable_lip_sync_correction" }, t("new.lip_sync"))),
        (reasons.enable_lip_sync_correction = h("p", { class: "reason", id: "enable_lip_sync_correction-reason", hidden: true })),
        (errors.enable_lip_sync_correction = fieldError("enable_lip_sync_correction-error"))),
      slider("lip_sync_offset", "new.lip_sync_offset")));
  lipSync.setAttribute("aria-describedby", "enable_lip_sync_correction-reason enable_lip_sync_correction-error");

  const disable = (name, control, reason) => {
    control.disabled = Boolean(reason);
    const note = reasons[name];
    if (note) {
      note.textContent = reason || "";
      note.hidden = !reason;
    }
    control.closest(".field")?.classList.toggle("is-disabled", Boolean(reason));
  };

  /** Greys out what the plan or the engine does not allow, saying why. */
  const applyLimits = () => {
    const caps = engine();
    let over = false;
    for (const input of resolutionGroup.querySelectorAll("input")) {
      const px = Number(input.value);
      const forbidden = px > limits.max_resolution || (caps && (px < caps.min_resolution || px > caps.max_resolution));
      input.disabled = forbidden;
      input.parentElement.classList.toggle("is-disabled", forbidden);
      if (px > limits.max_resolution) {
        input.parentElement.title = t("new.resolution.limit", { plan: me.plan, max: limits.max_resolution });
        over = true;
      }
      if (forbidden && input.checked) {
        input.checked = false;
        resolutionGroup.querySelector("input:not(:disabled)")?.click();
      }
    }
    resolutionReason.textContent = over ? t("new.resolution.limit", { plan: me.plan, max: limits.max_resolution }) : "";
    resolutionReason.hidden = !over;
    for (const name of ["expand_ratio", "dynamic_scale", "motion_scale", "seed"]) {
      disable(name, controls[name], honours(name) ? null : t("new.not_used", { engine: engineName }));
    }
    disable("inference_steps", steps, honours("inference_steps") ? null : t("new.inference_steps.engine", { engine: engineName }));
    const lipReason = !limits.allow_lip_sync_correction ? t("new.lip_sync.plan", { plan: me.plan })
      : !honours("enable_lip_sync_correction") ? t("new.not_used", { engine: engineName }) : null;
    if (lipReason) lipSync.checked = false;
    disable("enable_lip_sync_correction", lipSync, lipReason);
    disable("lip_sync_offset", controls.lip_sync_offset,
      lipReason || (!lipSync.checked ? t("new.lip_sync_offset.off") : null));
  };
  engineSelect.addEventListener("change", () => {
    engineName = engineSelect.value;
    applyLimits();
    schedulePreview();
  });
  lipSync.addEventListener("change", () => {
    applyLimits();
    schedulePreview();
  });

  /** The parameters to send: only those the engine honours and the user may set. */
  const fields = () => {
    const out = {};
    const checked = resolutionGroup.querySelector("input:checked");
    if (checked && honours("min_resolution")) out.min_resolution = checked.value;
    for (const name of ["expand_ratio", "dynamic_scale", "motion_scale", "seed", "inference_steps"]) {
      if (!controls[name].disabled && honours(name)) out[name] = controls[name].value;
    }
    if (!lipSync.disabled && lipSync.checked) {
      out.enable_lip_sync_correction = "true";
      out.lip_sync_offset = controls.lip_sync_offset.value;
    }
    if (engineName !== defaultEngine) out.engine = engineName;
    return out;
  };

  // --- preview --------------------------------------------------------------------------------------
  const previewBody = h("div", { class: "preview-body", "aria-live": "polite" });
  const generalError = h("p", { class: "form-error", role: "alert", hidden: true });
  const generate = h("button", { type: "submit", class: "primary wide", id: "generate" }, t("new.generate"));
  const previewCard = h("section", { class: "card preview" }, h("h2", {}, t("new.preview")), previewBody);

  const showPreview = (result) => {
    const { image, audio } = result.input;
    const box = (rect, cls, label) => {
      const el = h("div", { class: `box ${cls}` }, h("span", {}, label));
      el.style.left = `${(rect.x / image.width) * 100}%`;
      el.style.top = `${(rect.y / image.height) * 100}%`;
      el.style.width = `${(rect.width / image.width) * 100}%`;
      el.style.height = `${(rect.height / image.height) * 100}%`;
      return el;
    };
    const frame = photoUrl
      ? h("div", { class: "photo-frame" },
          h("img", { src: photoUrl, alt: t("new.photo") }),
          box(image.crop, "crop", t("new.crop")),
          box(image.face, "face", t("new.face")))
      : null;
    if (frame) frame.style.aspectRatio = `${image.width} / ${image.height}`;
    replace(previewBody,
      frame,
      h("ul", { class: "facts" },
        h("li", { id: "preview-faces" }, t("new.faces_found", { n: image.faces_detected })),
        h("li", { id: "preview-duration", "data-duration": audio.duration },
          t("new.duration", { s: audio.duration.toFixed(2), format: audio.format.toUpperCase(), rate: audio.sample_rate })),
        h("li", { id: "preview-output" },
          t("new.output", { w: result.output.width, h: result.output.height, frames: result.output.frames, fps: result.output.fps }))));
  };

  const showProblem = (err) => {
    const fieldsWithErrors = err.errors.length ? err.errors : [{ field: err.code === "no_face_detected" ? "image" : "", message: err.message }];
    let placed = false;
    for (const { field, message } of fieldsWithErrors) {
      const key = field === "duration" || field === "max_duration_s" ? "audio"
        : field === "max_resolution" ? "min_resolution"
        : field === "max_inference_steps" ? "inference_steps"
        : field === "allow_lip_sync_correction" ? "enable_lip_sync_correction" : field;
      if (errors[key]) {
        showError(errors[key], errorText(err.code, message), err.code);
        placed = true;
      }
    }
    if (!placed) showError(generalError, errorText(err.code, err.message), err.code);
    else showError(generalError, t("new.fix_errors"), null);
  };

  const clearErrors = () => {
    for (const element of Object.values(errors)) clearError(element);
    clearError(generalError);
  };

  const formData = () => {
    const data = new FormData();
    data.append("image", files.image);
    data.append("audio", files.audio);
    for (const [name, value] of Object.entries(fields())) data.append(name, value);
    return data;
  };

  async function runPreview() {
    if (!files.image || !files.audio) return;
    const run = ++previewRun;
    replace(previewBody, h("p", { class: "muted busy" }, t("new.checking")));
    try {
      const result = await api("/v1/videos/preview", { method: "POST", form: formData() });
      if (run !== previewRun || signal.aborted) return;
      clearErrors();
      showPreview(result);
    } catch (err) {
      if (run !== previewRun || signal.aborted) return;
      clearErrors();
      replace(previewBody, h("p", { class: "muted" }, t("new.preview.empty")));
      if (err instanceof ApiError) showProblem(err);
      else showError(generalError, err.message, null);
    }
  }

  function schedulePreview(delay = 350) {
    idempotencyKey = null;
    if (rerun) return;
    clearTimeout(previewTimer);
    previewTimer = setTimeout(runPreview, delay);
  }
  signal.addEventListener("abort", () => clearTimeout(previewTimer));

  const form = h("form", { class: "create", novalidate: true },
    h("div", { class: "col" },
      rerun
        ? h("section", { class: "card notice" }, h("p", {}, t("new.rerun", { id: rerun.id.slice(0, 8) })),
            h("a", { href: "#/" }, t("new.rerun.cancel")))
        : h("section", { class: "card" }, h("h2", {}, t("new.title")), h("p", { class: "muted" }, t("new.intro")),
            h("div", { class: "drops" },
              dropZone("image", "new.photo", "new.photo.hint", "image/jpeg,image/png,image/webp"),
              dropZone("audio", "new.audio", "new.audio.hint", "audio/*,.wav,.mp3,.flac,.ogg,.opus,.webm,.m4a,.mp4,.mov"))),
      paramsCard),
    h("div", { class: "col side" }, previewCard, h("div", { class: "card actions" }, generalError, generate)));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    if (!rerun) {
      if (!files.image) showError(errors.image, errorText("missing_file", "choose a photo"), "validation_failed");
      if (!files.audio) showError(errors.audio, errorText("missing_file", "choose a recording"), "validation_failed");
      if (!files.image || !files.audio) return;
    }
    generate.disabled = true;
    generate.textContent = t("new.submitting");
    // One key per distinct request: a second click or a retry after a network error makes no second job.
    idempotencyKey ||= randomId();
    try {
      const job = rerun
        ? await api(`/v1/videos/${encodeURIComponent(rerun.id)}/rerun`, { method: "POST", json: fields(), headers: { "idempotency-key": idempotencyKey } })
        : await api("/v1/videos", { method: "POST", form: formData(), headers: { "idempotency-key": idempotencyKey } });
      ctx.go(`#/videos/${job.id}`);
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError) showProblem(err);
      else showError(generalError, err.message, null);
      generate.disabled = false;
      generate.textContent = t("new.generate");
    }
  });

  if (rerun) {
    setFrom(rerun.params);
    replace(previewBody, h("ul", { class: "facts" },
      h("li", {}, t("new.faces_found", { n: rerun.input.image.faces_detected })),
      h("li", { id: "preview-duration", "data-duration": rerun.input.audio.duration },
        t("new.duration", { s: rerun.input.audio.duration.toFixed(2), format: rerun.input.audio.format.toUpperCase(), rate: rerun.input.audio.sample_rate }))));
  } else {
    replace(previewBody, h("p", { class: "muted" }, t("new.preview.empty")));
  }

  function setFrom(params) {
    const radio = resolutionGroup.querySelector(`input[value="${params.min_resolution}"]`);
    if (radio) radio.checked = true;
    for (const name of ["expand_ratio", "dynamic_scale", "motion_scale", "seed", "lip_sync_offset"]) {
      if (params[name] !== undefined) {
        controls[name].value = params[name];
        controls[name].dispatchEvent(new Event("input"));
      }
    }
    if (params.inference_steps) steps.value = Math.min(params.inference_steps, limits.max_inference_steps);
    lipSync.checked = Boolean(params.enable_lip_sync_correction);
  }

  applyLimits();
  replace(main, form);
}
