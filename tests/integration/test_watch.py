"""The production drift check, end to end: rows in the form the scoring stack writes them, in
a real S3-compatible server (moto's, on loopback), the drift monitor on the newest of them,
and the drift issue through a loopback stand-in for GitHub's REST API that keeps its issues
and comments in memory and answers in GitHub's JSON shapes."""

from __future__ import annotations

import heapq
import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from pneumonia.evaluation.reference import write_reference
from pneumonia.ops.watch import ISSUE_MARKER, Listed, main, newest_objects
from tests.unit.test_monitor import PRIOR, draw

pytestmark = pytest.mark.integration

TOKEN = "ghs_test-token-0123456789"
REPOSITORY = "octo/pneumonia"
LABEL = "model-drift"
VERSION = "sha256-0123456789ab"
PREFIX = "predictions/"
ROWS = 50


# ---------------------------------------------------------------- GitHub's REST API, on loopback


class GitHubStandIn:
    """Issues and comments of one repository, in memory; every request recorded."""

    def __init__(self) -> None:
        self.issues: list[dict] = []
        self.comments: dict[int, list[dict]] = {}
        self.requests: list[dict] = []
        self.fail_with: int | None = None  # answer every request with this status
        self.url = ""  # set once the server listens
        self.lock = threading.Lock()

    def issue(self, title: str, body: str, labels: list[str], login: str) -> dict:
        number = len(self.issues) + 1
        made = {
            "id": 1000 + number,
            "node_id": f"I_{number}",
            "url": f"https://api.github.com/repos/{REPOSITORY}/issues/{number}",
            "html_url": f"https://github.com/{REPOSITORY}/issues/{number}",
            "number": number,
            "state": "open",
            "title": title,
            "body": body,
            "user": {"login": login, "type": "Bot" if login.endswith("[bot]") else "User"},
            "labels": [
                {"id": 7, "name": name, "color": "d73a4a", "default": False} for name in labels
            ],
            "comments": 0,
            "created_at": datetime.now(UTC).isoformat(),
        }
        self.issues.append(made)
        self.comments[number] = []
        return made

    def answer(self, method: str, url: str, headers, body: bytes) -> tuple[int, object]:
        parts = urlsplit(url)
        with self.lock:
            self.requests.append(
                {"method": method, "path": parts.path, "query": parse_qs(parts.query)}
            )
            if headers.get("Authorization") != f"Bearer {TOKEN}":
                return 401, {"message": "Bad credentials"}
            if self.fail_with is not None:
                return self.fail_with, {"message": "stand-in failure"}
            base = f"/repos/{REPOSITORY}/issues"
            if method == "GET" and parts.path == base:
                query = parse_qs(parts.query)
                wanted = set(query.get("labels", [""])[0].split(",")) - {""}
                state = query.get("state", ["open"])[0]
                return 200, [
                    issue
                    for issue in self.issues
                    if issue["state"] == state
                    and wanted <= {label["name"] for label in issue["labels"]}
                ]
            if method == "POST" and parts.path == base:
                fields = json.loads(body)
                made = self.issue(
                    fields["title"], fields["body"], fields["labels"], "github-actions[bot]"
                )
                return 201, made
            if method == "POST" and parts.path.startswith(base + "/"):
                number = int(parts.path.removeprefix(base + "/").removesuffix("/comments"))
                if number not in self.comments or not parts.path.endswith("/comments"):
                    return 404, {"message": "Not Found"}
                comment_id = 5000 + sum(len(c) for c in self.comments.values())
                comment = {
                    "id": comment_id,
                    "body": json.loads(body)["body"],
                    "user": {"login": "github-actions[bot]", "type": "Bot"},
                    "html_url": f"https://github.com/{REPOSITORY}/issues/{number}"
                    f"#issuecomment-{comment_id}",
                    "issue_url": f"https://api.github.com/repos/{REPOSITORY}/issues/{number}",
                    "created_at": datetime.now(UTC).isoformat(),
                }
                self.comments[number].append(comment)
                self.issues[number - 1]["comments"] += 1
                return 201, comment
            return 404, {"message": "Not Found"}


@pytest.fixture
def github():
    state = GitHubStandIn()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = state.answer(
                self.command, self.path, self.headers, self.rfile.read(length)
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- S3 and the rows


@pytest.fixture(scope="module")
def s3(s3_server):
    import boto3

    return boto3.client("s3", endpoint_url=s3_server)


@pytest.fixture
def bucket(s3) -> str:
    name = f"watch-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Evaluate's reference, written by its own writer: 400 validation-like images at PRIOR."""
    labels, probabilities, features = draw(400, PRIOR, np.random.default_rng(0), exact=True)
    path = tmp_path_factory.mktemp("reference") / "reference.jsonl"
    write_reference(path, labels, probabilities, features)
    return path


def scored_row(key: str, probability: float, number: int) -> dict:
    """A row as pneumonia.serving.fanout writes it: batch's fields, the input key as `file`."""
    label = "PNEUMONIA" if probability >= 0.5 else "NORMAL"
    return {
        "file": key,
        "sha256": f"{number:064x}",
        "status": "ok",
        "predicted_label": label,
        "probability_pneumonia": float(probability),
        "decision": label,
        "modelVersion": VERSION,
    }


def put_rows(s3, bucket: str, probabilities, start: int = 0, name: str = "patient") -> list[str]:
    """One object per row under PREFIX, as fanout names them; their keys."""
    keys = []
    for offset, probability in enumerate(probabilities):
        number = start + offset
        source = f"incoming/{name}-{number:04d}/chest.dcm"
        key = f"{PREFIX}{source.removeprefix('incoming/')}.json"
        row = scored_row(source, probability, number)
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(row).encode())
        keys.append(key)
    return keys


def in_distribution(seed: int = 1) -> np.ndarray:
    return draw(ROWS, PRIOR, np.random.default_rng(seed))[1]


def drifted(seed: int = 2) -> np.ndarray:
    """Probabilities of a window whose share of pneumonia fell from 75% to 20%."""
    return draw(ROWS, 0.2, np.random.default_rng(seed))[1]


def watch(bucket: str, out: Path, api_url: str, *extra: str) -> int:
    return main(
        [
            "--bucket",
            bucket,
            "--prefix",
            PREFIX,
            "--output-dir",
            str(out),
            "--api-url",
            api_url,
            "--repository",
            REPOSITORY,
            "--label",
            LABEL,
            "--permutations",
            "200",
            *extra,
        ]
    )


@pytest.fixture
def environment(monkeypatch, s3_server, reference):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_API_URL"):
        monkeypatch.delenv(name, raising=False)
    return ["--endpoint-url", s3_server, "--reference", str(reference)]


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def window_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "window.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the tests


def test_no_drift_exits_0_with_the_report_and_no_github_call(
    s3, bucket, github, environment, reference, tmp_path, capsys
):
    # GIVEN rows from the reference's distribution, and the reference itself in S3
    put_rows(s3, bucket, in_distribution())
    s3.upload_file(str(reference), bucket, "monitor/reference.jsonl")
    in_s3 = [
        "--endpoint-url",
        environment[1],
        "--reference",
        f"s3://{bucket}/monitor/reference.jsonl",
    ]
    # WHEN the watch runs on them
    status = watch(bucket, tmp_path, github.url, *in_s3)
    # THEN no drift, the report and the plot on disk, the whole window compared, no key in
    # the window file, and GitHub never called
    assert status == 0
    report = read_report(tmp_path)
    assert report["drift"] is False and report["drifted_tests"] == []
    assert report["counts"]["window"] == ROWS and report["counts"]["reference"] == 400
    assert report["tests"]["ks"]["run"] and report["tests"]["prevalence"]["run"]
    assert (tmp_path / "drift.png").read_bytes().startswith(b"\x89PNG")
    rows = window_rows(tmp_path)
    assert len(rows) == ROWS and all("file" not in row for row in rows)
    assert github.requests == []
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["drift"] is False and "no issue" in summary["github"]


def test_drift_exits_1_and_opens_one_issue_with_the_label_and_the_figures(
    s3, bucket, github, environment, tmp_path, monkeypatch
):
    # GIVEN a drifted window, an Actions run, and an issue with the label opened by a person
    put_rows(s3, bucket, drifted())
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", REPOSITORY)
    monkeypatch.setenv("GITHUB_RUN_ID", "4242")
    github.issue("Is the model drifting?", "a person's question", [LABEL], "someone")
    # WHEN the watch runs
    status = watch(bucket, tmp_path, github.url, *environment)
    # THEN exit 1 and one new issue, labelled, carrying the report's own figures
    assert status == 1
    report = read_report(tmp_path)
    assert report["drift"] is True and {"ks", "prevalence"} <= set(report["drifted_tests"])
    mine = [issue for issue in github.issues if issue["user"]["login"] == "github-actions[bot]"]
    assert len(mine) == 1 and len(github.issues) == 2
    issue = mine[0]
    assert [label["name"] for label in issue["labels"]] == [LABEL]
    body = issue["body"]
    assert body.startswith(ISSUE_MARKER)
    for name in ("ks", "prevalence"):
        test = report["tests"][name]
        assert f"| {name} | {test['statistic']:.4g} | {test['p_value']:.4g} |" in body
    assert "mmd | n/a" in body  # the rows carry no features: not run, and said why
    assert f"newest {ROWS} rows" in body and f"{ROWS} ok" in body
    assert "tests run: 2" in body and VERSION in body
    assert "https://github.com/octo/pneumonia/actions/runs/4242" in body
    assert "incoming/" not in body and "patient-" not in body  # no key
    assert github.comments[1] == []  # the person's issue is not this tool's
    methods = [(r["method"], r["path"]) for r in github.requests]
    assert methods == [
        ("GET", f"/repos/{REPOSITORY}/issues"),
        ("POST", f"/repos/{REPOSITORY}/issues"),
    ]
    assert github.requests[0]["query"]["labels"] == [LABEL]


def test_a_second_drifted_run_comments_on_the_same_issue(
    s3, bucket, github, environment, tmp_path, capsys
):
    # GIVEN a drifted window, watched once (one issue opened)
    put_rows(s3, bucket, drifted())
    assert watch(bucket, tmp_path / "first", github.url, *environment) == 1
    assert len(github.issues) == 1
    # WHEN the next scheduled run finds it drifted still
    status = watch(bucket, tmp_path / "second", github.url, *environment)
    # THEN the same issue gets a comment with the figures, and no second issue is opened
    assert status == 1
    assert len(github.issues) == 1
    (comment,) = github.comments[1]
    p_value = read_report(tmp_path / "second")["tests"]["prevalence"]["p_value"]
    assert f"{p_value:.4g}" in comment["body"] and "tests run: 2" in comment["body"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["github"] == "drift: commented on issue #1"
    assert summary["issue_url"] == comment["html_url"]


def test_the_window_is_the_newest_objects_oldest_first(s3, bucket, github, environment, tmp_path):
    # GIVEN three batches a second apart (S3 times are to the second), whose keys sort the
    # other way round: the oldest batch has the highest keys
    oldest = put_rows(s3, bucket, [0.9, 0.8], start=0, name="z")
    time.sleep(1.05)
    middle = put_rows(s3, bucket, [0.7, 0.6], start=10, name="m")
    time.sleep(1.05)
    newest = put_rows(s3, bucket, [0.3, 0.2], start=20, name="a")
    assert len(oldest + middle + newest) == 6
    # WHEN the watch keeps a window of 4
    watch(bucket, tmp_path, github.url, *environment, "--window", "4", "--no-issue")
    # THEN the window holds the 4 newest rows, oldest first, and says what it left out
    numbers = [int(row["sha256"], 16) for row in window_rows(tmp_path)]
    assert sorted(numbers[:2]) == [10, 11] and sorted(numbers[2:]) == [20, 21]
    stats = json.loads((tmp_path / "window-stats.json").read_text())
    assert stats["listed"] == 6 and stats["objects"] == 4 and stats["rows"] == 4
    assert read_report(tmp_path)["counts"]["window"] == 4
    assert github.requests == []  # --no-issue


def test_newest_objects_keeps_a_heap_of_the_window_only():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    entries = [Listed(start + timedelta(seconds=i // 3), f"key-{i:05d}", 100) for i in range(3000)]
    shuffled = random.Random(0).sample(entries, len(entries))
    kept, total = newest_objects(iter(shuffled), 25)
    assert total == 3000
    assert kept == sorted(entries)[-25:]
    assert kept == heapq.nlargest(25, entries)[::-1]


@pytest.mark.parametrize("failure", [500, 403])
def test_a_github_error_exits_2_naming_the_status_with_the_report_on_disk(
    s3, bucket, github, environment, tmp_path, capsys, failure
):
    # GIVEN a drifted window and a GitHub API that answers with an error
    put_rows(s3, bucket, drifted())
    github.fail_with = failure
    # WHEN the watch runs
    status = watch(bucket, tmp_path, github.url, *environment)
    # THEN exit 2 with one line naming the status and the path; the report written first
    assert status == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert f"HTTP {failure}" in line and f"/repos/{REPOSITORY}/issues" in line
    assert TOKEN not in err
    assert read_report(tmp_path)["drift"] is True
    assert (tmp_path / "drift.png").is_file()
    assert github.issues == [] and len(github.requests) == 1


def test_an_unreachable_github_exits_2(s3, bucket, environment, tmp_path, capsys):
    put_rows(s3, bucket, drifted())
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    assert watch(bucket, tmp_path, closed, *environment) == 2
    assert f"unreachable on GET /repos/{REPOSITORY}/issues" in capsys.readouterr().err
    assert read_report(tmp_path)["drift"] is True


def test_drift_without_a_token_exits_2_after_the_report(
    s3, bucket, github, environment, tmp_path, capsys, monkeypatch
):
    put_rows(s3, bucket, drifted())
    monkeypatch.delenv("GITHUB_TOKEN")
    assert watch(bucket, tmp_path, github.url, *environment) == 2
    assert "GITHUB_TOKEN is not set" in capsys.readouterr().err
    assert read_report(tmp_path)["drift"] is True and github.requests == []


def test_an_empty_prefix_exits_2(s3, bucket, github, environment, tmp_path, capsys):
    # GIVEN a bucket with studies under incoming/ but no rows under the output prefix
    s3.put_object(Bucket=bucket, Key="incoming/patient-0001/chest.dcm", Body=b"DICM")
    # WHEN the watch runs
    status = watch(bucket, tmp_path, github.url, *environment)
    # THEN exit 2, saying so, with nothing compared and GitHub not called
    assert status == 2
    assert f"no rows under s3://{bucket}/{PREFIX}" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists() and github.requests == []


def test_an_s3_error_exits_2_naming_the_operation(github, environment, tmp_path, capsys):
    assert watch("no-such-bucket-watch", tmp_path, github.url, *environment) == 2
    assert "S3 error on ListObjectsV2 in bucket no-such-bucket-watch: NoSuchBucket" in (
        capsys.readouterr().err
    )
    assert github.requests == []


def test_a_row_that_is_not_json_is_skipped_and_counted_without_its_key(
    s3, bucket, github, environment, tmp_path, capsys, caplog
):
    # GIVEN the window's rows and, among them, two objects that are not JSON rows
    put_rows(s3, bucket, in_distribution())
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}patient-secret-1.json", Body=b'{"status": "ok"')
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}patient-secret-2.json", Body=b"[0.5]")
    # WHEN the watch runs
    status = watch(bucket, tmp_path, github.url, *environment)
    # THEN both are skipped and counted, the rest compared (no drift), and no key is logged
    assert status == 0
    stats = json.loads((tmp_path / "window-stats.json").read_text())
    assert stats["listed"] == ROWS + 2 and stats["not_json"] == 2 and stats["rows"] == ROWS
    assert len(window_rows(tmp_path)) == ROWS
    assert read_report(tmp_path)["counts"]["rows"] == ROWS
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("not a JSON row" in message for message in warnings) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["skipped"] == 2
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "werkzeug")  # not moto's
    for text in (ours, captured.out, captured.err):
        assert "patient" not in text and "incoming/" not in text


def test_the_token_goes_to_loopback_or_https_only(environment, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        watch("any", tmp_path, "http://api.example.com", *environment)
    assert exit_status.value.code == 2
    assert "must be https" in capsys.readouterr().err
