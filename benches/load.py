#!/usr/bin/python3
"""The load driver of benches/load.sh (python3 standard library only).

    load.py mkimages OUTDIR
        An OCI layout of the images the hit clients pull, and OUTDIR/plan.tsv (ref, repo,
        tag, format, all) for skopeo to push. Layers are random bytes from a seeded PRNG,
        so digests are the same on every run.
    load.py misspool URL COUNT
        Push COUNT small images (load/miss:m-<i>, one unique layer each) straight through
        the registry API: the miss clients ask for each exactly once, so every one is a
        miss airlock must fetch upstream. (skopeo takes a few tenths of a second per image;
        this is thousands of images.)
    load.py run --url URL --pid PID [--seconds 60] [--hit N] [--miss N] [--idle N]
                [--idle-after-request N] [--misses COUNT] [--out FILE.json]
        Hold about hit+miss+idle connections for SECONDS against airlock at URL and report:
        errors seen by the well-behaved clients (hits and misses), requests/s and latency
        percentiles per kind, airlock's RSS and open descriptors sampled every 0.5 s, and
        how many idle sockets airlock closed, and after how long.

Every client verifies what it gets: status 200, and the sha256 of every body fetched by
digest (or the manifest digest a tag must name). Any other status, a wrong digest, a reset,
or no answer within 30 s is an error. Nothing here talks to anything but 127.0.0.1.
"""

import argparse
import asyncio
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import sys
import tarfile
import time
import urllib.parse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
SEED = "airlock-load-v1"
TIMEOUT = 30.0


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------- images for the hit clients

# (repo, tag, skopeo format, platforms, [(layer name, size)])
HIT_IMAGES = [
    ("load/app", "v1", "oci", ["amd64"], [("app-base", 1 << 20), ("app-top", 64 << 10)]),
    ("load/base", "v1", "v2s2", ["amd64"], [("base", 256 << 10)]),
    ("load/multi", "v1", "oci", ["amd64", "arm64"], [("multi", 128 << 10)]),
]


def layer(name, size):
    """A real tar.gz layer holding one file of `size` seeded random bytes."""
    data = random.Random(f"{SEED}/{name}").randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo(f"data/{name}")
        info.size, info.mtime, info.mode = size, 0, 0o644
        t.addfile(info, io.BytesIO(data))
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(raw.getvalue())
    return raw.getvalue(), gz.getvalue()


def mkimages(out):
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(b):
        d = sha256(b)
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(b)
        return {"digest": f"sha256:{d}", "size": len(b)}

    index, plan = [], []
    for repo, tag, fmt, arches, layers in HIT_IMAGES:
        children = []
        for arch in arches:
            descs, diff_ids = [], []
            for name, size in layers:
                tar, gz = layer(f"{name}-{arch}", size)
                descs.append(dict(mediaType=OCI_LAYER, **put(gz)))
                diff_ids.append(f"sha256:{sha256(tar)}")
            config = {"architecture": arch, "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": diff_ids},
                      "config": {"Labels": {"load": f"{repo}:{tag}"}}}
            cdesc = dict(mediaType=OCI_CONFIG, **put(json.dumps(config, sort_keys=True).encode()))
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": descs}
            mdesc = dict(mediaType=OCI_MANIFEST, **put(json.dumps(manifest, sort_keys=True).encode()))
            children.append(dict(mdesc, platform={"architecture": arch, "os": "linux"}))
        if len(children) == 1:
            top = {k: v for k, v in children[0].items() if k != "platform"}
        else:
            idx = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
            top = dict(mediaType=OCI_INDEX, **put(json.dumps(idx, sort_keys=True).encode()))
        ref = f"{repo}:{tag}"
        index.append(dict(top, annotations={"org.opencontainers.image.ref.name": ref}))
        plan.append(f"{ref}\t{repo}\t{tag}\t{fmt}\t{1 if len(children) > 1 else 0}\n")
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": index}, f)
    with open(os.path.join(out, "plan.tsv"), "w") as f:
        f.writelines(plan)


# ---------------------------------------------------------------- the miss pool

MISS_REPO = "load/miss"
MISS_CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": []}}).encode()


def miss_image(i):
    """The layer and manifest of miss image i: (layer bytes, manifest bytes)."""
    blob = random.Random(f"{SEED}/miss/{i}").randbytes(8 << 10)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{sha256(MISS_CONFIG)}", "size": len(MISS_CONFIG)},
        "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{sha256(blob)}", "size": len(blob)}],
    }, sort_keys=True).encode()
    return blob, manifest


def misspool(url, count):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)

    def call(method, path, body=b"", headers=None):
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        r.read()
        if r.status not in (200, 201, 202):
            sys.exit(f"{method} {path}: {r.status}")
        return r

    def push_blob(b):
        d = f"sha256:{sha256(b)}"
        conn.request("HEAD", f"/v2/{MISS_REPO}/blobs/{d}")
        r = conn.getresponse()
        r.read()
        if r.status == 200:
            return
        loc = call("POST", f"/v2/{MISS_REPO}/blobs/uploads/").getheader("Location")
        loc = urllib.parse.urlsplit(loc)
        sep = "&" if loc.query else ""
        call("PUT", f"{loc.path}?{loc.query}{sep}digest={d}", b,
             {"Content-Type": "application/octet-stream"})

    push_blob(MISS_CONFIG)
    for i in range(count):
        blob, manifest = miss_image(i)
        push_blob(blob)
        call("PUT", f"/v2/{MISS_REPO}/manifests/m-{i}", manifest, {"Content-Type": OCI_MANIFEST})


# ---------------------------------------------------------------- a small HTTP/1.1 client


class Closed(Exception):
    """The server closed the connection before answering."""


async def exchange(reader, writer, method, path, accept=None):
    """One request on a keep-alive connection: (status, headers, body)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: airlock\r\nUser-Agent: airlock-load\r\n"
    if accept:
        head += f"Accept: {accept}\r\n"
    writer.write((head + "\r\n").encode())
    await writer.drain()
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise Closed() from None
        raise
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if method == "HEAD" or status in (204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, headers, bytes(body)
    n = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(n)


class Stats:
    def __init__(self):
        self.lat = {}
        self.errors = {}
        self.error_samples = []
        self.reconnects = 0
        self.open = 0
        self.idle_closed = {"silent": [], "after_request": []}
        self.misses_used = 0
        self.miss_pool_exhausted_at = None
        self.measuring = False

    def ok(self, kind, ms):
        if self.measuring:
            self.lat.setdefault(kind, []).append(ms)

    def error(self, kind, what):
        if self.measuring:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"{kind}: {what}")


class Client:
    """One well-behaved client: a keep-alive connection, opened again if the server closes
    it between requests (counted, not an error, as every HTTP client does)."""

    def __init__(self, host, port, stats):
        self.host, self.port, self.stats = host, port, stats
        self.reader = self.writer = None

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self.stats.open += 1

    def close(self):
        if self.writer:
            self.writer.close()
            self.writer = None
            self.stats.open -= 1

    async def get(self, kind, method, path, accept=None, digest=None, want_digest=None):
        """Request, verify, record. Returns the body, or None after an error."""
        for attempt in (0, 1):
            start = time.monotonic()
            try:
                if self.writer is None:
                    await self.connect()
                status, headers, body = await asyncio.wait_for(
                    exchange(self.reader, self.writer, method, path, accept), TIMEOUT)
            except Closed:
                self.close()
                if attempt == 0:
                    self.stats.reconnects += 1
                    continue
                self.stats.error(kind, f"{path}: closed twice")
                return None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                self.close()
                self.stats.error(kind, f"{path}: {type(e).__name__} {e}")
                return None
            ms = (time.monotonic() - start) * 1000
            if status != 200:
                self.stats.error(kind, f"{path}: status {status}")
                return None
            if digest and method == "GET" and f"sha256:{sha256(body)}" != digest:
                self.stats.error(kind, f"{path}: body does not match {digest}")
                return None
            if want_digest and headers.get("docker-content-digest") != want_digest:
                self.stats.error(kind, f"{path}: names {headers.get('docker-content-digest')}, not {want_digest}")
                return None
            if headers.get("connection", "").lower() == "close":
                self.close()
            self.stats.ok(kind, ms)
            return body
        return None


async def discover(host, port, stats):
    """The hit targets, from airlock itself (which also caches them): (kind, method, path,
    accept, digest, want_digest) tuples."""
    c = Client(host, port, stats)
    targets = []
    for repo, tag, _, arches, _ in HIT_IMAGES:
        body = await c.get("warm", "GET", f"/v2/{repo}/manifests/{tag}", ACCEPT)
        if body is None:
            raise SystemExit(f"warm-up: {repo}:{tag} does not pull: {stats.error_samples}")
        top = f"sha256:{sha256(body)}"
        targets.append(("manifest_tag", "GET", f"/v2/{repo}/manifests/{tag}", ACCEPT, None, top))
        targets.append(("manifest_head", "HEAD", f"/v2/{repo}/manifests/{tag}", ACCEPT, None, top))
        targets.append(("manifest_digest", "GET", f"/v2/{repo}/manifests/{top}", ACCEPT, top, None))
        m = json.loads(body)
        manifests = [(top, m)]
        for child in m.get("manifests", []):
            cb = await c.get("warm", "GET", f"/v2/{repo}/manifests/{child['digest']}", ACCEPT, child["digest"])
            manifests.append((child["digest"], json.loads(cb)))
            targets.append(("manifest_digest", "GET", f"/v2/{repo}/manifests/{child['digest']}", ACCEPT, child["digest"], None))
        for _, mm in manifests:
            for d in [mm.get("config")] + mm.get("layers", []):
                if not d:
                    continue
                kind = "blob_1mib" if d["size"] >= 1 << 20 else "blob_small"
                path = f"/v2/{repo}/blobs/{d['digest']}"
                if await c.get("warm", "GET", path, None, d["digest"]) is None:
                    raise SystemExit(f"warm-up: {path}: {stats.error_samples}")
                targets.append((kind, "GET", path, None, d["digest"], None))
    c.close()
    return targets


async def hit_client(host, port, stats, targets, weights, stop, seed):
    rnd = random.Random(seed)
    c = Client(host, port, stats)
    while not stop.is_set():
        kind, method, path, accept, digest, want = rnd.choices(targets, weights)[0]
        await c.get(kind, method, path, accept, digest, want)
    c.close()


async def miss_client(host, port, stats, pool, stop, pace):
    c = Client(host, port, stats)
    while not stop.is_set():
        if stats.misses_used >= pool:
            if stats.miss_pool_exhausted_at is None:
                stats.miss_pool_exhausted_at = time.monotonic()
            break
        i = stats.misses_used
        stats.misses_used += 1
        blob, manifest = miss_image(i)
        md, bd = f"sha256:{sha256(manifest)}", f"sha256:{sha256(blob)}"
        await c.get("miss_manifest", "GET", f"/v2/{MISS_REPO}/manifests/m-{i}", OCI_MANIFEST, None, md)
        await c.get("miss_blob", "GET", f"/v2/{MISS_REPO}/blobs/{bd}", None, bd)
        try:
            await asyncio.wait_for(stop.wait(), pace)
        except asyncio.TimeoutError:
            pass
    c.close()


async def idle_socket(host, port, stats, stop, flavour):
    """Connect and send nothing ("silent"), or one request and then nothing
    ("after_request"); when airlock closes the socket, note after how long and connect
    again."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        stats.open += 1
        start = time.monotonic()
        try:
            if flavour == "after_request":
                await asyncio.wait_for(exchange(reader, writer, "GET", "/v2/"), TIMEOUT)
                start = time.monotonic()
            got = asyncio.ensure_future(reader.read(1))
            halt = asyncio.ensure_future(stop.wait())
            await asyncio.wait([got, halt], return_when=asyncio.FIRST_COMPLETED)
            if got.done():
                if stats.measuring:
                    stats.idle_closed[flavour].append(time.monotonic() - start)
            else:
                got.cancel()
            halt.cancel()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, Closed):
            if stats.measuring:
                stats.idle_closed[flavour].append(time.monotonic() - start)
        finally:
            writer.close()
            stats.open -= 1


def sample_proc(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p / 100))], 2)


async def run(a):
    u = urllib.parse.urlsplit(a.url)
    host, port = u.hostname, u.port
    stats = Stats()
    targets = await discover(host, port, stats)
    # manifest answers most, as runtimes ask for them most; then small and big blobs
    share = {"manifest_tag": 30, "manifest_head": 15, "manifest_digest": 25, "blob_small": 25, "blob_1mib": 5}
    counts = {k: sum(1 for t in targets if t[0] == k) for k in share}
    weights = [share[t[0]] / counts[t[0]] for t in targets]
    rss0, fds0 = sample_proc(a.pid)
    stop = asyncio.Event()
    tasks = []
    # connect in waves, so the listen backlog never overflows
    for i in range(a.idle):
        tasks.append(asyncio.ensure_future(idle_socket(host, port, stats, stop, "silent")))
    for i in range(a.idle_after_request):
        tasks.append(asyncio.ensure_future(idle_socket(host, port, stats, stop, "after_request")))
    await asyncio.sleep(0.5)
    for i in range(a.miss):
        tasks.append(asyncio.ensure_future(miss_client(host, port, stats, a.misses, stop, a.miss_pace)))
    for i in range(a.hit):
        tasks.append(asyncio.ensure_future(hit_client(host, port, stats, targets, weights, stop, i)))
        if i % 100 == 99:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    stats.measuring = True
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < a.seconds:
        rss, fds = sample_proc(a.pid)
        samples.append({"t": round(time.monotonic() - t0, 1), "rss": rss, "fds": fds, "open": stats.open})
        await asyncio.sleep(0.5)
    stats.measuring = False
    elapsed = time.monotonic() - t0
    misses_in_window = stats.misses_used
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(2.0)
    rss_after, fds_after = sample_proc(a.pid)
    kinds = {}
    for k, xs in sorted(stats.lat.items()):
        kinds[k] = {"requests": len(xs), "per_s": round(len(xs) / elapsed, 1),
                    "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99),
                    "max_ms": round(max(xs), 2), "errors": stats.errors.get(k, 0)}
    for k, n in stats.errors.items():
        kinds.setdefault(k, {"requests": 0, "errors": n})
    idle = {}
    for f, xs in stats.idle_closed.items():
        idle[f] = {"closed": len(xs), "after_s_min": pct(xs, 0), "after_s_p50": pct(xs, 50),
                   "after_s_max": round(max(xs), 2) if xs else None}
    rss = [s["rss"] for s in samples]
    steady = [s["open"] for s in samples[4:]] or [0]
    result = {
        "seconds": round(elapsed, 1),
        "connections": {"hit": a.hit, "miss": a.miss, "idle_silent": a.idle,
                        "idle_after_request": a.idle_after_request,
                        "open_min": min(steady), "open_max": max(steady)},
        "errors": sum(stats.errors.values()),
        "error_samples": stats.error_samples,
        "reconnects_after_server_close": stats.reconnects,
        "misses_started": misses_in_window,
        "miss_pool": a.misses,
        "miss_pool_exhausted": stats.miss_pool_exhausted_at is not None,
        "kinds": kinds,
        "idle_closed": idle,
        "rss_bytes": {"before": rss0, "peak": max(rss), "end_of_load": rss[-1], "after_2s_quiet": rss_after},
        "fds": {"before": fds0, "peak": max(s["fds"] for s in samples), "after_2s_quiet": fds_after},
        "samples": samples,
    }
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return 1 if result["errors"] else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mkimages")
    m.add_argument("out")
    mp = sub.add_parser("misspool")
    mp.add_argument("url")
    mp.add_argument("count", type=int)
    r = sub.add_parser("run")
    r.add_argument("--url", required=True)
    r.add_argument("--pid", required=True, type=int)
    r.add_argument("--seconds", type=float, default=60)
    r.add_argument("--hit", type=int, default=500)
    r.add_argument("--miss", type=int, default=100)
    r.add_argument("--miss-pace", type=float, default=2.0)
    r.add_argument("--misses", type=int, default=4000)
    r.add_argument("--idle", type=int, default=300)
    r.add_argument("--idle-after-request", type=int, default=100)
    r.add_argument("--out")
    a = p.parse_args()
    if a.cmd == "mkimages":
        mkimages(a.out)
    elif a.cmd == "misspool":
        misspool(a.url, a.count)
    else:
        sys.exit(asyncio.run(run(a)))


if __name__ == "__main__":
    main()
