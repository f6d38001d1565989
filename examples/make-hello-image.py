#!/usr/bin/env python3
"""Build examples/hello-oci: a tiny two-layer OCI image layout, byte for byte reproducible.

Layer 1 adds /etc/os-release, /bin/hello (a shell script) and /tmp/scratch; layer 2 changes
the greeting and removes /tmp/scratch with a whiteout. Layer 2 is gzip-compressed, so loading
it exercises decompression, blob digests and DiffIDs. Run from the repository root:
    python3 examples/make-hello-image.py
"""
import gzip, hashlib, io, json, os, shutil, tarfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hello-oci")
MTIME = 1_700_000_000


def layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.uid, info.gid = MTIME, mode, 0, 0
            info.uname = info.gname = "root"
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def blob(b):
    path = os.path.join(OUT, "blobs", "sha256", hashlib.sha256(b).hexdigest())
    with open(path, "wb") as f:
        f.write(b)
    return sha(b)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "blobs", "sha256"))
    l1 = layer([
        ("bin", "dir", b"", 0o755),
        ("bin/hello", "file", b"#!/bin/sh\necho 'hello from cairn'\n", 0o755),
        ("etc", "dir", b"", 0o755),
        ("etc/os-release", "file", b"NAME=cairn-example\nVERSION_ID=1\n", 0o644),
        ("tmp", "dir", b"", 0o1777),
        ("tmp/scratch", "file", b"removed by the next layer\n", 0o644),
    ])
    l2 = layer([
        ("bin", "dir", b"", 0o755),
        ("bin/hello", "file", b"#!/bin/sh\necho 'hello again from cairn'\n", 0o755),
        ("tmp", "dir", b"", 0o1777),
        ("tmp/.wh.scratch", "file", b"", 0o644),
    ])
    l2gz = gzip.compress(l2, compresslevel=9, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(l1), sha(l2)]},
    }, sort_keys=True, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config), "size": len(config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob(l1), "size": len(l1)},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(l2gz), "size": len(l2gz)},
        ],
    }, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "hello:1"},
        }],
    }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True, separators=(",", ":"))
    with open(os.path.join(OUT, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')


if __name__ == "__main__":
    main()
