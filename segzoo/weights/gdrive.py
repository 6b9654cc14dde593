"""Google Drive files as weight sources: find the download link behind Drive's confirmation step, then stream it.

Drive serves a small file straight from its download endpoint. A large one
(too large for its virus scan) first gets a warning page whose form
(``id``, ``export``, ``confirm``, ``uuid``) leads to the file; older pages
instead link to ``uc?...&confirm=<token>`` or set the token in a
``download_warning...`` cookie. :func:`download` follows those steps with one
session, every request made by :func:`segzoo.weights.download.download`, so
partial files, resume, retries, time limits and hashing stay the same code
path as every other download (a confirmation page must arrive whole within
the response deadline). Refusals (download quota, login or permission,
deleted file, any other web page in place of the file) raise
:class:`GoogleDriveRefused` before a byte is written.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import requests

import segzoo.weights.http as http
from segzoo.weights.download import Download
from segzoo.weights.download import download as download_url
from segzoo.weights.errors import WeightsUnavailableError
from segzoo.zoo.records import WeightSource

ENTRY_URL = "https://drive.google.com/uc"  # redirects to wherever Drive serves files today; tests point it elsewhere
MAX_STEPS = 3  # the entry, the confirmed link, one spare: more means Drive is going round in circles
MAX_PAGE_BYTES = 1 << 19  # a confirmation or error page is a few kB; never read more than this of one

_FILE_ID = r"[A-Za-z0-9_-]{10,}"


class GoogleDriveRefused(WeightsUnavailableError):
    """Google Drive answered with a page (quota, login, deleted file) instead of the file."""


def file_id(url: str) -> str:
    """The Drive file id in ``url``: ``.../file/d/<id>/view``, ``...open?id=<id>``, ``...uc?id=<id>&export=...``."""
    parts = urlsplit(url)
    in_path = re.search(rf"/d/({_FILE_ID})(?:/|$)", parts.path)
    if in_path:
        return in_path.group(1)
    ids = parse_qs(parts.query).get("id", [])
    if len(ids) == 1 and re.fullmatch(_FILE_ID, ids[0]):
        return ids[0]
    raise ValueError(
        f"no Google Drive file id in {url!r}: expected https://drive.google.com/file/d/<id>/view, "
        f".../open?id=<id> or .../uc?id=<id>"
    )


def download(source: WeightSource, target: Path, progress: bool | None = None) -> Download:
    """Fetch the Drive file of ``source`` into ``partial_path(target)``, like :func:`~segzoo.weights.download.download`.

    Every request, confirmation steps included, goes through that function
    (retries, time limits), whose ``check`` reads each page before a byte is
    written: a confirmation page leads to the next link, a refusal raises
    :class:`GoogleDriveRefused`. Each call confirms afresh (the links
    expire); a partial file from an earlier call is resumed when Drive
    confirms it is still the same file.
    """
    drive_id = file_id(source.url)
    start = f"{ENTRY_URL}?{urlencode({'export': 'download', 'id': drive_id})}"
    url = start
    with http.session() as session:
        for _ in range(MAX_STEPS):
            try:
                return download_url(
                    url,
                    target,
                    progress,
                    session=session,
                    resume_key=f"google-drive:{drive_id}",
                    check=lambda response: _check(source, response, session, start),
                )
            except _ConfirmationPage as page:
                url = page.next_url
    raise GoogleDriveRefused(
        f"Google Drive did not serve {source.filename} from {source.url}: it asked for confirmation {MAX_STEPS} "
        f"times in a row (last link: {url})."
    )


class _ConfirmationPage(Exception):
    """Not an error: Drive answered with its "download anyway" page, and ``next_url`` confirms."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def _check(source: WeightSource, response: requests.Response, session: requests.Session, start: str) -> None:
    """Let the file (and 5xx answers, to be retried) through; follow a confirmation page; refuse anything else."""
    status, where = response.status_code, urlsplit(response.url)
    if status >= 500 or (response.ok and not _is_page(response)):
        return
    page = _read_page(response)
    text = page.lower()
    if status == 429 or "too many users have viewed or downloaded" in text or "quota exceeded" in text:
        raise _refusal(
            source,
            "its download quota is used up: too many people downloaded the file recently. Drive lifts "
            "the limit within 24 hours; try again later",
            page,
            response,
        )
    signin = where.hostname == "accounts.google.com" or re.search(r"servicelogin|/signin", where.path.lower())
    if signin or status in (401, 403) or "you need access" in text or "you need permission" in text:
        raise _refusal(
            source,
            "it asks for a Google login or permission: the file is not shared with 'Anyone with the "
            "link'. A signed-in browser may still download it; otherwise ask the authors to share it",
            page,
            response,
        )
    if status in (404, 410) or "does not exist" in text:
        raise _refusal(
            source,
            f"it has no file {file_id(source.url)} ({status}): the file was deleted or moved. Look for a "
            "new link on the model's upstream page",
            page,
            response,
        )
    if status >= 400:
        raise _refusal(source, f"it answered {status} {response.reason}", page, response)
    next_url = _confirmation_link(page, response.url, session, start)
    if next_url is None:
        raise _refusal(source, "it answered with a web page instead of the file", page, response)
    raise _ConfirmationPage(next_url)


def _is_page(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("text/html")


def _read_page(response: requests.Response) -> str:
    body = b""
    for piece in response.iter_content(1 << 14):
        body += piece
        if len(body) >= MAX_PAGE_BYTES:
            break
    return body.decode(response.encoding or "utf-8", errors="replace")


def _refusal(source: WeightSource, why: str, page: str, response: requests.Response) -> GoogleDriveRefused:
    words = _PageParser.parse(page).drive_words()
    said = f" (Drive's page says: {words!r})" if words else ""
    return GoogleDriveRefused(
        f"Google Drive did not serve {source.filename} from {source.url}: {why}{said}; answer from {response.url}."
    )


def _confirmation_link(page: str, page_url: str, session: requests.Session, start: str) -> str | None:
    """Where the confirmation page leads: its form, else its ``confirm=`` link, else the start plus the cookie token."""
    parsed = _PageParser.parse(page)
    form = parsed.confirm_form()
    if form is not None:
        action, fields = form
        parts = urlsplit(urljoin(page_url, action))
        query = {**{k: v[-1] for k, v in parse_qs(parts.query).items()}, **fields}
        return urlunsplit(parts._replace(query=urlencode(query)))
    if parsed.confirm_href is not None:
        return urljoin(page_url, parsed.confirm_href)
    token = next((v for k, v in session.cookies.items() if k.startswith("download_warning")), None)
    return f"{start}&{urlencode({'confirm': token})}" if token else None


class _PageParser(HTMLParser):
    """What segzoo needs from a Drive page: the confirmation form, a ``confirm=`` link, the title, Drive's own words."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[tuple[dict[str, str], dict[str, str]]] = []  # (form attributes, hidden fields)
        self.confirm_href: str | None = None
        self.title = ""
        self.error_text = ""
        self._in: str | None = None

    @classmethod
    def parse(cls, page: str) -> _PageParser:
        parser = cls()
        parser.feed(page)
        parser.close()
        return parser

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((values, {}))
        elif tag == "input" and self.forms and values.get("type", "").lower() == "hidden" and values.get("name"):
            self.forms[-1][1][values["name"]] = values.get("value", "")
        elif tag == "a" and "confirm=" in values.get("href", "") and self.confirm_href is None:
            self.confirm_href = values["href"]
        elif tag == "title":
            self._in = "title"
        elif "uc-error-subcaption" in values.get("class", "").split():
            self._in = "error"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "p", "div"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "error":
            self.error_text += data

    def confirm_form(self) -> tuple[str, dict[str, str]] | None:
        """(action, hidden fields) of the "download anyway" form, if the page has one."""
        for attrs, fields in self.forms:
            if attrs.get("id") == "download-form" or "confirm" in fields:
                return attrs.get("action", ""), fields
        return None

    def drive_words(self) -> str:
        """Drive's own explanation, or the page title, squeezed to one short line."""
        words = " ".join((self.error_text or self.title).split())
        return words[:300]
