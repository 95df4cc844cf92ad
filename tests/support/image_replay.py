"""Replay the Dockerfile without a Docker engine: the build context as Docker would send it, then each stage's
instructions run on this machine under a scratch root, then the final stage's environment and CMD.

* Context: ``docker.utils.build.tar`` (the Docker SDK's own ``.dockerignore`` matcher) packs the repository as the
  ``docker build`` client would; only what it lets through exists for COPY.
* Paths: every absolute image path the Dockerfile names under ``/opt /src /app /home /tmp`` is mapped under the
  scratch root; ``python`` is this machine's CPython 3.11 (the image's is 3.11.14, same minor version and ABI).
* RUN of the build stage runs as written (bash -c). The final stage's RUN lines only create the user and
  remove the base image's pip, which a scratch root cannot do; the user's home is checked from them instead.
* Layer cache, as Docker's: a RUN is skipped when its instruction and everything copied before it are unchanged
  (a hash chain); the scratch root after it is kept under ``cache_dir`` so the lock install runs once per lock.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MAPPED_ROOTS = ("opt", "src", "app", "home", "tmp")
# A RUN faster than this is not worth a cached copy of the whole root (the leaf_engine wheel build).
CACHE_MIN_S = 30.0
_ABS = re.compile(r"(?<![\w.$/-])/(" + "|".join(MAPPED_ROOTS) + r")(?=/|\b)")


class ReplayError(RuntimeError):
    pass


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Image:
    """The replayed final stage: its scratch root, environment (mapped), working directory and CMD."""

    root: Path
    env: dict[str, str]
    workdir: Path
    cmd: list[str]
    user_setup: str  # the final stage's RUN text (user creation), for checks
    site_packages: Path

    def installed_bytes(self) -> int:
        """Bytes of the virtual environment the final stage ships (files, not links)."""
        venv = self.site_packages.parents[2]
        return sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their (INSTRUCTION, arguments); continuation lines joined, comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        op, args = line.split(None, 1)
        op = op.upper()
        if op == "FROM":
            words = args.split()
            stages.append(Stage(words[2] if len(words) > 2 and words[1].upper() == "AS" else None, words[0]))
        elif not stages:
            raise ReplayError(f"{op} before FROM")
        else:
            stages[-1].instructions.append((op, args.strip()))
    return stages


def build_context(repo: Path, dest: Path) -> list[str]:
    """Unpack into dest exactly what `docker build` sends for repo (honouring its .dockerignore)."""
    from docker.utils.build import tar

    ignore = repo / ".dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    stream = tar(str(repo), exclude=patterns, dockerfile=("Dockerfile", None))
    data = stream.read()
    stream.close()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(dest, filter="data")
        return sorted(m.name for m in archive.getmembers() if m.isfile())


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    items = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in items:
        h.update(str(p.relative_to(path.parent)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _layer_keys(stages: list[Stage], context: Path, seed: str) -> dict[tuple[int, int], str]:
    """The cache key of every build-stage RUN: a hash of all instructions and copied content before it."""
    chain = hashlib.sha256(seed.encode())
    keys = {}
    for si, stage in enumerate(stages):
        chain.update(f"FROM {stage.base}".encode())
        for ii, (op, args) in enumerate(stage.instructions):
            chain.update(f"{op} {args}".encode())
            if op == "COPY" and not args.startswith("--from="):
                for src in args.split()[:-1]:
                    path = context / src.rstrip("/")
                    chain.update(_tree_digest(path).encode() if path.exists() else b"missing")
            if op == "RUN" and si < len(stages) - 1:
                keys[(si, ii)] = chain.hexdigest()[:24]
    return keys


def replay(repo: Path, cache_dir: Path) -> Image:
    """Build the context, run the Dockerfile's stages under cache_dir/root, return the final stage.

    The root's path is fixed (a virtual environment's scripts name their own absolute path), so a cached
    layer can be restored as it was built. Restoring hard-links the layer's files: the RUN lines after it
    add and remove files (pip) but must not edit one in place."""
    stages = parse_dockerfile((repo / "Dockerfile").read_text())
    cache_dir, repo = cache_dir.resolve(), repo.resolve()
    root, context, shim, layers = (cache_dir / n for n in ("root", "context", "shim", "layers"))
    for path in (root, context, shim):
        shutil.rmtree(path, ignore_errors=True)
    build_context(repo, context)
    shim.mkdir(parents=True)
    layers.mkdir(exist_ok=True)
    # `python` of the base image: this machine's interpreter outside any virtual environment.
    base_python = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    (shim / "python").symlink_to(base_python)
    (shim / "python3").symlink_to(base_python)
    base_path = f"{shim}:/usr/local/bin:/usr/bin:/bin"

    keys = _layer_keys(stages, context, base_python.as_posix())
    cached = [pos for pos in sorted(keys) if (layers / keys[pos] / "done").exists()]
    restored: tuple[int, int] = (-1, -1)  # everything up to this RUN comes from the cache
    for pos in sorted(keys):
        if pos not in cached:
            break
        restored = pos
    if restored in keys:
        subprocess.run(["cp", "-al", str(layers / keys[restored] / "root"), str(root)], check=True)
    else:
        root.mkdir()

    def mapped(text: str) -> str:
        return _ABS.sub(lambda m: f"{root}/{m.group(1)}", text)

    final: Image | None = None
    for si, stage in enumerate(stages):
        is_final = si == len(stages) - 1
        env: dict[str, str] = {"PATH": base_path, "HOME": str(root / "root")}
        workdir = root
        user_setup: list[str] = []
        cmd: list[str] = []
        for ii, (op, args) in enumerate(stage.instructions):
            done = (si, ii) <= restored
            if op == "ENV":
                for key, value in re.findall(r"(\w+)=(\S+)", args):
                    env[key] = mapped(value).replace("$PATH", env.get("PATH", base_path))
            elif op == "WORKDIR":
                workdir = Path(mapped(args)) if args.startswith("/") else workdir / args
                workdir.mkdir(parents=True, exist_ok=True)
            elif op == "COPY" and not done:
                _copy(args, stages, context, workdir, mapped)
            elif op == "RUN" and is_final:
                user_setup.append(args)
            elif op == "RUN" and not done:
                _run(mapped(args), env, workdir, root, layers / keys[(si, ii)])
            elif op in {"CMD", "ENTRYPOINT"}:
                cmd = json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]
            elif op not in {"COPY", "RUN", "USER", "EXPOSE", "LABEL", "ARG"}:
                raise ReplayError(f"instruction {op} is not replayed: extend tests/support/image_replay.py")
        if is_final:
            site = next((root / "opt").glob("*/lib/python3*/site-packages"))
            final = Image(root, env, workdir, cmd, " && ".join(user_setup), site)
    for old in layers.iterdir():  # layers of an older Dockerfile or lock are dead weight
        if old.name not in keys.values():
            shutil.rmtree(old, ignore_errors=True)
    assert final is not None
    return final


def _copy(args: str, stages: list[Stage], context: Path, workdir: Path, mapped) -> None:
    words = args.split()
    if words[0].startswith("--from="):
        src_stage, (src, dst) = words[0].split("=", 1)[1], words[1:]
        if src_stage not in {s.name for s in stages}:
            raise ReplayError(f"COPY --from={src_stage}: no such stage")
        if mapped(src) != mapped(dst):  # one scratch root serves every stage
            shutil.copytree(mapped(src), mapped(dst), symlinks=True, dirs_exist_ok=True)
        return
    *sources, dst = words
    target = Path(mapped(dst)) if dst.startswith("/") else workdir / dst
    for src in sources:
        path = context / src.rstrip("/")
        if not path.exists():
            raise ReplayError(f"COPY {src}: not in the build context (.dockerignore excludes it?)")
        into = target / path.name if dst.endswith("/") or len(sources) > 1 else target
        if path.is_dir():
            shutil.copytree(path, into, dirs_exist_ok=True)
        else:
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, into)


def _run(command: str, env: dict[str, str], workdir: Path, root: Path, layer: Path) -> None:
    """Run one RUN line; keep the scratch root it leaves as that layer when it took long enough to matter."""
    started = time.monotonic()
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise ReplayError(f"RUN failed ({res.returncode}): {command}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    shutil.rmtree(layer, ignore_errors=True)
    if time.monotonic() - started > CACHE_MIN_S:
        layer.mkdir(parents=True)
        subprocess.run(["cp", "-a", str(root), str(layer / "root")], check=True)
        (layer / "done").write_text(command)


def environment_for(image: Image, extra: dict[str, str]) -> dict[str, str]:
    """The container's environment: the image's ENV, then what the platform sets (PORT, FUNCTION_TARGET...)."""
    env = dict(image.env)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def forbidden_distributions(site_packages: Path, names: set[str]) -> set[str]:
    """Which of names are installed in site_packages (by their .dist-info)."""
    norm = {re.sub(r"[-_.]+", "_", n).lower() for n in names}
    found = set()
    for info in site_packages.glob("*.dist-info"):
        dist = re.sub(r"[-_.]+", "_", info.name.rsplit("-", 1)[0]).lower()
        if dist in norm:
            found.add(dist)
    return found


def popen(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    handle = log.open("wb")
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True, close_fds=True)
