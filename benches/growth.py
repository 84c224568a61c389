#!/usr/bin/env python3
"""benches/growth.py - the fixture of benches/growth.sh: a bundle of IMAGES small images
written straight into an OCI layout archive (no registry, no pushes), as `airlock export`
writes one: `oci-layout`, every blob under `blobs/sha256/`, then `index.json` naming each
image by its full reference. Each image has a config, one layer and a manifest (3 blobs),
all distinct, so BLOBS = 3 * IMAGES.

    growth.py bundle OUT.tar IMAGES [FIRST]     images FIRST..FIRST+IMAGES
    growth.py refs IMAGES COUNT                 COUNT references spread over the images
"""
import hashlib
import io
import json
import sys
import tarfile

LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def ref(i):
    return f"docker.io/growth/app-{i // 1000}/img-{i}:v1"


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def blob(tar, data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    add(tar, f"blobs/sha256/{digest}", data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def bundle(out, images, first):
    index = []
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        add(tar, "oci-layout", LAYOUT)
        for i in range(first, first + images):
            layer = blob(tar, f"layer of image {i}\n".encode() * 8, LAYER)
            config = {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
                "config": {"Labels": {"image": str(i)}},
            }
            cfg = blob(tar, json.dumps(config).encode(), CONFIG)
            manifest = {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": cfg,
                "layers": [layer],
            }
            desc = blob(tar, json.dumps(manifest).encode(), MANIFEST)
            desc["annotations"] = {
                "org.opencontainers.image.ref.name": ref(i),
                "io.containerd.image.name": ref(i),
            }
            index.append(desc)
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": index}
        add(tar, "index.json", json.dumps(doc).encode())


def main():
    if sys.argv[1] == "bundle":
        first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
        bundle(sys.argv[2], int(sys.argv[3]), first)
    elif sys.argv[1] == "refs":
        images, count = int(sys.argv[2]), int(sys.argv[3])
        step = max(images // count, 1)
        for i in range(0, images, step)[:count]:
            print(ref(i))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
