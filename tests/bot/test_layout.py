"""The shape of `bot/`: imports point one way. Only extensions import the client (`bot.bot`) at runtime,
the client imports no feature, and no module of `bot/` reaches itself round a circle, not even through
imports made only for type checking."""

from __future__ import annotations

import ast
from pathlib import Path

from bot.bot import JukeBot
from storage.store import JobStore
from tests.bot.harness import make_settings

BOT_DIR = Path(__file__).resolve().parents[2] / "bot"


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(BOT_DIR.parent).with_suffix("").parts).removesuffix(".__init__")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str], *, type_checking: bool) -> set[str]:
    """The modules of `known` that `path` imports; those under `if TYPE_CHECKING:` only if asked."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found & known


def import_graph(*, type_checking: bool) -> dict[str, set[str]]:
    paths = sorted(BOT_DIR.rglob("*.py"))
    known = {_module_name(path) for path in paths}
    return {
        _module_name(path): imports_of(path, known, type_checking=type_checking) - {_module_name(path)}
        for path in paths
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (cycle := visit(imported)) is not None:
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def test_find_cycle_finds_a_circle_and_only_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_of_sees_type_checking_blocks_only_if_asked(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom bot import actions\nimport bot.views\n"
        "if TYPE_CHECKING:\n    from bot.bot import JukeBot\n"
    )
    known = {"bot.actions", "bot.views", "bot.bot"}
    assert imports_of(source, known, type_checking=False) == {"bot.actions", "bot.views"}
    assert imports_of(source, known, type_checking=True) == known


def test_only_extensions_import_the_client_at_runtime() -> None:
    graph = import_graph(type_checking=False)
    assert "bot.bot" in graph and "bot.actions" in graph  # the walk saw the package
    importers = sorted(module for module, imported in graph.items() if "bot.bot" in imported)
    assert importers and all(module.startswith("bot.exts.") for module in importers), importers
    assert not {module for module in graph["bot.bot"] if module.startswith("bot.exts")}


def test_bot_has_no_import_cycle() -> None:
    assert find_cycle(import_graph(type_checking=True)) is None


async def test_the_progress_extension_owns_the_relay_task(sqlite_store: JobStore) -> None:
    bot = JukeBot(make_settings(), sqlite_store)
    assert len(bot.tasks) == 0  # the client alone runs nothing
    await bot.load_extension("bot.exts.progress")
    # the relay, and the recovery of dead workers' jobs
    assert len(bot.tasks) == 2 and bot.get_cog("Progress") is not None
    await bot.unload_extension("bot.exts.progress")
    assert len(bot.tasks) == 0 and bot.get_cog("Progress") is None
    await bot.close()
