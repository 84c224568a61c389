#!/usr/bin/env python3
"""benches/compare.py - the driver of benches/compare.sh (read its header first).

    compare.py RESULTS_DIR AIRLOCK_BIN [RUNS]

Starts its own peers on 127.0.0.1 (a Debian docker-registry as the upstream, a second one
in proxy mode, nginx serving the same bytes as static files), seeds the upstream through
the registry API with images made here, then runs every measurement RUNS times, the targets
alternating within each run, and writes raw key=value lines and a summary with medians,
ranges and ratios.
"""
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

UP, AIR, PROXY, NGINX = 17700, 17710, 17720, 17730
ACCEPT = ("application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json, "
          "application/vnd.oci.image.manifest.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json")
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# The cold-pull set: (repository, tag, layer sizes in KiB).
IMAGES = [
    ("library/alpine", "3.19", [3200]),
    ("library/nginx", "latest", [27000, 2000, 600, 4, 4, 4]),
    ("library/busybox", "latest", [2100]),
    ("org/app", "v1", [8000, 4000, 1000]),
    ("org/app", "v2", [8000, 4000, 1200]),
]
LARGE_MIB, HERD_MIB, HERD_N, MEM_N = 256, 64, 32, 32
WRK_SECS, WRK_CONNS = 10, 32
TOOLS = {t: f"/usr/bin/{t}" for t in ["docker-registry", "skopeo", "wrk", "curl", "nginx"]}
TOOLS["nginx"] = "/usr/sbin/nginx"


# Downloads of the cached blob per run: 8 x 256 MiB, so that its CPU time (counted in
# 10 ms clock ticks) is some 40 ticks, not 3 x 256 MiB's dozen.
BLOB_GETS = int(os.environ.get("COMPARE_BLOB_GETS", "8"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def http(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.status, dict(r.headers), r.read()


def wait_http(url, what):
    for _ in range(300):
        try:
            http("GET", url)
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"{what} did not answer at {url}")


class Upstream:
    """Pushes through the registry API: monolithic uploads, then the manifest."""

    def __init__(self, url):
        self.url = url

    def blob(self, repo, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _, h, _ = http("POST", f"{self.url}/v2/{repo}/blobs/uploads/")
        loc = h["Location"]
        loc = loc if loc.startswith("http") else self.url + loc
        sep = "&" if "?" in loc else "?"
        http("PUT", f"{loc}{sep}digest={digest}", data,
             {"Content-Type": "application/octet-stream"})
        return {"digest": digest, "size": len(data)}

    def image(self, repo, tag, layers):
        descs = []
        for data in layers:
            d = self.blob(repo, data)
            d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
            descs.append(d)
        cfg = json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers",
                                     "diff_ids": [d["digest"] for d in descs]}}).encode()
        c = self.blob(repo, cfg)
        c["mediaType"] = "application/vnd.oci.image.config.v1+json"
        body = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": c,
                           "layers": descs}).encode()
        http("PUT", f"{self.url}/v2/{repo}/manifests/{tag}", body, {"Content-Type": MANIFEST})
        return "sha256:" + hashlib.sha256(body).hexdigest(), body, descs


def rand(n):
    return os.urandom(n)


class Proc:
    def __init__(self, name, argv, logdir, cwd=None):
        self.name = name
        self.log = open(os.path.join(logdir, f"{name}.log"), "ab")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                  start_new_session=True)

    def pids(self):
        """The process and its children (nginx's workers)."""
        out = subprocess.run(["pgrep", "-s", str(self.p.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()] or [self.p.pid]

    def cpu(self):
        """utime + stime of the whole session, in seconds."""
        total = 0
        for pid in self.pids():
            try:
                f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += int(f[11]) + int(f[12])
            except OSError:
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mib(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


def registry_config(path, port, root, extra=""):
    with open(path, "w") as f:
        f.write(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: airlock-compare-benchmark
{extra}""")


class Bench:
    def __init__(self, out_dir, airlock_bin, runs):
        self.out_dir, self.bin, self.runs = out_dir, airlock_bin, runs
        self.state = tempfile.mkdtemp(prefix="airlock-compare.")
        os.chmod(self.state, 0o755)  # nginx's workers run as www-data
        self.logs = os.path.join(self.state, "log")
        os.makedirs(self.logs)
        self.procs = {}
        self.raw = []  # (run, target, key, value)

    # -- peers ----------------------------------------------------------------------------
    def start_upstream(self):
        cfg = os.path.join(self.state, "upstream.yml")
        registry_config(cfg, UP, os.path.join(self.state, "upstream"))
        self.procs["upstream"] = Proc("upstream", [TOOLS["docker-registry"], "serve", cfg],
                                      self.logs)
        wait_http(f"http://127.0.0.1:{UP}/v2/", "the upstream")

    def fresh(self, target):
        """(Re)start a target with an empty cache."""
        if target in self.procs:
            self.procs.pop(target).stop()
        root = os.path.join(self.state, target)
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        if target == "airlock":
            cfg = os.path.join(root, "airlock.toml")
            with open(cfg, "w") as f:
                f.write(f"""[server]
listen = "127.0.0.1:{AIR}"
[admin]
listen = "127.0.0.1:{AIR + 1}"
[storage]
path = "{root}/data"
[[upstream]]
registry = "docker.io"
url = "http://127.0.0.1:{UP}"
""")
            self.procs[target] = Proc(target, [self.bin, "serve", "-c", cfg], self.logs)
            wait_http(f"http://127.0.0.1:{AIR}/v2/", "airlock")
        elif target == "proxy":
            cfg = os.path.join(root, "proxy.yml")
            registry_config(cfg, PROXY, os.path.join(root, "data"),
                            f"proxy:\n  remoteurl: http://127.0.0.1:{UP}\n")
            self.procs[target] = Proc(target, [TOOLS["docker-registry"], "serve", cfg],
                                      self.logs)
            wait_http(f"http://127.0.0.1:{PROXY}/v2/", "the distribution proxy")

    def start_nginx(self):
        """nginx as the physical limit: the large blob and the manifest as static files,
        sendfile on, access log off."""
        root = os.path.join(self.state, "nginx")
        www = os.path.join(root, "www")
        blobs = os.path.join(www, "v2/bench/large/blobs")
        mans = os.path.join(www, "v2/library/nginx/manifests")
        os.makedirs(blobs)
        os.makedirs(mans)
        os.makedirs(os.path.join(root, "tmp"))
        with open(os.path.join(blobs, self.large["digest"]), "wb") as f:
            f.write(self.large_data)
        for name in ["latest", self.mdigest]:
            with open(os.path.join(mans, name), "wb") as f:
                f.write(self.mbody)
        conf = os.path.join(root, "nginx.conf")
        t = os.path.join(root, "tmp")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes auto;
pid {root}/nginx.pid;
error_log {self.logs}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;
  uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
  types {{ }}
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{NGINX};
    root {www};
    location ~ /manifests/ {{ default_type {MANIFEST}; }}
    location = /v2/ {{ return 200 "{{}}"; }}
  }}
}}
""")
        self.procs["nginx"] = Proc("nginx", [TOOLS["nginx"], "-e", f"{self.logs}/nginx.err",
                                             "-p", root, "-c", conf], self.logs)
        wait_http(f"http://127.0.0.1:{NGINX}/v2/", "nginx")

    def seed(self):
        up = Upstream(f"http://127.0.0.1:{UP}")
        log("== seeding the upstream")
        for i, (repo, tag, sizes) in enumerate(IMAGES):
            layers = [rand(kib << 10) for kib in sizes]
            digest, body, _ = up.image(repo, tag, layers)
            if (repo, tag) == ("library/nginx", "latest"):
                self.mdigest, self.mbody = digest, body
        self.large_data = rand(LARGE_MIB << 20)
        _, _, descs = up.image("bench/large", "latest", [self.large_data])
        self.large = descs[0]
        self.up = up

    # -- measurements ---------------------------------------------------------------------
    def url(self, target):
        return "http://127.0.0.1:%d" % {"airlock": AIR, "proxy": PROXY, "nginx": NGINX,
                                         "direct": UP}[target]

    def proc(self, target):
        return self.procs["upstream" if target == "direct" else target]

    def record(self, run, target, key, value):
        self.raw.append((run, target, key, value))
        log(f"  run {run} {target:8} {key} = {value}")

    def cold_pull(self, run, target):
        if target != "direct":
            self.fresh(target)
        host = self.url(target).split("//")[1]
        dest = os.path.join(self.state, "pulls")
        t0 = time.monotonic()
        for repo, tag, _ in IMAGES + [("bench/large", "latest", [])]:
            shutil.rmtree(dest, ignore_errors=True)
            subprocess.run([TOOLS["skopeo"], "copy", "--quiet", "--src-tls-verify=false",
                            f"docker://{host}/{repo}:{tag}", f"dir:{dest}"], check=True)
        self.record(run, target, "cold_pull_s", round(time.monotonic() - t0, 3))
        shutil.rmtree(dest, ignore_errors=True)

    def settle(self, target):
        """Wait until the target is idle (under 10 ms of CPU per 0.5 s, at most 60 s): work
        left over from the part before (a cold pull's fsyncs and renames) is not charged to
        the next measurement."""
        p = self.proc(target)
        before, t0 = p.cpu(), time.monotonic()
        while time.monotonic() - t0 < 60:
            time.sleep(0.5)
            now = p.cpu()
            if now - before < 0.01:
                break
            before = now
        waited = time.monotonic() - t0
        if waited > 1:
            log(f"  {target} was busy for {waited:.1f} s before the measurement")

    def manifests(self, run, target):
        base = self.url(target) + "/v2/library/nginx/manifests/"
        lua = os.path.join(self.state, "manifest.lua")
        with open(lua, "w") as f:
            f.write(f'wrk.headers["Accept"] = "{ACCEPT}"\n')
        for name, ref in [("tag", "latest"), ("digest", self.mdigest)]:
            _, _, body = http("GET", base + ref, headers={"Accept": ACCEPT})
            assert hashlib.sha256(body).hexdigest() == self.mdigest.split(":")[1], target
            self.settle(target)
            p = self.proc(target)
            c0 = p.cpu()
            out = subprocess.run([TOOLS["wrk"], "-t2", f"-c{WRK_CONNS}", f"-d{WRK_SECS}s",
                                  "--timeout", "10s", "-s", lua, base + ref],
                                 capture_output=True, text=True, check=True).stdout
            cpu = p.cpu() - c0
            rps = float(next(l.split()[1] for l in out.splitlines()
                             if l.startswith("Requests/sec:")))
            total = int(next(l.split()[0] for l in out.splitlines() if "requests in" in l))
            errors = sum(int(l.split()[-1]) for l in out.splitlines() if "Non-2xx" in l)
            self.record(run, target, f"manifest_{name}_rps", rps)
            self.record(run, target, f"manifest_{name}_cpu_us_per_req",
                        round(cpu / max(total, 1) * 1e6, 2))
            self.record(run, target, f"manifest_{name}_errors", errors)

    def blob(self, run, target):
        url = f"{self.url(target)}/v2/bench/large/blobs/{self.large['digest']}"
        curl = [TOOLS["curl"], "-fsS", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}"]
        subprocess.run(curl + [url], check=True, capture_output=True)  # warm (fills a proxy)
        self.settle(target)
        p = self.proc(target)
        speeds, c0 = [], p.cpu()
        for _ in range(BLOB_GETS):
            out = subprocess.run(curl + [url], check=True, capture_output=True,
                                 text=True).stdout.split()
            assert int(out[0]) == self.large["size"], (target, out)
            speeds.append(float(out[1]) / (1 << 20))
        cpu = p.cpu() - c0
        self.record(run, target, "blob_mib_s", round(statistics.median(speeds), 1))
        self.record(run, target, "blob_cpu_s_per_gib",
                    round(cpu / (BLOB_GETS * self.large["size"] / (1 << 30)), 3))

    def herd(self, run, target):
        data = rand(HERD_MIB << 20)
        repo, tag = "bench/herd", f"r{run}-{target}"
        _, _, descs = self.up.image(repo, tag, [data])
        digest = descs[0]["digest"]
        base = self.url(target)
        http("GET", f"{base}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
        cmd = (f"{TOOLS['curl']} -fsS {base}/v2/{repo}/blobs/{digest} | sha256sum")
        t0 = time.monotonic()
        clients = [subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, text=True)
                   for _ in range(HERD_N)]
        sums = [c.communicate()[0].split()[0] for c in clients]
        wall = time.monotonic() - t0
        ok = sum(s == digest.split(":")[1] for s in sums)
        time.sleep(1)  # the upstream logs a request once its response is complete
        gets = sum(1 for line in open(os.path.join(self.logs, "upstream.log"), errors="replace")
                   if f"/blobs/{digest} HTTP" in line and '"GET ' in line and '" 200 ' in line)
        self.record(run, target, "herd_wall_s", round(wall, 3))
        self.record(run, target, "herd_ok", ok)
        self.record(run, target, "herd_upstream_gets", gets)

    def memory(self, run):
        url = f"{self.url('airlock')}/v2/bench/large/blobs/{self.large['digest']}"
        p = self.procs["airlock"]
        peak, done = [p.rss_mib()], threading.Event()

        def sample():
            while not done.is_set():
                peak.append(p.rss_mib())
                time.sleep(0.05)
        t = threading.Thread(target=sample)
        t.start()
        clients = [subprocess.Popen([TOOLS["curl"], "-fsS", "-o", "/dev/null", url])
                   for _ in range(MEM_N)]
        failed = sum(c.wait() != 0 for c in clients)
        done.set()
        t.join()
        self.record(run, "airlock", "mem_32x256_peak_rss_mib", round(max(peak), 1))
        self.record(run, "airlock", "mem_32x256_failed", failed)

    # -- the run --------------------------------------------------------------------------
    def run(self):
        try:
            self.start_upstream()
            self.seed()
            self.start_nginx()
            parts = os.environ.get("COMPARE_PARTS", "cold,manifest,blob,herd,memory").split(",")
            if "cold" not in parts:
                self.fresh("airlock")
                self.fresh("proxy")
            for r in range(1, self.runs + 1):
                order = ["airlock", "proxy"] if r % 2 else ["proxy", "airlock"]
                if "cold" in parts:
                    log(f"== run {r}: cold pulls")
                    for t in ["direct"] + order:
                        self.cold_pull(r, t)
                log(f"== run {r}: manifests and the large blob")
                for t in order + ["nginx"]:
                    if "manifest" in parts:
                        self.manifests(r, t)
                    if "blob" in parts:
                        self.blob(r, t)
                if "herd" in parts:
                    log(f"== run {r}: the herd")
                    for t in ["direct"] + order:
                        self.herd(r, t)
                if "memory" in parts:
                    self.memory(r)
        finally:
            for p in self.procs.values():
                p.stop()
            shutil.rmtree(self.state, ignore_errors=True)
        self.write()

    def write(self):
        stamp = time.strftime("%H%M", time.gmtime())
        raw = os.path.join(self.out_dir, f"compare-{stamp}.raw")
        with open(raw, "w") as f:
            for r, t, k, v in self.raw:
                f.write(f"run={r} target={t} {k}={v}\n")
        vals = {}
        for _, t, k, v in self.raw:
            vals.setdefault((t, k), []).append(float(v))

        def med(t, k):
            v = vals.get((t, k))
            return statistics.median(v) if v else None

        def cell(t, k):
            v = vals.get((t, k))
            if not v:
                return "-"
            return f"{statistics.median(v):g} ({min(v):g}-{max(v):g})"

        def ratio(a, b, k, invert=False):
            x, y = med(a, k), med(b, k)
            if not x or not y:
                return "-"
            return f"{(y / x if invert else x / y):.2f}x"
        lines = [f"# airlock vs distribution's proxy vs nginx, {time.strftime('%F %H:%M', time.gmtime())} UTC, "
                 f"{os.cpu_count()} cores, {os.uname().release}, {self.runs} alternating runs; "
                 "median (min-max)", ""]
        rows = [
            ("manifest GET by tag, req/s (wrk)", "manifest_tag_rps", "nginx", False),
            ("manifest GET by digest, req/s (wrk)", "manifest_digest_rps", "nginx", False),
            ("manifest by tag, server CPU us/request", "manifest_tag_cpu_us_per_req", "nginx", True),
            ("manifest by digest, server CPU us/request", "manifest_digest_cpu_us_per_req", "nginx", True),
            ("cached 256 MiB blob, MiB/s (curl)", "blob_mib_s", "nginx", False),
            ("cached blob, server CPU s/GiB", "blob_cpu_s_per_gib", "nginx", True),
            ("herd: 32 clients, new 64 MiB blob, wall s", "herd_wall_s", "direct", True),
            ("herd: upstream GETs of the blob", "herd_upstream_gets", None, False),
            ("herd: clients with the right bytes", "herd_ok", None, False),
            ("cold pull of 6 images (skopeo), wall s", "cold_pull_s", "direct", True),
        ]
        lines.append("| measure | airlock | distribution proxy | nginx / direct | airlock vs reference | airlock vs proxy |")
        lines.append("|---|---|---|---|---|---|")
        for title, k, ref, lower_better in rows:
            refcell = cell(ref, k) if ref else "-"
            vs_ref = ratio("airlock", ref, k, lower_better) if ref else "-"
            vs_proxy = ratio("airlock", "proxy", k, lower_better)
            lines.append(f"| {title} | {cell('airlock', k)} | {cell('proxy', k)} | "
                         f"{refcell} | {vs_ref} | {vs_proxy} |")
        lines.append(f"| RSS peak, 32 x 256 MiB downloads, MiB | {cell('airlock', 'mem_32x256_peak_rss_mib')} | - | - | - | - |")
        lines += ["", "Ratios: for throughput airlock/reference, for times and CPU "
                  "reference/airlock (above 1.00x airlock is better); the herd's and cold "
                  "pull's reference is the upstream pulled directly, the other rows' nginx."]
        summary = os.path.join(self.out_dir, f"compare-{stamp}.txt")
        with open(summary, "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        log(f"results in {summary} and {raw}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    for tool in TOOLS.values():
        if not os.access(tool, os.X_OK):
            sys.exit(f"missing {tool}: benches/compare.sh installs it")
    Bench(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3).run()
