"""What each hostile input of tests/hostile.py costs the real handler: status, CPU, memory.

Each payload runs in a fresh process that has loaded the default model and
served one clean image, so the peak memory it reports is what the payload
added (VmHWM, reset through /proc/self/clear_refs, minus the resident set
before the request). A payload that runs past --timeout is killed and shown
as such.

    python -m benchmarks.hostile            # all payloads, a table
    python -m benchmarks.hostile --only PNG # payloads whose name contains "PNG"
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pneumonia.machine import describe
from tests.hostile import DICOM_PAYLOADS, PAYLOADS

# Every payload of both lists, with the content type it is sent as.
ALL = {
    **PAYLOADS,
    **{name: (builder, "application/dicom") for name, (builder, _) in DICOM_PAYLOADS.items()},
}

ROOT = Path(__file__).resolve().parents[1]

EVENT = ROOT / "tests" / "events" / "predict_binary.json"
SMOKE = ROOT / "tests" / "events" / "smoke.jpeg"


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_one(name: str) -> dict:
    """Runs in the child: one payload through lambda_handler, after a clean warm-up request."""
    from pneumonia.serving.app import lambda_handler  # the real handler and model (MODEL_DIR)
    from pneumonia.serving.local import LocalContext

    builder, content_type = ALL[name]
    body = builder()
    event = json.loads(EVENT.read_text())
    event["headers"]["Content-Type"] = content_type
    event["multiValueHeaders"]["Content-Type"] = [content_type]
    context = LocalContext(aws_request_id="hostile")

    event["body"] = base64.b64encode(SMOKE.read_bytes()).decode()
    warm = lambda_handler(event, context)
    assert warm["statusCode"] == 200, warm
    event["body"] = base64.b64encode(body).decode()

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set
    before = proc_status_kib("VmRSS")
    cpu, wall = time.process_time(), time.perf_counter()
    response = lambda_handler(event, context)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = proc_status_kib("VmHWM")
    answer = json.loads(response["body"])
    return {
        "bytes": len(body),
        "status": response["statusCode"],
        "answer": answer.get("error") or answer.get("predicted_label"),
        "cpu_s": cpu,
        "wall_s": wall,
        "extra_mib": max(0, peak - before) / 1024,
    }


def run_child(name: str, timeout: float) -> dict:
    env = {**os.environ, "MODEL_DIR": str(ROOT / "models"), "POWERTOOLS_METRICS_DISABLED": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.hostile", "--child", name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        elapsed = time.perf_counter() - started
        return {"status": "killed", "answer": f"over {timeout:.0f} s", "wall_s": elapsed}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"status": f"exit {done.returncode}", "answer": tail[0][:60]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="payloads whose name contains this")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a kill")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure_one(args.child)), flush=True)
        return

    names = [n for n in ALL if args.only in n]
    print(f"machine: {describe()}")
    print(f"model: {ROOT / 'models'}; each payload in a fresh process after one clean request\n")
    columns = ("bytes", "status", "CPU s", "wall s", "+MiB")
    header = f"{'payload':<46} {columns[0]:>10} " + " ".join(f"{c:>7}" for c in columns[1:])
    header += "  answer"
    print(header)
    print("-" * len(header))
    for name in names:
        row = run_child(name, args.timeout)
        size = f"{row['bytes']:,}" if "bytes" in row else "?"
        cpu = f"{row['cpu_s']:.3f}" if "cpu_s" in row else "-"
        wall = f"{row['wall_s']:.3f}" if "wall_s" in row else "-"
        memory = f"{row['extra_mib']:.0f}" if "extra_mib" in row else "-"
        print(
            f"{name:<46} {size:>10} {row['status']!s:>7} {cpu:>7} {wall:>7} {memory:>7}  "
            f"{str(row.get('answer'))[:70]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
