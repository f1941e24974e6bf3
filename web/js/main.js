// The shell: sign-in state, navigation by the URL's fragment (#/, #/videos/<id>, #/history, #/admin),
// the language switch. Each view is a module with render(main, context).

import * as api from "./api.js";
import { h, replace } from "./dom.js";
import { language, setLanguage, t } from "./i18n.js";
import { renderSignIn } from "./signin.js";
import { renderCreate } from "./create.js";
import { renderJob } from "./job.js";
import { renderHistory } from "./history.js";
import { renderAdmin } from "./admin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("signout");
const langButton = document.getElementById("lang");
const banner = document.getElementById("banner");

let me = null;
let leaving = null; // AbortController of the current view (event streams, timers)

function say(message) {
  banner.textContent = message || "";
  banner.hidden = !message;
}

/** The fragment's path segments, without its query: "#/videos/abc?x=1" -> ["videos", "abc"]. */
function path() {
  return location.hash.replace(/^#\/?/, "").split("?")[0].split("/");
}

function paintShell() {
  document.title = t("app.name");
  document.getElementById("brand-name").textContent = t("app.name");
  langButton.textContent = t("lang.switch");
  langButton.setAttribute("aria-label", t("lang.switch.label"));
  signOutButton.textContent = t("signout");
  signOutButton.hidden = !me;
  who.hidden = !me;
  nav.hidden = !me;
  if (!me) return;
  who.textContent = me.username;
  who.title = t("user.menu", { user: me.username, tenant: me.tenant.name, plan: me.plan });
  const route = path()[0];
  const link = (href, key, name) =>
    h("a", { href, "aria-current": route === name ? "page" : null }, t(key));
  nav.setAttribute("aria-label", t("nav.main"));
  replace(
    nav,
    link("#/", "nav.new", ""),
    link("#/history", "nav.history", "history"),
    me.role !== "user" ? link("#/admin", "nav.admin", "admin") : null,
  );
}

async function loadMe() {
  me = await api.api("/v1/me");
}

async function route() {
  leaving?.abort();
  leaving = new AbortController();
  paintShell();
  if (!me) {
    renderSignIn(main, { onSignedIn });
    return;
  }
  const parts = path();
  const context = { me, signal: leaving.signal, say, go: (hash) => (location.hash = hash) };
  try {
    if (parts[0] === "videos" && parts[1]) await renderJob(main, parts[1], context);
    else if (parts[0] === "history") await renderHistory(main, context);
    else if (parts[0] === "admin" && me.role !== "user") await renderAdmin(main, parts[1] || "", context);
    else await renderCreate(main, new URLSearchParams(location.hash.split("?")[1] || ""), context);
  } catch (err) {
    if (leaving.signal.aborted || !me) return;
    replace(main, h("section", { class: "card" }, h("p", { class: "error" }, err.message || t("common.error"),
      err.code ? h("code", { class: "code" }, err.code) : null)));
  }
}

async function onSignedIn() {
  await loadMe();
  say("");
  route();
}

api.onSignedOut(() => {
  if (!me) return;
  me = null;
  say(t("session.expired"));
  route();
});

signOutButton.addEventListener("click", async () => {
  me = null;
  leaving?.abort();
  await api.signOut();
  say(t("signed_out"));
  route();
});

langButton.addEventListener("click", () => {
  setLanguage(language() === "zh" ? "en" : "zh");
  route();
});

window.addEventListener("hashchange", route);

async function start() {
  setLanguage(language());
  if (await api.resume()) {
    try {
      await loadMe();
    } catch (_) {
      me = null;
    }
  }
  route();
}

start();
