"""What Ray's schema does not catch but a cluster open to its network would: a dashboard bound to
every address (it runs jobs: anyone who reaches it runs code), a `ray start` without token
authentication, and setup that installs whatever version of a package is newest that day."""
from __future__ import annotations

import re
import shlex

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
TOKEN_ENV = "RAY_AUTH_MODE=token"


def _commands(config: dict, key: str) -> list[str]:
    cmds = config.get(key) or []
    return [c for c in cmds if isinstance(c, str)]


def _docker_env(config: dict) -> str:
    docker = config.get("docker") or {}
    opts = [*docker.get("run_options", []), *docker.get("head_run_options", []), *docker.get("worker_run_options", [])]
    return " ".join(str(o) for o in opts)


def dashboard_problems(config: dict, source: str) -> list[str]:
    out = []
    for cmd in _commands(config, "head_start_ray_commands"):
        for host in re.findall(r"--dashboard-host[= ]+(\S+)", cmd):
            if host.strip("'\"") not in LOCAL_HOSTS:
                out.append(f"{source}: head_start_ray_commands: --dashboard-host={host} opens the dashboard "
                           "(and job submission) to every address; bind it to 127.0.0.1 and reach it "
                           "through `ray dashboard cluster.yaml`")
    return out


def token_problems(config: dict, source: str) -> list[str]:
    """Every `ray start` must run with RAY_AUTH_MODE=token (in the command, or in the container's env)."""
    if TOKEN_ENV in _docker_env(config):  # e.g. run_options: ["-e RAY_AUTH_MODE=token"]
        return []
    out = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        started = [c for c in _commands(config, key) if re.search(r"\bray start\b", c)]
        if not started:
            out.append(f"{source}: {key}: no `ray start` command")
        for cmd in started:
            if TOKEN_ENV not in cmd and f"export {TOKEN_ENV}" not in " ".join(_commands(config, key)):
                out.append(f"{source}: {key}: `{cmd.strip()[:60]}` starts Ray without token authentication "
                           f"(prefix it with {TOKEN_ENV} and ship ~/.ray/auth_token in file_mounts)")
    return out


OPTIONS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-i", "--index-url",
                      "--extra-index-url", "-f", "--find-links", "-t", "--target"}


def _unpinned(words: list[str]) -> list[str]:
    """Requirement words of a `pip install` that name a package without an exact version
    (a local path, a wheel, `name==X` and `name @ URL` are pinned)."""
    out = []
    i = 0
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in OPTIONS_WITH_VALUE:
            i += 2
            continue
        if nxt == "@":  # PEP 508 direct reference: name @ URL
            i += 3
            continue
        if not (word.startswith(("-", ".", "/", "~", "$")) or "==" in word or word.endswith(".whl")) \
                and re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?([<>!~]=?.*)?$", word):
            out.append(word)
        i += 1
    return out


def pin_problems(config: dict, source: str) -> list[str]:
    """pip installs in setup commands must pin (==) or use a constraints file; a docker image is pinned by tag."""
    out = []
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        for cmd in _commands(config, key):
            for part in re.split(r"&&|;", cmd):
                try:
                    words = shlex.split(part)
                except ValueError:
                    continue
                if "pip" not in " ".join(words[:4]) or "install" not in words:
                    continue
                args = words[words.index("install") + 1:]
                if "-c" in args or "--constraint" in args:
                    continue
                loose = [w for w in _unpinned(args) if w != "pip"]  # upgrading pip itself is harmless
                if loose:
                    out.append(f"{source}: {key}: `pip install` of unpinned {', '.join(loose[:4])}"
                               f"{' ...' if len(loose) > 4 else ''} (pin with == or a constraints file, or use "
                               "the image from deploy/Dockerfile)")
    image = (config.get("docker") or {}).get("image", "")
    if image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        out.append(f"{source}: docker.image '{image}' has no version tag (use e.g. syncxr:0.1.0)")
    return out


def security_problems(config: dict, source: str) -> list[str]:
    return dashboard_problems(config, source) + token_problems(config, source) + pin_problems(config, source)
