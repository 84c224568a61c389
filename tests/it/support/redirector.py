"""A scripted registry for the network-namespace redirect test (tests/it/redirects.rs).

Serves /v2/, and answers a blob GET for repository <case> with a 307 to the address that case
names; /cdn/<digest> serves the blob itself. It listens on every address of its namespace, so
one process plays the registry, a public CDN and the internal hosts. Every request is logged
as a JSON line (host, method, path) to the file named by argv[2].

usage: redirector.py PORT LOG
"""

import hashlib
import http.server
import json
import sys

PORT = int(sys.argv[1])
LOG = open(sys.argv[2], "a", buffering=1)
BLOB = b"airlock redirect test blob\n"
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
TARGETS = {
    "to-public-name": "http://cdn.test:%d/cdn/" % PORT,
    "to-public-ip": "http://203.0.113.11:%d/cdn/" % PORT,
    "to-private": "http://10.99.0.1:%d/cdn/" % PORT,
    "to-link-local": "http://169.254.9.9:%d/cdn/" % PORT,
    "to-loopback": "http://127.0.0.1:%d/cdn/" % PORT,
    "to-internal-name": "http://internal.test:%d/cdn/" % PORT,
}
NOT_FOUND = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.answer(True)

    def do_HEAD(self):
        self.answer(False)

    def answer(self, body):
        path = self.path.split("?")[0]
        LOG.write(json.dumps({"host": self.headers.get("Host", ""), "method": self.command, "path": path}) + "\n")
        if path in ("/v2/", "/v2"):
            return self.reply(200, b"{}", "application/json", body)
        if path.startswith("/cdn/"):
            return self.reply(200, BLOB, "application/octet-stream", body)
        if "/blobs/" in path:
            # airlock asks Docker Hub's way: library/<case>.
            case = path[len("/v2/"):path.index("/blobs/")].removeprefix("library/")
            if case in TARGETS:
                self.send_response(307)
                self.send_header("Location", TARGETS[case] + DIGEST)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
        return self.reply(404, NOT_FOUND, "application/json", body)

    def reply(self, code, data, content_type, body):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if content_type == "application/octet-stream":
            self.send_header("Docker-Content-Digest", DIGEST)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
