"""A small stand-in for the Hugging Face hub's HTTP API on 127.0.0.1, enough for the real client.

Covers what ``hf_hub_download``, ``HfApi.create_repo`` and ``HfApi.upload_folder``
use: resolving files by revision, creating a repository, and committing
files uploaded inline (the "regular" upload mode, no LFS).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"commits": [(sha, files)], "private": bool}
        self.log: list[tuple[str, str]] = []
        self.cards: list[dict] = []  # front matter of every validated model card
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, status: int, obj) -> None:
                self._reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _resolve(self, head: bool) -> None:
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                if not m:
                    return self._reply(404, head=head)
                repo_id, revision, filename = m.groups()
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._reply(404, b"", {"X-Error-Code": "RepoNotFound"}, head)
                commits = repo["commits"]
                if revision == "main":
                    found = commits[-1] if commits else None
                else:
                    found = next((c for c in commits if c[0] == revision), None)
                if found is None:
                    return self._reply(404, b"", {"X-Error-Code": "RevisionNotFound"}, head)
                sha, files = found
                if filename not in files:
                    return self._reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}, head)
                data = files[filename]
                etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                self._reply(200, data, {"X-Repo-Commit": sha, "ETag": etag}, head)

            def _validate_yaml(self, content: str) -> None:
                """Accept a model card only if its front matter is YAML with the keys the hub reads."""
                try:
                    meta = yaml.safe_load(content.split("---")[1])
                    assert isinstance(meta, dict) and "license" in meta and "library_name" in meta
                except Exception as err:
                    return self._json(400, {"error": f"invalid model card metadata: {err}"})
                hub.cards.append(meta)
                return self._json(200, {"errors": [], "warnings": []})

            def do_HEAD(self):
                hub.log.append(("HEAD", self.path))
                self._resolve(head=True)

            def do_GET(self):
                hub.log.append(("GET", self.path))
                self._resolve(head=False)

            def do_POST(self):
                hub.log.append(("POST", self.path))
                body = self._body()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    if repo_id in hub.repos:
                        return self._json(
                            409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                        )
                    hub.repos[repo_id] = {"commits": [], "private": bool(req.get("private"))}
                    return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._validate_yaml(json.loads(body)["content"])
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
                if not m or m.group(1) not in hub.repos:
                    return self._json(404, {"error": f"unknown endpoint {path}"})
                repo_id, action, _revision = m.groups()
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                commits = hub.repos[repo_id]["commits"]
                files = dict(commits[-1][1]) if commits else {}
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                sha = hashlib.sha1(f"{repo_id}{len(commits)}".encode()).hexdigest()
                commits.append((sha, files))
                return self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commits = self.repos[repo_id]["commits"]
        return commits[-1][1] if revision == "main" else next(f for s, f in commits if s == revision)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
