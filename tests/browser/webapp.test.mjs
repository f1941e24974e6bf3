// The web app as a person uses it, in Debian's chromium driven by playwright-core (never a downloaded
// browser). Starts the real `sonicgw serve` (SONICGW_BIN) on port 0 with a temporary data directory and
// the built-in engine. Screenshots of each step go to target/browser/ (replaced on every run).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync, readdirSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const binary = process.env.SONICGW_BIN || join(root, "target/debug/sonicgw");
const shots = join(root, "target/browser");
const samples = join(root, "assets/samples");
const ADMIN_PASSWORD = "admin-password-for-browser-tests";
const USER_PASSWORD = "a long password for browser tests";
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run", "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
];

let server;
let base;
let dataDir;
let browser;

function startServer() {
  dataDir = mkdtempSync(join(tmpdir(), "sonicgw-browser-"));
  const child = spawn(binary, ["serve"], {
    env: {
      ...process.env,
      SONICGW_LISTEN: "127.0.0.1:0",
      SONICGW_METRICS_LISTEN: "127.0.0.1:0",
      SONICGW_DATA_DIR: dataDir,
      SONICGW_ADMIN_PASSWORD: ADMIN_PASSWORD,
      SONICGW_DEFAULT_ENGINE: "builtin",
      SONICGW_LOG_FORMAT: "json",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stderr.on("data", (chunk) => {
    log += chunk;
  });
  return new Promise((resolvePromise, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const found = out.match(/listening on (http:\/\/[\d.:]+)/);
      if (found) resolvePromise({ child, url: found[1] });
    });
    child.on("exit", (code) => reject(new Error(`sonicgw exited with ${code}:\n${log}`)));
  });
}

async function apiAs(token, path, init = {}) {
  const response = await fetch(base + path, {
    ...init,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...(init.headers || {}) },
  });
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

async function token(username, password) {
  const response = await fetch(base + "/v1/auth/token", {
    method: "POST",
    body: new URLSearchParams({ grant_type: "password", username, password }),
  });
  assert.equal(response.status, 200, `API sign-in of ${username}`);
  return (await response.json()).access_token;
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signIn(page, username, password) {
  await page.goto(base + "/");
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  for (const file of readdirSync(shots)) unlinkSync(join(shots, file));
  const started = await startServer();
  server = started.child;
  base = started.url;
  const admin = await token("admin", ADMIN_PASSWORD);
  const studio = await apiAs(admin, "/v1/tenants", { method: "POST", body: JSON.stringify({ name: "studio", plan: "pro" }) });
  assert.equal(studio.status, 201, JSON.stringify(studio.body));
  const acme = await apiAs(admin, "/v1/tenants", { method: "POST", body: JSON.stringify({ name: "acme", plan: "free" }) });
  assert.equal(acme.status, 201, JSON.stringify(acme.body));
  for (const [username, tenant] of [["creator", studio.body.id], ["freddie", acme.body.id]]) {
    const user = await apiAs(admin, "/v1/users", {
      method: "POST",
      body: JSON.stringify({ username, password: USER_PASSWORD, role: "user", tenant_id: tenant }),
    });
    assert.equal(user.status, 201, JSON.stringify(user.body));
  }
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test("the app is served with a strict policy and no third-party origins", async () => {
  const response = await fetch(base + "/");
  assert.equal(response.status, 200);
  const csp = response.headers.get("content-security-policy");
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
  assert.equal(response.headers.get("x-frame-options"), "DENY");
  assert.equal(response.headers.get("referrer-policy"), "no-referrer");
});

test("a creator signs in, previews, generates, watches progress to 100 %, plays the video, signs out", async () => {
  const context = await browser.newContext({ locale: "en-GB", viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (message) => message.type() === "error" && problems.push(message.text()));
  page.on("pageerror", (error) => problems.push(error.message));
  const bearers = new Set();
  page.on("request", (request) => {
    const authorization = request.headers()["authorization"];
    if (authorization) bearers.add(authorization.replace(/^Bearer /, ""));
    assert.doesNotMatch(request.url(), /access_token|refresh_token/, "no token in a URL");
  });

  await page.goto(base + "/");
  await page.getByLabel("Username").waitFor();
  await shot(page, "01-sign-in");
  await signIn(page, "creator", USER_PASSWORD);

  // The refresh token is in an HttpOnly cookie limited to the session path; nothing in storage.
  const cookies = await context.cookies(base + "/v1/auth/session");
  const refresh = cookies.find((c) => c.name === "sonicgw_refresh");
  assert.ok(refresh, "refresh cookie set");
  assert.equal(refresh.httpOnly, true);
  assert.equal(refresh.sameSite, "Strict");
  assert.equal(refresh.path, "/v1/auth/session");
  assert.equal(await page.evaluate(() => document.cookie), "");
  const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  for (const bearer of bearers) assert.ok(!stored.includes(bearer), "no access token in web storage");

  // A reload keeps the user signed in.
  await page.reload();
  await page.getByRole("button", { name: "Sign out" }).waitFor();

  await page.getByLabel("Photo").setInputFiles(join(samples, "face_astronaut.png"));
  await page.getByLabel("Audio").setInputFiles(join(samples, "speech_en.mp3"));
  const duration = page.locator("#preview-duration");
  await duration.waitFor();
  const audioSeconds = Number(await duration.getAttribute("data-duration"));
  assert.ok(audioSeconds > 5 && audioSeconds < 10, `audio duration ${audioSeconds}`);
  await page.locator(".box.face").waitFor();
  await page.locator(".box.crop").waitFor();
  await shot(page, "02-preview");
  // The pro plan allows 1024 px.
  assert.equal(await page.locator("#min_resolution-1024").isDisabled(), false);

  await page.getByRole("button", { name: "Generate" }).click();
  await page.waitForURL(/#\/videos\//);
  const progress = page.getByRole("progressbar");
  await progress.waitFor();
  await shot(page, "03-progress");
  // Reloading while it runs comes back to the same job and follows it again.
  await page.reload();
  await page.getByRole("progressbar").waitFor();
  await page.waitForFunction(
    () => document.querySelector('[role="progressbar"]')?.getAttribute("aria-valuenow") === "100",
    null,
    { timeout: 90_000 },
  );
  const video = page.locator("video#video");
  await video.waitFor();
  const played = await video.evaluate(async (element) => {
    element.muted = true;
    if (element.readyState < 1) await new Promise((done) => element.addEventListener("loadedmetadata", done, { once: true }));
    await element.play();
    await new Promise((done) => element.addEventListener("timeupdate", done, { once: true }));
    return { duration: element.duration, time: element.currentTime, paused: element.paused, error: element.error?.code ?? null };
  });
  assert.equal(played.error, null, "the video decodes");
  assert.ok(Math.abs(played.duration - audioSeconds) <= 0.1, `video ${played.duration} s vs audio ${audioSeconds} s`);
  assert.ok(played.time > 0 && !played.paused, `the video plays: ${JSON.stringify(played)}`);
  assert.match(await page.locator("#link-expiry").innerText(), /valid until/);
  assert.match(await page.locator("#share-link").inputValue(), /\/v1\/files\/videos\/.+\.mp4\?expires=\d+&sig=/);
  await page.locator("video#video").evaluate((element) => element.pause());
  await shot(page, "04-done");
  const firstJob = page.url();

  // Re-run: same inputs, a new seed; a new job starts.
  await page.getByRole("link", { name: "Re-run with new parameters" }).click();
  await page.getByLabel("Seed").fill("7");
  assert.equal(Number(await page.locator("#preview-duration").getAttribute("data-duration")), audioSeconds);
  await page.getByRole("button", { name: "Generate" }).click();
  await page.waitForURL((url) => /#\/videos\//.test(url.href) && url.href !== firstJob);
  await page.getByRole("progressbar").waitFor();

  await page.getByRole("link", { name: "History" }).click();
  await page.locator("#videos .video-item").nth(1).waitFor();
  await page.getByLabel("Status").selectOption("succeeded");
  await page.waitForURL(/status=succeeded/);
  await page.locator('#videos .video-item[data-status="succeeded"]').first().waitFor();
  await shot(page, "05-history");

  // Sign out: the page shows the sign-in form, and neither the cookie nor any access token it held works.
  assert.ok(bearers.size > 0);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  await shot(page, "06-signed-out");
  await page.reload();
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  assert.equal(await page.getByRole("button", { name: "Sign out" }).isVisible(), false);
  const again = await page.evaluate(async () => (await fetch("/v1/auth/session/refresh", { method: "POST" })).status);
  assert.equal(again, 400);
  for (const bearer of bearers) {
    const me = await fetch(base + "/v1/me", { headers: { authorization: `Bearer ${bearer}` } });
    assert.equal(me.status, 401, "an access token of the signed-out session is revoked");
  }
  assert.deepEqual(problems.filter((p) => !/401|400/.test(p)), []);
  await context.close();
});

test("a free user sees 1024 px disabled with the reason, and the page fits 375 px", async () => {
  const context = await browser.newContext({ locale: "en-US", viewport: { width: 375, height: 812 }, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  await page.goto(base + "/");
  await page.getByLabel("Username").waitFor();
  await shot(page, "07-mobile-sign-in");
  await signIn(page, "freddie", USER_PASSWORD);
  const option = page.locator("#min_resolution-1024");
  await option.waitFor({ state: "attached" });
  assert.equal(await option.isDisabled(), true, "1024 px is disabled for the free plan");
  assert.equal(await page.locator("#min_resolution-512").isDisabled(), false);
  assert.match(await page.locator("#min_resolution-reason").innerText(), /free plan allows up to 512 px/);
  assert.equal(await page.locator("#enable_lip_sync_correction").isDisabled(), true);
  // A recording picked as the photo: the refusal sits under the Photo field, in words, with its code.
  await page.getByLabel("Photo").setInputFiles(join(samples, "speech_en.mp3"));
  await page.getByLabel("Audio").setInputFiles(join(samples, "speech_en.wav"));
  const photoError = page.locator("#image-error");
  await photoError.waitFor();
  assert.match(await photoError.innerText(), /format is not supported[\s\S]*unsupported_image_format/);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 375, `no sideways scrolling at 375 px (content is ${width} px wide)`);
  await shot(page, "08-mobile-free-plan");
  await context.close();
});

test("the Chinese UI follows the browser's language and the switch changes it", async () => {
  const context = await browser.newContext({ locale: "zh-CN", viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(base + "/");
  await page.getByLabel("用户名").waitFor();
  assert.equal(await page.evaluate(() => document.documentElement.lang), "zh-CN");
  assert.ok(await page.getByRole("button", { name: "登录" }).isVisible());
  await shot(page, "09-zh-sign-in");
  await page.getByLabel("用户名").fill("creator");
  await page.getByLabel("密码").fill(USER_PASSWORD);
  await page.getByRole("button", { name: "登录" }).click();
  await page.getByRole("button", { name: "退出登录" }).waitFor();
  assert.ok(await page.getByText("新建视频").first().isVisible());
  await page.getByLabel("照片").waitFor({ state: "attached" });
  await shot(page, "10-zh-new-video");
  await page.getByRole("button", { name: "语言：切换到英文" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  await context.close();
});

test("a platform admin manages users and exports the audit log as CSV", async () => {
  const context = await browser.newContext({ locale: "en-GB", viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  await signIn(page, "admin", ADMIN_PASSWORD);
  await page.getByRole("link", { name: "Admin" }).click();
  await page.getByRole("cell", { name: "freddie" }).waitFor();
  await page.getByLabel("Username").fill("newbie");
  await page.getByLabel("Password").fill(USER_PASSWORD);
  await page.getByRole("button", { name: "Create user" }).click();
  await page.getByRole("cell", { name: "newbie" }).waitFor();
  await shot(page, "11-admin-users");
  await page.getByRole("link", { name: "Audit log" }).click();
  await page.getByLabel("Action").fill("user.create");
  await page.getByRole("button", { name: "Apply filters" }).click();
  await page.locator("td", { hasText: "user.create" }).first().waitFor();
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Export CSV" }).click(),
  ]);
  const csv = await (await download.createReadStream()).toArray();
  const text = Buffer.concat(csv).toString("utf8");
  assert.match(text.split("\n")[0], /action/);
  assert.match(text, /user\.create/);
  assert.doesNotMatch(text, /auth\.login/, "the export keeps the filter");
  await shot(page, "12-admin-audit");
  await page.getByRole("link", { name: "Usage" }).click();
  await page.getByRole("cell", { name: "creator" }).first().waitFor();
  await page.getByRole("link", { name: "Queue and engines" }).click();
  await page.getByText("builtin").first().waitFor();
  await shot(page, "13-admin-queue");
  await context.close();
});

test("on a plain-HTTP LAN address (no Web Locks, no randomUUID) two tabs refresh at once and stay signed in", async () => {
  // A name that is not localhost makes http:// an insecure context, as a LAN address is: browsers then
  // offer neither navigator.locks nor crypto.randomUUID.
  const port = new URL(base).port;
  const lan = `http://lan.test:${port}`;
  const lanBrowser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [...CHROMIUM_ARGS, "--host-resolver-rules=MAP lan.test 127.0.0.1"],
  });
  try {
    const context = await lanBrowser.newContext({ locale: "en-GB" });
    const first = await context.newPage();
    const problems = [];
    first.on("pageerror", (error) => problems.push(error.message));
    await first.goto(lan + "/");
    assert.deepEqual(
      await first.evaluate(() => [window.isSecureContext, "locks" in navigator, typeof crypto.randomUUID]),
      [false, false, "undefined"],
    );
    await first.getByLabel("Username").fill("creator");
    await first.getByLabel("Password").fill(USER_PASSWORD);
    await first.getByRole("button", { name: "Sign in" }).click();
    await first.getByRole("button", { name: "Sign out" }).waitFor();
    const second = await context.newPage();
    await second.goto(lan + "/");
    await second.getByRole("button", { name: "Sign out" }).waitFor();
    const api = "/app/api.js";
    const id = await first.evaluate((path) => import(path).then((m) => m.randomId()), api);
    assert.match(id, /^[0-9a-f]{32}$/);
    // Both tabs renew from the one cookie at the same moment, five times: without a lock one of them
    // would present a refresh token the other just spent, and the server would end the sign-in.
    for (let round = 0; round < 5; round++) {
      const renewed = await Promise.all(
        [first, second].map((page) => page.evaluate((path) => import(path).then((m) => m.refresh()), api)),
      );
      assert.deepEqual(renewed, [true, true], `round ${round}`);
    }
    for (const page of [first, second]) {
      const me = await page.evaluate((path) => import(path).then((m) => m.api("/v1/me")), api);
      assert.equal(me.username, "creator");
    }
    assert.deepEqual(problems, []);
    await shot(second, "14-lan-address-two-tabs");
    await context.close();
  } finally {
    await lanBrowser.close();
  }
});
