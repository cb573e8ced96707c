"""Wall time and peak memory of a whole benchmark run (the quick one by default).

    python -m benchmarks.profile_quick [CONFIG] [--out DIR] [--cold]

The run happens in a child process so that its peak resident memory can be read afterwards. Tiny base
models are cached on disk; ``--cold`` points the cache at an empty folder so pretraining is included.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="quick")
    parser.add_argument("--out", default=None, help="output directory (default: a fresh temporary one)")
    parser.add_argument("--cold", action="store_true", help="start with an empty model cache")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cold:
            env["GRAO_CACHE"] = os.path.join(tmp, "cache")
            env["TEXTENV_CACHE"] = os.path.join(tmp, "textenv-cache")
        out = args.out or os.path.join(tmp, "run")
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "benchmarks", "run", args.config, "--out", out,
                                "--no-progress"], env=env)
        wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(f"\n{args.config}: exit code {code}, wall time {wall:.0f} s ({wall / 60:.1f} min), "
          f"peak resident memory {peak_mb:.0f} MB, model cache {'cold' if args.cold else 'as found'}, "
          f"{os.cpu_count()} CPU(s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
