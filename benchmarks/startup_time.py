"""Start-up time: `import modeling_moe_audio` and `moe-audio --help`, each in a fresh process.

    python benchmarks/startup_time.py [--runs 7]

Prints the median and the range of the wall time over the runs, with `import torch` + transformers' model code as
the reference of what a command that builds a model pays anyway. Run it from outside the checkout's root (the
current folder is on `sys.path` for `python -c`) with nothing else busy; `python -X importtime -c "import
modeling_moe_audio"` shows where the time goes.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(command: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    moe_audio = shutil.which("moe-audio", path=str(Path(sys.executable).parent)) or "moe-audio"
    commands = {
        "python -c 'import modeling_moe_audio'": [sys.executable, "-c", "import modeling_moe_audio"],
        "moe-audio --help": [moe_audio, "--help"],
        "python -c 'import torch, transformers.modeling_utils' (reference)":
            [sys.executable, "-c", "import torch, transformers.modeling_utils"],
    }
    for name, command in commands.items():
        seconds = timed(command, args.runs)
        print(f"{name}: median {statistics.median(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f},"
              f" {args.runs} runs)")


if __name__ == "__main__":
    main()
