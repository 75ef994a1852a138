"""The shipped data sets (data/), their catalog and pins, `llmkit data list` and `llmkit data get`.

`data get` runs against an HTTP server the tests start on 127.0.0.1 (with Range support, and modes
that cut a reply short, corrupt it or ignore Range), serving the upstream bytes of rt-polarity,
which are the shipped files decompressed: the downloads are checked against the real pins.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import re
import subprocess
import threading
from pathlib import Path

import pytest

from llmkit.cli import main
from llmkit.data.catalog import DATA_DIR, DATASETS, UpstreamFile, UpstreamRepo, get_dataset
from llmkit.data.download import fetch_file, git_blob_sha1
from llmkit.errors import LlmkitError

ROOT = Path(__file__).resolve().parents[1]
# what the catalog does not list: descriptions, and downloads (gitignored)
NOT_DATA = {"README.md", "SOURCE.md"}


def read_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def count_records(path: Path) -> int:
    """Records as the catalog counts them: sentences in CoNLL, rows after the header in .tsv, else lines."""
    text = read_bytes(path).decode("utf-8")
    stem = path.name.removesuffix(".gz")
    if stem.endswith(".conll"):
        return sum(1 for block in re.split(r"\n\s*\n", text) if block.strip())
    lines = len(text.splitlines())  # blank lines count: tinyshakespeare has them between speeches
    return lines - 1 if stem.endswith(".tsv") else lines


# ---- the shipped files and the catalog -----------------------------------------------------------
def test_catalog_lists_every_shipped_file_and_its_record_count():
    shipped = {
        p.relative_to(DATA_DIR).as_posix()
        for p in DATA_DIR.rglob("*")
        if p.is_file() and p.name not in NOT_DATA and "upstream" not in p.relative_to(DATA_DIR).parts
    }
    listed = {f.path for d in DATASETS for f in d.files}
    assert listed == shipped
    assert len({d.name for d in DATASETS}) == len(DATASETS) == 9
    for dataset in DATASETS:
        assert (DATA_DIR / dataset.source).is_file() and (DATA_DIR / dataset.folder).is_dir()
        assert dataset.commercial in ("yes", "no", "unclear")
        for f in dataset.files:
            assert f.path.startswith(dataset.folder + "/")
            if f.records is not None:
                assert count_records(DATA_DIR / f.path) == f.records, f.path


def test_large_files_are_gzipped_and_gzip_headers_carry_no_name_or_time():
    for path in DATA_DIR.rglob("*"):
        if not path.is_file() or "upstream" in path.relative_to(DATA_DIR).parts:
            continue
        if path.suffix == ".gz":
            header = path.read_bytes()[:10]
            assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0", f"{path}: not gzip -n"
        else:
            assert path.stat().st_size < 400_000, f"{path} is large: gzip -9 -n it"


def test_pins_of_byte_identical_copies_match_the_shipped_bytes(tmp_path):
    identical = [pin for d in DATASETS if not isinstance(d.upstream, UpstreamRepo) for pin in d.upstream]
    identical = [pin for pin in identical if pin.identical]
    assert len(identical) == 7  # tinyshakespeare, rt-polarity x2, dialogsum dev/test, wnut17 dev/test
    for pin in identical:
        data = read_bytes(DATA_DIR / pin.identical)
        assert len(data) == pin.size, pin.path
        assert hashlib.sha256(data).hexdigest() == pin.sha256, pin.path
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == pin.git_blob, pin.path
    # git_blob_sha1 is git's own object id (git hash-object), not only the formula above
    sample = tmp_path / "sample.txt"
    sample.write_bytes(read_bytes(DATA_DIR / "ner/wnut17/dev.conll"))
    git = subprocess.run(["git", "hash-object", str(sample)], capture_output=True, text=True, check=True)
    assert git_blob_sha1(sample) == git.stdout.strip() == "128e929f695c9f7499a8e652ee46cd505848e34e"


def test_every_pin_is_the_provenance_its_source_md_records():
    for dataset in DATASETS:
        source = (DATA_DIR / dataset.source).read_text()
        pins = [dataset.upstream] if isinstance(dataset.upstream, UpstreamRepo) else dataset.upstream
        for pin in pins:
            assert pin.repo in source and pin.commit in source, (dataset.name, pin)
            if isinstance(pin, UpstreamFile):
                assert pin.git_blob in source, (dataset.name, pin.path)
                assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256) and re.fullmatch(r"[0-9a-f]{40}", pin.commit)
                assert pin.url() == f"https://raw.githubusercontent.com/{pin.repo}/{pin.commit}/{pin.path}"


def test_nothing_in_the_project_reads_the_shared_folder():
    """Only data/*/SOURCE.md and docs may name where the data came from; code and configs use data/."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    # a path into it: ../shared/..., ../../shared/..., "shared" / "data" (pathlib), shared/data
    pattern = re.compile(r"\.\./(\.\./)*shared/|[\"']shared[\"']\s*/|shared/data")
    me = Path(__file__).relative_to(ROOT).as_posix()  # this file spells the pattern out
    names = [n for n in listed.stdout.splitlines() if n.endswith((".py", ".toml", ".sh")) or n == "Makefile"]
    offenders = [n for n in names if n != me and pattern.search((ROOT / n).read_text(encoding="utf-8"))]
    assert names and offenders == []


# ---- llmkit data list ---------------------------------------------------------------------------------
def test_data_list_prints_a_table_with_licenses_flagged(capsys):
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "task", "size", "records", "license"]
    rows = {line.split()[0]: line for line in lines[1:10]}
    assert list(rows) == [d.name for d in DATASETS]
    assert rows["dialogsum"].endswith("CC BY-NC-SA 4.0 *")
    assert all(rows[n].endswith(" ?") for n in ("sst2", "rt-polarity", "finance_fomc"))
    assert not any(rows[n].endswith((" *", " ?")) for n in ("tinyshakespeare", "fra-eng", "wnut17"))
    assert "67,349 / 872 / 1,821" in rows["sst2"] and "1.7 MB" in rows["sst2"]
    assert lines[10].startswith("9 data sets")
    assert lines[11].startswith("* non-commercial") and lines[12].startswith("? license unclear")

    assert main(["data", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    sst2 = next(d for d in listed if d["name"] == "sst2")
    assert sst2["commercial_use"] == "unclear" and sst2["size_on_disk"] == get_dataset("sst2").size_on_disk()
    assert [f["git_blob_sha1"] for f in sst2["upstream"]["files"]][0] == "16a1dae29e39e0b50ee67cbd4de91e4cde0bbaf7"
    fomc = next(d for d in listed if d["name"] == "finance_fomc")
    assert fomc["upstream"]["repository"] == "sophia-jihye/Collecting_FOMC_Minutes"


# ---- llmkit data get against a local server -----------------------------------------------------------
class Origin:
    """What the test server serves (URL path -> bytes), how it misbehaves, and what it was asked."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_after: dict[str, int] = {}  # path -> send only this many bytes, once
        self.corrupt = False
        self.ignore_range = False


def make_handler(origin: Origin) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            wanted = self.headers.get("Range")
            origin.requests.append((self.path, wanted))
            body = origin.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            if origin.corrupt:
                body = bytes([body[0] ^ 1]) + body[1:]
            start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted and not origin.ignore_range else None
            if start is not None and start >= len(body):
                self.send_error(416)
                return
            self.send_response(200 if start is None else 206)
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                body = body[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = origin.cut_after.pop(self.path, None)
            self.wfile.write(body if cut is None else body[:cut])
            if cut is not None:
                self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def origin():
    """A server with rt-polarity's upstream files (the shipped files, decompressed) at their pinned paths."""
    pins = get_dataset("rt-polarity").upstream
    files = {f"/{pin.repo}/{pin.commit}/{pin.path}": read_bytes(DATA_DIR / pin.identical) for pin in pins}
    state = Origin(files)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def get(origin: Origin, out: Path) -> int:
    return main(["data", "get", "rt-polarity", "--out", str(out), "--mirror", origin.base])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


def test_data_get_downloads_and_verifies_then_reuses(origin, tmp_path, capsys):
    out = tmp_path / "rt"
    assert get(origin, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["rt-polarity.neg", "rt-polarity.pos"]
    for path, body in origin.files.items():
        assert (out / path.rsplit("/", 1)[1]).read_bytes() == body
    assert "rt-polarity: 2 files, 1.2 MB (0 already there), SHA-256 and git blob SHA-1 verified" in (
        capsys.readouterr().out
    )
    assert [r[1] for r in origin.requests] == [None, None]
    assert get(origin, out) == 0  # verified files are kept: no request
    assert "(2 already there)" in capsys.readouterr().out and len(origin.requests) == 2


def test_data_get_resumes_an_interrupted_download_with_a_range_request(origin, tmp_path, capsys):
    out = tmp_path / "rt"
    pos = next(p for p in origin.files if p.endswith(".pos"))
    origin.cut_after[pos] = 300_000
    assert get(origin, out) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "download interrupted after 300,000 of 626,395 bytes" in line and "run the same command again" in line
    assert (out / "rt-polarity.pos.part").stat().st_size == 300_000 and not (out / "rt-polarity.pos").exists()

    assert get(origin, out) == 0
    assert (pos, "bytes=300000-") in origin.requests
    assert (out / "rt-polarity.pos").read_bytes() == origin.files[pos]
    assert not (out / "rt-polarity.pos.part").exists()


def test_data_get_restarts_when_the_server_ignores_range(origin, tmp_path):
    out = tmp_path / "rt"
    pos = next(p for p in origin.files if p.endswith(".pos"))
    origin.cut_after[pos] = 100_000
    assert get(origin, out) == 2
    origin.ignore_range = True  # the 200 reply holds the whole file: the part must not be appended to
    assert get(origin, out) == 0
    assert (pos, "bytes=100000-") in origin.requests
    assert (out / "rt-polarity.pos").read_bytes() == origin.files[pos]


def test_data_get_rejects_corrupted_bytes_and_leaves_no_file(origin, tmp_path, capsys):
    out = tmp_path / "rt"
    origin.corrupt = True
    assert get(origin, out) == 2
    [line] = error_lines(capsys.readouterr().err)
    pin = get_dataset("rt-polarity").upstream[0]  # the first file fetched
    body = origin.files[f"/{pin.repo}/{pin.commit}/{pin.path}"]
    served = hashlib.sha256(bytes([body[0] ^ 1]) + body[1:]).hexdigest()
    assert f"SHA-256 {served}, expected {pin.sha256}" in line and "partial file removed" in line
    assert list(out.iterdir()) == []


def test_fetch_file_finishes_a_complete_part_on_416(origin, tmp_path):
    body = b"hello, pinned world\n"
    origin.files["/o/r/" + "c" * 40 + "/f.txt"] = body
    pin = UpstreamFile("o/r", "c" * 40, "f.txt", len(body), hashlib.sha256(body).hexdigest(), "")
    pin = UpstreamFile(**{**pin.__dict__, "git_blob": hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()})
    (tmp_path / "f.txt.part").write_bytes(body)
    fetched = fetch_file(pin, tmp_path / "f.txt", origin.base)
    assert origin.requests[-1][1] == f"bytes={len(body)}-" and fetched.path.read_bytes() == body
    with pytest.raises(LlmkitError, match="HTTP 404"):
        fetch_file(UpstreamFile("o/r", "d" * 40, "f.txt", 1, "0" * 64, "0" * 40), tmp_path / "g.txt", origin.base)


def test_data_get_unknown_name_and_whole_repository_upstreams(tmp_path, capsys):
    assert main(["data", "get", "no-such-set", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown data set 'no-such-set'" in err and "tinyshakespeare, sst2" in err
    assert main(["data", "get", "medical_medquad", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert (
        out.count("\n") == 1 and "abachaa/MedQuAD" in out and "checkout 577bd37b96c02d1833b2c9eed2de9f96964e96cb" in out
    )
    assert not (tmp_path / "m").exists()
