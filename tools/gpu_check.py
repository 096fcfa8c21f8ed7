"""All GPU checks in one go, for a CUDA machine (device time is scarce: one script, one call, < 8 min).

    python tools/gpu_check.py [--shared ../shared] [--out DIR] [--skip-install] [--quick]

Steps (each timed; a failing step is recorded and the next one still runs):
1. install the requirements (``pip install -r requirements.txt``; offline machines: whatever is
   installed is used, and wheels in ``.whl/`` are installed first when present);
2. the CUDA tests (tests/test_cuda.py), then the whole suite (in parallel with pytest-xdist when it
   is installed; test files whose packages are missing, e.g. Ray or PyAV, are left out and named);
3. the synthetic default on ``--device cuda`` (wall time and mAP);
4. ``--deterministic true`` twice: identical metrics.jsonl;
5. kill and resume: a deterministic run stopped with SIGINT after its first checkpoint, then
   ``--resume``: its metrics equal the uninterrupted run's;
6. ``tools/bench.py schedule --device cuda``: seconds per THUMOS14-shaped training step in fp32,
   TF32, bf16 and compiled, the full THUMOS14-sized test pass, the paper schedule's estimated time.
Prints one JSON line with every figure (and writes it to ``<out>/gpu_check.json``).

``--shared`` is the folder holding ``clip/bpe_simple_vocab_16e6.txt.gz`` and
``data/Thumos14reduced-Annotations`` (the tests and the benchmark need them). On a machine that
cannot reach ../shared, copy those two into an ignored folder of the checkout and pass it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# test files -> the packages they import beyond the core ones
OPTIONAL = {"tests/test_sweep.py": "ray", "tests/test_extract_clip_features.py": "av",
            "tests/test_visualize.py": "matplotlib"}


def sh(cmd: list[str], timeout: float, env: dict, log: Path) -> tuple[int, float, str]:
    """Run ``cmd``; (exit status, seconds, last lines of its output); the output also goes to ``log``."""
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as err:
        code, text = 124, (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    log.write_text(text)
    return code, round(time.perf_counter() - t0, 1), "\n".join(text.strip().splitlines()[-3:])


def train(args: list[str], out: Path, env: dict, timeout: float, name: str) -> tuple[int, float, str]:
    return sh([sys.executable, "main.py", *args], timeout, env, out / f"{name}.log")


def run_tests(figures: dict, out: Path, env: dict) -> None:
    """tests/test_cuda.py, then the rest of the suite (files whose extra packages are missing left out)."""
    code, secs, tail = sh([sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py"], 300, env, out / "test_cuda.log")
    figures["tests_cuda"] = {"ok": code == 0, "s": secs, "tail": tail}
    ignore = [f for f, pkg in OPTIONAL.items() if importlib.util.find_spec(pkg) is None]
    parallel = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    cmd = [sys.executable, "-m", "pytest", "-q", *parallel, "--ignore", "tests/test_cuda.py",
           *sum((["--ignore", f] for f in ignore), [])]
    code, secs, tail = sh(cmd, 360, env, out / "tests.log")
    figures["tests_all"] = {"ok": code == 0, "s": secs, "left_out": ignore, "tail": tail}


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"), help="folder with clip/ and data/ (see above)")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/pecr-gpu-check"), help="logs and the JSON figures")
    ap.add_argument("--skip-install", action="store_true", help="use the installed packages as they are")
    ap.add_argument("--quick", action="store_true", help="fewer benchmark steps and iterations (a dry run of the script)")
    ap.add_argument("--device", default="cuda", help="cuda (the point of it), or cpu for a dry run of the script")
    ap.add_argument("--skip-tests", action="store_true", help="leave out step 2 (dry runs)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = Path(args.shared).resolve()
    env = {**os.environ, "PECR_SHARED": str(shared), "PECR_CLIP_VOCAB": str(shared / "clip" / "bpe_simple_vocab_16e6.txt.gz"),
           "PYTHONUNBUFFERED": "1"}
    device = args.device
    figures: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    runs = out / "runs"

    # 1. requirements
    if not args.skip_install:
        wheels = sorted((ROOT / ".whl").glob("*.whl"))
        if wheels:
            sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *map(str, wheels)], 300, env,
               out / "wheels.log")
        code, secs, tail = sh([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], 300, env, out / "pip.log")
        figures["install"] = {"ok": code == 0, "s": secs, "note": "" if code == 0 else "pip failed (offline?): installed packages used"}
    import torch

    figures["torch"], figures["cuda"] = torch.__version__, torch.cuda.is_available()
    if device == "cuda" and not torch.cuda.is_available():
        figures["error"] = "CUDA is not available here"
        print(json.dumps(figures))
        return 1
    figures["gpu"] = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run on the CPU)"

    # 2. tests
    if not args.skip_tests:
        run_tests(figures, out, env)

    # 3. the synthetic default on CUDA
    base = ["--dataset", "synthetic", "--device", device, "--output-dir", str(runs)]
    quick = ["--max-iter", "101"] if args.quick else []
    code, secs, tail = train([*base, "--model-name", "default", *quick], out, env, 300, "synthetic_default")
    last = records(runs / "default")
    figures["synthetic_default"] = {"ok": code == 0, "s": secs,
                                    "mAP_0.1:0.7": round(100 * last[-1]["average_mAP"]["0.1:0.7"], 2) if last else None}

    # 4. determinism: the same deterministic run twice
    short = [*base, "--deterministic", "true", "--max-iter", "101" if args.quick else "301", "--interval", "50",
             "--checkpoint-every", "40"]
    train([*short, "--model-name", "det_a"], out, env, 200, "det_a")
    train([*short, "--model-name", "det_b"], out, env, 200, "det_b")
    a, b = records(runs / "det_a"), records(runs / "det_b")
    figures["deterministic_twice_equal"] = bool(a) and a == b

    # 5. kill (SIGINT after the first checkpoint) and resume
    log = open(out / "resume_first.log", "w")
    proc = subprocess.Popen([sys.executable, "main.py", *short, "--model-name", "det_c"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (runs / "det_c" / "last.pt").is_file():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    first = proc.wait(timeout=120)
    code, secs, tail = train([*short, "--model-name", "det_c", "--resume"], out, env, 200, "resume_second")
    figures["kill_resume"] = {"interrupted_exit": first, "resume_exit": code, "equal_to_uninterrupted": records(runs / "det_c") == a}

    # 6. benchmarks
    steps = ["--steps", "2", "--warmup", "1", "--test-videos", "10", "--variants", "fp32,bf16"] if args.quick else []
    code, secs, tail = sh([sys.executable, "tools/bench.py", "schedule", "--device", device, *steps,
                           "--synthetic-annotations", str(shared / "data" / "Thumos14reduced-Annotations")],
                          420, env, out / "bench_schedule.log")
    try:
        figures["bench_schedule"] = json.loads(tail.splitlines()[-1])
    except (ValueError, IndexError):
        figures["bench_schedule"] = {"ok": False, "exit": code, "tail": tail}
    figures["bench_schedule_s"] = secs

    text = json.dumps(figures)
    (out / "gpu_check.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
