"""Watch the scoring stack in production: the drift monitor on the newest rows it wrote to
S3, and one GitHub issue that says so when they drifted.

    python -m pneumonia.watch --bucket BUCKET [--prefix predictions/] \\
        --reference metrics/evaluate/reference.jsonl [--window 500] [--output-dir monitor] \\
        [--endpoint-url URL] [--repository owner/name] [--api-url URL] [--label model-drift] \\
        [--no-issue] [--reference-prevalence P] [--alpha 0.05] [--design-effect 1.5] \\
        [--permutations 1000] [--seed 0]

The scoring function (`pneumonia.serving.fanout`) writes one JSON row per scored image
under the output prefix, in the form `python -m pneumonia.batch` writes its lines. This
lists the objects under `--prefix` (paginated), keeps the newest `--window` of them by
LastModified (a heap of that size: memory bounded by the window, not by the listing),
downloads them and writes them oldest first to OUTPUT_DIR/window.jsonl, without their
`file` (the S3 key, which can carry patient ids). An object that is not a JSON row, or is
over MAX_ROW_BYTES, is counted and skipped with a warning (its position in the window only,
never its key or its content). Then `pneumonia.ops.monitor` compares all the window's ok
rows with the reference (a path, or s3://bucket/key read with the same client) and writes
OUTPUT_DIR/report.json and OUTPUT_DIR/drift.png; OUTPUT_DIR/window-stats.json says what
the window held.

On drift, one GitHub issue carries the figures (REST API, urllib): the oldest open issue
with `--label` that this tool opened (ISSUE_MARKER in its body) gets a comment, and when
there is none one is opened with the label. Without drift GitHub is not called. The token
is GITHUB_TOKEN's, from the environment only; it is sent over https only (plain http to
loopback only, for tests) and never across a redirect. Exit status: 0 no drift, 1 drift
(the issue opened or commented on, or `--no-issue`), 2 bad usage or input, no rows under
the prefix, an S3 error, or a GitHub API error (one line naming the HTTP status and the
API path, after the report and the plot are written).
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pneumonia.ops.monitor import (
    MonitorError,
    _positive,
    add_test_options,
    run_monitor,
)

log = logging.getLogger("watch")

WATCH_WINDOW = 500  # the newest objects compared (docs/benchmarks.md: windows of 500)
MAX_ROW_BYTES = 1024 * 1024  # a row with 336 features is about 4 kB; larger is not a row
DRIFT_LABEL = "model-drift"
ISSUE_TITLE = "Model drift in production scoring"
ISSUE_MARKER = "<!-- pneumonia.watch: model drift -->"  # marks the issues this tool opens
GITHUB_TIMEOUT_S = 30
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class WatchError(ValueError):
    """Input, S3 or GitHub trouble the command line turns into exit status 2."""


# ---------------------------------------------------------------- the window from S3


@dataclass(frozen=True, order=True)
class Listed:
    """One object of the listing: ordered by LastModified, then key (ties are sub-second)."""

    modified: datetime
    key: str
    size: int


def newest_objects(entries: Iterable[Listed], window: int) -> tuple[list[Listed], int]:
    """The newest `window` entries, oldest first, and how many there were in all: a min-heap
    of at most `window` entries, so that memory is the window's whatever the listing."""
    heap: list[Listed] = []
    total = 0
    for entry in entries:
        total += 1
        if len(heap) < window:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    return sorted(heap), total


def listing(client: Any, bucket: str, prefix: str) -> Iterable[Listed]:
    """Every object under s3://bucket/prefix (list_objects_v2, paginated), folders left out."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            if not entry["Key"].endswith("/"):
                yield Listed(entry["LastModified"], entry["Key"], int(entry["Size"]))


@dataclass
class Collected:
    """What the window held: counts and times, no key."""

    listed: int  # objects under the prefix
    objects: int  # the newest of them, the window
    rows: int = 0  # written to window.jsonl
    not_json: int = 0  # objects that are not a JSON object
    too_large: int = 0  # objects over MAX_ROW_BYTES, not read
    oldest: str | None = None  # LastModified of the window's first object, ISO 8601
    newest: str | None = None

    def fields(self) -> dict[str, Any]:
        """The JSON of window-stats.json."""
        return dict(vars(self))


def parse_row(data: bytes) -> dict[str, Any] | None:
    """An object's row, or None when it is not one JSON object."""
    try:
        row = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # JSON, UTF-8 and int-digit errors
        return None
    return row if isinstance(row, dict) else None


def collect_rows(client: Any, bucket: str, prefix: str, window: int, output: Path) -> Collected:
    """Write the newest `window` rows under the prefix to `output`, oldest first; their
    counts. WatchError when the prefix holds no object."""
    chosen, listed = newest_objects(listing(client, bucket, prefix), window)
    if not chosen:
        raise WatchError(f"no rows under s3://{bucket}/{prefix}: nothing to monitor")
    collected = Collected(
        listed,
        len(chosen),
        oldest=chosen[0].modified.isoformat(),
        newest=chosen[-1].modified.isoformat(),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as sink:
        for position, entry in enumerate(chosen, start=1):
            if entry.size > MAX_ROW_BYTES:
                collected.too_large += 1
                log.warning(
                    "object %d of %d: over %d bytes, skipped", position, len(chosen), MAX_ROW_BYTES
                )
                continue
            body = client.get_object(Bucket=bucket, Key=entry.key)["Body"]
            row = parse_row(body.read(MAX_ROW_BYTES + 1))
            if row is None:
                collected.not_json += 1
                log.warning("object %d of %d: not a JSON row, skipped", position, len(chosen))
                continue
            row.pop("file", None)  # the key: it can carry patient ids
            sink.write(json.dumps(row) + "\n")
            collected.rows += 1
    if collected.not_json or collected.too_large:
        log.warning(
            "%d of the window's %d objects skipped (%d not JSON rows, %d too large)",
            collected.not_json + collected.too_large,
            len(chosen),
            collected.not_json,
            collected.too_large,
        )
    return collected


def s3_object(url: str) -> tuple[str, str]:
    """(bucket, key) of s3://bucket/key; WatchError when either is missing."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise WatchError(f"{url}: expected s3://bucket/key")
    return bucket, key


def reference_file(reference: str, client: Any, directory: Path) -> Path:
    """The reference as a local file: the path itself, or s3://bucket/key downloaded."""
    if not reference.startswith("s3://"):
        return Path(reference)
    bucket, key = s3_object(reference)
    path = directory / "reference.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as sink:
        client.download_fileobj(bucket, key, sink)
    return path


# ---------------------------------------------------------------- GitHub


class GitHubError(WatchError):
    """A GitHub API call that failed: its HTTP status (or why it got none) and its path."""


def check_api_url(url: str) -> str:
    """An argparse type: an https URL, or http to loopback (a stand-in): the token goes
    there."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK):
        return url.rstrip("/")
    raise argparse.ArgumentTypeError(f"{url}: the API URL must be https (http for loopback only)")


def check_repository(text: str) -> str:
    """An argparse type: owner/name."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not owner/name")
    return text


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """The REST API answers without redirects; one is an error, never followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Refuse: urllib then raises the 3xx as an HTTPError."""
        return None


@dataclass(frozen=True)
class GitHub:
    """The few REST calls the drift issue needs, for one repository."""

    api_url: str
    repository: str
    token: str = field(repr=False)

    def call(self, method: str, path: str, body: dict | None = None, **query: Any) -> Any:
        """The JSON answer of one call; GitHubError naming the status and the path."""
        url = self.api_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(
            url,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": "pneumonia-watch",
                "Content-Type": "application/json",
            },
        )
        request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=GITHUB_TIMEOUT_S) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise GitHubError(f"GitHub API error: HTTP {error.code} on {method} {path}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise GitHubError(f"GitHub API unreachable on {method} {path}: {reason}") from None
        except ValueError:
            raise GitHubError(f"GitHub API error: not JSON on {method} {path}") from None

    def open_issue(self, label: str) -> dict | None:
        """The oldest open issue with the label that this tool opened, or None (the first
        100 open issues with the label: this tool keeps one)."""
        path = f"/repos/{self.repository}/issues"
        found = self.call(
            "GET",
            path,
            state="open",
            labels=label,
            sort="created",
            direction="asc",
            per_page=100,
        )
        for issue in found if isinstance(found, list) else []:
            names = {entry.get("name") for entry in issue.get("labels", [])}
            if (
                "pull_request" not in issue
                and label in names
                and ISSUE_MARKER in (issue.get("body") or "")
            ):
                return issue
        return None

    def report_drift(self, label: str, body: str) -> dict[str, Any]:
        """Comment on this tool's open issue, or open one: what was done, and where."""
        issue = self.open_issue(label)
        if issue is not None:
            number = issue["number"]
            path = f"/repos/{self.repository}/issues/{number}/comments"
            comment = self.call("POST", path, {"body": body})
            return {"action": "commented on", "issue": number, "url": comment.get("html_url")}
        created = self.call(
            "POST",
            f"/repos/{self.repository}/issues",
            {"title": ISSUE_TITLE, "body": f"{ISSUE_MARKER}\n{body}", "labels": [label]},
        )
        return {"action": "opened", "issue": created["number"], "url": created.get("html_url")}


def run_url() -> str | None:
    """The Actions run's page, when the job runs in one."""
    parts = [
        os.environ.get(name) for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    ]
    if not all(parts):
        return None
    server, repository, run_id = parts
    return f"{server}/{repository}/actions/runs/{run_id}"


def _number(value: Any) -> str:
    """A figure for the issue's table."""
    return "n/a" if value is None else f"{value:.4g}"


def issue_body(report: dict[str, Any], collected: Collected, url: str | None) -> str:
    """The figures of a drifted window, in Markdown: no key, no bucket."""
    counts = report["counts"]
    lines = [
        f"**Drift** in the newest {collected.objects} rows the scoring stack wrote "
        f"(LastModified {collected.oldest} to {collected.newest}): "
        + ", ".join(report["drifted_tests"]),
        "",
        "| test | statistic | p-value | level | drift |",
        "|---|---|---|---|---|",
    ]
    for name, test in report["tests"].items():
        if test["run"]:
            verdict = "**yes**" if test["drift"] else "no"
            figures = [_number(test["statistic"]), _number(test["p_value"]), _number(test["level"])]
        else:
            verdict = "not run: " + str(test["reason"]).replace("|", "\\|")
            figures = ["n/a"] * 3
        lines.append(f"| {name} | " + " | ".join(figures) + f" | {verdict} |")
    run = [name for name, test in report["tests"].items() if test["run"]]
    prevalence = report["tests"].get("prevalence", {})
    lines += [
        "",
        f"- tests run: {len(run)} ({', '.join(run)}), alpha {report['alpha']} with "
        f"{report['correction']} correction, design effect {report['design_effect']}",
        f"- window: {collected.objects} objects of {collected.listed} under the prefix; "
        f"{counts['rows']} rows, {counts['ok']} ok, {counts['errors']} errors "
        f"(error share {counts['error_share']:.1%}); {collected.not_json} not JSON, "
        f"{collected.too_large} too large; reference {counts['reference']} rows",
    ]
    if "estimate" in prevalence:
        low, high = prevalence["ci95"]
        lines.append(
            f"- share of pneumonia: window {prevalence['estimate']:.3f} "
            f"[{low:.3f}, {high:.3f}], reference {prevalence['reference']:.3f}"
        )
    versions = ", ".join(report.get("model_versions", [])) or "not given"
    lines.append(f"- model versions in the window: {versions}")
    lines += [f"- warning: {warning}" for warning in report.get("warnings", [])]
    if url:
        lines.append(f"- run: {url}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def watch_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parse = argparse.ArgumentParser(
        prog="python -m pneumonia.watch", description=__doc__.splitlines()[0]
    )
    parse.add_argument("--bucket", required=True, help="where the scoring stack writes rows")
    parse.add_argument("--prefix", default="predictions/", help="its OUTPUT_PREFIX")
    parse.add_argument(
        "--reference", required=True, help="evaluate's reference.jsonl: a path or s3://bucket/key"
    )
    parse.add_argument(
        "--window", type=_positive, default=WATCH_WINDOW, help="the newest N objects"
    )
    parse.add_argument("--output-dir", type=Path, default=Path("monitor"))
    parse.add_argument("--endpoint-url", help="an S3-compatible endpoint instead of AWS")
    parse.add_argument(
        "--api-url",
        type=check_api_url,
        default=os.environ.get("GITHUB_API_URL") or "https://api.github.com",
        help="GitHub's REST API (default: GITHUB_API_URL, else https://api.github.com)",
    )
    parse.add_argument(
        "--repository",
        type=check_repository,
        default=os.environ.get("GITHUB_REPOSITORY"),
        help="owner/name of the drift issue (default: GITHUB_REPOSITORY)",
    )
    parse.add_argument("--label", default=DRIFT_LABEL, help="the drift issue's label")
    parse.add_argument(
        "--no-issue", action="store_true", help="report only: never call GitHub (exit 1 on drift)"
    )
    add_test_options(parse)
    return parse


def monitor_args(args: argparse.Namespace, reference: Path, current: Path) -> argparse.Namespace:
    """pneumonia.ops.monitor's options for the whole window: report and plot in OUTPUT_DIR."""
    return argparse.Namespace(
        reference=reference,
        current=current,
        window=None,  # the window is the newest objects, chosen here
        reference_prevalence=args.reference_prevalence,
        alpha=args.alpha,
        design_effect=args.design_effect,
        permutations=args.permutations,
        seed=args.seed,
        report=args.output_dir / "report.json",
        plot=args.output_dir / "drift.png",
        no_plot=False,  # the workflow uploads the plot with the report
    )


def watch(args: argparse.Namespace) -> tuple[dict[str, Any], Collected]:
    """Collect the window, write its counts, run the monitor: its report, and the counts."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3", endpoint_url=args.endpoint_url)
    window_path = args.output_dir / "window.jsonl"
    try:
        collected = collect_rows(client, args.bucket, args.prefix, args.window, window_path)
        reference = reference_file(args.reference, client, args.output_dir)
    except ClientError as error:  # the message names the operation, never the key
        code = error.response.get("Error", {}).get("Code", "unknown")
        operation = getattr(error, "operation_name", "S3")
        raise WatchError(f"S3 error on {operation} in bucket {args.bucket}: {code}") from None
    except BotoCoreError as error:
        raise WatchError(f"S3 unreachable: {type(error).__name__}") from None
    (args.output_dir / "window-stats.json").write_text(
        json.dumps(collected.fields(), indent=2) + "\n"
    )
    report = run_monitor(monitor_args(args, reference, window_path))
    return report, collected


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: 0 no drift, 1 drift (issue opened or commented on), 2 bad usage or
    input, or an S3 or GitHub error."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    args = watch_parser().parse_args(argv)
    try:
        report, collected = watch(args)
    except (WatchError, MonitorError, OSError) as error:
        print(f"watch: error: {error}", file=sys.stderr)
        return 2
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    summary: dict[str, Any] = {
        "drift": report["drift"],
        "drifted_tests": report["drifted_tests"],
        **{f"{name}_p": test["p_value"] for name, test in report["tests"].items() if test["run"]},
        "objects": collected.objects,
        "skipped": collected.not_json + collected.too_large,
        "report": report["report"],
        "plot": report["plot"],
    }
    status = 0
    if not report["drift"]:
        summary["github"] = "no drift: no issue opened or updated"
    elif args.no_issue:
        summary["github"] = "drift: --no-issue, GitHub not called"
        status = 1
    else:
        token = os.environ.get("GITHUB_TOKEN")
        if not token or not args.repository:
            missing = "GITHUB_TOKEN" if not token else "--repository (or GITHUB_REPOSITORY)"
            print(f"watch: error: drift, but {missing} is not set: no issue", file=sys.stderr)
            return 2
        body = issue_body(report, collected, run_url())
        try:
            done = GitHub(args.api_url, args.repository, token).report_drift(args.label, body)
        except GitHubError as error:
            print(f"watch: error: {error}", file=sys.stderr)
            return 2
        summary["github"] = f"drift: {done['action']} issue #{done['issue']}"
        summary["issue_url"] = done["url"]
        status = 1
    print(json.dumps(summary))
    return status


if __name__ == "__main__":
    sys.exit(main())
