"""The layer rule, checked on the source text: imports flow one way, and there are no cycles.

    packer  (pure core; packer.pipeline is its one Ray module; packer.contract is the
      ^      part other processes share)
    service, trainer   (trainer imports only packer.contract from packer)
      ^
    deploy  (the launch layer: the `navit` CLI and the one-machine pretrain supervisor)

Inside packer, the stages of the data path import only the stages before them:

    packer.image < packer.sources < packer.index < packer.plan < packer.fill < packer.pipeline

A lower layer never names a higher one, not even in a string (e.g. a lazy
`importlib.import_module("service.serve")`). ruff's banned-api rules (the ruff.toml in
each package) catch the plain cases in `make lint`; this test also sees submodules,
strings and cycles. Every import counts: at the top of a module, inside a function, and
under `if TYPE_CHECKING:`.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("packer", "service", "trainer", "deploy")
LAYER = {"packer": 0, "service": 1, "trainer": 1, "deploy": 2}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (relative imports resolved):
    at the top, inside functions and under `if TYPE_CHECKING:` alike."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # `from packer import schema` imports the module packer.schema
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _named_in_strings(path: Path) -> set[str]:
    """Dotted names of the project's packages that appear inside string constants."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for word in node.value.replace(":", " ").split():
                head = word.split(".")[0]
                if head in PACKAGES and "." in word and word.split(".")[1].isidentifier():
                    names.add(word)
    return names


def _package(name: str) -> str:
    return name.split(".")[0]


def _upward(module: str, names: set[str]) -> list[str]:
    own = LAYER[_package(module)]
    return sorted(
        n
        for n in names
        if _package(n) in LAYER and _package(n) != _package(module) and LAYER[_package(n)] >= own
    )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_its_own_or_a_higher_layer(module):
    assert not _upward(module, _imports(MODULES[module])), "imports across or up the layers"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m) != "deploy"))
def test_no_lower_module_names_a_higher_one_in_a_string(module):
    assert not _upward(module, _named_in_strings(MODULES[module]))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m) == "trainer"))
def test_trainer_imports_only_the_contract_from_packer(module):
    from_packer = {n for n in _imports(MODULES[module]) if _package(n) == "packer"}
    assert all(n == "packer" or n.startswith("packer.contract") for n in from_packer), from_packer
    assert not {n for n in _imports(MODULES[module]) if _package(n) == "ray"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m) == "packer"))
def test_only_the_pipeline_module_of_the_packer_imports_ray(module):
    uses_ray = any(_package(n) == "ray" for n in _imports(MODULES[module]))
    assert not uses_ray or module == "packer.pipeline"


# The data path's stages in order (packer/__init__.py): each imports only earlier ones.
STAGES = ("packer.image", "packer.sources", "packer.index", "packer.plan", "packer.fill")
LAST_STAGE = "packer.pipeline"


def _stage(name: str) -> int | None:
    """The position of the stage that module `name` belongs to, None outside the stages."""
    for position, stage in enumerate((*STAGES, LAST_STAGE)):
        if name == stage or name.startswith(stage + "."):
            return position
    return None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _stage(m) is not None))
def test_a_stage_of_the_packer_imports_only_earlier_stages(module):
    own = _stage(module)
    later = sorted(n for n in _imports(MODULES[module]) if (_stage(n) or -1) > own)
    assert not later, f"{module} imports later stages: {later}"


def test_the_type_checking_imports_count_as_imports(tmp_path):
    source = tmp_path / "packer" / "example.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from service.job import x\n"
        "def f():\n    import trainer.model\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert {"service.job", "trainer.model"} <= _imports(source)
    finally:
        ROOT = saved


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("packer.contract")))
def test_the_contract_needs_only_numpy_and_pyarrow(module):
    third_party = {
        _package(n) for n in _imports(MODULES[module]) if _package(n) in ("ray", "torch", "PIL")
    }
    project = {n for n in _imports(MODULES[module]) if _package(n) in LAYER}
    assert not third_party
    assert all(n == "packer" or n.startswith("packer.contract") for n in project)


def test_no_import_cycles_between_modules():
    graph = {
        module: {
            target
            for name in _imports(path)
            for target in (name, name.rsplit(".", 1)[0])
            if target in MODULES and target != module
        }
        for module, path in MODULES.items()
    }
    # A package's __init__ importing its own submodules is not a cycle worth reporting.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
