"""Checks deploy/ without a cluster or a container engine (run by scripts/validate-deploy.sh).

- Kubernetes manifests (deploy/k8s/*.yaml): every resource against the Kubernetes API schemas
  with kubernetes-validate in strict mode (unknown fields are errors, an unknown kind too), then
  what a schema cannot see: selectors that select their own pods, Services, PDBs and the HPA that
  point at something that exists, referenced ConfigMaps and Secrets, probes of the issuer and API
  on /healthz and /readyz, the GPU request, non-root and read-only root file systems.
- compose.yaml: parsed with PyYAML (anchors and merge keys resolved), then the services the
  deployment needs, their health checks, dependencies, ports and volumes.
- Both: every SONICGW_* variable names a configuration key of src/config.rs or a variable the
  binary reads itself, so a typo cannot pass as a setting.

Prints one line per problem and exits 1 if there is any.
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

# Variables the binary reads outside the configuration (bootstrap, CLI, logging).
BINARY_VARIABLES = {
    "SONICGW_ADMIN_PASSWORD",
    "SONICGW_CONFIG",
    "SONICGW_LOG",
    "SONICGW_SERVER",
    "SONICGW_WORKER_CLIENT_ID",
    "SONICGW_WORKER_CLIENT_SECRET",
}
# Keys of issue 9 that land in src/config.rs with their features (object storage, verifier-only
# replicas); accepted before then so the deploy files can name them.
KEYS_BEING_ADDED = {"storage_url", "jwks_url"}

SONICGW_IMAGE = re.compile(r"(^|/)sonicgw(:|@|$)")

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def config_keys(config_rs):
    text = Path(config_rs).read_text()
    block = re.search(r"const ENV_KEYS: &\[&str\] = &\[(.*?)\];", text, re.S)
    if not block:
        sys.exit(f"{config_rs}: ENV_KEYS not found")
    return set(re.findall(r'"([a-z0-9_]+)"', block.group(1)))


def check_variables(where, names, keys):
    known = {f"SONICGW_{k.upper()}" for k in keys | KEYS_BEING_ADDED} | BINARY_VARIABLES
    for name in names:
        if name.startswith("SONICGW_") and name not in known:
            problem(where, f"{name} is not a configuration key (unknown configuration key)")


# --- Kubernetes -----------------------------------------------------------------------------


def schema_check(validator, files):
    run = subprocess.run(
        [validator, "--strict", "--quiet", *map(str, files)],
        capture_output=True,
        text=True,
    )
    lines = [l for l in (run.stdout + run.stderr).splitlines() if l.strip()]
    for line in lines:
        # Failures, and warnings such as a kind without a schema: both are refusals here.
        if not line.startswith("INFO"):
            problems.append(line)
    if run.returncode != 0 and not lines:
        problems.append(f"kubernetes-validate failed with status {run.returncode}")


def load_manifests(files):
    resources = []
    for path in files:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as err:
            problem(path.name, f"cannot parse: {err}")
            continue
        for doc in documents:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                problem(path.name, "a document that is not a Kubernetes resource")
                continue
            resources.append((path.name, doc))
    return resources


def name_of(doc):
    return doc.get("metadata", {}).get("name", "?")


def pod_spec(doc):
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc.get("spec", {}).get("template", {}).get("spec", {})
    return None


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes(resources, keys):
    by_kind = {}
    for where, doc in resources:
        by_kind.setdefault(doc["kind"], []).append((where, doc))
    config_maps = {name_of(d) for _, d in by_kind.get("ConfigMap", [])}
    secrets = {name_of(d) for _, d in by_kind.get("Secret", [])}
    claims = {name_of(d) for _, d in by_kind.get("PersistentVolumeClaim", [])}
    workloads = []
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        workloads += [(w, d) for w, d in by_kind.get(kind, [])]

    for where, doc in resources:
        if doc["kind"] != "Namespace" and not doc.get("metadata", {}).get("namespace"):
            problem(where, f"{doc['kind']} {name_of(doc)} has no namespace")
        if doc["kind"] == "ConfigMap":
            check_variables(where, doc.get("data", {}).keys(), keys)
        if doc["kind"] == "Secret":
            check_variables(where, (doc.get("stringData") or {}).keys(), keys)

    for where, doc in workloads:
        name = f"{doc['kind']} {name_of(doc)}"
        template_labels = doc["spec"]["template"].get("metadata", {}).get("labels", {})
        if doc["kind"] != "Job" and not matches(
            doc["spec"].get("selector", {}).get("matchLabels"), template_labels
        ):
            problem(where, f"{name}: the selector does not select its own pods")
        spec = pod_spec(doc)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in claims:
                problem(where, f"{name}: volume {volume['name']} claims unknown {claim}")
            secret = volume.get("secret", {}).get("secretName")
            if secret and secret not in secrets:
                problem(where, f"{name}: volume {volume['name']} uses unknown Secret {secret}")
        for container in spec.get("containers", []):
            cname = f"{name} container {container['name']}"
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in config_maps:
                    problem(where, f"{cname}: unknown ConfigMap {ref}")
                ref = source.get("secretRef", {}).get("name")
                if ref and ref not in secrets:
                    problem(where, f"{cname}: unknown Secret {ref}")
            check_variables(where, [e["name"] for e in container.get("env", [])], keys)
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problem(where, f"{cname}: mounts unknown volume {mount['name']}")
            if SONICGW_IMAGE.search(container.get("image", "")):
                check_gateway_container(where, cname, spec, container, volumes)

    for where, doc in by_kind.get("Deployment", []):
        name = name_of(doc)
        containers = pod_spec(doc).get("containers", [])
        gateway = [c for c in containers if SONICGW_IMAGE.search(c.get("image", ""))]
        args = [c.get("args", []) for c in gateway]
        if any(a[:1] == ["serve"] for a in args):
            check_probes(where, name, [c for c in gateway if c.get("args", [])[:1] == ["serve"]])
        if any(a[:1] == ["worker"] for a in args):
            gpus = [
                c
                for c in containers
                if str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) == "1"
            ]
            if not gpus:
                problem(where, f"Deployment {name}: no container requests nvidia.com/gpu: 1")

    for where, doc in by_kind.get("Service", []):
        selector = doc.get("spec", {}).get("selector", {})
        selected = [
            (w, d)
            for w, d in workloads
            if matches(selector, d["spec"]["template"].get("metadata", {}).get("labels", {}))
        ]
        if not selected:
            problem(where, f"Service {name_of(doc)} selects no pods")
            continue
        port_names = {
            p.get("name")
            for _, d in selected
            for c in pod_spec(d).get("containers", [])
            for p in c.get("ports", [])
        }
        for port in doc["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and target not in port_names:
                problem(where, f"Service {name_of(doc)}: no container port named {target}")

    for where, doc in by_kind.get("PodDisruptionBudget", []):
        selector = doc["spec"].get("selector", {}).get("matchLabels")
        if not any(
            matches(selector, d["spec"]["template"].get("metadata", {}).get("labels", {}))
            for _, d in workloads
        ):
            problem(where, f"PodDisruptionBudget {name_of(doc)} selects no pods")

    deployments = {name_of(d): d for _, d in by_kind.get("Deployment", [])}
    for where, doc in by_kind.get("HorizontalPodAutoscaler", []):
        target = doc["spec"]["scaleTargetRef"]
        if target.get("kind") != "Deployment" or target.get("name") not in deployments:
            problem(where, f"HorizontalPodAutoscaler {name_of(doc)}: unknown target {target}")
        elif "replicas" in deployments[target["name"]]["spec"]:
            problem(where, f"Deployment {target['name']} sets replicas the HPA owns")
        resources = [m.get("resource", {}).get("name") for m in doc["spec"].get("metrics", [])]
        if "cpu" not in resources:
            problem(where, f"HorizontalPodAutoscaler {name_of(doc)} does not scale on CPU")
    for needed in ("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Secret", "ConfigMap"):
        if needed not in by_kind:
            problem("k8s", f"no {needed}")


def check_probes(where, name, containers):
    for container in containers:
        live = container.get("livenessProbe", {}).get("httpGet", {}).get("path")
        ready = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
        if live != "/healthz":
            problem(where, f"Deployment {name}: the liveness probe is not on /healthz")
        if ready != "/readyz":
            problem(where, f"Deployment {name}: the readiness probe is not on /readyz")


def check_gateway_container(where, cname, spec, container, volumes):
    pod = spec.get("securityContext", {})
    own = container.get("securityContext", {})
    if not (own.get("runAsNonRoot") or pod.get("runAsNonRoot")):
        problem(where, f"{cname}: not runAsNonRoot")
    if not own.get("readOnlyRootFilesystem"):
        problem(where, f"{cname}: the root file system is writable")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    for path in ("/data", "/tmp"):
        if path not in mounts:
            problem(where, f"{cname}: nothing mounted on {path} (the root file system is read-only)")


# --- Compose --------------------------------------------------------------------------------

REQUIRED_SERVICES = ("postgres", "redis", "s3", "migrate", "issuer", "api-1", "api-2", "worker")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
PORT = re.compile(r"^((\d{1,3}\.){3}\d{1,3}:)?(\d+:)?\d+(/(tcp|udp))?$")


def check_compose(path, keys):
    where = path.name
    try:
        compose = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        problem(where, f"cannot parse: {err}")
        return
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        problem(where, "no services")
        return
    services = compose["services"]
    volumes = set((compose.get("volumes") or {}).keys())
    for name in REQUIRED_SERVICES:
        if name not in services:
            problem(where, f"no {name} service")
    for name, service in services.items():
        label = f"{where} service {name}"
        if not isinstance(service, dict):
            problem(label, "not a mapping")
            continue
        if "image" not in service and "build" not in service:
            problem(label, "neither image nor build")
        one_shot = service.get("restart") == "no"
        healthcheck = service.get("healthcheck") or {}
        healthy = bool(healthcheck.get("test")) and not healthcheck.get("disable")
        if not one_shot and name != "worker" and not healthy:
            problem(label, "no health check")
        for port in service.get("ports", []):
            if not PORT.match(str(port)):
                problem(label, f"port {port!r} is not host:container")
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith(("/", ".")) and source not in volumes:
                problem(label, f"volume {source} is not declared")
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for other, how in depends.items():
            if other not in services:
                problem(label, f"depends on unknown service {other}")
                continue
            condition = (how or {}).get("condition", "service_started")
            if condition not in CONDITIONS:
                problem(label, f"unknown condition {condition}")
            other_check = services[other].get("healthcheck") or {}
            if condition == "service_healthy" and (
                not other_check.get("test") or other_check.get("disable")
            ):
                problem(label, f"waits for {other} to be healthy, which has no health check")
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(e.split("=", 1) if "=" in e else (e, None) for e in environment)
        check_variables(label, environment.keys(), keys)
        command = service.get("command") or []
        if SONICGW_IMAGE.search(str(service.get("image", ""))) and command[:1] == ["serve"]:
            if name != "migrate" and "--no-migrate" not in command:
                problem(label, "serve without --no-migrate: the migrate service migrates")
    for name in ("api-1", "api-2"):
        env = (services.get(name) or {}).get("environment") or {}
        if str(env.get("SONICGW_WORKERS")) != "0":
            problem(f"{where} service {name}", "an API replica must run with SONICGW_WORKERS=0")
        if not env.get("SONICGW_JWKS_URL"):
            problem(f"{where} service {name}", "an API replica verifies with SONICGW_JWKS_URL")


def main():
    deploy, config_rs, validator = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    keys = config_keys(config_rs)
    manifests = sorted((deploy / "k8s").glob("*.yaml"))
    if not manifests:
        problem(str(deploy / "k8s"), "no manifests")
    else:
        schema_check(validator, manifests)
        check_kubernetes(load_manifests(manifests), keys)
    compose = deploy / "compose.yaml"
    if compose.is_file():
        check_compose(compose, keys)
    else:
        problem(str(compose), "missing")
    for line in problems:
        print(line)
    if problems:
        print(f"deploy files: {len(problems)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print(f"deploy files valid: {len(manifests)} Kubernetes manifests, compose.yaml")


if __name__ == "__main__":
    main()
