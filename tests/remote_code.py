"""Helpers to run code in a fresh Python process where the `modeling_moe_audio` package cannot be imported."""

import os
import subprocess
import sys
import textwrap

PRELUDE = """
import sys
sys.modules["modeling_moe_audio"] = None  # the package is installed here; block it so only the checkpoint's code runs
try:
    import modeling_moe_audio
except ImportError:
    pass
else:
    raise SystemExit("modeling_moe_audio is importable; the test would not prove anything")
"""


def run_without_package(code: str, cwd, timeout: int = 300) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout
