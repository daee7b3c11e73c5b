"""fmkit.exits: a finished command's process ends without the interpreter's teardown, and
without losing anything the interpreter's own exit would have done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROGRAM = """
import atexit, logging, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from fmkit.exits import exit_now

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
kept = tempfile.TemporaryDirectory(dir=out)  # never cleaned up by the program itself
(out / "tmpdir").write_text(kept.name)
threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
pool = ThreadPoolExecutor(1)  # left with an idle worker, never shut down
pool.submit(lambda: (time.sleep(0.2), (out / "pool").write_text("done")))
handler = logging.FileHandler(out / "log", delay=True)
logging.getLogger().addHandler(handler)
logging.getLogger().warning("logged")
sys.stdout.write("unflushed " * 1000)  # to a pipe: block-buffered, no newline
sys.stderr.write("to stderr")
ENDING
"""


def _outcome(tmp_path: Path, ending: str) -> dict:
    out = tmp_path / ending.split("(")[0]
    out.mkdir()
    done = subprocess.run([sys.executable, "-c", PROGRAM.replace("ENDING", ending), str(out)],
                          capture_output=True, text=True, timeout=60)
    kept = Path((out / "tmpdir").read_text())
    return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
            "temporary directory left": kept.exists(),
            **{name: (out / name).read_text() if (out / name).exists() else None
               for name in ("atexit", "thread", "pool", "log")}}


def test_exit_now_does_what_the_interpreters_exit_does(tmp_path, code=3):
    """Everything a program can see of its exit is the same as with ``sys.exit``: the status,
    buffered output, a thread still running and a pool's queued work finished, atexit
    functions run, log files flushed, temporary directories removed."""
    ordinary = _outcome(tmp_path, f"sys.exit({code})")
    assert ordinary == {"code": code, "stdout": "unflushed " * 1000, "stderr": "to stderr",
                        "temporary directory left": False, "atexit": "ran", "thread": "done",
                        "pool": "done", "log": "logged\n"}
    assert _outcome(tmp_path, f"exit_now({code})") == ordinary
