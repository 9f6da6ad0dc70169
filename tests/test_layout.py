"""The package's layers, read from the imports in its source: commands over the library over the model."""

import ast
from pathlib import Path

import modeling_moe_audio


PACKAGE = Path(modeling_moe_audio.__file__).resolve().parent
COMMANDS = PACKAGE / "commands"
SHARED_BY_COMMANDS = {"__init__", "common", "main"}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the package modules `path` imports (relative imports resolved)."""
    package = ".".join(("modeling_moe_audio", *path.relative_to(PACKAGE).parent.parts))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("modeling_moe_audio")}


def test_no_command_imports_another_command():
    commands = {path.stem for path in COMMANDS.glob("*.py")} - SHARED_BY_COMMANDS
    assert {"train", "evaluate", "demo", "ablate", "analyze", "push", "upcycle", "init"} <= commands
    for path in COMMANDS.glob("*.py"):
        others = {f"modeling_moe_audio.commands.{name}" for name in commands - {path.stem}}
        assert not imported_modules(path) & others, f"{path.name} imports another command"


def test_the_library_never_imports_the_commands():
    for path in PACKAGE.rglob("*.py"):
        if COMMANDS in path.parents:
            continue
        assert not any(name.startswith("modeling_moe_audio.commands") for name in imported_modules(path)), path


def test_every_command_is_dispatched_and_has_help_for_every_option(capsys):
    from modeling_moe_audio.commands.main import COMMANDS as DISPATCHED

    assert {module for module, _ in DISPATCHED.values()} == {p.stem for p in COMMANDS.glob("*.py")} - SHARED_BY_COMMANDS
    import importlib

    for name, (module, _) in DISPATCHED.items():
        parser = importlib.import_module(f"modeling_moe_audio.commands.{module}").build_parser()
        assert parser.prog == f"moe-audio {name}"
        undocumented = [action.dest for action in parser._actions if not action.help]
        assert not undocumented, f"moe-audio {name}: options without help {undocumented}"


def test_help_of_every_command_but_train_loads_neither_torch_nor_transformers():
    """A command parses its arguments before it imports the library (train cannot: its options are
    TrainingArguments')."""
    import subprocess
    import sys

    from modeling_moe_audio.commands.main import COMMANDS as DISPATCHED

    names = [name for name in DISPATCHED if name != "train"]
    script = (
        "import contextlib, io, sys\n"
        "from modeling_moe_audio.commands.main import main\n"
        f"for name in {names!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([name, '--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
