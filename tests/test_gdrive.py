"""Google Drive sources against a local server that behaves like Drive: confirmation pages, cookies, refusals."""

import dataclasses
import hashlib
import json
import re
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import torch

import segzoo
from segzoo.weights import ChecksumMismatchError, WeightsUnavailableError, fetch_weights
from segzoo.weights.cache import LOCK_FILE_NAME
from segzoo.weights.download import partial_path
from segzoo.weights.fetch import ManualDownloadRequired
from segzoo.weights.gdrive import file_id
from segzoo.zoo import WeightSource
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict

SMALL, LARGE = "1SmallFileId0123456789", "1LargeFileId0123456789"
OLD_LINK, OLD_COOKIE = "0BOldLinkId0123", "0BOldCookieId01"
QUOTA, LOGIN, FORBIDDEN, GONE, PAGE = "1QuotaId0123", "1LoginId0123", "1ForbidId0123", "1GoneId01234", "1PageId01234"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FILE_NAME = "regproxy_test.pth"

WARNING_FORM = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">{name}</a> (1.0M)</span> is too
large for Google to scan for viruses. Would you still like to download this file?</p>
<form id="download-form" action="{base}/download" method="get"><input type="submit" id="uc-download-link"
value="Download anyway"/><input type="hidden" name="id" value="{id}"><input type="hidden" name="export"
value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}">
</form></div></div></body></html>"""
WARNING_LINK = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>{link}</body></html>"""
QUOTA_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>
<div class="uc-main"><p class="uc-error-caption">Sorry, you can't view or download this file at this time.</p>
<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing the
file again later.</p></div></body></html>"""
LOGIN_PAGE = "<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head><body>Sign in</body></html>"
FORBIDDEN_PAGE = """<!DOCTYPE html><html><head><title>Google Drive</title></head><body><h1>You need access</h1>
<p>Request access, or switch to an account with access.</p></body></html>"""
GONE_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - 404</title></head><body><p>Sorry, the file you have
requested does not exist.</p></body></html>"""
OTHER_PAGE = "<!DOCTYPE html><html><head><title>Google Drive</title></head><body>Something else</body></html>"


class DriveServer:
    """Imitates Google Drive's download endpoints on 127.0.0.1.

    ``/uc?export=download&id=X`` redirects (303) to ``/download?id=X&export=download``, which serves a small
    file at once; a large one (``large``) first gets the current confirmation page (a form carrying ``id``,
    ``export``, ``confirm``, ``uuid``), or an older one (``old_style``: a ``confirm=`` link back to ``/uc``
    with the token in a ``download_warning`` cookie, or the cookie alone). Files come with
    Content-Disposition, Last-Modified and Range/If-Range support. ``refuse`` maps ids to refusals; knobs:
    ``truncate`` (cut the next N file bodies in half), ``page_instead`` (answer the next N file requests
    with a web page), ``quota_after_confirm``. ``requests`` records (path, query, Range) of every GET.
    """

    def __init__(self) -> None:
        self.files = {SMALL: PAYLOAD, LARGE: PAYLOAD, OLD_LINK: PAYLOAD, OLD_COOKIE: PAYLOAD}
        self.large = {LARGE, OLD_LINK, OLD_COOKIE}
        self.old_style = {OLD_LINK: "link", OLD_COOKIE: "cookie"}
        self.refuse = {QUOTA: "quota", LOGIN: "login", FORBIDDEN: "forbidden", GONE: "gone", PAGE: "page"}
        self.modified = {key: time.time() - 3600 for key in self.files}
        self.uuids: set[str] = set()
        self.truncate = self.page_instead = 0
        self.quota_after_confirm = False
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                with server.lock:
                    server.requests.append((parts.path, query, self.headers.get("Range")))
                server.route(self, parts.path, query)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, handler, path, query):
        drive_id = query.get("id", "")
        if path == "/uc" and "confirm" in query:
            token = f"tok-{drive_id}"
            cookies = handler.headers.get("Cookie", "")
            if query["confirm"] == token and f"download_warning_13058_{drive_id}={token}" in cookies:
                return self.serve_file(handler, drive_id)
            return self.page(handler, 200, OTHER_PAGE)
        if path == "/uc":
            return self.redirect(handler, f"/download?{urlencode({'id': drive_id, 'export': 'download'})}")
        if path == "/ServiceLogin":
            return self.page(handler, 200, LOGIN_PAGE)
        if path != "/download":
            return self.page(handler, 404, GONE_PAGE)
        refusal = self.refuse.get(drive_id)
        if refusal == "quota":
            return self.page(handler, 200, QUOTA_PAGE)
        if refusal == "login":
            return self.redirect(handler, "/ServiceLogin?continue=https%3A%2F%2Fdrive.google.com", status=302)
        if refusal == "forbidden":
            return self.page(handler, 403, FORBIDDEN_PAGE)
        if refusal == "page":
            return self.page(handler, 200, OTHER_PAGE)
        if drive_id not in self.files:
            return self.page(handler, 404, GONE_PAGE)
        if drive_id in self.large:
            style = self.old_style.get(drive_id)
            if style is None and not (query.get("confirm") == "t" and query.get("uuid") in self.uuids):
                issued = str(uuid.uuid4())
                self.uuids.add(issued)
                return self.page(
                    handler, 200, WARNING_FORM.format(id=drive_id, name=FILE_NAME, base=self.url, uuid=issued)
                )
            if style is not None:
                token = f"tok-{drive_id}"
                link = (
                    f'<a id="uc-download-link" href="/uc?export=download&amp;confirm={token}&amp;id={drive_id}">'
                    "Download anyway</a>"
                    if style == "link"
                    else ""
                )
                cookie = f"download_warning_13058_{drive_id}={token}; Path=/"
                return self.page(handler, 200, WARNING_LINK.format(link=link), cookie=cookie)
            if self.quota_after_confirm:
                return self.page(handler, 200, QUOTA_PAGE)
        return self.serve_file(handler, drive_id)

    def serve_file(self, handler, drive_id):
        with self.lock:
            page_instead = self.page_instead > 0
            self.page_instead -= page_instead
            truncate = self.truncate > 0
            self.truncate -= truncate
        if page_instead:
            return self.page(handler, 200, OTHER_PAGE)
        data = self.files[drive_id]
        modified = formatdate(self.modified[drive_id], usegmt=True)
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if ranged and handler.headers.get("If-Range") == modified and int(ranged.group(1)) < len(data):
            start = int(ranged.group(1))
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        body = data[start:]
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Disposition", f'attachment; filename="{FILE_NAME}"')
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Last-Modified", modified)
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2] if truncate else body)
        if truncate:
            handler.close_connection = True

    @staticmethod
    def page(handler, status, text, cookie=None):
        body = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Content-Length", str(len(body)))
        if cookie:
            handler.send_header("Set-Cookie", cookie)
        handler.end_headers()
        handler.wfile.write(body)

    @staticmethod
    def redirect(handler, location, status=303):
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def file_gets(self, drive_id):
        """The Range headers of the requests that reached the file itself (not a confirmation page)."""
        return [
            rng
            for path, query, rng in self.requests
            if query.get("id") == drive_id
            and (
                path == "/uc"
                and "confirm" in query
                or path == "/download"
                and (drive_id not in self.large or "uuid" in query)
            )
        ]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def drive(monkeypatch):
    server = DriveServer()
    monkeypatch.setattr("segzoo.weights.gdrive.ENTRY_URL", f"{server.url}/uc")
    yield server
    server.close()


def _source(drive_id, sha256=PAYLOAD_SHA, form="file/d/{}/view?usp=sharing"):
    url = f"https://drive.google.com/{form.format(drive_id)}"
    return WeightSource(url=url, format="mmseg", kind="google-drive", filename=FILE_NAME, sha256=sha256)


def _cache_files(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


@pytest.mark.parametrize(
    "form",
    [
        "file/d/{}/view?usp=sharing",
        "file/d/{}",
        "file/d/{}/edit",
        "file/u/0/d/{}/view",
        "open?id={}",
        "uc?id={}&export=download",
        "uc?export=download&id={}",
    ],
)
def test_file_id_from_the_usual_url_forms(form):
    assert file_id(f"https://drive.google.com/{form.format(SMALL)}") == SMALL


@pytest.mark.parametrize("url", ["https://drive.google.com/drive/folders", "https://drive.google.com/open?id=x&id=y"])
def test_url_without_a_file_id_says_which_forms_work(url):
    with pytest.raises(ValueError, match="no Google Drive file id.*file/d/<id>/view"):
        file_id(url)


def test_every_registered_drive_source_has_a_file_id():
    for name in segzoo.list_models():
        for source in segzoo.model_info(name).weights:
            if source.kind == "google-drive":
                assert file_id(source.url)


def test_small_file_is_served_directly_then_cached(drive, isolated_cache):
    fetched = fetch_weights(_source(SMALL), progress=False)
    assert fetched.path == isolated_cache / FILE_NAME and fetched.path.read_bytes() == PAYLOAD
    assert [path for path, _, _ in drive.requests] == ["/uc", "/download"]  # the entry redirects to the file
    drive.close()
    assert fetch_weights(_source(SMALL), progress=False).path == fetched.path
    assert len(drive.requests) == 2
    assert _cache_files(isolated_cache) == [LOCK_FILE_NAME, FILE_NAME]


def test_large_file_behind_the_confirmation_form(drive, isolated_cache):
    assert fetch_weights(_source(LARGE), progress=False).path.read_bytes() == PAYLOAD
    confirmed = [query for path, query, _ in drive.requests if "uuid" in query]
    assert confirmed and all(q["confirm"] == "t" and q["uuid"] in drive.uuids and q["id"] == LARGE for q in confirmed)
    assert _cache_files(isolated_cache) == [LOCK_FILE_NAME, FILE_NAME]


@pytest.mark.parametrize("drive_id", [OLD_LINK, OLD_COOKIE], ids=["confirm-link", "cookie-only"])
def test_large_file_behind_the_older_cookie_confirmation(drive, drive_id):
    assert fetch_weights(_source(drive_id), progress=False).path.read_bytes() == PAYLOAD
    assert drive.file_gets(drive_id) == [None]


def test_drive_file_is_trusted_on_first_use_and_loads(drive, isolated_cache, monkeypatch):
    from segzoo import registry

    name, key = "moganet_xt_fpn_ade20k", "decode_head.conv_seg.weight"
    state_dict = synthetic_state_dict(name)
    checkpoint = save_mmseg_checkpoint(isolated_cache.parent / "published.pth", state_dict).read_bytes()
    drive.files[LARGE] = checkpoint
    source = _source(LARGE, sha256=None)
    monkeypatch.setitem(
        registry._catalog().by_name, name, dataclasses.replace(registry._catalog().by_name[name], weights=(source,))
    )
    for _ in range(2):
        model = segzoo.create_model(name, pretrained=True, progress=False)
        assert torch.equal(model.state_dict()[key], state_dict[key])
    record = json.loads((isolated_cache / LOCK_FILE_NAME).read_text())[source.url]
    assert record["trust"] == "first-use" and record["sha256"] == hashlib.sha256(checkpoint).hexdigest()
    assert drive.file_gets(LARGE) == [None]  # the second load came from the cache
    drive.files[LARGE] = b"tampered" + checkpoint[8:]  # a later download must match what was trusted
    (isolated_cache / FILE_NAME).unlink()
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch"):
        segzoo.create_model(name, pretrained=True, progress=False)
    assert FILE_NAME not in _cache_files(isolated_cache)


def test_dropped_transfer_is_resumed_with_the_same_link(drive, isolated_cache):
    drive.truncate = 1
    assert fetch_weights(_source(LARGE), progress=False).path.read_bytes() == PAYLOAD
    assert drive.file_gets(LARGE) == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_next_call_confirms_again_and_resumes_the_partial_file(drive, isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "0")
    drive.truncate = 1
    with pytest.raises(WeightsUnavailableError):
        fetch_weights(_source(LARGE), progress=False)
    assert partial_path(isolated_cache / FILE_NAME).stat().st_size == len(PAYLOAD) // 2
    assert not (isolated_cache / FILE_NAME).exists()
    assert fetch_weights(_source(LARGE), progress=False).path.read_bytes() == PAYLOAD
    assert drive.file_gets(LARGE) == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert len(drive.uuids) == 2  # a fresh confirmation each call


def test_file_changed_on_drive_restarts_instead_of_resuming(drive, isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "0")
    drive.truncate = 1
    with pytest.raises(WeightsUnavailableError):
        fetch_weights(_source(LARGE, sha256=None), progress=False)
    replaced = PAYLOAD[::-1]
    drive.files[LARGE], drive.modified[LARGE] = replaced, time.time()
    fetched = fetch_weights(_source(LARGE, sha256=None), progress=False)
    assert fetched.path.read_bytes() == replaced  # not half of the old file and half of the new one
    assert drive.file_gets(LARGE)[-1] == f"bytes={len(PAYLOAD) // 2}-"  # asked, and Drive sent the whole file


def test_partial_file_that_does_not_verify_is_downloaded_again(drive, isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "0")
    drive.truncate = 1
    with pytest.raises(WeightsUnavailableError):
        fetch_weights(_source(LARGE), progress=False)
    partial = partial_path(isolated_cache / FILE_NAME)
    partial.write_bytes(b"x" * partial.stat().st_size)
    assert fetch_weights(_source(LARGE), progress=False).path.read_bytes() == PAYLOAD
    assert drive.file_gets(LARGE)[-2:] == [f"bytes={len(PAYLOAD) // 2}-", None]


def test_wrong_bytes_from_drive_are_never_cached(drive, isolated_cache):
    drive.files[LARGE] = b"y" * len(PAYLOAD)
    with pytest.raises(ChecksumMismatchError, match=FILE_NAME):
        fetch_weights(_source(LARGE), progress=False)
    assert _cache_files(isolated_cache) == []


def test_offline_uses_the_cache_and_never_asks_drive(drive, isolated_cache, monkeypatch):
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        fetch_weights(_source(SMALL), progress=False)
    message = str(err.value)
    assert "offline" in message and str(isolated_cache / FILE_NAME) in message and "SEGZOO_MIRROR" in message
    monkeypatch.delenv("SEGZOO_OFFLINE")
    fetch_weights(_source(SMALL), progress=False)
    count = len(drive.requests)
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    assert fetch_weights(_source(SMALL), progress=False).path.read_bytes() == PAYLOAD
    assert len(drive.requests) == count


def test_mirror_folder_serves_the_filename_without_asking_drive(drive, isolated_cache, tmp_path, monkeypatch):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / FILE_NAME).write_bytes(PAYLOAD)
    monkeypatch.setenv("SEGZOO_MIRROR", str(folder))
    assert fetch_weights(_source(LARGE), progress=False).path.read_bytes() == PAYLOAD
    assert drive.requests == []


REFUSALS = {
    QUOTA: "download quota is used up",
    LOGIN: "asks for a Google login or permission",
    FORBIDDEN: "asks for a Google login or permission",
    GONE: f"has no file {GONE}",
    PAGE: "a web page instead of the file",
}


@pytest.mark.parametrize("drive_id", REFUSALS, ids=["quota", "login", "forbidden", "deleted", "other-page"])
def test_each_refusal_says_why_and_what_to_do(drive, isolated_cache, drive_id):
    source = _source(drive_id)
    with pytest.raises(ManualDownloadRequired) as err:
        fetch_weights(source, progress=False)
    message = str(err.value)
    for needed in (
        REFUSALS[drive_id],
        FILE_NAME,
        source.url,
        "in a browser",
        str(isolated_cache / FILE_NAME),
        "SEGZOO_MIRROR",
        "checkpoint_path",
    ):
        assert needed in message
    assert _cache_files(isolated_cache) == []
    assert not partial_path(isolated_cache / FILE_NAME).exists()


def test_quota_page_after_the_confirmation_is_a_refusal(drive, isolated_cache):
    drive.quota_after_confirm = True
    with pytest.raises(ManualDownloadRequired, match="Too many users have viewed"):  # Drive's own words
        fetch_weights(_source(LARGE), progress=False)
    assert _cache_files(isolated_cache) == []


def test_web_page_in_place_of_the_file_never_lands_in_the_cache(drive, isolated_cache):
    """Even with no checksum to catch it: the page comes where the confirmed file should."""
    drive.page_instead = 1
    with pytest.raises(ManualDownloadRequired, match="a web page instead of the file"):
        fetch_weights(_source(SMALL, sha256=None), progress=False)
    assert _cache_files(isolated_cache) == []
    assert not partial_path(isolated_cache / FILE_NAME).exists()
    assert fetch_weights(_source(SMALL, sha256=None), progress=False).path.read_bytes() == PAYLOAD


def test_refused_entry_is_listed_as_a_manual_download(drive, tmp_path, capsys, monkeypatch):
    from segzoo import registry
    from segzoo.cli import main

    name = "moganet_xt_fpn_ade20k"
    info = dataclasses.replace(registry._catalog().by_name[name], weights=(_source(QUOTA, sha256=None),))
    monkeypatch.setitem(registry._catalog().by_name, name, info)
    assert main(["download", name, "--to", str(tmp_path / "mirror"), "--quiet"]) == 1  # the mirror lacks a file
    out = capsys.readouterr().out
    assert f"{name}: needs a person: Google Drive did not serve" in out and "download quota" in out


def test_drive_that_never_answers_fails_in_bounded_time(silent_server_url, isolated_cache, monkeypatch):
    monkeypatch.setattr("segzoo.weights.gdrive.ENTRY_URL", f"{silent_server_url}/uc")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_TIMEOUT", "0.3")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        fetch_weights(_source(SMALL), progress=False)
    assert time.monotonic() - start < 5
    assert "after 3 attempts" in str(err.value) and "checkpoint_path" in str(err.value)
    assert _cache_files(isolated_cache) == []


def test_drive_page_that_never_ends_hits_the_response_deadline(isolated_cache, monkeypatch):
    from tests.test_download import trickling_server

    endless_page = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\n<\r\n")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RESPONSE_DEADLINE", "0.5")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RETRIES", "0")
    with trickling_server(*endless_page) as url:
        monkeypatch.setattr("segzoo.weights.gdrive.ENTRY_URL", f"{url}/uc")
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="SEGZOO_DOWNLOAD_RESPONSE_DEADLINE"):
            fetch_weights(_source(SMALL), progress=False)
    assert time.monotonic() - start < 3
    assert _cache_files(isolated_cache) == []
