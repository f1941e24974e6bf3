// The API client. The access token lives in this module's memory only; the refresh token is an
// HttpOnly cookie the page cannot read, sent only to /v1/auth/session. A reload asks
// /v1/auth/session/refresh for a new access token. Refreshes are serialised across tabs with a Web Lock:
// the server treats a refresh token used twice as stolen and ends the sign-in.

let access = null;
let expiresAt = 0;
let renewTimer = null;
const listeners = new Set();

/** Called with no argument when the session ends (sign-out, expiry, revocation). */
export function onSignedOut(listener) {
  listeners.add(listener);
}

function ended() {
  access = null;
  expiresAt = 0;
  clearTimeout(renewTimer);
  for (const listener of listeners) listener();
}

/** An API refusal: HTTP status, the stable code, the message, and the fields it concerns. */
export class ApiError extends Error {
  constructor(status, body) {
    const message = body?.detail || body?.error_description || body?.title || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = body?.code || body?.error || "http_" + status;
    this.errors = Array.isArray(body?.errors) ? body.errors : [];
    this.body = body;
  }
}

async function readBody(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) return response.json().catch(() => null);
  return null;
}

function keep(session) {
  access = session.access_token;
  expiresAt = Date.now() + session.expires_in * 1000;
  clearTimeout(renewTimer);
  // Renew a minute before expiry so that requests and event streams never meet an expired token.
  const renewIn = Math.max(5_000, session.expires_in * 1000 - 60_000);
  renewTimer = setTimeout(() => refresh().catch(() => {}), renewIn);
}

export function signedIn() {
  return access !== null;
}

export async function signIn(username, password, tenant) {
  const form = new URLSearchParams({ username, password });
  if (tenant) form.set("tenant", tenant);
  const response = await fetch("/v1/auth/session", {
    method: "POST",
    body: form,
    credentials: "same-origin",
  });
  const body = await readBody(response);
  if (!response.ok) throw new ApiError(response.status, body);
  keep(body);
}

let refreshing = null;

/** A new access token from the cookie; false when there is no sign-in to continue. */
export function refresh() {
  if (!refreshing) {
    const run = async () => {
      const response = await fetch("/v1/auth/session/refresh", {
        method: "POST",
        credentials: "same-origin",
      });
      const body = await readBody(response);
      if (response.ok) {
        keep(body);
        return true;
      }
      if (response.status === 400 || response.status === 401) return false;
      throw new ApiError(response.status, body);
    };
    const locked = navigator.locks
      ? navigator.locks.request("sonicgw-refresh", run)
      : withStorageLock("sonicgw-refresh", run);
    refreshing = locked.finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A random id; `crypto.randomUUID` exists only on HTTPS pages (and localhost). */
export function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Runs `run` while holding a lock shared by this site's tabs, for pages without Web Locks (plain HTTP
 * on a LAN address): a lease in localStorage (no token, only an owner id and an expiry), written, then
 * read back after a moment to see whether another tab wrote at the same time. Never blocks for good:
 * a lease expires after 10 s, and after 12 s of waiting `run` goes ahead.
 */
async function withStorageLock(name, run) {
  const me = randomId();
  const read = () => {
    try {
      return JSON.parse(localStorage.getItem(name) || "null");
    } catch (_) {
      return null;
    }
  };
  const claim = () => {
    try {
      localStorage.setItem(name, JSON.stringify({ owner: me, until: Date.now() + 10_000 }));
      return true;
    } catch (_) {
      return false; // No localStorage (a private window may refuse it): no lock to take.
    }
  };
  // A lease lasts 10 s: wait (real time) until the holder gives it back or it runs out, never less.
  const started = Date.now();
  while (Date.now() - started < 12_000) {
    const held = read();
    const now = Date.now();
    // Free, run out, or not one this code wrote (a lease never lasts more than 10 s).
    if (!held || !(held.until > now) || held.until > now + 10_000) {
      if (!claim()) break;
      // Long enough for a write in another tab (another process) to reach this one.
      await pause(100);
      if (read()?.owner === me) {
        try {
          return await run();
        } finally {
          if (read()?.owner === me) localStorage.removeItem(name);
        }
      }
    }
    await pause(50 + Math.floor(Math.random() * 50));
  }
  return run();
}

export async function signOut() {
  try {
    // The access token too: it ends this sign-in even when the cookie is gone.
    const headers = access ? { authorization: "Bearer " + access } : {};
    await fetch("/v1/auth/session", { method: "DELETE", headers, credentials: "same-origin" });
  } finally {
    ended();
  }
}

/** Resumes the sign-in kept in the cookie, if any. */
export async function resume() {
  try {
    return await refresh();
  } catch (_) {
    return false;
  }
}

async function authorised(path, init = {}, retried = false) {
  if (!access) {
    if (!(await refresh())) {
      ended();
      throw new ApiError(401, { code: "not_signed_in", detail: "not signed in" });
    }
  }
  const headers = new Headers(init.headers || {});
  headers.set("authorization", "Bearer " + access);
  const response = await fetch(path, { ...init, headers, credentials: "same-origin" });
  if (response.status === 401 && !retried) {
    // Expired or revoked: one renewal, then give up.
    if (await refresh().catch(() => false)) return authorised(path, init, true);
    ended();
  }
  return response;
}

/** A JSON API call; throws ApiError on a refusal. */
export async function api(path, { method = "GET", json, form, headers } = {}) {
  const init = { method, headers: { ...(headers || {}) } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["content-type"] = "application/json";
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await authorised(path, init);
  const body = await readBody(response);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** A binary download with the bearer token (e.g. CSV export), as a Blob. */
export async function download(path) {
  const response = await authorised(path);
  if (!response.ok) throw new ApiError(response.status, await readBody(response));
  return response.blob();
}

/**
 * Follows a job's Server-Sent Events until it ends or `signal` aborts. EventSource cannot send an
 * Authorization header (and a token in the URL would leak), so this reads the stream with fetch.
 * Calls onJob(view) for each change and onState("live" | "reconnecting"). Resolves with the final view.
 */
export async function follow(id, { onJob, onState, signal }) {
  let last = null;
  let failures = 0;
  while (!signal.aborted) {
    try {
      const response = await authorised(`/v1/videos/${encodeURIComponent(id)}/events`, {
        headers: { accept: "text/event-stream" },
        signal,
      });
      if (!response.ok) throw new ApiError(response.status, await readBody(response));
      onState?.("live");
      failures = 0;
      const ending = await readEvents(response.body, signal, (event, data) => {
        if (event === "job") {
          last = JSON.parse(data);
          onJob(last);
        }
      });
      if (ending && ending.status) return last;
      if (ending && ending.reason === "deleted") return null;
      // token_expired / token_revoked: renew and follow again (a revoked sign-in fails the renewal).
      if (ending && (ending.reason === "token_expired" || ending.reason === "token_revoked")) {
        if (!(await refresh().catch(() => false))) {
          ended();
          return last;
        }
      }
    } catch (err) {
      if (signal.aborted) return last;
      if (err instanceof ApiError && err.status !== 429 && err.status < 500) throw err;
      onState?.("reconnecting");
      failures += 1;
      await wait(Math.min(10_000, 500 * 2 ** failures), signal);
    }
  }
  return last;
}

function wait(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Reads `event:`/`data:` blocks; returns the parsed `end` event's data, or null if the stream broke. */
async function readEvents(body, signal, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let split;
      while ((split = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, split);
        buffer = buffer.slice(split + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        if (event === "end") return JSON.parse(data.join("\n"));
        onEvent(event, data.join("\n"));
      }
    }
  } finally {
    if (signal.aborted) reader.cancel().catch(() => {});
  }
}
