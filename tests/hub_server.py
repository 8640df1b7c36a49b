#!/usr/bin/env python3
"""Stand-in for the Hugging Face hub, for tests/test_hub.cpp (Python 3 standard library only).

Serves ROOT/{org}/{name}/{file} on 127.0.0.1 at a port picked by the OS:

  HEAD/GET /{org}/{name}/resolve/{revision}/{file}
      small files: 200, ETag "<git blob sha1>", X-Repo-Commit
      *.safetensors, *.bin ("LFS"): 302 to http://{cdn-host}:{port}/cdn/{sha256} with
      X-Linked-Etag "<sha256>", X-Linked-Size, X-Repo-Commit
      errors: 404 X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound, 401 GatedRepo
  GET /cdn/{sha256}     the bytes, with "Range: bytes=N-" support (206 / 416)
  GET /__log            the request log as a JSON list

Revisions known: "main", "refs/pr/1" and the repo's commit (sha1 of the repo id). Every request is logged
(method, path, host, range, authorization, status) to --log as JSON lines, before it is answered. Behaviour is
steered by the JSON file given with --control, re-read at every request (missing = all defaults):

  {"private": {"org/name": "token"}}  401 GatedRepo unless "Authorization: Bearer token"
  {"renamed": {"old/name": "org/name"}}  307 to the new name (relative Location), like a renamed repo
  {"cut_after": 300000}               CDN answers stop after that many body bytes and the connection is closed
  {"corrupt": ["org/name/file"]}      CDN serves that file's blob with one byte changed (same length)
  {"ignore_range": true}              CDN ignores Range and answers 200 with everything
  {"hang_s": 5}                       resolve requests wait that long before answering
  {"chunk_delay_s": 0.01}             CDN sleeps between 64 KiB chunks
  {"status": {"org/name/file": 500}}  resolve requests for that file answer that status

To refuse connections, stop the server.
"""

import argparse
import hashlib
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

LFS_SUFFIXES = (".safetensors", ".bin")
REVISIONS = ("main", "refs/pr/1")


class Hub:
    def __init__(self, root, cdn_host, control_path, log_path):
        self.root = os.path.abspath(root)
        self.cdn_host = cdn_host
        self.control_path = control_path
        self.log_path = log_path
        self.port = 0
        self.lock = threading.Lock()
        self.entries = []
        self.sha_cache = {}

    def control(self):
        if not self.control_path or not os.path.exists(self.control_path):
            return {}
        try:
            with open(self.control_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def log(self, entry):
        with self.lock:
            self.entries.append(entry)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")

    @staticmethod
    def commit(repo):
        return hashlib.sha1(("commit:" + repo).encode()).hexdigest()

    def sha256(self, path):
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self.sha_cache:
            with open(path, "rb") as f:
                self.sha_cache[key] = hashlib.sha256(f.read()).hexdigest()
        return self.sha_cache[key]

    def find_blob(self, sha):
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(folder, name)
                if name.endswith(LFS_SUFFIXES) and self.sha256(path) == sha:
                    return path
        return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a cut transfer is simply a closed socket
    server_version = "hub-stand-in/1"
    hub = None  # set in main()

    def log_message(self, format, *args):  # quiet
        pass

    def do_HEAD(self):
        self.dispatch(head=True)

    def do_GET(self):
        self.dispatch(head=False)

    def dispatch(self, head):
        self.entry = {
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host", ""),
            "range": self.headers.get("Range"),
            "authorization": self.headers.get("Authorization"),
            "user_agent": self.headers.get("User-Agent"),
        }
        try:
            path = self.path.split("?", 1)[0]
            if path == "/__log":
                body = json.dumps(self.hub.entries).encode()
                self.reply(200, {"Content-Type": "application/json"}, body, head)
            elif path.startswith("/cdn/"):
                self.serve_cdn(path[len("/cdn/"):], head)
            else:
                self.serve_resolve(path, head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            if "status" not in self.entry:
                self.entry["status"] = None
                self.hub.log(self.entry)

    def reply(self, status, headers, body, head, cut_after=None):
        self.entry["status"] = status
        self.hub.log(self.entry)  # before answering: a client that got the answer finds it in the log
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if head:
            return
        delay = float(self.hub.control().get("chunk_delay_s", 0))
        limit = len(body) if cut_after is None else min(len(body), int(cut_after))
        for start in range(0, limit, 65536):
            self.wfile.write(body[start:min(limit, start + 65536)])
            self.wfile.flush()
            if delay:
                time.sleep(delay)

    def error(self, status, code, message, head, extra=None):
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        headers.update(extra or {})
        self.reply(status, headers, json.dumps({"error": message}).encode(), head)

    def serve_resolve(self, path, head):
        parts = path.strip("/").split("/")
        if "resolve" not in parts[1:3]:
            return self.error(404, "RepoNotFound", "Not a resolve URL", head)
        at = parts.index("resolve", 1)
        repo = "/".join(urllib.parse.unquote(p) for p in parts[:at])
        revision = urllib.parse.unquote(parts[at + 1]) if len(parts) > at + 1 else ""
        file = "/".join(urllib.parse.unquote(p) for p in parts[at + 2:])
        control = self.hub.control()
        time.sleep(float(control.get("hang_s", 0)))

        renamed = control.get("renamed", {})
        if repo in renamed:
            rest = "/".join(parts[at:])
            return self.reply(307, {"Location": "/" + renamed[repo] + "/" + rest}, b"", head)
        repo_dir = os.path.join(self.hub.root, *repo.split("/"))
        if ".." in repo.split("/") or not os.path.isdir(repo_dir):
            return self.error(404, "RepoNotFound", "Repository not found", head)
        token = control.get("private", {}).get(repo)
        if token is not None and self.headers.get("Authorization") != "Bearer " + token:
            return self.error(401, "GatedRepo", "Access to this repo is restricted", head)
        commit = Hub.commit(repo)
        if revision not in REVISIONS and revision != commit:
            return self.error(404, "RevisionNotFound", "Invalid rev id: " + revision, head)
        status = control.get("status", {}).get(repo + "/" + file)
        if status:
            return self.error(int(status), "", "Injected failure", head, {"X-Repo-Commit": commit})
        full = os.path.join(repo_dir, *file.split("/"))
        if not file or ".." in file.split("/") or not os.path.isfile(full):
            return self.error(404, "EntryNotFound", "Entry not found", head, {"X-Repo-Commit": commit})

        with open(full, "rb") as f:
            data = f.read()
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if file.endswith(LFS_SUFFIXES):
            sha = self.hub.sha256(full)
            location = "http://%s:%d/cdn/%s" % (self.hub.cdn_host, self.hub.port, sha)
            headers = {"Location": location, "X-Repo-Commit": commit, "ETag": '"%s"' % git_sha1,
                       "X-Linked-Etag": '"%s"' % sha, "X-Linked-Size": str(len(data))}
            return self.reply(302, headers, b"", head)
        headers = {"ETag": '"%s"' % git_sha1, "X-Repo-Commit": commit,
                   "Content-Type": "application/octet-stream"}
        self.reply(200, headers, data, head)

    def serve_cdn(self, sha, head):
        path = self.hub.find_blob(sha)
        if path is None:
            return self.error(404, "", "No such blob", head)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        control = self.hub.control()
        for entry in control.get("corrupt", []):  # by content: repos may share a blob
            listed = os.path.join(self.hub.root, *entry.split("/"))
            if os.path.isfile(listed) and self.hub.sha256(listed) == sha:
                data[len(data) // 2] ^= 0xFF
        data = bytes(data)
        size = len(data)
        cut = control.get("cut_after")
        requested = self.headers.get("Range")
        if requested and not control.get("ignore_range"):
            if not requested.startswith("bytes=") or not requested[6:].endswith("-"):
                return self.error(400, "", "Only 'bytes=N-' ranges are supported", head)
            first = int(requested[6:-1])
            if first >= size:
                return self.reply(416, {"Content-Range": "bytes */%d" % size}, b"", head)
            headers = {"Content-Range": "bytes %d-%d/%d" % (first, size - 1, size),
                       "Content-Type": "application/octet-stream"}
            return self.reply(206, headers, data[first:], head, cut)
        self.reply(200, {"Content-Type": "application/octet-stream"}, data, head, cut)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder holding {org}/{name}/{file}")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    parser.add_argument("--port-file", help="write the port number to this file once listening")
    parser.add_argument("--cdn-host", default="localhost",
                        help="host name used in LFS redirects; another name than 127.0.0.1 = another origin")
    parser.add_argument("--control", help="JSON file with fault-injection settings, re-read at every request")
    parser.add_argument("--log", help="append one JSON line per request to this file")
    args = parser.parse_args()

    hub = Hub(args.root, args.cdn_host, args.control, args.log)
    Handler.hub = hub
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    hub.port = server.server_address[1]
    if args.port_file:
        temporary = args.port_file + ".tmp"
        with open(temporary, "w") as f:
            f.write(str(hub.port))
        os.replace(temporary, args.port_file)
    print("listening on http://127.0.0.1:%d" % hub.port, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
