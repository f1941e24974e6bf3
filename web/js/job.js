// One video: live progress over Server-Sent Events (stage, percent, queue position, ETA), then the
// finished video inline, its download and its share link with the link's expiry. The job's id is in
// the URL, so a reload comes back here and follows it again.

import { api, follow, ApiError } from "./api.js";
import { h, replace } from "./dom.js";
import { t, seconds, dateTime } from "./i18n.js";

export async function renderJob(main, id, ctx) {
  const { signal } = ctx;
  let job;
  try {
    job = await api(`/v1/videos/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      replace(main, h("section", { class: "card" }, h("p", {}, t("job.not_found")), h("a", { href: "#/history" }, t("nav.history"))));
      return;
    }
    throw err;
  }
  if (signal.aborted) return;

  const title = h("h1", {}, t("job.title"), " ", h("span", { class: "mono" }, id.slice(0, 8)));
  const badge = h("span", { class: "badge" });
  const bar = h("div", { class: "bar-fill" });
  const progress = h("div", { class: "progress", role: "progressbar", id: "progress", "aria-label": t("job.progress"),
    "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0 }, bar);
  const percent = h("span", { class: "percent", "aria-hidden": "true" });
  const stage = h("p", { class: "stage" });
  const facts = h("p", { class: "muted eta" });
  const live = h("span", { class: "live", hidden: true });
  const result = h("div", { class: "result" });
  const actions = h("div", { class: "row-actions" });
  const error = h("div", { class: "job-error", role: "alert", hidden: true });
  const details = h("dl", { class: "details" });
  let notify = false;

  const cancel = h("button", { type: "button", class: "ghost danger" }, t("job.cancel"));
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      paint(await api(`/v1/videos/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
    } catch (err) {
      cancel.disabled = false;
      ctx.say(err.message);
    }
  });
  const remove = h("button", { type: "button", class: "ghost danger" }, t("job.delete"));
  remove.addEventListener("click", async () => {
    if (!confirm(t("job.confirm_delete"))) return;
    await api(`/v1/videos/${encodeURIComponent(id)}`, { method: "DELETE" });
    ctx.go("#/history");
  });
  const rerun = h("a", { class: "button ghost", href: `#/?rerun=${encodeURIComponent(id)}` }, t("job.rerun"));
  const notifyButton = h("button", { type: "button", class: "ghost" }, t("job.notify"));
  notifyButton.addEventListener("click", async () => {
    const permission = await Notification.requestPermission();
    notify = permission === "granted";
    if (notify) replace(notifyButton, t("job.notified"));
    notifyButton.disabled = true;
  });

  let shownResult = null;
  function paint(view) {
    job = view;
    const pct = view.status === "succeeded" ? 100 : Math.round((view.progress || 0) * 100);
    progress.setAttribute("aria-valuenow", String(pct));
    progress.setAttribute("aria-valuetext", `${pct} %`);
    bar.style.width = `${pct}%`;
    percent.textContent = `${pct} %`;
    badge.className = `badge ${view.status}`;
    badge.textContent = t(`job.status.${view.status}`);
    stage.textContent = view.status === "running" || view.status === "queued" ? t(`stage.${view.stage}`) : "";
    const bits = [];
    if (view.queue_position !== undefined && view.queue_position !== null && view.status === "queued")
      bits.push(t("job.queue_position", { n: view.queue_position + 1 }));
    if (view.status === "queued" && view.estimated_start_s) bits.push(t("job.starts_in", { s: seconds(view.estimated_start_s) }));
    if (view.eta_s !== null && view.eta_s !== undefined && !["succeeded", "failed", "cancelled"].includes(view.status))
      bits.push(t("job.eta", { s: seconds(view.eta_s) }));
    facts.textContent = bits.join(" · ");
    const finished = ["succeeded", "failed", "cancelled"].includes(view.status);
    progress.classList.toggle("done", finished);
    if (view.error) {
      replace(error, h("strong", {}, t("job.error")), h("p", {}, view.error.message), h("code", { class: "code" }, view.error.code));
      error.hidden = false;
    }
    replace(actions,
      !finished ? cancel : null,
      !finished && "Notification" in window && Notification.permission !== "denied" ? notifyButton : null,
      rerun,
      finished ? remove : null);
    replace(details,
      h("dt", {}, t("job.created")), h("dd", {}, dateTime(view.created_at)),
      h("dt", {}, t("job.duration")), h("dd", {}, t("common.seconds", { s: view.input.audio.duration.toFixed(2) })),
      h("dt", {}, t("job.size")), h("dd", {}, `${view.output.width}×${view.output.height}`),
      h("dt", {}, t("new.engine")), h("dd", {}, view.engine),
      h("dt", {}, t("new.resolution")), h("dd", {}, `${view.params.min_resolution} px`),
      h("dt", {}, t("new.expand_ratio")), h("dd", {}, String(view.params.expand_ratio)),
      h("dt", {}, t("new.dynamic_scale")), h("dd", {}, String(view.params.dynamic_scale)),
      h("dt", {}, t("new.motion_scale")), h("dd", {}, String(view.params.motion_scale)),
      h("dt", {}, t("new.seed")), h("dd", {}, String(view.params.seed)));
    if (view.status === "succeeded" && view.result && shownResult !== view.result.url) {
      shownResult = view.result.url;
      showResult(view);
    }
  }

  function showResult(view) {
    const link = new URL(view.result.url, location.origin).href;
    const video = h("video", { id: "video", controls: true, playsinline: true, preload: "metadata", src: view.result.url });
    const linkField = h("input", { id: "share-link", readonly: true, value: link, "aria-label": t("job.share_link") });
    const copied = h("span", { class: "muted", role: "status" });
    const copy = h("button", { type: "button", class: "ghost" }, t("job.copy_link"));
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(link);
        copied.textContent = t("job.copied");
      } catch (_) {
        linkField.select();
        copied.textContent = t("job.copy_failed");
      }
    });
    replace(result,
      h("h2", { class: "visually-hidden" }, t("job.video")),
      video,
      h("div", { class: "row-actions" },
        h("a", { class: "button primary", href: view.result.url, download: `sonic-${view.id.slice(0, 8)}.mp4`, id: "download" }, t("job.download")),
        copy, copied),
      h("div", { class: "field share" }, linkField,
        h("p", { class: "hint", id: "link-expiry" }, t("job.link_expires", { time: dateTime(view.result.expires_at) }))));
  }

  replace(main, h("div", { class: "job-page" },
    h("section", { class: "card" },
      h("div", { class: "job-head" }, title, badge, live),
      h("div", { class: "progress-row" }, progress, percent),
      stage, facts, error, result, actions),
    h("section", { class: "card" }, h("h2", {}, t("job.details")), details)));
  paint(job);

  if (["succeeded", "failed", "cancelled"].includes(job.status)) return;
  const final = await follow(id, {
    signal,
    onJob: paint,
    onState: (state) => {
      live.hidden = false;
      live.className = `live ${state}`;
      live.textContent = state === "live" ? t("job.live") : t("job.reconnecting");
    },
  });
  live.hidden = true;
  if (signal.aborted) return;
  if (final === null) {
    ctx.go("#/history");
    return;
  }
  // The last event carries the final state; fetch once more for the signed link's freshest form.
  const latest = await api(`/v1/videos/${encodeURIComponent(id)}`).catch(() => final);
  if (signal.aborted) return;
  paint(latest);
  if (notify && latest.status === "succeeded") new Notification(t("job.notification"));
}
