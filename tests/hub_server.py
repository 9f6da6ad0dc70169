"""A test double of the Hugging Face Hub: just the HTTP endpoints that `huggingface_hub` and `transformers` use to
push a checkpoint and load it back, served on 127.0.0.1 only.

    with FakeHubServer() as hub:
        env = {**os.environ, **hub.client_env()}   # HF_ENDPOINT=http://127.0.0.1:PORT, HF_HUB_DISABLE_XET=1

Implemented (model repos only; everything else answers 501 and is recorded in `hub.unhandled`):

    POST /api/repos/create                                  create a repo (409 with its url if it exists)
    GET  /api/models/{repo}[/revision/{rev}]                model info (sha, siblings)
    GET  /api/models/{repo}/tree/{rev}[/{path}]             file listing (`recursive` honoured)
    POST /api/models/{repo}/preupload/{rev}                 upload mode (regular or lfs) and remote oid per file
    POST /api/models/{repo}/commit/{rev}                    NDJSON commit: file (base64), lfsFile, deletedFile
    POST /{repo}.git/info/lfs/objects/batch                 LFS batch API, "basic" transfer
    PUT  /lfs-objects/{oid}                                 LFS object upload (sha256 and size checked)
    HEAD/GET /{repo}/resolve/{rev}/{path}                   file bytes with ETag, X-Repo-Commit, X-Linked-Etag/-Size
    POST /api/validate-yaml                                 model card metadata check
    GET  /api/agent-harnesses                               an empty registry (the client's user-agent lookup)

Commits are real git objects (blob, tree and commit sha1s, LFS files stored as pointer blobs), so revisions are
40-hex shas as on the Hub. No authentication: any token is accepted. Not the Hub: no Xet, no PRs, no tags.
"""

import base64
import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


MAX_BODY = 256 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".onnx", ".msgpack", ".npz", ".zip")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"


def git_object(kind: str, data: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(data)}\0".encode() + data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A file in a commit: its bytes, or for an LFS file the sha256 of the bytes kept in the LFS store."""

    size: int
    content: bytes | None = None  # regular file
    lfs_oid: str | None = None  # LFS file

    @property
    def blob(self) -> bytes:
        if self.lfs_oid is None:
            return self.content
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.lfs_oid}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:  # git blob sha1 (of the pointer, for LFS files)
        return git_object("blob", self.blob)

    @property
    def etag(self) -> str:  # what the Hub sends as ETag / X-Linked-Etag
        return self.lfs_oid or self.oid


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, Entry]
    changed: set[str]  # paths added, modified or deleted by this commit


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)

    def api_agent_harnesses(self, **_):
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision, revision)
        return next((commit for commit in self.commits if commit.sha == sha), None)


def tree_sha(files: dict[str, Entry]) -> str:
    """The git tree sha1 of a flat {path: entry} mapping (sub-trees built from the path components)."""
    children: dict[str, dict] = {}
    blobs: dict[str, Entry] = {}
    for path, entry in files.items():
        head, _, rest = path.partition("/")
        if rest:
            children.setdefault(head, {})[rest] = entry
        else:
            blobs[head] = entry
    items = [(name + "/", b"40000 %s\0" % name.encode() + bytes.fromhex(tree_sha(sub)))
             for name, sub in children.items()]
    items += [(name, b"100644 %s\0" % name.encode() + bytes.fromhex(entry.oid)) for name, entry in blobs.items()]
    return git_object("tree", b"".join(data for _, data in sorted(items)))


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.commit = status, code, commit


class FakeHubServer:
    """A test double of the Hugging Face Hub on 127.0.0.1 (random free port), in memory; a context manager.

    `repos` holds the repositories (their `commits` and `branches`), `requests` every (method, path) served and
    `unhandled` those it does not implement (answered 501). The server stops on leaving the context, or by
    itself after `max_lifetime` seconds; each connection times out after `request_timeout` seconds.
    """

    def __init__(self, max_lifetime: float = 600.0, request_timeout: float = 30.0, verbose: bool = False):
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.max_lifetime = max_lifetime
        self.request_timeout = request_timeout
        self.verbose = verbose
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ---- life cycle ----

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def client_env(self) -> dict[str, str]:
        """Environment variables that point a fresh `huggingface_hub` process at this server."""
        return {"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

    def start(self) -> "FakeHubServer":
        hub = self

        class Handler(_Handler):
            server_hub = hub
            timeout = hub.request_timeout

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="FakeHubServer", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._httpd is not None and self._thread is not None and self._thread.is_alive():
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)

    def __enter__(self) -> "FakeHubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- repository state ----

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    def _branch(self, repo: Repo, revision: str) -> str:
        branch = unquote(revision)
        if branch not in repo.branches:
            raise HubError(404, f"Branch {branch} not found (only commits to existing branches)", "RevisionNotFound")
        return branch

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_id, private)
        self.repos[repo_id] = repo
        gitattributes = Entry(len(GITATTRIBUTES), content=GITATTRIBUTES)
        self._add_commit(repo, "main", "initial commit", {".gitattributes": gitattributes}, [])
        return repo

    def _add_commit(self, repo: Repo, branch: str, message: str, add: dict[str, Entry], delete: list[str]) -> Commit:
        parent = repo.resolve(branch) if branch in repo.branches else None
        files = dict(parent.files) if parent else {}
        changed = set()
        for path in delete:
            gone = [p for p in files if p == path or p.startswith(path.rstrip("/") + "/")]
            if not gone:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            for p in gone:
                del files[p]
            changed.update(gone)
        for path, entry in add.items():
            if files.get(path) != entry:
                changed.add(path)
            files[path] = entry
        now = int(time.time())
        body = f"tree {tree_sha(files)}\n" + (f"parent {parent.sha}\n" if parent else "")
        body += f"author fake-hub <hub@localhost> {now} +0000\ncommitter fake-hub <hub@localhost> {now} +0000\n\n"
        commit = Commit(git_object("commit", (body + message + "\n").encode()), parent and parent.sha, message, files,
                        changed)
        repo.commits.append(commit)
        repo.branches[branch] = commit.sha
        return commit

    # ---- endpoints: each returns (status, json-able body or bytes, extra headers) ----

    def api_create_repo(self, body: dict, **_):
        if body.get("type", "model") != "model":
            raise HubError(501, "FakeHubServer only has model repos")
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else f"user/{body['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}, {}
        self.create_repo(repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def api_model_info(self, repo: str, rev: str = "main", **_):
        repo_obj = self._repo(repo)
        commit = self._commit(repo_obj, rev)
        return 200, {
            "_id": repo, "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": commit.sha,
            "private": repo_obj.private, "disabled": False, "gated": False, "tags": [], "library_name": "transformers",
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }, {}

    def api_tree(self, repo: str, rev: str, path: str = "", query: dict | None = None, **_):
        commit = self._commit(self._repo(repo), rev)
        prefix = unquote(path or "").strip("/")
        recursive = (query or {}).get("recursive", ["false"])[0].lower() in ("1", "true")
        listed, folders = [], set()
        for name, entry in sorted(commit.files.items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rest = name[len(prefix) + 1:] if prefix else name
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # folders on the way
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    inside = {p[len(folder) + 1:]: e for p, e in commit.files.items() if p.startswith(folder + "/")}
                    listed.append({"type": "directory", "oid": tree_sha(inside), "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                item = {"type": "file", "oid": entry.oid, "size": entry.size, "path": name}
                if entry.lfs_oid:
                    item["lfs"] = {"oid": entry.lfs_oid, "size": entry.size, "pointerSize": len(entry.blob)}
                listed.append(item)
        if prefix and not listed:
            raise HubError(404, f"{prefix} does not exist on {rev}", "EntryNotFound", commit.sha)
        return 200, listed, {}

    def api_preupload(self, repo: str, rev: str, body: dict, **_):
        repo_obj = self._repo(repo)
        current = self._commit(repo_obj, self._branch(repo_obj, rev)).files
        answer = []
        for item in body["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] > 5 * 1024 * 1024 or b"\0" in sample
            existing = current.get(item["path"])
            remote_oid = None if existing is None else (existing.lfs_oid if lfs else existing.oid)
            answer.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                           "oid": remote_oid})
        return 200, {"files": answer, "commitOid": repo_obj.branches["main"]}, {}

    def api_lfs_batch(self, repo: str, body: dict, **_):
        self._repo(repo)
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            raise HubError(501, "FakeHubServer only does LFS uploads with the basic transfer")
        objects = []
        for obj in body["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-objects/{obj['oid']}?size={obj['size']}",
                                                "header": {}, "expires_in": 3600}}
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {}

    def api_lfs_put(self, oid: str, raw: bytes, query: dict, **_):
        if hashlib.sha256(raw).hexdigest() != oid or len(raw) != int(query.get("size", [len(raw)])[0]):
            raise HubError(400, f"LFS object {oid}: sha256 or size of the uploaded bytes does not match")
        self.lfs_objects[oid] = raw
        return 200, b"", {"ETag": f'"{hashlib.md5(raw).hexdigest()}"'}

    def api_commit(self, repo: str, rev: str, raw: bytes, query: dict, **_):
        if query.get("create_pr"):
            raise HubError(501, "FakeHubServer has no pull requests")
        repo_obj = self._repo(repo)
        branch = self._branch(repo_obj, rev)
        lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != repo_obj.branches[branch]:
            raise HubError(412, "The parent commit is not the head of the branch")
        add, delete = {}, []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')}")
                content = base64.b64decode(value["content"])
                add[value["path"]] = Entry(len(content), content=content)
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256" or value["oid"] not in self.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                add[value["path"]] = Entry(len(self.lfs_objects[value["oid"]]), lfs_oid=value["oid"])
            elif key in ("deletedFile", "deletedFolder"):
                delete.append(value["path"])
            else:
                raise HubError(501, f"FakeHubServer does not implement commit operation {key!r}")
        message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
        commit = self._add_commit(repo_obj, branch, message, add, delete)
        url = f"{self.endpoint}/{repo}/commit/{commit.sha}"
        return 200, {"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None}, {}

    def api_validate_yaml(self, body: dict, **_):
        import yaml  # a dependency of huggingface_hub

        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", body.get("content", ""), re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": f"invalid YAML: {error}"}], "warnings": []}, {}
        if metadata is not None and not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def api_agent_harnesses(self, **_):
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def resolve(self, repo: str, rev: str, path: str, method: str, **_):
        commit = self._commit(self._repo(repo), rev)
        path = unquote(path)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry {path} not found", "EntryNotFound", commit.sha)
        headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": commit.sha, "Accept-Ranges": "none",
                   "Content-Type": "application/octet-stream"}
        if entry.lfs_oid:
            headers.update({"X-Linked-Etag": f'"{entry.lfs_oid}"', "X-Linked-Size": str(entry.size)})
        data = entry.content if entry.lfs_oid is None else self.lfs_objects[entry.lfs_oid]
        return 200, data, headers

    ROUTES = [
        ("POST", r"/api/repos/create", "api_create_repo"),
        ("POST", r"/api/validate-yaml", "api_validate_yaml"),
        ("GET", r"/api/agent-harnesses", "api_agent_harnesses"),
        ("GET", rf"/api/models/{REPO}(?:/revision/{REV})?", "api_model_info"),
        ("GET", rf"/api/models/{REPO}/tree/{REV}(?:/(?P<path>.*))?", "api_tree"),
        ("POST", rf"/api/models/{REPO}/preupload/{REV}", "api_preupload"),
        ("POST", rf"/api/models/{REPO}/commit/{REV}", "api_commit"),
        ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", "api_lfs_batch"),
        ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "api_lfs_put"),
        ("GET", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve"),
    ]

    def dispatch(self, method: str, raw_path: str, raw: bytes):
        url = urlsplit(raw_path)
        with self._lock:
            self.requests.append((method, url.path))
            for route_method, pattern, name in self.ROUTES:
                match = re.fullmatch(pattern, url.path)
                if route_method == method and match:
                    kwargs = {k: v for k, v in match.groupdict().items() if v is not None}
                    body = json.loads(raw or b"{}") if method == "POST" and name != "api_commit" else None
                    return getattr(self, name)(**kwargs, body=body, raw=raw, query=parse_qs(url.query), method=method)
            self.unhandled.append((method, raw_path))
            print(f"FakeHubServer: not implemented: {method} {raw_path}", file=sys.stderr)
            raise HubError(501, f"FakeHubServer does not implement {method} {url.path}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: FakeHubServer

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise HubError(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HubError(413, "request body too large")
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        hub = self.server_hub
        try:
            raw = self._read_body() if self.command in ("POST", "PUT") else b""
            status, body, headers = hub.dispatch(self.command, self.path, raw)
        except HubError as error:
            status, body = error.status, {"error": str(error)}
            headers = {"X-Error-Message": str(error)}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            if error.status == 413:
                self.close_connection = True
        except Exception as error:  # a bug in the double: say so loudly
            status, body, headers = 500, {"error": f"FakeHubServer crashed: {error!r}"}, {}
            print(f"FakeHubServer: {self.command} {self.path}: {error!r}", file=sys.stderr)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format, *args) -> None:
        if self.server_hub.verbose:
            super().log_message(format, *args)
