#!/usr/bin/env python3
"""python-tuf ngclient driver for Bulwark's interop tests and benchmark.

usage: ngclient_fetch.py METADATA_URL TARGETS_URL CLIENT_DIR TARGET [--init ROOT_FILE] [--refresh-only]

Initializes CLIENT_DIR/metadata with ROOT_FILE (when --init is given), refreshes, finds TARGET,
downloads it into CLIENT_DIR/targets unless a verified cached copy exists, and prints one JSON
line: {"tuf_version", "seconds" (perf_counter around refresh + download), "cpu_seconds" (process_time around the
same: the process's user and system CPU), "cached", "length"}.
Exit status 1 on any error.
"""
import json
import os
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    init_root = None
    if "--init" in args:
        i = args.index("--init")
        init_root = args[i + 1]
        del args[i : i + 2]
    refresh_only = "--refresh-only" in args
    if refresh_only:
        args.remove("--refresh-only")
    metadata_url, targets_url, client_dir, target = args
    meta_dir = os.path.join(client_dir, "metadata")
    target_dir = os.path.join(client_dir, "targets")
    os.makedirs(meta_dir, exist_ok=True)
    os.makedirs(target_dir, exist_ok=True)
    bootstrap = None
    if init_root:
        # tuf >= 6 takes the initial trusted root as `bootstrap` bytes; it stores it itself.
        with open(init_root, "rb") as f:
            bootstrap = f.read()

    import tuf
    from tuf.ngclient import Updater

    start = time.perf_counter()
    start_cpu = time.process_time()
    updater = Updater(meta_dir, metadata_url, target_dir, targets_url, bootstrap=bootstrap)
    updater.refresh()
    if refresh_only:
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - start_cpu
        print(json.dumps({"tuf_version": tuf.__version__, "seconds": elapsed, "cpu_seconds": cpu}))
        return 0
    info = updater.get_targetinfo(target)
    if info is None:
        print(f"target {target} not found", file=sys.stderr)
        return 1
    path = updater.find_cached_target(info)
    cached = path is not None
    if path is None:
        path = updater.download_target(info)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    with open(path, "rb") as f:
        length = len(f.read())
    print(json.dumps({"tuf_version": tuf.__version__, "seconds": elapsed, "cpu_seconds": cpu, "cached": cached, "length": length}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - report any failure as exit status 1
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
