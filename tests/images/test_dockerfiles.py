"""Static checks of images/*/Dockerfile. There is no container engine here, so nothing is built or
pulled: these tests read the Dockerfiles and the repository, and claim no more than that.

Checked: each Dockerfile parses; it is multi-stage; every base image is pinned (a full version tag or
a digest); the final stage runs as a numeric non-root user; every COPY source exists in the build
context (the repository root); the final stage installs no compiler or build tool; requirements are
pinned and agree with pyproject.toml; torch and tensorflow appear only in their trainer images; the
operator image carries exactly the phalanx modules the operator imports.
Not checked (needs an engine): that the images build, that the pinned tags exist, what the base
images contain, and image size.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
KNOWN = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
}  # fmt: skip
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|cc|make|cmake|build-essential|cargo|rustc|golang|gfortran|[\w.+-]+-dev)\b"
)
INSTALLS = re.compile(r"\b(apt-get|apt|apk|yum|dnf|microdnf)\b[^&;|]*\binstall\b([^&;|]*)")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    """A small Dockerfile parser: line continuations, comments, parser directives, ARG/FROM scoping."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue  # comments, parser directives (# syntax=...), blank lines
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        assert ins.keyword in KNOWN, f"{path}:{ins.line}: unknown instruction {ins.keyword}"
        if ins.keyword == "ARG" and not stages:
            arg, _, default = ins.args.partition("=")
            global_args[arg] = default
        elif ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, stage_name))
        else:
            assert stages, f"{path}:{ins.line}: {ins.keyword} before the first FROM"
            stages[-1].instructions.append(ins)
    return Dockerfile(path, global_args, stages)


def ids(paths: list[Path]) -> list[str]:
    return [p.parent.name for p in paths]


def test_the_three_images_exist() -> None:
    assert ids(DOCKERFILES) == ["operator", "trainer-pytorch", "trainer-tensorflow"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=ids(DOCKERFILES))
def test_multi_stage_with_pinned_bases(path: Path) -> None:
    df = parse(path)
    assert len(df.stages) >= 2, "multi-stage: build in one stage, copy the result into a clean one"
    names = {s.name for s in df.stages if s.name}
    for stage in df.stages:
        if stage.base in names:
            continue
        assert "$" not in stage.base, f"unresolved base {stage.base}"
        image, _, digest = stage.base.partition("@")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        pinned_digest = re.fullmatch(r"sha256:[0-9a-f]{64}", digest) is not None
        pinned_tag = re.match(r"^\d+\.\d+\.\d+", tag) is not None  # a full version, never latest or 3.11
        assert pinned_digest or pinned_tag, f"{path.parent.name}: base {stage.base} is not pinned"


@pytest.mark.parametrize("path", DOCKERFILES, ids=ids(DOCKERFILES))
def test_final_stage_runs_as_numeric_non_root_user(path: Path) -> None:
    users = [i.args for i in parse(path).final.instructions if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0), users[-1]


@pytest.mark.parametrize("path", DOCKERFILES, ids=ids(DOCKERFILES))
def test_every_copied_source_exists_in_the_build_context(path: Path) -> None:
    for stage in parse(path).stages:
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            words = ins.args.split()
            if any(w.startswith("--from=") for w in words):
                continue  # from another stage, not the context
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, f"{path}:{ins.line}: COPY without a source"
            for source in sources:
                assert list(REPO.glob(source)), f"{path}:{ins.line}: {source} does not exist in {REPO}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=ids(DOCKERFILES))
def test_no_build_tools_in_the_final_stage(path: Path) -> None:
    df = parse(path)
    for ins in df.final.instructions:
        if ins.keyword == "RUN":
            for _, packages in INSTALLS.findall(ins.args):
                assert not BUILD_TOOLS.search(packages), f"{path}:{ins.line}: installs build tools: {packages}"
            assert "pip install" not in ins.args, f"{path}:{ins.line}: install in the build stage, copy the result"
    # Python packages are installed as wheels only, so even the build stage compiles nothing.
    installs = [i.args for s in df.stages for i in s.instructions if i.keyword == "RUN" and "pip install" in i.args]
    assert installs and all("--only-binary=:all:" in a for a in installs)


def requirements(image: str) -> dict[str, Requirement]:
    lines = (IMAGES / image / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(x.split("#")[0]) for x in lines if x.split("#")[0].strip()]
    return {r.name.lower(): r for r in reqs}


@pytest.mark.parametrize("image", ["operator", "trainer-pytorch", "trainer-tensorflow"])
def test_requirements_are_pinned(image: str) -> None:
    for req in requirements(image).values():
        (spec,) = req.specifier
        assert spec.operator == "==", f"{image}: {req} is not pinned"


def test_frameworks_only_in_their_trainer_images() -> None:
    frameworks = {"torch", "tensorflow", "tensorflow-cpu", "tf-keras", "jax"}
    assert not frameworks & set(requirements("operator"))
    assert set(requirements("trainer-pytorch")) & frameworks == {"torch"}
    assert set(requirements("trainer-tensorflow")) & frameworks == {"tensorflow", "tf-keras"}


def test_pins_agree_with_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    operator = requirements("operator")
    for dep in map(Requirement, project["dependencies"]):
        pinned = operator[dep.name.lower()]
        assert dep.specifier.contains(next(iter(pinned.specifier)).version), f"{pinned} vs pyproject {dep}"
    # The extras pin the frameworks the trainer images carry (tensorflow-cpu there is tensorflow here).
    for extra, image in (("torch", "trainer-pytorch"), ("tensorflow", "trainer-tensorflow")):
        trainer = requirements(image)
        for dep in map(Requirement, project["optional-dependencies"][extra]):
            name = "tensorflow" if dep.name == "tensorflow-cpu" else dep.name.lower()
            assert dep.specifier.contains(next(iter(trainer[name].specifier)).version), f"{image}: {dep}"


# --- what the operator imports ------------------------------------------------------------------------
IMPORT_TO_DISTRIBUTION = {"prometheus_client": "prometheus-client", "yaml": "pyyaml"}


def import_closure(root: Path, entry_points: list[str]) -> tuple[set[str], set[str]]:
    """Modules of our packages reachable by imports from the entry points, and third-party top-levels."""
    ours, third = set(), set()

    def path_of(module: str) -> Path | None:
        base = root / module.replace(".", "/")
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.exists():
                return candidate
        return None

    def visit(module: str) -> None:
        source = path_of(module)
        if module in ours or source is None:
            return
        ours.add(module)
        parts = module.split(".")
        for i in range(1, len(parts)):
            visit(".".join(parts[:i]))
        for node in ast.walk(ast.parse(source.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                top = name.split(".")[0]
                if (root / top).is_dir():
                    visit(name)
                elif top not in sys.stdlib_module_names:
                    third.add(top)

    for entry in entry_points:
        visit(entry)
    return ours, third


def copied_paths(image: str) -> list[str]:
    """Context paths the image's COPY instructions take (not from other stages)."""
    out: list[str] = []
    for stage in parse(IMAGES / image / "Dockerfile").stages:
        for ins in stage.instructions:
            words = ins.args.split()
            if ins.keyword == "COPY" and not any(w.startswith("--from=") for w in words):
                out += [w for w in words if not w.startswith("--")][:-1]
    return out


def covered(module: str, root: Path, copied: list[str]) -> bool:
    relative = (root / module.replace(".", "/")).relative_to(REPO).as_posix()
    return any(relative == c or relative + ".py" == c or relative.startswith(c + "/") or
               (relative + "/__init__.py") == c for c in copied)  # fmt: skip


def test_operator_image_has_exactly_what_the_operator_imports() -> None:
    root = REPO / "operator"
    modules, third = import_closure(root, ["phalanx.controller.__main__", "phalanx.controller.main"])
    copied = copied_paths("operator")
    missing = sorted(m for m in modules if not covered(m, root, copied))
    assert not missing, f"the operator imports modules its image lacks: {missing}"
    unused = [c for c in copied if c.startswith("operator/") and not any(covered(m, root, [c]) for m in modules)]
    assert not unused, f"the operator image copies what the operator never imports: {unused}"
    provided = set(requirements("operator"))
    for top in third:
        assert IMPORT_TO_DISTRIBUTION.get(top, top).lower() in provided, f"{top} is imported but not pinned"


@pytest.mark.parametrize("image", ["trainer-pytorch", "trainer-tensorflow"])
def test_trainer_images_carry_the_runtime_and_only_the_contract_of_the_operator(image: str) -> None:
    modules, _ = import_closure(REPO / "trainers", ["phalanx_trainer"])
    trainer_modules = {str(p.relative_to(REPO / "trainers").with_suffix("")).replace("/", ".")
                       for p in (REPO / "trainers" / "phalanx_trainer").rglob("*.py")}  # fmt: skip
    ours, _ = import_closure(REPO / "operator", sorted(_phalanx_imports(trainer_modules)))
    assert ours <= {"phalanx", "phalanx.contract"}, f"the trainer runtime imports operator modules: {ours}"
    copied = copied_paths(image)
    assert "trainers/phalanx_trainer" in copied
    assert {"operator/phalanx/__init__.py", "operator/phalanx/contract.py"} <= set(copied)
    assert not [c for c in copied if c.startswith("operator/") and not c.endswith(("__init__.py", "contract.py"))]
    assert modules  # the runtime's own modules are all under the copied trainers/phalanx_trainer


def _phalanx_imports(trainer_modules: set[str]) -> set[str]:
    found = set()
    for module in trainer_modules:
        source = REPO / "trainers" / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "phalanx":
                found.update({node.module, *(f"{node.module}.{a.name}" for a in node.names)})
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "phalanx")
    return found
