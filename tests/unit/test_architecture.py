"""The picture of the layers in docs/architecture.md holds against the code's imports.

Its table gives each room (a module, or a folder ending in ``/``) a floor;
every module of the project must be in a room, and an import from one room to
another must go down at least one floor: nothing imports upwards, nothing
imports across a floor. When this fails, either the code reached up (mend the
code) or the house changed (redraw the picture and the table).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
PACKAGES = ("fraud_pipeline", "devcluster", "bench")
FLOOR_ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]*)\|")


def floors(page: Path = PAGE) -> dict[str, int]:
    """``{room: floor}`` from the rows of the layers table that start with a floor number."""
    rooms: dict[str, int] = {}
    for line in page.read_text().splitlines():
        match = FLOOR_ROW.match(line)
        if match:
            for room in re.findall(r"`([^`]+)`", match.group(2)):
                rooms[room] = int(match.group(1))
    return rooms


def sources() -> list[Path]:
    """The project's modules: the entry scripts at the top and every module of its packages (an empty one aside)."""
    found = [*ROOT.glob("*.py"), *(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))]
    return sorted(p for p in found if p.read_text().strip())


def room_of(path: Path, rooms: dict[str, int]) -> str | None:
    relative = path.relative_to(ROOT).as_posix()
    matching = [room for room in rooms if relative == room or (room.endswith("/") and relative.startswith(room))]
    return max(matching, key=len) if matching else None


def module_file(module: str) -> Path | None:
    """The file of a project module (``a.b`` as ``a/b.py`` or ``a/b/__init__.py``); None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The project files a module imports, at the top or inside a function (``from x import submodule`` included)."""
    package = path.relative_to(ROOT).parts[:-1]  # the package a relative import starts from
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = module_file(name)
            if target is not None and target != path:
                found.add(target)
    return found


def test_the_layers_table_gives_every_module_a_room() -> None:
    rooms = floors()
    assert rooms, f"no layers table in {PAGE.relative_to(ROOT)}"
    homeless = [str(p.relative_to(ROOT)) for p in sources() if room_of(p, rooms) is None]
    assert not homeless, f"modules in no room of the layers table: {homeless}"
    missing = [room for room in rooms if not (ROOT / room).exists()]
    assert not missing, f"rooms of the layers table that do not exist: {missing}"


def test_every_import_goes_down_a_floor() -> None:
    rooms = floors()
    wrong = []
    for path in sources():
        here = room_of(path, rooms)
        for target in imported_files(path):
            there = room_of(target, rooms)
            if here is None or there is None or here == there:
                continue
            if rooms[there] >= rooms[here]:
                wrong.append(f"{path.relative_to(ROOT)} (floor {rooms[here]}) imports "
                             f"{target.relative_to(ROOT)} ({there}, floor {rooms[there]})")
    assert not wrong, "imports that do not go down a floor:\n" + "\n".join(sorted(wrong))


def test_the_check_sees_an_import_up_or_across(tmp_path: Path) -> None:
    page = tmp_path / "architecture.md"
    page.write_text("| floor | rooms |\n| --- | --- |\n| 2 | `fraud_pipeline/stage/` |\n| 1 | `fraud_pipeline/clients/` |\n")
    rooms = floors(page)
    assert rooms == {"fraud_pipeline/stage/": 2, "fraud_pipeline/clients/": 1}
    stage = ROOT / "fraud_pipeline" / "stage" / "loop.py"
    assert room_of(stage, rooms) == "fraud_pipeline/stage/"
    assert any(room_of(target, rooms) == "fraud_pipeline/clients/" for target in imported_files(stage))
    assert room_of(ROOT / "fraud_pipeline" / "detector.py", rooms) is None


def test_the_runtime_imports_none_of_the_tools_beside_it() -> None:
    """devcluster/ and bench/ stand beside the runtime: an installed fraud_pipeline has neither."""
    reaching = [f"{path.relative_to(ROOT)} imports {target.relative_to(ROOT)}"
                for path in sources() if path.relative_to(ROOT).parts[0] == "fraud_pipeline"
                for target in imported_files(path) if target.relative_to(ROOT).parts[0] in ("devcluster", "bench")]
    assert not reaching, reaching


def diagram_floors(page: Path = PAGE) -> dict[str, int]:
    """``{room's last name: floor}`` from the mermaid picture: each ``subgraph F<n>`` and the rooms drawn in it."""
    rooms: dict[str, int] = {}
    floor: int | None = None
    for line in page.read_text().splitlines():
        start = re.match(r"\s*subgraph F(\d+)\[", line)
        if start:
            floor = int(start.group(1))
            continue
        if line.strip() == "end":
            floor = None
        elif floor is not None:
            for label in re.findall(r'\w+\["([^"]+)"\]', line):
                for name in re.split(r" · |<br/>", label):
                    rooms[name.strip()] = floor
    return rooms


def test_the_picture_shows_the_same_floors_as_the_table() -> None:
    drawn = diagram_floors()
    assert drawn, "no picture of the layers"
    table = {room.rstrip("/").rsplit("/", 1)[-1] + ("/" if room.endswith("/") else ""): floor
             for room, floor in floors().items()}
    assert drawn == table, {name: (drawn.get(name), table.get(name)) for name in drawn.keys() | table.keys()
                            if drawn.get(name) != table.get(name)}
