"""A Hugging Face Hub endpoint on 127.0.0.1 for the tests (``HF_ENDPOINT``): model repositories
held in memory, each with commits (file name -> bytes) and refs (branch or tag -> commit).

Written because no hub server is installed (``olah``, the mirror on the package index, serves
an upstream hub and needs a dozen packages this project does not lock). It implements the
requests huggingface_hub makes to pin and download a model (read from its ``hf_api.py`` and
``file_download.py``):

- ``GET /api/models/{repo}[/revision/{rev}]``: ``HfApi.model_info`` (id, sha, siblings);
- ``GET /api/models/{repo}/tree/{rev}``: ``list_repo_tree`` (one page, files only);
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: a file, with ``X-Repo-Commit`` (the commit a
  revision resolves to) and ``ETag`` (the file's git blob sha1), which ``hf_hub_download``
  needs to place it in the cache;
- errors as the hub sends them: 404 with ``X-Error-Code`` ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound``.

Every request is recorded in ``requests`` so a test can tell whether the network was used.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_INFO = re.compile(r"^/api/models/(?P<repo>.+?)/revision/(?P<rev>[^/]+)$")
_INFO_MAIN = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)$")  # no revision: main
_TREE = re.compile(r"^/api/models/(?P<repo>.+?)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def blob_sha1(data: bytes) -> str:
    """Git's blob id of ``data`` (the hub's ETag for a file not stored in LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def commit_sha(files: dict[str, bytes]) -> str:
    """A 40-hex commit id derived from the files (stands in for git's)."""
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + blob_sha1(files[name]).encode())
    return digest.hexdigest()


class LocalHub:
    """The repositories and the server thread; ``url`` is the ``HF_ENDPOINT`` to use."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> sha -> files
        self.refs: dict[str, dict[str, str]] = {}  # repo -> branch/tag -> sha
        self.requests: list[str] = []
        self.server: ThreadingHTTPServer | None = None

    def add_commit(self, repo: str, files: dict[str, bytes], ref: str | None = "main") -> str:
        """Store a commit of ``files`` in ``repo``; point ``ref`` at it. Returns its sha."""
        sha = commit_sha(files)
        self.commits.setdefault(repo, {})[sha] = dict(files)
        self.refs.setdefault(repo, {})
        if ref:
            self.refs[repo][ref] = sha
        return sha

    @staticmethod
    def folder_files(folder: Path) -> dict[str, bytes]:
        """The files of a model folder (top level), as a commit's contents."""
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}

    def resolve(self, repo: str, rev: str) -> str | None:
        if rev in self.commits.get(repo, {}):
            return rev
        return self.refs.get(repo, {}).get(rev)

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(f"{self.command} {path}")
        routes = [(_INFO, self._info), (_INFO_MAIN, self._info)]
        routes += [(_TREE, self._tree), (_RESOLVE, self._file)]
        for pattern, handler in routes:
            match = pattern.match(path)
            if match:
                repo, rev = match["repo"], match.groupdict().get("rev") or "main"
                if repo not in self.hub.commits:
                    return self._error("RepoNotFound", body)
                sha = self.hub.resolve(repo, rev)
                if sha is None:
                    return self._error("RevisionNotFound", body)
                return handler(repo, sha, match, body)
        self._error("RepoNotFound", body)

    def _info(self, repo: str, sha: str, match: re.Match, body: bool) -> None:
        files = self.hub.commits[repo][sha]
        info = {"id": repo, "sha": sha, "siblings": [{"rfilename": name} for name in files]}
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    def _tree(self, repo: str, sha: str, match: re.Match, body: bool) -> None:
        files = self.hub.commits[repo][sha]
        entries = [
            {"type": "file", "path": name, "size": len(data), "oid": blob_sha1(data)}
            for name, data in files.items()
        ]
        self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body)

    def _file(self, repo: str, sha: str, match: re.Match, body: bool) -> None:
        data = self.hub.commits[repo][sha].get(match["path"])
        if data is None:
            return self._error("EntryNotFound", body)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob_sha1(data)}"'}
        self._send(200, data, {**headers, "Content-Type": "application/octet-stream"}, body)

    def _error(self, code: str, body: bool) -> None:
        payload = json.dumps({"error": code}).encode()
        self._send(404, payload, {"X-Error-Code": code, "Content-Type": "application/json"}, body)

    def _send(self, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)
