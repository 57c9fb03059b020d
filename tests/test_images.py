"""The Dockerfiles in images/, checked by parsing them (no Docker engine runs here).

Each image: base images pinned (a version tag or a digest, never `latest` or no tag),
a non-root USER last, no secrets baked in (ENV/ARG/LABEL values, tokens in RUN lines),
COPY only of paths that exist in the repository and survive .dockerignore, a
HEALTHCHECK where it serves (the operator) and an explicit none elsewhere. The e2e
suite (e2e/) builds them where a Docker daemon exists.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))


# --------------------------------------------------------------------------- parser


@dataclass
class Instruction:
    cmd: str  # upper case
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (Dockerfile rules:
    a comment is a line whose first non-blank character is #; `\\` at the end continues)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1].rstrip() + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, "a Dockerfile ends in a line continuation"
    return out


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """`--from=build --chown=1:1 a b c` -> ({"from": "build", "chown": "1:1"}, [a, b, c])."""
    words = args.split()
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    if words and words[0].startswith("["):
        import json

        words = json.loads(" ".join(words))
    return flags, words


def arg_defaults(instructions) -> dict[str, str]:
    """ARG name=default values (global and per stage; later ones win, which is enough here)."""
    out = {}
    for ins in instructions:
        if ins.cmd == "ARG":
            name, eq, default = ins.args.partition("=")
            if eq:
                out[name.strip()] = default.strip().strip('"')
    return out


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def stages(instructions) -> list[tuple[str, str | None, list[Instruction]]]:
    """(image reference with ARG defaults substituted, stage name, instructions) per FROM."""
    args = arg_defaults(instructions)
    out = []
    for ins in instructions:
        if ins.cmd == "FROM":
            flags, words = split_flags(ins.args)
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            out.append((substitute(words[0], args), name, []))
        elif out:
            out[-1][2].append(ins)
    return out


def test_parser_handles_continuations_comments_and_stages():
    text = (
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11.13-slim\nFROM ${BASE} AS build\n"
        "RUN a \\\n    # note\n    && b\nFROM ${BASE}\nCOPY --from=build /x /y\nUSER 10:10\n"
    )
    ins = parse_dockerfile(text)
    assert [i.cmd for i in ins] == ["ARG", "FROM", "RUN", "FROM", "COPY", "USER"]
    assert ins[2].args == "a && b"
    st = stages(ins)
    assert [(ref, name) for ref, name, _ in st] == [("python:3.11.13-slim", "build"), ("python:3.11.13-slim", None)]
    assert split_flags(st[1][2][0].args) == ({"from": "build"}, ["/x", "/y"])


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        out.append((negate, line.lstrip("!").strip("/")))
    return out


def ignored(rel: str, patterns) -> bool:
    """Docker's rules, enough for our patterns: `**` any depth, a match on a parent folder
    excludes what is below it, the last matching line wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, pattern in patterns:
        regex = fnmatch.translate(pattern).replace(".*.*/", "(.*/)?")
        if any(re.match(regex, p) for p in prefixes) or (pattern.startswith("**/") and any(
                fnmatch.fnmatch(part, pattern[3:]) for part in parts)):
            result = not negate
    return result


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".cache/tools/bin/helm", "runs/quickstart/metrics.jsonl", ".git/config",
                 "workers/tlt/__pycache__/cli.cpython-311.pyc", "tests/test_crd.py", "tlt.egg-info/PKG-INFO"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "workers/tlt/cli.py", "operator/tlt_operator/__init__.py",
                 "images/requirements-operator.txt"):
        assert not ignored(path, patterns), path


# --------------------------------------------------------------------------- the images


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request) -> tuple[Path, list[Instruction]]:
    return request.param, parse_dockerfile(request.param.read_text())


def test_the_three_images_exist():
    assert {p.name for p in DOCKERFILES} == {"operator.Dockerfile", "worker-cuda.Dockerfile", "worker-cpu.Dockerfile"}


PINNED_TAG = re.compile(r"^[\w.\-/]+(:[\w][\w.\-]*)?(@sha256:[0-9a-f]{64})?$")


def test_base_images_are_pinned(dockerfile):
    path, instructions = dockerfile
    st = stages(instructions)
    assert st, f"{path.name}: no FROM"
    names = {name for _, name, _ in st if name}
    for ref, _, _ in st:
        if ref in names:
            continue  # FROM an earlier stage
        assert "$" not in ref, f"{path.name}: FROM {ref} has an ARG without a default"
        assert PINNED_TAG.match(ref), ref
        repo, _, tag = ref.split("@")[0].rpartition(":")
        assert "@sha256:" in ref or (repo and tag), f"{path.name}: FROM {ref} has no tag"
        assert tag != "latest", f"{path.name}: FROM {ref} uses latest"
        # A version in the tag (python:3.11.13-..., nvidia/cuda:13.0.0-...): not a moving name.
        assert "@sha256:" in ref or re.match(r"^\d+\.\d+(\.\d+)?", tag), f"{path.name}: FROM {ref}: tag is not a version"


def test_final_stage_runs_as_a_non_root_user(dockerfile):
    path, instructions = dockerfile
    _, _, final = stages(instructions)[-1]
    users = [i for i in final if i.cmd == "USER"]
    assert users, f"{path.name}: the final stage sets no USER (runs as root)"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), path.name
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user.isdigit(), f"{path.name}: USER {user} is not numeric"
    # Nothing after USER switches back to root.
    after = final[final.index(users[-1]):]
    assert not [i for i in after if i.cmd == "USER" and i.args.split(":")[0] in ("root", "0")]


SECRET_NAME = re.compile(r"(?i)(^|[_.\-])(token|password|passwd|secret|api_?key|credentials?|private_?key|access_?key)s?([_.\-]|$)")
SECRET_VALUE = re.compile(r"(hf_[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----)")


def test_no_secrets_are_baked_in(dockerfile):
    path, instructions = dockerfile
    text = path.read_text()
    assert not SECRET_VALUE.search(text), path.name
    for ins in instructions:
        if ins.cmd in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][\w.\-]*)=", ins.args) or [ins.args.split()[0]]
            for name in names:
                assert not SECRET_NAME.search(name), f"{path.name}:{ins.line}: {ins.cmd} {name}"
        if ins.cmd == "RUN":
            assert "--mount=type=secret" not in ins.args or "cat " not in ins.args, f"{path.name}:{ins.line}"
            assert not re.search(r"(?i)(curl|wget)\b.*\b(authorization|token)", ins.args), f"{path.name}:{ins.line}"
        assert ins.cmd != "ADD" or not re.search(r"https?://", ins.args), f"{path.name}:{ins.line}: ADD from a URL"


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    path, instructions = dockerfile
    patterns = dockerignore_patterns()
    stage_names = {name for _, name, _ in stages(instructions) if name}
    copies = 0
    for ins in instructions:
        if ins.cmd not in ("COPY", "ADD"):
            continue
        flags, words = split_flags(ins.args)
        if "from" in flags:
            assert flags["from"] in stage_names, f"{path.name}:{ins.line}: --from={flags['from']} is no stage"
            continue
        *sources, _dest = words
        for src in sources:
            matches = [p for p in ROOT.glob(src.lstrip("/"))] if any(c in src for c in "*?[") else [ROOT / src]
            assert matches and all(m.exists() for m in matches), f"{path.name}:{ins.line}: {src} is not in the repository"
            for m in matches:
                rel = m.relative_to(ROOT).as_posix()
                assert not ignored(rel, patterns), f"{path.name}:{ins.line}: {rel} is excluded by .dockerignore"
            copies += 1
    assert copies, f"{path.name}: copies nothing from the repository"


def test_healthcheck_where_it_serves(dockerfile):
    path, instructions = dockerfile
    _, _, final = stages(instructions)[-1]
    checks = [i for i in final if i.cmd == "HEALTHCHECK"]
    assert len(checks) == 1, f"{path.name}: say HEALTHCHECK explicitly (a command, or NONE)"
    if path.name == "operator.Dockerfile":
        assert "CMD" in checks[0].args and "/healthz" in checks[0].args
        exposed = {p for i in final if i.cmd == "EXPOSE" for p in i.args.split()}
        env = " ".join(i.args for i in final if i.cmd == "ENV")
        chart = yaml.safe_load((ROOT / "helm" / "tlt-operator" / "values.yaml").read_text())
        assert {str(chart["health"]["port"]), str(chart["metrics"]["port"])} <= exposed
        assert f"TLT_HEALTH_PORT={chart['health']['port']}" in env
    else:
        assert checks[0].args.strip() == "NONE"


def test_operator_image_runs_the_operator_as_the_chart_does():
    ins = parse_dockerfile((IMAGES / "operator.Dockerfile").read_text())
    _, _, final = stages(ins)[-1]
    entry = [i for i in final if i.cmd == "ENTRYPOINT"][-1]
    _, words = split_flags(entry.args)
    chart = (ROOT / "helm" / "tlt-operator" / "templates" / "deployment.yaml").read_text()
    assert f'command: {str(words).replace(chr(39), chr(34))}' in chart
    user = [i for i in final if i.cmd == "USER"][-1].args.split(":")[0]
    values = yaml.safe_load((ROOT / "helm" / "tlt-operator" / "values.yaml").read_text())
    assert int(user) == values["podSecurityContext"]["runAsUser"]


def test_worker_images_run_as_the_uid_of_job_pods_and_have_tlt():
    """The operator runs job pods as a fixed non-root UID with the command `tlt worker ...`."""
    from tlt_operator import builders

    for name in ("worker-cpu.Dockerfile", "worker-cuda.Dockerfile"):
        text = (IMAGES / name).read_text()
        ins = parse_dockerfile(text)
        _, _, final = stages(ins)[-1]
        user = [i for i in final if i.cmd == "USER"][-1].args.split(":")[0]
        assert int(user) == builders.NON_ROOT_UID, name
        assert re.search(rf"useradd[^&]*--uid {builders.NON_ROOT_UID}\b", text), f"{name}: no user with that UID"
        env = " ".join(i.args for i in final if i.cmd == "ENV")
        assert "PATH=/opt/venv/bin:" in env, f"{name}: `tlt` not on PATH"
        # The build stage installs tlt and checks the `tlt` entry point works.
        assert "tlt --version" in text


def test_worker_images_can_run_what_the_operators_pods_run():
    """The pods' command is `tlt worker ...` (no image entrypoint in front of it); the worker
    starts Ray (`python -m ray.scripts.scripts start`) and serves /metrics, as a non-root
    user whose HOME (model cache) must be writable; Ray's GCS and the metrics port are
    the ports the pods and the job's Service declare."""
    import tomllib

    from tlt.api.load import load_jobs
    from tlt_operator import builders

    (job,) = load_jobs(str(ROOT / "e2e" / "manifests" / "quickstart-cpu.yaml"))
    pods = [o for o in builders.build_children(job) if o["kind"] == "Pod"]
    head = [p for p in pods if "--head" in p["spec"]["containers"][0]["command"]]
    assert len(head) == 1
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["command"][:2] == ["tlt", "worker"]
        assert "args" not in container
    ports = {p["name"]: p["containerPort"] for p in head[0]["spec"]["containers"][0]["ports"]}
    assert (ports["metrics"], ports["ray"]) == (builders.METRICS_PORT, builders.RAY_PORT)  # (and the trainer's rendezvous)
    from tlt.worker.pod import METRICS_PORT, RAY_PORT

    assert (METRICS_PORT, RAY_PORT) == (builders.METRICS_PORT, builders.RAY_PORT)
    # Ray comes with tlt's own dependencies (the worker images install tlt with them).
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"ray\b", d) for d in deps) and any(re.match(r"prometheus-client\b", d) for d in deps)

    for name in ("worker-cpu.Dockerfile", "worker-cuda.Dockerfile"):
        text = (IMAGES / name).read_text()
        ins = parse_dockerfile(text)
        _, _, final = stages(ins)[-1]
        assert not [i for i in final if i.cmd == "ENTRYPOINT"], f"{name}: an ENTRYPOINT would wrap the pods' command"
        install = [i.args for i in stages(ins)[0][2] if i.cmd == "RUN" and "/src" in i.args][-1]
        assert "tlt worker --help" in install and "import ray, ray.scripts.scripts" in install, name
        assert "--no-deps" not in install, f"{name}: tlt's dependencies (Ray) must be installed"
        env = " ".join(i.args for i in final if i.cmd == "ENV")
        home = re.search(r"useradd[^&]*--home-dir (\S+)", text).group(1)
        assert "--create-home" in text and f"HOME={home}" in env, f"{name}: HOME must be the user's (writable) home"
        assert [i.args for i in final if i.cmd == "WORKDIR"][-1] == home
        exposed = {p for i in final if i.cmd == "EXPOSE" for p in i.args.split()}
        assert {str(builders.RAY_PORT), str(builders.METRICS_PORT)} <= exposed, name
        # Job outputs default to spec.output.path = /tlt/output: owned by the pods' user.
        assert re.search(rf"mkdir -p /tlt/output && chown -R {builders.NON_ROOT_UID}:{builders.NON_ROOT_UID} /tlt", text)


def test_worker_cuda_image_installs_the_gpu_extra_and_vllms_torch():
    text = (IMAGES / "worker-cuda.Dockerfile").read_text()
    ins = parse_dockerfile(text)
    args = arg_defaults(ins)
    assert re.search(r'pip install "/src\[gpu\]"', text)
    assert args["VLLM_VERSION"] and args["TORCH_VERSION"] and args["DEEPSPEED_VERSION"]
    assert stages(ins)[0][0].startswith("nvidia/cuda:") and "-devel-" in stages(ins)[0][0]
    assert "-runtime-" in stages(ins)[-1][0]
    # CPU image: never vLLM.
    cpu = (IMAGES / "worker-cpu.Dockerfile").read_text()
    assert "vllm" not in cpu.lower().replace("no vllm", "") and "[gpu]" not in cpu


def test_default_worker_images_match_the_operator_and_the_chart():
    import tlt
    from tlt_operator.builders import OperatorDefaults

    values = yaml.safe_load((ROOT / "helm" / "tlt-operator" / "values.yaml").read_text())
    defaults = OperatorDefaults()
    assert defaults.image_cuda == f"{values['workerImages']['cuda']['repository']}:{tlt.__version__}"
    assert defaults.image_cpu == f"{values['workerImages']['cpu']['repository']}:{tlt.__version__}"
    env = {"TLT_WORKER_IMAGE_CUDA": "r/c:1", "TLT_WORKER_IMAGE_CPU": "r/p:1", "TLT_WORKER_IMAGE_PULL_POLICY": "Always"}
    assert OperatorDefaults.from_env(env) == OperatorDefaults(image_cuda="r/c:1", image_cpu="r/p:1", image_pull_policy="Always")


# --------------------------------------------------------------------------- operator deps

HEAVY = ("torch", "ray", "deepspeed", "transformers", "safetensors", "vllm", "numpy")


def requirement_closure(names: set[str]) -> set[str]:
    """The distributions `names` pull in (normalized names), by their installed metadata."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    closure, todo = set(), list(names)
    while todo:
        name = todo.pop().lower().replace("-", "_")
        if name in closure:
            continue
        closure.add(name)
        try:
            reqs_of = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs_of:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return closure


def test_operator_image_requirements_are_pinned_and_enough_to_import_the_operator():
    """The operator image installs tlt with --no-deps plus requirements-operator.txt: every
    module of tlt_operator must import with those distributions only (no torch, Ray,
    DeepSpeed, transformers, nor anything else the development virtualenv happens to have)."""
    from importlib.metadata import packages_distributions

    reqs = [line.split("#")[0].strip() for line in (IMAGES / "requirements-operator.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    assert reqs and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][\w.]*", r) for r in reqs), reqs
    closure = requirement_closure({r.split("==")[0] for r in reqs})
    assert not closure & set(HEAVY)
    blocked = sorted(
        top for top, dists in packages_distributions().items()
        if top not in ("tlt", "tlt_operator") and not {d.lower().replace("-", "_") for d in dists} & closure
    )
    assert "torch" in blocked or "torch" not in packages_distributions()
    code = f"""
import importlib, pkgutil, sys
BLOCKED = set({blocked!r})
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("not in the operator image: " + name)
sys.meta_path.insert(0, Block())
import tlt_operator
for m in pkgutil.walk_packages(tlt_operator.__path__, "tlt_operator."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, (
        "tlt_operator needs a package that images/requirements-operator.txt does not bring:\n" + result.stderr[-3000:])


def test_the_import_check_would_catch_a_missing_requirement():
    """Without PyYAML among the allowed distributions, importing the operator fails."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "yaml":
            raise ImportError(name)
sys.meta_path.insert(0, Block())
import importlib, pkgutil, tlt_operator
for m in pkgutil.walk_packages(tlt_operator.__path__, "tlt_operator."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "yaml" in result.stderr


def test_e2e_quickstart_job_is_valid_and_runs_on_the_cpu_image_only():
    """The e2e suite cannot run here (no Docker): at least its job must be one the
    operator turns into CPU pods of the CPU worker image, never pulled from a registry."""
    from tlt.api.load import load_jobs
    from tlt_operator.builders import OperatorDefaults, build_children

    (job,) = load_jobs(str(ROOT / "e2e" / "manifests" / "quickstart-cpu.yaml"))
    defaults = OperatorDefaults(image_cuda="tlt/worker-cuda:e2e", image_cpu="tlt/worker-cpu:e2e")
    pods = [o for o in build_children(job, defaults) if o["kind"] == "Pod"]
    assert sorted(p["metadata"]["labels"]["tlt.dev/role"] for p in pods) == ["rollout", "rollout", "trainer"]
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["image"] == "tlt/worker-cpu:e2e"
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert "nvidia.com/gpu" not in (container.get("resources") or {}).get("limits", {})
        assert pod["spec"]["securityContext"]["runAsUser"] == 1000
