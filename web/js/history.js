// History: the user's videos (an admin's: the tenant's), newest first, filtered by status, with
// cancel, delete and re-run.

import { api } from "./api.js";
import { h, replace } from "./dom.js";
import { t, dateTime } from "./i18n.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

export async function renderHistory(main, ctx) {
  const { signal } = ctx;
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  const filter = h("select", { id: "status-filter" },
    h("option", { value: "", selected: !status }, t("history.all")),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, t(`job.status.${s}`))));
  filter.addEventListener("change", () => ctx.go(filter.value ? `#/history?status=${filter.value}` : "#/history"));
  const list = h("ul", { class: "videos", id: "videos" });
  const more = h("button", { type: "button", class: "ghost", hidden: true }, t("history.more"));
  let cursor = null;

  async function load() {
    const query = new URLSearchParams({ limit: "12" });
    if (status) query.set("status", status);
    if (cursor) query.set("cursor", cursor);
    const page = await api(`/v1/videos?${query}`);
    if (signal.aborted) return;
    for (const job of page.items) list.append(item(job));
    cursor = page.next_cursor;
    more.hidden = !cursor;
    if (!list.children.length) {
      list.replaceWith(h("div", { class: "empty" }, h("p", {}, t("history.empty")),
        h("a", { class: "button primary", href: "#/" }, t("history.make_first"))));
    }
  }
  more.addEventListener("click", () => load().catch((err) => ctx.say(err.message)));

  function item(job) {
    const finished = ["succeeded", "failed", "cancelled"].includes(job.status);
    const thumb = job.status === "succeeded" && job.result
      ? h("video", { class: "thumb", src: `${job.result.url}#t=0.5`, preload: "metadata", muted: true, playsinline: true, "aria-hidden": "true", tabindex: -1 })
      : h("div", { class: `thumb placeholder ${job.status}`, "aria-hidden": "true" },
          job.status === "running" || job.status === "queued" ? `${Math.round((job.progress || 0) * 100)} %` : "—");
    const li = h("li", { class: "video-item", "data-id": job.id, "data-status": job.status },
      h("a", { href: `#/videos/${job.id}`, class: "thumb-link", "aria-label": `${t("history.open")} ${job.id.slice(0, 8)}` }, thumb),
      h("div", { class: "video-meta" },
        h("div", { class: "video-title" },
          h("a", { href: `#/videos/${job.id}`, class: "mono" }, job.id.slice(0, 8)),
          h("span", { class: `badge ${job.status}` }, t(`job.status.${job.status}`))),
        h("p", { class: "muted" }, dateTime(job.created_at)),
        h("p", { class: "muted small" },
          `${t("common.seconds", { s: job.input.audio.duration.toFixed(1) })} · ${job.output.width}×${job.output.height} · ${job.engine}`),
        h("p", { class: "muted small" },
          `${t("new.expand_ratio")} ${job.params.expand_ratio} · ${t("new.dynamic_scale")} ${job.params.dynamic_scale} · ${t("new.seed")} ${job.params.seed}`),
        job.error ? h("p", { class: "error small" }, job.error.message, h("code", { class: "code" }, job.error.code)) : null,
        h("div", { class: "row-actions" },
          !finished ? button(t("job.cancel"), async () => {
            const view = await api(`/v1/videos/${job.id}/cancel`, { method: "POST" });
            li.replaceWith(item(view));
          }) : null,
          h("a", { class: "button ghost small", href: `#/?rerun=${job.id}` }, t("job.rerun")),
          finished ? button(t("job.delete"), async () => {
            if (!confirm(t("job.confirm_delete"))) return;
            await api(`/v1/videos/${job.id}`, { method: "DELETE" });
            li.remove();
          }, "danger") : null)));
    return li;
  }

  function button(label, action, extra = "") {
    const b = h("button", { type: "button", class: `ghost small ${extra}` }, label);
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        await action();
      } catch (err) {
        ctx.say(err.message);
      } finally {
        b.disabled = false;
      }
    });
    return b;
  }

  replace(main, h("section", { class: "card" },
    h("div", { class: "section-head" }, h("h1", {}, t("history.title")),
      h("div", { class: "inline-field" }, h("label", { for: "status-filter" }, t("history.filter")), filter)),
    list, more));
  await load();
}
