#!/usr/bin/env python3
"""Builds a small TUF repository with python-tuf's Metadata API, for Bulwark's interop tests.

usage: make_python_repo.py OUT_DIR

Writes OUT_DIR/metadata/{1.root.json,timestamp.json,1.snapshot.json,1.targets.json,
1.delegated.json,1.nested.json} and hash-prefixed artifacts under OUT_DIR/targets/.
Keys: root ed25519 + ecdsa (threshold 2), timestamp ecdsa, snapshot rsa-pss, targets ed25519;
"delegated" (paths "delegated/*") is signed by ecdsa + rsa with threshold 2 and delegates
"delegated/deep/*" to "nested" (ed25519). Prints one JSON line describing the artifacts.
"""
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer


def main() -> int:
    out = sys.argv[1]
    meta_dir = os.path.join(out, "metadata")
    targets_dir = os.path.join(out, "targets")
    os.makedirs(meta_dir, exist_ok=True)
    os.makedirs(targets_dir, exist_ok=True)
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)

    ed = CryptoSigner.generate_ed25519()
    ec = CryptoSigner.generate_ecdsa()
    rsa = CryptoSigner.generate_rsa()
    ed2 = CryptoSigner.generate_ed25519()
    ec_root = CryptoSigner.generate_ecdsa()

    root = Metadata(Root(expires=expires, consistent_snapshot=True))
    for key in (ed.public_key, ec_root.public_key):
        root.signed.add_key(key, "root")
    root.signed.roles["root"].threshold = 2
    root.signed.add_key(ec.public_key, "timestamp")
    root.signed.add_key(rsa.public_key, "snapshot")
    root.signed.add_key(ed.public_key, "targets")

    artifacts = {
        "top.txt": b"top-level target from python-tuf\n",
        "delegated/file.txt": b"delegated target from python-tuf\n",
        "delegated/deep/nested.bin": bytes(range(256)) * 4,
    }

    def target(path: str) -> TargetFile:
        data = artifacts[path]
        tf = TargetFile.from_data(path, data, ["sha256", "sha512"])
        directory, name = os.path.split(path)
        os.makedirs(os.path.join(targets_dir, directory), exist_ok=True)
        for digest in tf.hashes.values():
            with open(os.path.join(targets_dir, directory, f"{digest}.{name}"), "wb") as f:
                f.write(data)
        return tf

    targets = Metadata(Targets(expires=expires))
    targets.signed.targets["top.txt"] = target("top.txt")
    delegated_role = DelegatedRole(
        name="delegated",
        keyids=[ec.public_key.keyid, rsa.public_key.keyid],
        threshold=2,
        terminating=True,
        paths=["delegated/*", "delegated/*/*"],
    )
    targets.signed.delegations = Delegations(
        keys={ec.public_key.keyid: ec.public_key, rsa.public_key.keyid: rsa.public_key},
        roles={"delegated": delegated_role},
    )

    delegated = Metadata(Targets(expires=expires))
    delegated.signed.targets["delegated/file.txt"] = target("delegated/file.txt")
    delegated.signed.delegations = Delegations(
        keys={ed2.public_key.keyid: ed2.public_key},
        roles={
            "nested": DelegatedRole(
                name="nested",
                keyids=[ed2.public_key.keyid],
                threshold=1,
                terminating=False,
                paths=["delegated/deep/*"],
            )
        },
    )
    nested = Metadata(Targets(expires=expires))
    nested.signed.targets["delegated/deep/nested.bin"] = target("delegated/deep/nested.bin")

    snapshot = Metadata(Snapshot(expires=expires))
    for name, md in (("targets", targets), ("delegated", delegated), ("nested", nested)):
        snapshot.signed.meta[f"{name}.json"] = MetaFile(version=md.signed.version)
    timestamp = Metadata(Timestamp(expires=expires))

    serializer = JSONSerializer(compact=False)

    def write(md: Metadata, name: str, signers) -> bytes:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        data = md.to_bytes(serializer)
        with open(os.path.join(meta_dir, name), "wb") as f:
            f.write(data)
        return data

    write(root, "1.root.json", [ed, ec_root])
    write(nested, "1.nested.json", [ed2])
    write(delegated, "1.delegated.json", [ec, rsa])
    write(targets, "1.targets.json", [ed])
    snapshot_bytes = write(snapshot, "1.snapshot.json", [rsa])
    timestamp.signed.snapshot_meta = MetaFile(version=1, length=len(snapshot_bytes))
    write(timestamp, "timestamp.json", [ec])

    print(json.dumps({p: len(d) for p, d in artifacts.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
