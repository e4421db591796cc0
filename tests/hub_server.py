"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

No maintained hub server on PyPI works offline (``hf-local-hub`` needs a Go binary its wheel does not
ship; ``olah`` is a caching mirror of the real hub), so this implements the part of the hub's HTTP API
that ``huggingface_hub`` 2.x uses for ``create_repo``, ``create_branch``, ``upload_folder`` /
``create_commit``, ``whoami``, ``repo_info`` / ``model_info``, ``list_repo_tree``, ``list_repo_refs``,
``delete_repo``, ``snapshot_download`` and ``hf_hub_download``:

* ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``GET /api/whoami-v2``, ``POST /api/validate-yaml``
* ``GET /api/{models,datasets,spaces}/{repo_id}[/revision/{rev}]`` (``sha`` and ``siblings``)
* ``GET /api/{type}s/{repo_id}/tree/{rev}[/{path}]``, ``GET .../refs``, ``POST .../branch/{name}``
* ``POST .../preupload/{rev}`` (upload mode per file) and ``POST .../commit/{rev}`` (NDJSON: ``header``,
  ``file`` with base64 content, ``lfsFile``, ``deletedFile``, ``deletedFolder``)
* the legacy git-LFS "basic" transfer used for files at or above ``--lfs-threshold`` bytes:
  ``POST /{repo_id}.git/info/lfs/objects/batch`` hands out a one-time ``PUT /lfs-upload/{ticket}`` URL,
  then ``POST /{repo_id}.git/info/lfs/objects/verify``. Xet storage (what the client uses for LFS files
  when ``hf_xet`` is installed) is not implemented: its token endpoint answers 501 with a message saying so.
  Smaller files are committed inline (base64 in the NDJSON commit), as the hub does for regular files.
* ``PUT /api/{type}s/{repo_id}/settings`` (``gated``: the files of a gated repo are served to no one, as nobody
  here can accept its conditions; ``visibility``)
* ``GET``/``HEAD /[datasets/|spaces/]{repo_id}/resolve/{rev}/{path}`` with ``ETag`` (git blob sha1, or the
  sha256 for LFS files, also sent as ``X-Linked-Etag``/``X-Linked-Size``), ``X-Repo-Commit`` and
  ``Content-Length``; errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
  ``GatedRepo``).

Every write needs ``Authorization: Bearer <token>`` with a token from ``--token-file`` (one per line) or
the ``HUB_SERVER_TOKENS`` environment variable (comma-separated); ``--no-auth`` allows anonymous writes.
Private repos are readable with a valid token only. Tokens are never logged.

Repos live under ``--data-dir`` (``repos/<type>s/<repo_id>.json`` with branches and commits, contents in
``objects/`` by sha256) and survive a restart. The server binds 127.0.0.1 on ``--port`` (0 = a free port),
prints one JSON line ``{"endpoint": ..., "port": ...}`` on stdout when ready, and stops by itself after
``--max-lifetime`` seconds or when the ``--parent-pid`` process is gone.

    python tests/hub_server.py --data-dir /tmp/hub --port 0 --token-file tokens.txt
"""
from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_ACTIONS = {"revision", "tree", "preupload", "commit", "branch", "refs", "settings", "xet-write-token",
               "xet-read-token"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
USER_NAME = "tuneforge-user"
MAX_BODY = 4 * 1024**3
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Store:
    """Repos as JSON documents (branches, commits with their file tables) and a content-addressed object store."""

    def __init__(self, root: Path, lfs_threshold: int):
        self.root = root
        self.lfs_threshold = lfs_threshold
        self.lock = threading.RLock()
        (root / "objects").mkdir(parents=True, exist_ok=True)
        (root / "repos").mkdir(parents=True, exist_ok=True)
        self.tickets: dict[str, tuple[str, int, float]] = {}  # ticket -> (sha256, size, expiry)

    # -- objects -------------------------------------------------------------------------------------------------
    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.object_path(sha256)
        return path.exists() and (size is None or path.stat().st_size == size)

    # -- repos ---------------------------------------------------------------------------------------------------
    def repo_file(self, repo_type: str, repo_id: str) -> Path:
        parts = repo_id.split("/")
        if not 1 <= len(parts) <= 2 or not all(NAME_RE.match(p) and not p.endswith(".git") for p in parts):
            raise HubError(400, f"Invalid repo id '{repo_id}'")
        return self.root / "repos" / f"{repo_type}s" / (repo_id + ".json")

    def load(self, repo_type: str, repo_id: str) -> dict | None:
        path = self.repo_file(repo_type, repo_id)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def save(self, repo: dict) -> None:
        path = self.repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(repo))
        os.replace(tmp, path)

    def entry_for(self, data: bytes) -> dict:
        sha = self.put_bytes(data)
        return {"sha256": sha, "size": len(data), "oid": git_blob_sha1(data), "lfs": len(data) >= self.lfs_threshold}

    def new_commit(self, repo: dict, parent: str | None, files: dict, message: str, description: str = "") -> str:
        seed = json.dumps([parent, sorted(files.items()), message, time.time_ns(), secrets.token_hex(8)])
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo["commits"][sha] = {
            "parents": [parent] if parent else [],
            "files": files,
            "title": message,
            "message": description,
            "date": now_iso(),
        }
        repo["lastModified"] = repo["commits"][sha]["date"]
        return sha

    def create(self, repo_type: str, repo_id: str, private: bool) -> dict:
        repo = {"id": repo_id, "type": repo_type, "private": private, "createdAt": now_iso(), "branches": {}, "commits": {}}
        files = {".gitattributes": self.entry_for(GITATTRIBUTES)}
        repo["branches"]["main"] = self.new_commit(repo, None, files, "initial commit")
        self.save(repo)
        return repo

    @staticmethod
    def resolve_revision(repo: dict, revision: str) -> str:
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision.startswith("refs/heads/") and revision[11:] in repo["branches"]:
            return repo["branches"][revision[11:]]
        if COMMIT_RE.match(revision) and revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -- LFS tickets ---------------------------------------------------------------------------------------------
    def new_ticket(self, sha256: str, size: int) -> str:
        ticket = secrets.token_urlsafe(24)
        with self.lock:
            now = time.time()
            self.tickets = {k: v for k, v in self.tickets.items() if v[2] > now}
            self.tickets[ticket] = (sha256, size, now + 3600)
        return ticket


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tuneforge-test-hub/1.0"
    timeout = 60  # seconds of socket inactivity before a connection is dropped

    # set on the class by main()
    store: Store
    tokens: frozenset = frozenset()
    require_auth = True

    # -- plumbing ------------------------------------------------------------------------------------------------
    def log_message(self, format, *args):  # request lines only: never headers, so never tokens
        sys.stderr.write("%s - %s\n" % (self.log_date_time_string(), format % args))

    def base_url(self) -> str:
        return f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address[:2]}"

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise HubError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HubError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def send_json(self, status: int, obj, headers: dict | None = None):
        self.send(status, json.dumps(obj).encode(), headers)

    def send_error_json(self, err: HubError, headers: dict | None = None):
        extra = dict(headers or {})
        extra["X-Error-Message"] = err.message.replace("\n", " ")
        if err.code:
            extra["X-Error-Code"] = err.code
        self.send_json(err.status, {"error": err.message}, extra)

    def bearer(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def authenticated(self) -> bool:
        token = self.bearer()
        if token is None:
            return False
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def require_write(self):
        if not self.authenticated() and self.require_auth:
            raise HubError(401, "You must be authenticated to write to this hub (Authorization: Bearer <token>)")

    def readable_repo(self, repo_type: str, repo_id: str) -> dict:
        repo = self.store.load(repo_type, repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo["private"]:
            try:
                ok = self.authenticated()
            except HubError:
                ok = False
            if not ok:
                raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    # -- dispatch ------------------------------------------------------------------------------------------------
    def handle_any(self):
        body = b""
        extra_headers: dict = {}
        try:
            if self.command in ("POST", "PUT", "DELETE", "PATCH"):
                body = self.read_body()
            split = urlsplit(self.path)
            segs = [unquote(s) for s in split.path.split("/")[1:]]
            query = parse_qs(split.query)
            self.route(segs, query, body, extra_headers)
        except HubError as err:
            self.send_error_json(err, extra_headers)
        except Exception as exc:  # pragma: no cover - surfaced to the client as a 500
            self.send_error_json(HubError(500, f"Internal error: {type(exc).__name__}: {exc}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = handle_any

    def route(self, segs, query, body, extra_headers):
        cmd = self.command
        if segs == ["health"]:
            return self.send_json(200, {"status": "ok"})
        if segs[:1] == ["api"]:
            return self.route_api(segs[1:], query, body, extra_headers)
        if len(segs) == 2 and segs[0] == "lfs-upload" and cmd == "PUT":
            return self.lfs_upload(segs[1], body)
        # git-LFS batch API: /[datasets/]{repo_id}.git/info/lfs/objects/{batch,verify}
        for i, seg in enumerate(segs):
            if seg.endswith(".git") and segs[i + 1 : i + 4] == ["info", "lfs", "objects"] and cmd == "POST":
                repo_type, repo_segs = self.split_type(segs[:i] + [seg[:-4]])
                repo = self.readable_repo(repo_type, "/".join(repo_segs))
                if segs[i + 4 : i + 5] == ["batch"]:
                    return self.lfs_batch(repo, body)
                if segs[i + 4 : i + 5] == ["verify"]:
                    return self.lfs_verify(body)
        # /[datasets/]{repo_id}/resolve/{revision}/{path}
        if "resolve" in segs and cmd in ("GET", "HEAD"):
            i = segs.index("resolve")
            repo_type, repo_segs = self.split_type(segs[:i])
            if len(segs) < i + 3:
                raise HubError(400, "Expected /{repo_id}/resolve/{revision}/{filename}")
            return self.resolve(repo_type, "/".join(repo_segs), segs[i + 1], "/".join(segs[i + 2 :]), extra_headers)
        raise HubError(404, f"Not found: {cmd} {'/'.join(segs)}")

    @staticmethod
    def split_type(segs):
        if segs and segs[0] in ("datasets", "spaces") and len(segs) > 1:
            return REPO_TYPES[segs[0]], segs[1:]
        return "model", segs

    def route_api(self, segs, query, body, extra_headers):
        cmd = self.command
        if segs == ["whoami-v2"] and cmd == "GET":
            if not self.authenticated():
                raise HubError(401, "Invalid credentials in Authorization header")
            return self.send_json(
                200,
                {
                    "type": "user",
                    "id": "0" * 24,
                    "name": USER_NAME,
                    "fullname": "tuneforge test user",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "tuneforge-test", "role": "write"}},
                },
            )
        if segs == ["repos", "create"] and cmd == "POST":
            return self.create_repo(json.loads(body or b"{}"))
        if segs == ["repos", "delete"] and cmd == "DELETE":
            return self.delete_repo(json.loads(body or b"{}"))
        if segs == ["agent-harnesses"] and cmd == "GET":  # the client's best-effort agent detection
            return self.send_json(200, {"standardEnvVars": [], "harnesses": {}})
        if segs == ["validate-yaml"] and cmd == "POST":
            return self.send_json(200, {"errors": [], "warnings": []})
        if not segs or segs[0] not in REPO_TYPES:
            raise HubError(404, f"Not found: {cmd} /api/{'/'.join(segs)}")
        repo_type, rest = REPO_TYPES[segs[0]], segs[1:]
        if len(rest) >= 3 and rest[2] in API_ACTIONS:
            repo_segs, action, args = rest[:2], rest[2], rest[3:]
        elif len(rest) >= 2 and rest[1] in API_ACTIONS:
            repo_segs, action, args = rest[:1], rest[1], rest[2:]
        elif 1 <= len(rest) <= 2:
            repo_segs, action, args = rest, None, []
        else:
            raise HubError(404, f"Not found: {cmd} /api/{'/'.join(segs)}")
        repo_id = "/".join(repo_segs)
        if action in ("xet-write-token", "xet-read-token"):
            raise HubError(
                501,
                "This test hub does not implement Xet storage: set HF_HUB_DISABLE_XET=1 for LFS-sized files "
                "or start the server with a larger --lfs-threshold",
            )
        with self.store.lock:
            repo = self.readable_repo(repo_type, repo_id)
            if action is None and cmd == "GET":
                return self.repo_info(repo, "main", query)
            if action == "revision" and cmd == "GET" and args:
                return self.repo_info(repo, "/".join(args), query)
            if action == "tree" and cmd == "GET" and args:
                return self.tree(repo, args[0], "/".join(args[1:]), query)
            if action == "refs" and cmd == "GET":
                return self.refs(repo)
            if action == "preupload" and cmd == "POST" and args:
                self.require_write()
                return self.preupload(repo, "/".join(args), json.loads(body or b"{}"))
            if action == "commit" and cmd == "POST" and args:
                self.require_write()
                return self.commit(repo, "/".join(args), body, query)
            if action == "settings" and cmd == "PUT":
                self.require_write()
                return self.settings(repo, json.loads(body or b"{}"))
            if action == "branch" and cmd in ("POST", "DELETE") and args:
                self.require_write()
                return self.branch(repo, "/".join(args), json.loads(body or b"{}"))
        raise HubError(404, f"Not found: {cmd} /api/{'/'.join(segs)}")

    # -- repos ---------------------------------------------------------------------------------------------------
    def create_repo(self, payload):
        self.require_write()
        name, org = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if repo_type not in TYPE_PREFIX or not name:
            raise HubError(400, "Invalid repo type or name")
        repo_id = f"{org or USER_NAME}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{self.base_url()}/{TYPE_PREFIX[repo_type]}{repo_id}"
        with self.store.lock:
            if self.store.load(repo_type, repo_id) is not None:  # the hub answers 409 with the url too
                message = f"You already created this {repo_type} repo"
                headers = {"X-Error-Message": message}
                return self.send_json(409, {"error": message, "url": url}, headers)
            self.store.create(repo_type, repo_id, private)
        return self.send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self, payload):
        self.require_write()
        name, org = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        repo_id = f"{org or USER_NAME}/{name}"
        with self.store.lock:
            path = self.store.repo_file(repo_type, repo_id)
            if not path.exists():
                raise HubError(404, "Repository not found", "RepoNotFound")
            path.unlink()
        return self.send_json(200, {})

    def settings(self, repo, payload):
        if "gated" in payload:
            if payload["gated"] not in ("auto", "manual", False):
                raise HubError(400, f"Invalid gated value: {payload['gated']!r}")
            repo["gated"] = payload["gated"]
        if "visibility" in payload:
            repo["private"] = payload["visibility"] == "private"
        self.store.save(repo)
        return self.send_json(200, {})

    def repo_info(self, repo, revision, query):
        sha = self.store.resolve_revision(repo, revision)
        files = repo["commits"][sha]["files"]
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path in sorted(files):
            sibling = {"rfilename": path}
            if blobs:
                entry = files[path]
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["sha256"], "pointerSize": 134}
            siblings.append(sibling)
        return self.send_json(
            200,
            {
                "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24],
                "id": repo["id"],
                "author": repo["id"].split("/")[0] if "/" in repo["id"] else None,
                "sha": sha,
                "lastModified": repo["commits"][sha]["date"],
                "createdAt": repo["createdAt"],
                "private": repo["private"],
                "disabled": False,
                "gated": repo.get("gated", False),
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            },
        )

    def tree(self, repo, revision, path, query):
        sha = self.store.resolve_revision(repo, revision)
        files = repo["commits"][sha]["files"]
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and prefix[:-1] in files:
            raise HubError(400, f"'{path}' is a file, not a folder")
        entries, folders = [], set()
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entry = files[name]
                item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": name}
                if entry["lfs"]:
                    item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": 134}
                entries.append(item)
        if prefix and not entries and not folders:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        for folder in sorted(folders):
            entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder})
        return self.send_json(200, entries)

    def refs(self, repo):
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in sorted(repo["branches"].items())]
        return self.send_json(200, {"branches": branches, "converts": [], "tags": []})

    def branch(self, repo, branch, payload):
        if self.command == "DELETE":
            if branch == "main" or branch not in repo["branches"]:
                raise HubError(404 if branch != "main" else 403, f"Cannot delete branch {branch}")
            del repo["branches"][branch]
            self.store.save(repo)
            return self.send_json(200, {})
        if branch in repo["branches"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        if not NAME_RE.match(branch.replace("/", "-")) or COMMIT_RE.match(branch):
            raise HubError(400, f"Invalid branch name '{branch}'")
        repo["branches"][branch] = self.store.resolve_revision(repo, payload.get("startingPoint") or "main")
        self.store.save(repo)
        return self.send_json(200, {})

    # -- uploads -------------------------------------------------------------------------------------------------
    def writable_branch(self, repo, revision) -> str:
        if revision not in repo["branches"]:
            if COMMIT_RE.match(revision):
                raise HubError(400, "Cannot commit to a commit id: give a branch name")
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return revision

    def preupload(self, repo, revision, payload):
        branch = self.writable_branch(repo, revision)
        files = repo["commits"][repo["branches"][branch]]["files"]
        out = []
        for item in payload.get("files", []):
            lfs = int(item.get("size", 0)) >= self.store.lfs_threshold
            existing = files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing["sha256"] if existing["lfs"] else existing["oid"]
            out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return self.send_json(200, {"files": out, "commitOid": repo["branches"][branch]})

    def commit(self, repo, revision, body, query):
        if query.get("create_pr", ["0"])[0] in ("1", "true"):
            raise HubError(400, "Pull requests are not supported by this test hub")
        branch = self.writable_branch(repo, revision)
        head = repo["branches"][branch]
        files = dict(repo["commits"][head]["files"])
        header = {}
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type == "application/x-ndjson":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        else:  # legacy JSON payload
            doc = json.loads(body or b"{}")
            lines = [{"key": "header", "value": {"summary": doc.get("summary", ""), "description": doc.get("description", "")}}]
            lines += [{"key": "file", "value": f} for f in doc.get("files", [])]
            lines += [{"key": "lfsFile", "value": f} for f in doc.get("lfsFiles", [])]
            lines += [{"key": "deletedFile", "value": f} for f in doc.get("deletedFiles", [])]
        for line in lines:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if key != "header" and (not path or path.startswith("/") or ".." in path.split("/")):
                raise HubError(400, f"Invalid path in commit: '{path}'")
            if key == "header":
                header = value
            elif key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[path] = self.store.entry_for(data)
                files[path]["lfs"] = False
            elif key == "lfsFile":
                sha, size = value.get("oid", ""), value.get("size")
                if not self.store.has_object(sha, size):
                    raise HubError(400, f"LFS object {sha} for '{path}' was not uploaded")
                files[path] = {"sha256": sha, "size": self.store.object_path(sha).stat().st_size, "lfs": True,
                               "oid": git_blob_sha1(self.store.object_path(sha).read_bytes())}
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for name in [n for n in files if n.startswith(prefix)]:
                    del files[name]
            else:
                raise HubError(400, f"Unknown commit operation '{key}'")
        parent = header.get("parentCommit")
        if parent and parent != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        sha = self.store.new_commit(repo, head, files, header.get("summary") or "commit", header.get("description") or "")
        repo["branches"][branch] = sha
        self.store.save(repo)
        url = f"{self.base_url()}/{TYPE_PREFIX[repo['type']]}{repo['id']}/commit/{sha}"
        return self.send_json(200, {"success": True, "commitOid": sha, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None})

    def lfs_batch(self, repo, body):
        self.require_write()
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' operation is supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid", ""), int(obj.get("size", 0))
            item = {"oid": oid, "size": size}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                item["error"] = {"code": 422, "message": "invalid oid"}
            elif not self.store.has_object(oid, size):
                ticket = self.store.new_ticket(oid, size)
                item["authenticated"] = True
                item["actions"] = {
                    "upload": {"href": f"{self.base_url()}/lfs-upload/{ticket}"},
                    "verify": {"href": f"{self.base_url()}/{TYPE_PREFIX[repo['type']]}{repo['id']}.git/info/lfs/objects/verify"},
                }
            objects.append(item)
        return self.send_json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_upload(self, ticket, body):
        with self.store.lock:
            expected = self.store.tickets.pop(ticket, None)
        if expected is None or expected[2] < time.time():
            raise HubError(403, "Unknown or expired upload ticket")
        sha, size, _ = expected
        if len(body) != size or hashlib.sha256(body).hexdigest() != sha:
            raise HubError(400, "Uploaded content does not match the announced oid/size")
        self.store.put_bytes(body)
        return self.send(200, b"", {"ETag": f'"{sha}"'})

    def lfs_verify(self, body):
        self.require_write()
        payload = json.loads(body or b"{}")
        if not self.store.has_object(payload.get("oid", ""), payload.get("size")):
            raise HubError(404, "Object not found")
        return self.send_json(200, {})

    # -- downloads -----------------------------------------------------------------------------------------------
    def resolve(self, repo_type, repo_id, revision, filename, extra_headers):
        with self.store.lock:
            repo = self.readable_repo(repo_type, repo_id)
            sha = self.store.resolve_revision(repo, revision)
            entry = repo["commits"][sha]["files"].get(filename)
        extra_headers["X-Repo-Commit"] = sha
        if repo.get("gated"):  # there is no access-request flow here: nobody has accepted the conditions
            authenticated = self.bearer() in self.tokens
            raise HubError(403 if authenticated else 401, f"Access to model {repo_id} is restricted. You must have "
                           "access to it and be authenticated to access it. Please log in.", "GatedRepo")
        if entry is None:
            raise HubError(404, f"Entry not found: {filename}", "EntryNotFound")
        data = self.store.object_path(entry["sha256"]).read_bytes()
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "none"}
        if entry["lfs"]:
            headers.update({"ETag": f'"{entry["sha256"]}"', "X-Linked-Etag": f'"{entry["sha256"]}"',
                            "X-Linked-Size": str(entry["size"])})
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(filename.rsplit('/', 1)[-1])}"
        return self.send(200, data, headers, content_type="application/octet-stream")


def _watchdog(server, deadline: float, parent_pid: int | None):
    while time.time() < deadline:
        if parent_pid is not None:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
        time.sleep(0.5)
    server.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="where repos are stored (default: a new temporary folder)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token-file", default=None, help="file with the accepted write tokens, one per line")
    parser.add_argument("--no-auth", action="store_true", help="allow writes without a token")
    parser.add_argument("--lfs-threshold", type=int, default=5 * 1024 * 1024,
                        help="files of at least this many bytes go through LFS instead of inline in the commit")
    parser.add_argument("--max-lifetime", type=float, default=3600.0, help="seconds after which the server stops")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process is gone")
    args = parser.parse_args(argv)

    tokens = {t.strip() for t in (os.environ.get("HUB_SERVER_TOKENS") or "").split(",") if t.strip()}
    if args.token_file:
        tokens |= {line.strip() for line in Path(args.token_file).read_text().splitlines() if line.strip()}
    if not tokens and not args.no_auth:
        parser.error("give write tokens (--token-file or HUB_SERVER_TOKENS) or pass --no-auth")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("this test server only listens on the loopback interface")

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="hub-server-"))
    Handler.store = Store(data_dir, args.lfs_threshold)
    Handler.tokens = frozenset(tokens)
    Handler.require_auth = not args.no_auth

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    endpoint = f"http://{host}:{port}"
    threading.Thread(
        target=_watchdog, args=(server, time.time() + args.max_lifetime, args.parent_pid), daemon=True
    ).start()
    print(json.dumps({"endpoint": endpoint, "port": port, "data_dir": str(data_dir)}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
