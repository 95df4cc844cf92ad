"""Delivery checks, offline: Terraform format and parse, checkov, hadolint, the Cloud Build schema, and the
entrypoint names that the Dockerfile, functions/main.py, infra/ and cloudbuild.yaml must agree on."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILE = ROOT / "Dockerfile"
CLOUDBUILD = ROOT / "cloudbuild.yaml"
FUNCTIONS_MAIN = ROOT / "functions" / "main.py"
VENV_BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv-infra" / "bin" / "checkov"
SKIP_COMMENT = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
BASIC_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}


# --- helpers -------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """A command-line tool from the test venv (locks/dev.txt)."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {VENV_BIN}: install locks/dev.txt (scripts/test does)")
    return str(path)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, **kwargs)


def _unquote(value: object) -> object:
    """python-hcl2 keeps HCL string quotes; strip them from plain strings."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _terraform() -> dict[str, list]:
    """All infra/*.tf files merged: top-level block type -> list of blocks."""
    merged: dict[str, list] = {}
    for path in sorted(INFRA.glob("*.tf")):
        with path.open() as fh:
            for key, blocks in hcl2.load(fh).items():
                merged.setdefault(key, []).extend(blocks)
    return merged


def _resources(tf: dict[str, list], rtype: str) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for block in tf.get("resource", []):
        for typ, named in block.items():
            if _unquote(typ) == rtype:
                found.update({_unquote(name): body for name, body in named.items()})
    return found


def _service_targets(tf: dict[str, list]) -> dict[str, str]:
    """Cloud Run service resource name -> (service name, FUNCTION_TARGET) from its literal env blocks."""
    targets = {}
    for res_name, body in _resources(tf, "google_cloud_run_v2_service").items():
        envs = [e for c in body["template"][0]["containers"] for e in c.get("env", [])]
        values = [_unquote(e["value"]) for e in envs if _unquote(e["name"]) == "FUNCTION_TARGET"]
        assert len(values) == 1, f"{res_name}: exactly one literal FUNCTION_TARGET env block expected"
        targets[res_name] = (_unquote(body["name"]), values[0])
    return targets


def _cloud_event_functions(path: Path) -> set[str]:
    """Top-level functions in path decorated with functions_framework's cloud_event."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = {ast.unparse(d).split("(")[0].split(".")[-1] for d in node.decorator_list}
            if "cloud_event" in decorators:
                names.add(node.name)
    return names


def _docker_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def _docker_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for op, args in stage:
        if op == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def _hcl_format_problems(text: str) -> list[str]:
    """Canonical-format check used where the terraform binary is absent: what `terraform fmt` fixes most
    often: tabs, trailing blanks, 2-space indentation by bracket depth, and `=` aligned across consecutive
    single-line attributes (a blank line, a comment, a block or a multi-line value ends a run)."""
    problems: list[str] = []
    depth = 0  # indent levels open
    run: list[tuple[int, str, int]] = []  # (line number, key, column of '=')

    def close_run() -> None:
        if len(run) > 1:
            want = max(len(key) for _, key, _ in run) + 1
            for lineno, key, col in run:
                if col != want:
                    problems.append(f"line {lineno}: '=' after {key!r} not aligned with its neighbours")
        run.clear()

    in_heredoc: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if in_heredoc:
            if line.strip() == in_heredoc:
                in_heredoc = None
            continue
        if "\t" in line:
            problems.append(f"line {lineno}: tab")
        if line != line.rstrip():
            problems.append(f"line {lineno}: trailing whitespace")
        stripped = line.strip()
        code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', stripped)
        code = re.sub(r"\s*(#|//).*$", "", code)
        opens = code.count("{") + code.count("[") + code.count("(")
        closes = code.count("}") + code.count("]") + code.count(")")
        # One indent level per line that opens brackets (`toset([` is one level), not per bracket.
        want = 2 * (depth - 1 if code.startswith(("}", "]", ")")) else depth)
        indent = len(line) - len(line.lstrip(" "))
        if stripped and indent != want:
            problems.append(f"line {lineno}: indent {indent}, expected {want}")
        match = re.match(r"^([A-Za-z_][\w-]*)(\s*)=(?!=)", stripped)
        if match and opens == closes:  # terraform aligns only single-line attributes
            if run and run[-1][0] != lineno - 1:
                close_run()
            run.append((lineno, match.group(1), len(match.group(1)) + len(match.group(2))))
        else:
            close_run()
        heredoc = re.search(r"<<-?(\w+)\s*$", code)
        if heredoc:
            in_heredoc = heredoc.group(1)
        depth += (opens > closes) - (opens < closes)
    close_run()
    if depth != 0:
        problems.append("unbalanced braces")
    if not text.endswith("\n") or text.endswith("\n\n"):
        problems.append("file must end with exactly one newline")
    return problems


# --- Terraform -----------------------------------------------------------------------------------------


def test_terraform_files_parse():
    files = sorted(INFRA.glob("*.tf"))
    assert files, "infra/ has no .tf files"
    for path in files:
        with path.open() as fh:
            assert hcl2.load(fh), f"{path.name} parsed to nothing"


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not on PATH: checker = canonical-format")
def test_terraform_fmt_check():
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}  # no version check over the network
    res = _run(["terraform", "fmt", "-check", "-recursive", "-diff", "infra"], env=env)
    assert res.returncode == 0, f"checker = terraform fmt; run `terraform fmt -recursive infra`:\n{res.stdout}"


def test_hcl_canonical_format():
    problems = {p.name: _hcl_format_problems(p.read_text()) for p in sorted(INFRA.glob("*.tf"))}
    assert not any(problems.values()), f"checker = canonical-format; fix with terraform fmt: {problems}"


def test_canonical_format_check_catches_misformatting():
    good = 'resource "a" "b" {\n  name  = "x"\n  level = 1\n\n  block {\n    k = "v"\n  }\n}\n'
    assert _hcl_format_problems(good) == []
    assert _hcl_format_problems(good.replace("name  =", "name =")), "misaligned '=' not found"
    assert _hcl_format_problems(good.replace('    k = "v"', '   k = "v"')), "bad indent not found"
    assert _hcl_format_problems(good + "\n"), "extra blank line at end not found"


@pytest.mark.parametrize(
    ("framework", "target"), [("terraform", ["-d", "infra"]), ("dockerfile", ["-f", "Dockerfile"])]
)
def test_checkov_passes(framework, target):
    if not CHECKOV.exists():
        pytest.fail("checkov is missing: run scripts/infra_tools.sh (scripts/test does) to create .venv-infra")
    # Offline: no platform API key, no policy-metadata download, no update check.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_API_KEY", "PRISMA_"))}
    env |= {"BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE", "LOG_LEVEL": "ERROR"}
    res = _run(
        [str(CHECKOV), *target, "--framework", framework, "--compact", "--quiet", "--skip-download",
         "--download-external-modules", "false"],
        env=env,
    )
    assert res.returncode == 0, f"checkov failed checks:\n{res.stdout}\n{res.stderr}"
    assert f"{framework} scan results" in res.stdout, f"checkov scanned nothing:\n{res.stdout}"
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0,", res.stdout), res.stdout


def test_every_checkov_skip_gives_a_reason():
    files = [*sorted(INFRA.glob("*.tf")), DOCKERFILE]
    skips = [(f.name, m) for f in files for m in SKIP_COMMENT.finditer(f.read_text())]
    for name, m in skips:
        assert m.group(2) and len(m.group(2).strip()) >= 20, f"{name}: skip {m.group(1)} needs a reason"
    assert not list(INFRA.glob(".checkov*")), "skips belong inline, next to the resource, with their reason"


def test_no_basic_roles_and_resource_level_grants():
    tf = _terraform()
    project_grants = _resources(tf, "google_project_iam_member")
    for name, body in project_grants.items():
        # A for_each grant names its roles in the for_each set; a single grant in `role`.
        roles = set(re.findall(r"roles/[\w.]+", str(body.get("for_each") or body["role"])))
        assert not roles & BASIC_ROLES, f"{name}: basic role at project level"
        # Roles that can be granted on the one bucket, topic, service or account must be granted there.
        narrow = {r for r in roles if r.startswith(("roles/storage.", "roles/run.", "roles/iam.serviceAccount"))}
        assert not narrow, f"{name}: grant {narrow} on the resource, not the project"
    for rtype in ("google_storage_bucket_iam_member", "google_pubsub_topic_iam_member",
                  "google_cloud_run_v2_service_iam_member", "google_project_iam_member"):
        for name, body in _resources(tf, rtype).items():
            member = _unquote(body["member"])
            assert member not in {"allUsers", "allAuthenticatedUsers"}, f"{name}: public grant"


# --- event wiring --------------------------------------------------------------------------------------


# Which topic feeds which entry point (pubsub.tf). One place: the wiring tests below read it.
PUSH_WIRING = {"requests": "start_production", "output_events": "catalogue_output", "reconcile": "reconcile_runs"}


def test_each_topic_pushes_to_its_target_with_oidc():
    tf = _terraform()
    services = _service_targets(tf)
    subs = _resources(tf, "google_pubsub_subscription")
    pushes = {n: s for n, s in subs.items() if "push_config" in s}
    wired = {}
    for name, sub in pushes.items():
        push = sub["push_config"][0]
        target_res = re.search(r"google_cloud_run_v2_service\.(\w+)\.uri", push["push_endpoint"]).group(1)
        topic = re.search(r"google_pubsub_topic\.(\w+)\.id", sub["topic"]).group(1)
        wired[topic] = services[target_res][1]
        assert push["oidc_token"][0]["service_account_email"], f"{name}: push without OIDC"
        assert target_res in push["oidc_token"][0]["audience"], f"{name}: OIDC audience is not its service"
        assert sub["retry_policy"], f"{name}: no retry policy"
        if topic != "reconcile":  # a scheduled tick is replaced by the next one; others keep poison messages
            assert sub["dead_letter_policy"][0]["dead_letter_topic"], f"{name}: no dead-letter topic"
    assert wired == PUSH_WIRING


def test_every_push_subscription_has_its_token_creator_grant():
    tf = _terraform()
    subs = _resources(tf, "google_pubsub_subscription")
    invokers = {re.search(r"google_service_account\.(\w+)\.email", s["push_config"][0]["oidc_token"][0]
                          ["service_account_email"]).group(1) for s in subs.values() if "push_config" in s}
    grant = _resources(tf, "google_service_account_iam_member")["pubsub_agent_signs_push_tokens"]
    assert _unquote(grant["role"]) == "roles/iam.serviceAccountTokenCreator"
    push_invokers = tf["locals"]
    granted = set()
    for block in push_invokers:
        for value in block.get("push_invokers", {}).values():
            granted.add(re.search(r"google_service_account\.(\w+)", value).group(1))
    assert "local.push_invokers" in grant["for_each"] and invokers == granted, (invokers, granted)
    for name, sub in subs.items():
        if "push_config" in sub:
            assert "google_service_account_iam_member.pubsub_agent_signs_push_tokens" in str(sub.get("depends_on")), (
                f"{name}: the first delivery must wait for the token-creator grant")


def test_output_bucket_notifies_the_catalogue_topic_only():
    tf = _terraform()
    notes = _resources(tf, "google_storage_notification")
    assert len(notes) == 1
    note = next(iter(notes.values()))
    assert "google_storage_bucket.outputs" in note["bucket"] and "google_pubsub_topic.output_events" in note["topic"]
    assert [_unquote(t) for t in note["event_types"]] == ["OBJECT_FINALIZE"]
    assert _unquote(note["payload_format"]) == "JSON_API_V1"
    # The Cloud Storage agent may publish to that topic only: no project-wide publisher grant.
    project_roles = str(_resources(tf, "google_project_iam_member"))
    assert "roles/pubsub.publisher" not in project_roles
    topic_grants = _resources(tf, "google_pubsub_topic_iam_member")
    gcs = [g for g in topic_grants.values() if "google_storage_project_service_account" in g["member"]]
    assert [g["topic"] for g in gcs] == ["${google_pubsub_topic.output_events.id}"], gcs


def test_reconciler_ticks_every_five_minutes_through_its_topic():
    tf = _terraform()
    job = _resources(tf, "google_cloud_scheduler_job")["reconcile"]
    assert "google_pubsub_topic.reconcile" in job["pubsub_target"][0]["topic_name"]
    variables = {_unquote(k): v for block in tf["variable"] for k, v in block.items()}
    assert _unquote(job["schedule"]) == "${var.reconcile_schedule}"
    assert _unquote(variables["reconcile_schedule"]["default"]) == "*/5 * * * *"
    assert _unquote(variables["run_finished_topic"]["default"]) == "run-finished"
    env = {_unquote(k) for b in tf["locals"] for k in b.get("service_env", {})}
    assert {"LEAF_RUN_FINISHED_TOPIC", "LEAF_MAX_TASKS_IN_FLIGHT", "LEAF_MAX_EECU_HOURS"} <= env, env


def test_every_resource_waits_for_the_apis():
    """A resource created before its API is usable fails on a new project: each one depends on
    time_sleep.apis_ready, directly or through a resource it references."""
    tf = _terraform()
    text = {p.name: p.read_text() for p in INFRA.glob("*.tf")}
    bodies: dict[str, str] = {}
    for block in tf.get("resource", []):
        for rtype, named in block.items():
            for name, body in named.items():
                bodies[f"{_unquote(rtype)}.{_unquote(name)}"] = str(body)
    for block in tf.get("data", []):
        for rtype, named in block.items():
            for name, body in named.items():
                bodies[f"data.{_unquote(rtype)}.{_unquote(name)}"] = str(body)
    for block in tf.get("locals", []):
        for name, value in block.items():
            bodies[f"local.{name}"] = str(value)
    ready = {"time_sleep.apis_ready", "google_project_service.apis"}

    def waits(address: str, seen: frozenset = frozenset()) -> bool:
        if address in ready:
            return True
        refs = set(re.findall(r"((?:data\.)?google_\w+\.\w+|time_sleep\.\w+|local\.\w+)", bodies.get(address, "")))
        return any(waits(r, seen | {address}) for r in refs - seen if r in bodies or r in ready)

    assert text and bodies
    late = sorted(a for a in bodies if a not in ready and not a.startswith("local.") and not waits(a))
    assert not late, f"created without waiting for the APIs: {late}"
    apis = _resources(tf, "google_project_service")["apis"]["for_each"]
    for api in ("iam", "cloudresourcemanager", "pubsub", "run", "earthengine", "cloudscheduler", "storage"):
        assert f"{api}.googleapis.com" in apis, f"{api} API is not enabled"


def test_cloud_run_deletion_protection_is_a_variable():
    tf = _terraform()
    for name, body in _resources(tf, "google_cloud_run_v2_service").items():
        assert body.get("deletion_protection") == "${var.deletion_protection}", name


def test_output_bucket_protections():
    bucket = _resources(_terraform(), "google_storage_bucket")["outputs"]
    assert bucket["uniform_bucket_level_access"] is True
    assert _unquote(bucket["public_access_prevention"]) == "enforced"
    assert bucket["versioning"][0]["enabled"] is True and bucket["soft_delete_policy"]
    prefixes = [c for rule in bucket["lifecycle_rule"] for c in rule["condition"] if "matches_prefix" in c]
    assert prefixes, "error records need a lifecycle rule"
    # Error records live at {out_folder}/_errors/ (and under LEAF_ERRORS_URI): the rule lists those prefixes.
    assert prefixes[0]["matches_prefix"] == "${local.error_record_prefixes}", prefixes
    local = next(b["error_record_prefixes"] for b in _terraform()["locals"] if "error_record_prefixes" in b)
    assert "var.out_folders" in local and "local.errors_prefix" in local, local


# --- Dockerfile ----------------------------------------------------------------------------------------


def test_hadolint_dockerfile():
    res = _run([_tool("hadolint"), "Dockerfile"])
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    assert _run([_tool("hadolint"), str(bad)]).returncode != 0


def test_dockerfile_pinned_non_root_and_lean():
    instructions = _docker_instructions(DOCKERFILE.read_text())
    for op, args in instructions:
        if op == "FROM":
            image = args.split()[0]
            assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image), f"base not pinned: {image}"
    final = _final_stage(instructions)
    user = [args for op, args in final if op == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}, "final stage must run as a non-root user"
    runs = " ".join(args for op, args in final if op == "RUN")
    assert not re.search(r"apt-get install|apk add|pip install|gcc|build-essential", runs), runs
    copies = [args for op, args in final if op == "COPY" and "--from" not in args]
    assert not any(re.search(r"\btests?\b|examples|benchmarks", c) for c in copies), copies
    assert "PORT" in _docker_env(final), "PORT must be set (and overridable) for functions-framework"


def test_dockerignore_admits_only_what_the_image_copies():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*", ".dockerignore should start by excluding everything"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        src.rstrip("/")
        for op, args in _docker_instructions(DOCKERFILE.read_text())
        if op == "COPY" and "--from" not in args
        for src in args.split()[:-1]
    }
    assert copied == admitted, f"COPY sources {copied} vs .dockerignore re-includes {admitted}"


# --- Cloud Build ---------------------------------------------------------------------------------------


def test_cloudbuild_matches_published_schema():
    res = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.cloudbuild", str(CLOUDBUILD)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_cloudbuild_schema_check_rejects_a_broken_config(tmp_path):
    broken = tmp_path / "cloudbuild.yaml"
    broken.write_text("steps:\n  - args: [build]\ntimeout: 10\n")  # step without name; timeout not a duration
    res = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.cloudbuild", str(broken)])
    assert res.returncode != 0, res.stdout


def _cloudbuild() -> dict:
    return yaml.safe_load(CLOUDBUILD.read_text())


def _expand(build: dict, text: str) -> str:
    for _ in range(3):  # substitutions may name substitutions (dynamicSubstitutions)
        text = re.sub(r"\$\{(_\w+)\}", lambda m: str(build["substitutions"].get(m.group(1), m.group(0))), text)
    return text


def test_cloudbuild_tests_builds_pushes_and_deploys_commit_tagged_image():
    build = _cloudbuild()
    steps = {s["id"]: s for s in build["steps"]}
    test_cmd = " ".join(steps["test"]["args"])
    assert "bash .ci/run" in test_cmd, "the build must run the suite exactly as CI does"
    push_args = " ".join(steps["push"]["args"])
    assert "${COMMIT_SHA}" in push_args and "test" in steps["push"]["waitFor"], "push commit tag, after tests"
    assert "-docker.pkg.dev/" in build["substitutions"]["_IMAGE"], "images go to Artifact Registry"
    # Immutable tags: re-running a commit's build must not push the tag again (the `images:` field would).
    assert "images" not in build, "`images:` pushes unconditionally; an existing immutable tag fails the rerun"
    assert ".image-exists" in " ".join(steps["preflight"]["args"]) and ".image-exists" in push_args
    assert ".image-exists" in " ".join(steps["build"]["args"])


def test_cloudbuild_step_images_pinned_by_digest_and_equipped():
    build = _cloudbuild()
    for step in build["steps"]:
        image = _expand(build, step["name"])
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"step {step['id']}: {image} is not pinned by digest"
    steps = {s["id"]: s for s in build["steps"]}
    # The test step's image has Python 3.11 (the Dockerfile's base, same digest) and installs what the suite
    # starts: Java and the Pub/Sub emulator (LEAF_REQUIRE_EMULATORS makes their absence a failure) and npm.
    base = re.search(r"^FROM (\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert _expand(build, steps["test"]["name"]) == base
    test_cmd = " ".join(steps["test"]["args"])
    for package in ("openjdk-17-jre-headless", "google-cloud-cli-pubsub-emulator=", "npm"):
        assert package in test_cmd, f"the test step does not install {package}"
    for sid in ("build", "push"):
        assert "cloud-builders/docker" in _expand(build, steps[sid]["name"])


# --- one set of entrypoint names -----------------------------------------------------------------------


# The entry points the deployment runs: one list, checked against Terraform, functions/main.py and Cloud Build.
DEPLOYED_TARGETS = {"start_production", "catalogue_output", "reconcile_runs"}


def test_entrypoints_agree_across_functions_dockerfile_terraform_and_cloudbuild():
    assert FUNCTIONS_MAIN.exists(), "functions/main.py is missing: it defines the services' entrypoints"
    functions = _cloud_event_functions(FUNCTIONS_MAIN)
    targets = _service_targets(_terraform())
    assert {t for _, t in targets.values()} == DEPLOYED_TARGETS, f"Terraform targets {sorted(targets.values())}"
    assert functions == DEPLOYED_TARGETS, (
        f"CloudEvent functions {sorted(functions)} vs deployed {sorted(DEPLOYED_TARGETS)}"
    )

    final = _final_stage(_docker_instructions(DOCKERFILE.read_text()))
    env = _docker_env(final)
    assert "FUNCTION_TARGET" not in env, "the image must not default a target: each service sets its own"
    assert env.get("FUNCTION_SIGNATURE_TYPE") == "cloudevent"
    workdir = [args for op, args in final if op == "WORKDIR"][-1].strip()
    copy_fn = [args.split() for op, args in final if op == "COPY" and args.split()[0].rstrip("/") == "functions"]
    assert copy_fn, "the final stage must copy functions/"
    image_dir = os.path.normpath(os.path.join(workdir, copy_fn[-1][-1]))
    assert env.get("FUNCTION_SOURCE") == f"{image_dir}/main.py", "FUNCTION_SOURCE must be the copied main.py"
    cmd = [args for op, args in final if op in {"CMD", "ENTRYPOINT"}][-1]
    assert "functions-framework" in cmd

    # Cloud Build rolls the image out to exactly the Terraform services and leaves their environment alone.
    build = _cloudbuild()
    deployed = set()
    for step in build["steps"]:
        args = [str(a) for a in step.get("args", [])]
        if args[:2] == ["run", "deploy"]:
            deployed.add(_expand(build, args[2]))
            assert not any(a.startswith(("--update-env-vars", "--set-env-vars")) for a in args), (
                "Terraform owns the services' environment: Cloud Build sets only the image")
    assert deployed == {name for name, _ in targets.values()}


# --- tooling -------------------------------------------------------------------------------------------


def test_infra_requirements_pinned_and_installer_silent():
    pins = [ln.strip() for ln in (ROOT / "requirements-infra.txt").read_text().splitlines()]
    pins = [p for p in pins if p and not p.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", p) for p in pins), pins
    assert "--require-hashes" in (ROOT / "scripts" / "infra_tools.sh").read_text()
    if not CHECKOV.exists():
        pytest.fail("checkov is missing: run scripts/infra_tools.sh (scripts/test does)")
    res = _run(["bash", "scripts/infra_tools.sh"])
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr


# --- the google and time providers' published schemas --------------------------------------------------

INFRA_TOOLS = ROOT / "scripts" / "infra_tools.sh"


def _schemas() -> dict[str, dict]:
    """Provider name -> schema, from the packages scripts/infra_tools.sh pins (the one list of versions)."""
    from tests.support import provider_schema

    pinned = re.findall(r'"@cdktf/provider-(\w+)@([\d.]+) sha512-', INFRA_TOOLS.read_text())
    assert pinned, "scripts/infra_tools.sh pins no provider schema"
    out = {}
    for name, version in pinned:
        tarball = ROOT / ".venv-infra" / "npm" / f"cdktf-provider-{name}-{version}.tgz"
        if not tarball.exists():
            pytest.fail(f"{tarball.name} is missing: run scripts/infra_tools.sh (scripts/test does)")
        out[name] = provider_schema.load(tarball)
    return out


def _schema_problems(tf: dict[str, list], schemas: dict[str, dict]) -> list[str]:
    from tests.support import provider_schema

    found: list[str] = []
    checked = 0
    for kind in ("resource", "data"):
        for block in tf.get(kind, []):
            for rtype, named in block.items():
                rtype = _unquote(rtype)
                schema = schemas.get(rtype.split("_")[0])
                for name, body in named.items():
                    where = f"{kind}.{rtype}.{_unquote(name)}"
                    if schema is None:
                        found.append(f"{where}: no schema for provider {rtype.split('_')[0]!r}")
                        continue
                    found += provider_schema.problems(kind, rtype, body, schema, where)
                    checked += 1
    for block in tf.get("provider", []):
        for pname, body in block.items():
            pname = _unquote(pname)
            found += provider_schema.problems("provider", pname, body, schemas[pname], f"provider.{pname}")
    assert checked, "no resource was checked"
    return found


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    return _schemas()


def test_every_resource_argument_and_block_is_in_the_provider_schema(schemas):
    problems = _schema_problems(_terraform(), schemas)
    assert not problems, "checker = provider schema (@cdktf/provider-*):\n" + "\n".join(problems)


def test_schema_check_catches_unknown_arguments_and_blocks(schemas, tmp_path):
    planted = {  # file: (anchor, inserted before it, the unknown name)
        "pubsub.tf": ("  ack_deadline_seconds       = 600\n", "  ack_dedline = 1\n", "ack_dedline"),
        "run.tf": ("        startup_cpu_boost = true\n", "        gpu = 1\n", "gpu"),
        "storage.tf": ("  versioning {\n", "  versionning {\n    enabled = true\n  }\n\n", "versionning"),
        "iam.tf": ('  role   = "roles/pubsub.publisher"\n', '  rol = "x"\n', "rol"),
    }
    for filename, (old, insert, unknown) in planted.items():
        new = insert + old
        for path in INFRA.glob("*.tf"):
            text = path.read_text()
            if path.name == filename:
                assert old in text, f"{filename}: the planted edit's anchor is gone; update this test"
                text = text.replace(old, new, 1)
            (tmp_path / path.name).write_text(text)
        merged: dict[str, list] = {}
        for path in sorted(tmp_path.glob("*.tf")):
            with path.open() as fh:
                for key, blocks in hcl2.load(fh).items():
                    merged.setdefault(key, []).extend(blocks)
        problems = _schema_problems(merged, schemas)
        assert any(repr(unknown) in p for p in problems), f"planted {unknown!r} in {filename} not found: {problems}"


def test_provider_versions_match_the_checked_schemas(schemas):
    required = {}
    for block in _terraform()["terraform"]:
        for providers in block.get("required_providers", []):
            for name, spec in providers.items():
                if isinstance(spec, dict):  # skips python-hcl2's __is_block__ marker
                    required[name] = _unquote(spec["version"])
    for name, schema in schemas.items():
        version = schema["package"]["provider"]["version"]
        assert required.get(name) == f"~> {version}", (
            f"infra/versions.tf allows {name} {required.get(name)}; the schema checked is {version}")


def test_every_reference_names_something_declared():
    """What `terraform validate` would catch first without the providers: a reference to a resource, data
    source, variable or local that does not exist (e.g. one left behind by a removed resource)."""
    tf = _terraform()
    declared = set()
    for kind in ("resource", "data"):
        for block in tf.get(kind, []):
            for rtype, named in block.items():
                for name in named:
                    prefix = "data." if kind == "data" else ""
                    declared.add(f"{prefix}{_unquote(rtype)}.{_unquote(name)}")
    variables = {_unquote(k) for block in tf.get("variable", []) for k in block}
    local_names = {k for block in tf.get("locals", []) for k in block if not k.startswith("__")}
    text = "\n".join(re.sub(r"#.*", "", p.read_text()) for p in INFRA.glob("*.tf"))
    refs = set(re.findall(r"\b((?:data\.)?(?:google|time)_\w+\.\w+)", text))
    missing = sorted(r for r in refs if r not in declared and not r.startswith(("google_project_service.apis",)))
    missing = [r for r in missing if r.split(".")[-1] != "googleapis"]  # service names like run.googleapis.com
    assert not missing, f"references to undeclared resources: {missing}"
    assert not set(re.findall(r"\bvar\.(\w+)", text)) - variables, "undeclared variables"
    assert not set(re.findall(r"\blocal\.(\w+)", text)) - local_names, "undeclared locals"


def test_every_attribute_read_is_exported_by_its_resource(schemas):
    """`type.name.ATTR` (and `type.name[key].ATTR`) must name an argument or exported attribute of that type."""
    text = "\n".join(re.sub(r"#.*", "", p.read_text()) for p in INFRA.glob("*.tf"))
    refs = set(re.findall(r"\b((?:data\.)?)((?:google|time)_\w+)\.\w+(?:\[[^\]]+\])?\.(\w+)", text))
    assert refs, "no attribute reads found"
    unknown = []
    for data, rtype, attr in sorted(refs):
        kind = "data" if data else "resource"
        schema = schemas[rtype.split("_")[0]]
        known = set(schema["attributes"].get(f"{kind}.{rtype}", [])) | set(schema[kind].get(rtype, {}))
        if attr not in known:
            unknown.append(f"{data}{rtype}.*.{attr}")
    assert not unknown, f"attributes the provider schema does not export: {unknown}"
