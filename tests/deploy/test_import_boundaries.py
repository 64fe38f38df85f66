"""What may import what: the worker runs without the HTTP stack, and no two modules import each other."""

import ast
import sys
from pathlib import Path

from deployfiles import ROOT
from importprobe import import_without

# Every module a `mambaft worker` process loads at start: Celery's app, its tasks and what they run.
WORKER_MODULES = [
    "worker.tasks",
    "worker.celery_app",
    "worker.job_runner",
    "worker.evaluation_runner",
    "worker.model_creation",
    "worker.reaper",
]
HTTP_STACK = ("fastapi", "starlette")
PACKAGES = ("app", "worker")


def test_the_worker_process_never_imports_the_http_stack(tmp_path: Path) -> None:
    result = import_without(WORKER_MODULES, HTTP_STACK, tmp_path)
    assert result.returncode == 0, result.stderr


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The project modules an import statement loads (`from a import b` loads a.b when b is a module)."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
        candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    found = set()
    for name in candidates:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body: a circle that an import inside a
    function hides from Python is still a circle."""
    paths = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        statements = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import | ast.ImportFrom)]
        imported = [_imported(n, name, path.name == "__init__.py", set(paths)) for n in statements]
        graph[name] = set().union(*imported) - {name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in import order, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            if circle := visit(imported):
                return circle
        path.pop()
        done.add(module)
        return None

    return next(filter(None, map(visit, sorted(graph))), None)


def test_the_circle_finder_sees_a_circle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a"}}) is None


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # cli.py starts the API and the supervisor only when asked, inside its commands.
    assert "app.migrate" in graph["app.cli"] and "app.settings" in graph["worker.tasks"]


def test_no_module_of_app_or_worker_imports_itself_through_others() -> None:
    circle = find_circle(import_graph())
    assert circle is None, " -> ".join(circle)


# What the engine may take from app: modules of the standard library only, so the engine runs bare on a
# GPU box. The JSONL reader, so the worker reads a file as the upload check did; the job contract, so the
# engine runs exactly the settings the API stored; the family catalog, which the contract's defaults come
# from and each family's engine module completes.
ENGINE_MAY_IMPORT = {"app.files.jsonl", "app.jobs.contract", "app.families"}


def _shared(module: str) -> bool:
    return any(module == allowed or module.startswith(f"{allowed}.") for allowed in ENGINE_MAY_IMPORT)


def test_the_engine_takes_from_app_only_standard_library_modules_it_shares() -> None:
    graph = import_graph()
    engine = [module for module in graph if module.startswith("worker.engine")]
    from_app = {imported for module in engine for imported in graph[module] if imported.startswith("app.")}
    assert all(map(_shared, from_app)), sorted(from_app)
    for module in filter(_shared, graph):
        assert all(map(_shared, graph[module])), f"{module} imports more of app"
        path = ROOT / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        statements = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import | ast.ImportFrom)]
        names = [a.name for n in statements if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in statements if isinstance(n, ast.ImportFrom) and n.module]
        roots = {name.split(".")[0] for name in names}
        assert roots <= {*sys.stdlib_module_names, "app"}, f"{module} imports {roots - set(sys.stdlib_module_names)}"


# The client commands speak HTTP to a server that may run elsewhere: of the project they take only each
# other and the archive reader that unpacks a downloaded adapter (standard library only).
CLIENT_MAY_IMPORT = {"app.client", "app.archive"}


def test_the_client_commands_take_nothing_of_the_server_but_the_archive_reader() -> None:
    graph = import_graph()
    client = [module for module in graph if module.startswith("app.client")]
    taken = {imported for module in client for imported in graph[module]}
    assert {m for m in taken if not m.startswith("app.client.")} <= CLIENT_MAY_IMPORT
    assert graph["app.archive"] == set()
