// The sign-in form: username, password and (when the username is in several tenants) the tenant.

import * as api from "./api.js";
import { h, replace, showError, clearError } from "./dom.js";
import { t } from "./i18n.js";

export function renderSignIn(main, { onSignedIn }) {
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const username = h("input", { id: "username", name: "username", autocomplete: "username", required: true, autocapitalize: "none", spellcheck: "false" });
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const tenant = h("input", { id: "tenant", name: "tenant", autocomplete: "organization", "aria-describedby": "tenant-hint", autocapitalize: "none" });
  const submit = h("button", { type: "submit", class: "primary wide" }, t("signin.submit"));
  const form = h(
    "form",
    { class: "card signin", novalidate: true },
    h("h1", {}, t("signin.title")),
    h("p", { class: "muted" }, t("signin.intro")),
    h("div", { class: "field" }, h("label", { for: "username" }, t("signin.username")), username),
    h("div", { class: "field" }, h("label", { for: "password" }, t("signin.password")), password),
    h("div", { class: "field" }, h("label", { for: "tenant" }, t("signin.tenant")), tenant,
      h("p", { class: "hint", id: "tenant-hint" }, t("signin.tenant.hint"))),
    error,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(error);
    if (!username.value || !password.value) {
      showError(error, t("signin.failed"), "invalid_request");
      return;
    }
    submit.disabled = true;
    submit.textContent = t("signin.busy");
    try {
      await api.signIn(username.value.trim(), password.value, tenant.value.trim());
      password.value = "";
      await onSignedIn();
    } catch (err) {
      const message =
        err.status === 429 ? t("signin.throttled")
        : err.code === "invalid_request" && /tenant/.test(err.message) ? t("signin.tenant_needed")
        : err.code === "invalid_grant" ? t("signin.failed")
        : err.message;
      showError(error, message, err.code);
      submit.disabled = false;
      submit.textContent = t("signin.submit");
    }
  });
  replace(main, h("div", { class: "signin-wrap" },
    h("div", { class: "hero" }, h("h2", {}, t("app.name")), h("p", {}, t("app.tagline"))),
    form));
  username.focus();
}
