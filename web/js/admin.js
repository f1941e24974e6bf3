// Administration, by role: users of the tenant (admins), tenants and plans (platform admins), usage per
// user and day, the audit log with filters and CSV export, the queue and the engines' health.

import { api, download } from "./api.js";
import { h, replace, showError, clearError } from "./dom.js";
import { t, seconds, dateTime } from "./i18n.js";

const ROLES = ["user", "admin", "platform_admin"];
const PLANS = ["free", "pro"];

export async function renderAdmin(main, tab, ctx) {
  const platform = ctx.me.role === "platform_admin";
  const tabs = [
    ["users", "admin.users"],
    platform ? ["tenants", "admin.tenants"] : null,
    ["usage", "admin.usage"],
    ["audit", "admin.audit"],
    ["queue", "admin.queue"],
  ].filter(Boolean);
  const current = tabs.some(([name]) => name === tab) ? tab : "users";
  const body = h("div", { class: "admin-body" }, h("p", { class: "muted" }, t("common.loading")));
  replace(main, h("section", { class: "card" },
    h("h1", {}, t("admin.title")),
    h("nav", { class: "tabs", "aria-label": t("admin.title") },
      tabs.map(([name, key]) => h("a", { href: `#/admin/${name}`, "aria-current": name === current ? "page" : null }, t(key)))),
    body));
  const views = { users, tenants, usage, audit, queue };
  await views[current](body, ctx, platform);
}

function table(headers, rows) {
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows)));
}

function action(label, run, extra = "") {
  const b = h("button", { type: "button", class: `ghost small ${extra}` }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await run();
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

async function users(body, ctx, platform) {
  const [list, tenantList] = await Promise.all([
    api("/v1/users"),
    platform ? api("/v1/tenants") : Promise.resolve({ items: [] }),
  ]);
  const tenantName = new Map(tenantList.items.map((x) => [x.id, x.name]));
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const guard = async (run) => {
    clearError(error);
    try {
      await run();
      await users(body, ctx, platform);
    } catch (err) {
      showError(error, err.message, err.code);
    }
  };
  const rows = list.items.map((user) => {
    const role = h("select", { "aria-label": `${t("admin.role")} ${user.username}` },
      ROLES.filter((r) => platform || r !== "platform_admin").map((r) => h("option", { value: r, selected: r === user.role }, t(`role.${r}`))));
    role.addEventListener("change", () => guard(() => api(`/v1/users/${user.id}`, { method: "PATCH", json: { role: role.value } })));
    return h("tr", {},
      h("td", {}, user.username),
      platform ? h("td", {}, tenantName.get(user.tenant_id) || user.tenant_id.slice(0, 8)) : null,
      h("td", {}, role),
      h("td", {}, user.plan || t("admin.plan.tenant")),
      h("td", {}, h("span", { class: `badge ${user.disabled ? "failed" : "succeeded"}` }, t(user.disabled ? "admin.disabled" : "admin.active"))),
      h("td", { class: "row-actions" },
        action(t(user.disabled ? "admin.enable" : "admin.disable"),
          () => guard(() => api(`/v1/users/${user.id}`, { method: "PATCH", json: { disabled: !user.disabled } }))),
        action(t("admin.reset_password"), () => {
          const password = prompt(t("admin.new_password", { user: user.username }));
          if (password) return guard(() => api(`/v1/users/${user.id}`, { method: "PATCH", json: { password } }));
        })));
  });
  const username = h("input", { id: "new-username", required: true, autocomplete: "off" });
  const password = h("input", { id: "new-password", type: "password", required: true, autocomplete: "new-password" });
  const role = h("select", { id: "new-role" }, ROLES.filter((r) => platform || r !== "platform_admin").map((r) => h("option", { value: r }, t(`role.${r}`))));
  const tenant = platform
    ? h("select", { id: "new-tenant" }, tenantList.items.map((x) => h("option", { value: x.id, selected: x.id === ctx.me.tenant.id }, x.name)))
    : null;
  const form = h("form", { class: "inline-form" },
    h("div", { class: "field" }, h("label", { for: "new-username" }, t("admin.username")), username),
    h("div", { class: "field" }, h("label", { for: "new-password" }, t("admin.password")), password),
    h("div", { class: "field" }, h("label", { for: "new-role" }, t("admin.role")), role),
    tenant ? h("div", { class: "field" }, h("label", { for: "new-tenant" }, t("admin.tenant")), tenant) : null,
    h("button", { type: "submit", class: "primary" }, t("admin.create_user")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const json = { username: username.value.trim(), password: password.value, role: role.value };
    if (tenant) json.tenant_id = tenant.value;
    guard(() => api("/v1/users", { method: "POST", json }));
  });
  replace(body,
    table([t("admin.username"), platform ? t("admin.tenant") : null, t("admin.role"), t("admin.plan"), t("admin.status"), t("admin.actions")].filter(Boolean), rows),
    error, h("h2", {}, t("admin.create_user")), form);
}

async function tenants(body, ctx) {
  const list = await api("/v1/tenants");
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const guard = async (run) => {
    clearError(error);
    try {
      await run();
      await tenants(body, ctx);
    } catch (err) {
      showError(error, err.message, err.code);
    }
  };
  const rows = list.items.map((tenant) => {
    const plan = h("select", { "aria-label": `${t("admin.plan")} ${tenant.name}` },
      [...new Set([...PLANS, tenant.plan])].map((p) => h("option", { value: p, selected: p === tenant.plan }, p)));
    plan.addEventListener("change", () => guard(() => api(`/v1/tenants/${tenant.id}`, { method: "PATCH", json: { plan: plan.value } })));
    return h("tr", {}, h("td", {}, tenant.name), h("td", {}, plan), h("td", {}, dateTime(tenant.created_at)));
  });
  const name = h("input", { id: "tenant-name", required: true, autocomplete: "off" });
  const plan = h("select", { id: "tenant-plan" }, PLANS.map((p) => h("option", { value: p }, p)));
  const form = h("form", { class: "inline-form" },
    h("div", { class: "field" }, h("label", { for: "tenant-name" }, t("admin.name")), name),
    h("div", { class: "field" }, h("label", { for: "tenant-plan" }, t("admin.plan")), plan),
    h("button", { type: "submit", class: "primary" }, t("admin.create_tenant")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    guard(() => api("/v1/tenants", { method: "POST", json: { name: name.value.trim(), plan: plan.value } }));
  });
  replace(body, table([t("admin.name"), t("admin.plan"), t("job.created")], rows), error, h("h2", {}, t("admin.create_tenant")), form);
}

// Every submission of the last USAGE_DAYS days, page by page (1000 records a page, at most 100 pages).
const USAGE_DAYS = 30;

async function usage(body) {
  const counts = new Map();
  const since = new Date(Date.now() - USAGE_DAYS * 24 * 3600 * 1000).toISOString().slice(0, 19) + "Z";
  let cursor = null;
  for (let page = 0; page < 100; page++) {
    const query = new URLSearchParams({ action: "video.create", outcome: "success", limit: "1000", since });
    if (cursor) query.set("cursor", cursor);
    const result = await api(`/v1/audit?${query}`);
    for (const entry of result.items) {
      const key = `${entry.actor_user_id || "—"}|${entry.at.slice(0, 10)}`;
      counts.set(key, (counts.get(key) || 0) + 1);
    }
    cursor = result.next_cursor;
    if (!cursor) break;
  }
  const names = new Map((await api("/v1/users")).items.map((u) => [u.id, u.username]));
  const rows = [...counts.entries()]
    .sort((a, b) => b[0].split("|")[1].localeCompare(a[0].split("|")[1]))
    .map(([key, n]) => {
      const [user, day] = key.split("|");
      return h("tr", {}, h("td", {}, day), h("td", {}, names.get(user) || user.slice(0, 8)), h("td", { class: "num" }, String(n)));
    });
  replace(body, h("p", { class: "muted" }, t("admin.usage.intro")),
    table([t("admin.usage.day"), t("admin.usage.user"), t("admin.usage.videos")], rows));
}

async function audit(body) {
  const fields = {
    actor: h("input", { id: "audit-actor", autocomplete: "off" }),
    action: h("input", { id: "audit-action", autocomplete: "off", placeholder: "auth.login" }),
    outcome: h("select", { id: "audit-outcome" }, ["", "success", "failure", "denied"].map((o) => h("option", { value: o }, o || t("admin.audit.any")))),
    since: h("input", { id: "audit-since", type: "datetime-local" }),
    until: h("input", { id: "audit-until", type: "datetime-local" }),
  };
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const results = h("div", {});
  const query = () => {
    const q = new URLSearchParams({ limit: "100" });
    for (const [name, input] of Object.entries(fields)) {
      if (!input.value) continue;
      q.set(name, name === "since" || name === "until" ? new Date(input.value).toISOString() : input.value.trim());
    }
    return q;
  };
  const load = async () => {
    clearError(error);
    try {
      const page = await api(`/v1/audit?${query()}`);
      replace(results, table(
        [t("admin.audit.at"), t("admin.audit.action"), t("admin.audit.outcome"), t("admin.audit.actor"), t("admin.audit.target"), t("admin.audit.reason")],
        page.items.map((e) => h("tr", {},
          h("td", {}, dateTime(e.at)), h("td", { class: "mono" }, e.action),
          h("td", {}, h("span", { class: `badge ${e.outcome === "success" ? "succeeded" : "failed"}` }, e.outcome)),
          h("td", { class: "mono" }, e.actor_user_id ? e.actor_user_id.slice(0, 8) : e.actor_kind || ""),
          h("td", { class: "mono" }, (e.target || "").slice(0, 12)), h("td", {}, e.reason || "")))));
    } catch (err) {
      showError(error, err.message, err.code);
    }
  };
  const exportCsv = async () => {
    const q = query();
    q.delete("limit");
    q.set("format", "csv");
    try {
      const blob = await download(`/v1/audit?${q}`);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: "audit.csv", hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      showError(error, err.message, err.code);
    }
  };
  const form = h("form", { class: "inline-form" },
    [["actor", "admin.audit.actor"], ["action", "admin.audit.action"], ["outcome", "admin.audit.outcome"], ["since", "admin.audit.since"], ["until", "admin.audit.until"]]
      .map(([name, key]) => h("div", { class: "field" }, h("label", { for: fields[name].id }, t(key)), fields[name])),
    h("button", { type: "submit", class: "primary" }, t("admin.audit.apply")),
    action(t("admin.audit.export"), exportCsv, "export"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  replace(body, form, error, results);
  await load();
}

async function queue(body, ctx, platform) {
  const [engines, queued, running, tenants] = await Promise.all([
    api("/v1/engines"),
    api("/v1/videos?status=queued&limit=100"),
    api("/v1/videos?status=running&limit=100"),
    platform ? api("/v1/tenants") : Promise.resolve({ items: [] }),
  ]);
  const jobs = [...running.items, ...queued.items];
  // Platform admins see every tenant's jobs, each with its tenant: counted per tenant first.
  const tenantName = new Map(tenants.items.map((x) => [x.id, x.name]));
  const nameOf = (j) => tenantName.get(j.tenant_id) || (j.tenant_id || "").slice(0, 8);
  const perTenant = new Map();
  for (const j of jobs) {
    const n = perTenant.get(nameOf(j)) || { running: 0, queued: 0 };
    n[j.status === "running" ? "running" : "queued"] += 1;
    perTenant.set(nameOf(j), n);
  }
  const tenantSummary = platform && jobs.length
    ? [h("h2", {}, t("admin.queue.per_tenant")),
       table([t("admin.tenant"), t("job.status.running"), t("job.status.queued")],
         [...perTenant.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([name, n]) =>
           h("tr", {}, h("td", {}, name), h("td", { class: "num" }, String(n.running)), h("td", { class: "num" }, String(n.queued)))))]
    : [];
  const headers = [t("job.title"), ...(platform ? [t("admin.tenant")] : []), t("admin.status"), t("job.progress"), t("new.engine"), t("admin.queue.eta")];
  const refresh = action(t("admin.refresh"), () => queue(body, ctx, platform));
  replace(body,
    h("div", { class: "section-head" }, h("h2", {}, t("admin.queue.engines")), refresh),
    h("ul", { class: "engines" }, engines.items.map((e) => h("li", { class: "engine" },
      h("div", { class: "video-title" }, h("strong", {}, e.name),
        h("span", { class: `badge ${e.health.healthy ? "succeeded" : "failed"}` }, t(e.health.healthy ? "admin.queue.healthy" : "admin.queue.unhealthy"))),
      h("p", { class: "muted small" }, e.description),
      e.health.detail ? h("p", { class: "small" }, e.health.detail) : null,
      e.instances && e.instances.length
        ? h("p", { class: "small" }, `${t("admin.queue.instances")}: `,
            e.instances.map((i) => `${i.name || i.id} (${i.healthy ? "✓" : "✗"}${i.busy ? `, ${t("admin.queue.busy")}` : ""})`).join(", "))
        : null))),
    ...tenantSummary,
    h("h2", {}, t("admin.queue.jobs")),
    jobs.length
      ? table(headers,
          jobs.map((j) => h("tr", {},
            h("td", {}, h("a", { href: `#/videos/${j.id}`, class: "mono" }, j.id.slice(0, 8))),
            platform ? h("td", {}, nameOf(j)) : null,
            h("td", {}, h("span", { class: `badge ${j.status}` }, t(`job.status.${j.status}`))),
            h("td", { class: "num" }, `${Math.round(j.progress * 100)} %`),
            h("td", {}, j.engine),
            h("td", { class: "num" }, j.eta_s === null || j.eta_s === undefined ? t("common.none") : seconds(j.eta_s)))))
      : h("p", { class: "muted" }, t("admin.queue.none")));
}
