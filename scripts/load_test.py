"""The load test's clients (a locust file) and its two helpers; scripts/load.sh runs all three.

    python scripts/load_test.py setup BASE ADMIN_PASSWORD USERS ACCOUNTS_JSON
        Signs in as the platform admin, creates tenant `load` on plan `load` (config.toml of load.sh) and
        USERS users in it with random passwords, written to ACCOUNTS_JSON (in the run's temporary folder).
    locust -f scripts/load_test.py ...
        One simulated user per account (LOAD_ACCOUNTS), signed in once when it starts, then a mix of tasks
        with a think time of 1-3 s between them (weights in `Client`).
    python scripts/load_test.py report SUMMARY_JSON
        Prints a markdown table per operation (from the statistics the clients wrote to LOAD_SUMMARY when
        the test stopped, every user having finished its task) and the status codes seen;
        exits 1 on any failed request (any 5xx, any 429, any other unexpected status, a job that did not
        succeed, a download that does not match the job).

Every request is checked for the status it should have; anything else is a failure, 429 included: the
configuration lifts every limit that concerns a single client (see load.sh), so a 429 means a limit the
test did not mean to measure.
"""

import itertools
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

# Longest a job may take from its 202 to its end before the client gives up on it (a failure).
JOB_DEADLINE_S = float(os.environ.get("LOAD_JOB_DEADLINE_S", "120"))
# Time between two looks at a running job (GET /v1/videos/{id}).
POLL_INTERVAL_S = 0.5
TERMINAL = {"succeeded", "failed", "cancelled"}


# ---------------------------------------------------------------------------------------------------
# setup: the tenant and the accounts, through the admin API (standard library only).


def _call(base, method, path, token=None, form=None, body=None):
    headers = {}
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        raise SystemExit(f"setup: {method} {path}: HTTP {err.code}: {err.read()[:500]!r}") from None


def setup(base, admin_password, users, out):
    token = _call(
        base,
        "POST",
        "/v1/auth/token",
        form={"grant_type": "password", "username": "admin", "password": admin_password},
    )["access_token"]
    tenant = _call(base, "POST", "/v1/tenants", token, body={"name": "load", "plan": "load"})
    accounts = [
        {"username": f"load-{i:04d}", "password": secrets.token_urlsafe(18)} for i in range(users)
    ]

    def create(account):
        _call(
            base,
            "POST",
            "/v1/users",
            token,
            body={**account, "role": "user", "tenant_id": tenant["id"]},
        )

    started = time.monotonic()
    # Each creation hashes a password (Argon2, a few at a time on the server): a few in parallel.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, accounts))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(accounts, f)
    print(f"created tenant load and {users} users in {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------------------------------------------
# report: locust's CSV statistics as a markdown table, and the verdict.


def report(summary_path):
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    print("| operation | requests | failures | p50 ms | p99 ms | max ms | req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for op in summary["operations"]:
        print(
            f"| {op['method']} {op['name']} | {op['requests']} | {op['failures']} | {op['p50']} "
            f"| {op['p99']} | {op['max']} | {op['rps']:.1f} |"
        )
    http = [op for op in summary["operations"] if op["method"] not in ("JOB", "CHECK")]
    print(
        f"| all HTTP requests | {sum(op['requests'] for op in http)} | "
        f"{sum(op['failures'] for op in http)} | | | | {sum(op['rps'] for op in http):.1f} |"
    )
    print()
    statuses = summary["statuses"]
    print("status codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items())))
    print(
        f"jobs: {summary['jobs_submitted']} submitted, {summary['jobs_succeeded']} succeeded and "
        f"downloaded, {summary['jobs_unfinished']} cut short by the end of the test"
    )
    server_errors = sum(n for code, n in statuses.items() if code.startswith("5"))
    failed = sum(op["failures"] for op in summary["operations"])
    if summary["errors"]:
        print("\nfailures:")
        for e in summary["errors"]:
            print(f"  {e['occurrences']} x {e['method']} {e['name']}: {e['error']}")
    if server_errors or failed:
        print(f"\nFAILED: {failed} failed operations, {server_errors} responses with a 5xx status")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "setup":
        setup(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        sys.exit(report(sys.argv[2]))
    else:
        sys.exit(__doc__)


# ---------------------------------------------------------------------------------------------------
# The clients. Imported by locust only (the helpers above run without it).

if __name__ != "__main__":
    from locust import between, events, task
    from locust.contrib.fasthttp import FastHttpUser
    from urllib3 import encode_multipart_formdata

    with open(os.environ["LOAD_ACCOUNTS"], encoding="utf-8") as f:
        ACCOUNTS = json.load(f)
    with open(os.environ["LOAD_IMAGE"], "rb") as f:
        IMAGE = f.read()
    with open(os.environ["LOAD_AUDIO"], "rb") as f:
        AUDIO = f.read()
    _next_account = itertools.count()
    # Status codes per operation, and the jobs' fates: written for `report` when the test stops.
    STATUSES = Counter()
    JOBS = Counter()
    # Jobs being followed right now (by their users' greenlets): those the stop cuts short.
    FOLLOWING = set()

    class Unexpected(Exception):
        pass

    class Client(FastHttpUser):
        """One person with their own account. Weights: reading (`/v1/me` 10, the list 5) dominates, as in
        the web app, which calls both on every page; refreshes (2) as an access token nears expiry;
        a new sign-in (1) as a second device or a reload after the refresh cookie went; a video (1) is
        submitted, followed to its end and downloaded twice (bearer and signed link), about one task in
        19: at 200 users and a 2 s average think time up to 5 submissions a second, each probed for
        real (image decode, face detection, audio decode) before it is queued, which on 2 cores is
        more than intake's probe slots take, so submissions wait for a slot (up to 20 s, then 503)."""

        wait_time = between(1, 3)
        network_timeout = 60.0
        connection_timeout = 10.0

        def on_start(self):
            account = ACCOUNTS[next(_next_account) % len(ACCOUNTS)]
            self.username = account["username"]
            self.password = account["password"]
            self.access = None
            self.refresh_token = None
            self.sign_in()

        # -- helpers ------------------------------------------------------------------------------

        def call(self, method, path, name, expect, auth=True, **kwargs):
            """One request, checked for an expected status; returns the response or None."""
            headers = dict(kwargs.pop("headers", {}))
            if auth:
                headers["Authorization"] = f"Bearer {self.access}"
            with self.client.request(
                method, path, name=name, headers=headers, catch_response=True, **kwargs
            ) as response:
                STATUSES[response.status_code] += 1
                if response.status_code in expect:
                    response.success()
                    return response
                code = ""
                try:
                    code = response.json().get("code") or response.json().get("error", "")
                except Exception:  # noqa: BLE001 - a body that is not JSON has no code
                    pass
                response.failure(f"HTTP {response.status_code} {code}".strip())
                return None

        def token(self, form, name):
            response = self.call(
                "POST",
                "/v1/auth/token",
                name,
                (200,),
                auth=False,
                data=urllib.parse.urlencode(form),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            if response is not None:
                body = response.json()
                self.access = body["access_token"]
                self.refresh_token = body["refresh_token"]
            return response is not None

        # -- tasks --------------------------------------------------------------------------------

        @task(1)
        def sign_in(self):
            self.token(
                {"grant_type": "password", "username": self.username, "password": self.password},
                "/v1/auth/token (password)",
            )

        @task(2)
        def refresh(self):
            # Rotation: the answer's refresh token replaces ours; the old one is used up (presenting it
            # again would revoke the sign-in). A user's requests are sequential, so never two at once.
            if not self.refresh_token or not self.token(
                {"grant_type": "refresh_token", "refresh_token": self.refresh_token},
                "/v1/auth/token (refresh_token)",
            ):
                self.sign_in()

        @task(10)
        def me(self):
            self.call("GET", "/v1/me", "/v1/me", (200,))

        @task(5)
        def list_videos(self):
            self.call("GET", "/v1/videos?limit=20", "/v1/videos", (200,))

        @task(1)
        def make_video(self):
            body, content_type = encode_multipart_formdata(
                {
                    "image": ("face.png", IMAGE, "image/png"),
                    "audio": ("speech.mp3", AUDIO, "audio/mpeg"),
                    "engine": "simulated",
                    "seed": "42",
                }
            )
            started = time.perf_counter()
            response = self.call(
                "POST",
                "/v1/videos",
                "/v1/videos",
                (202,),
                data=body,
                headers={"Content-Type": content_type, "Idempotency-Key": str(uuid.uuid4())},
            )
            if response is None:
                return
            job_id = response.json()["id"]
            JOBS["submitted"] += 1
            FOLLOWING.add(job_id)
            try:
                self.follow(job_id, started)
            finally:
                FOLLOWING.discard(job_id)

        def follow(self, job_id, started):
            deadline = time.monotonic() + JOB_DEADLINE_S
            job = None
            while time.monotonic() < deadline:
                self._sleep(POLL_INTERVAL_S)
                response = self.call("GET", f"/v1/videos/{job_id}", "/v1/videos/{id}", (200,))
                if response is None:
                    return
                job = response.json()
                if job["status"] in TERMINAL:
                    break
            status = job["status"] if job else "unknown"
            if status != "succeeded":
                why = job.get("error", {}).get("code") if job else None
                self.job_event(started, Unexpected(f"job {status} {why or ''}".strip()))
                return
            self.job_event(started, None)
            expected = f"simulated video of job {job_id}\n".encode()
            content = self.call(
                "GET", f"/v1/videos/{job_id}/content", "/v1/videos/{id}/content", (200,)
            )
            self.check_download(content, expected, "/v1/videos/{id}/content")
            # The signed link of the job view: no bearer token.
            link = self.call(
                "GET", job["result"]["url"], "/v1/files/videos/{id}.mp4 (signed link)", (200,), auth=False
            )
            if self.check_download(link, expected, "/v1/files/videos/{id}.mp4 (signed link)"):
                JOBS["succeeded"] += 1

        def check_download(self, response, expected, name):
            if response is None:
                return False
            if response.content != expected:
                events.request.fire(
                    request_type="CHECK",
                    name=f"{name} body",
                    response_time=0,
                    response_length=0,
                    exception=Unexpected("the body is not the job's simulated video"),
                    context={},
                )
                return False
            return True

        def job_event(self, started, exception):
            events.request.fire(
                request_type="JOB",
                name="submit to succeeded (simulated engine)",
                response_time=(time.perf_counter() - started) * 1000,
                response_length=0,
                exception=exception,
                context={},
            )

        def _sleep(self, seconds):
            import gevent

            gevent.sleep(seconds)

    def _write_summary(environment, **_kwargs):
        # At test_stop every user has stopped (each finished its task within --stop-timeout), so these
        # numbers are final; locust's CSV files may be written before the last tasks end.
        stats = environment.stats
        operations = [
            {
                "method": e.method,
                "name": e.name,
                "requests": e.num_requests,
                "failures": e.num_failures,
                "p50": e.get_response_time_percentile(0.5),
                "p99": e.get_response_time_percentile(0.99),
                "max": round(e.max_response_time),
                "rps": e.total_rps,
            }
            for e in sorted(stats.entries.values(), key=lambda e: (e.method == "JOB", e.name, e.method))
        ]
        errors = [
            {"method": e.method, "name": e.name, "error": str(e.error), "occurrences": e.occurrences}
            for e in stats.errors.values()
        ]
        with open(os.environ["LOAD_SUMMARY"], "w", encoding="utf-8") as f:
            json.dump(
                {
                    "operations": operations,
                    "errors": errors,
                    "statuses": {str(code): n for code, n in STATUSES.items()},
                    "jobs_submitted": JOBS["submitted"],
                    "jobs_succeeded": JOBS["succeeded"],
                    "jobs_unfinished": len(FOLLOWING),
                },
                f,
            )

    events.test_stop.add_listener(_write_summary)
