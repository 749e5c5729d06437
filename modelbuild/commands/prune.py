"""``modelbuild prune``: delete what no tag needs; ``--verify`` re-hashes every blob.

Prune holds the store's gc lock exclusively, so it waits for running builds and pulls and
never deletes a blob a build has written but not yet tagged, nor a download in progress;
a download a killed pull left in ``partial/`` is a temp file like the rest.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify", action="store_true",
                   help="re-hash every blob; delete any whose content does not match its digest")
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def prune(store: Any, home: Path, *, verify: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Delete what no tag reaches (and, with *verify*, every blob whose bytes do not match
    its digest). A store that cannot be written (read-only, permission) is a
    :class:`StoreError` naming the file, never a half-done prune reported as a bug."""
    from modelbuild.storage.files import store_io

    report: dict[str, Any] = {"blobs": 0, "deleted": 0, "freed": 0, "verified": 0, "corrupt": [], "missing": [],
                              "temp_files": 0}
    with store.gc_lock(exclusive=True), store_io("prune the store", store.root):
        blobs = store.all_blobs()
        report["blobs"] = len(blobs)
        if verify:
            for digest in blobs:
                if store.verify_blob(digest):
                    report["verified"] += 1
                else:
                    report["corrupt"].append(digest)
                    if not dry_run:
                        store.blob_path(digest).unlink(missing_ok=True)
        keep = store.reachable(heal=not dry_run)
        report["missing"] = sorted(d for d in keep if not store.has_blob(d))
        for digest in blobs:
            if digest in keep or digest in report["corrupt"]:
                continue
            path = store.blob_path(digest)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            report["deleted"] += 1
            report["freed"] += size
            if not dry_run:
                path.unlink(missing_ok=True)
        # Temp files of killed builds, and downloads a killed pull left to resume: pulls and
        # builds hold the gc lock shared, so none of these belongs to a running one.
        partial_dir = getattr(store, "partial_dir", store.root / "partial")
        for folder in (store.ingest_dir, partial_dir):
            for leftover in list(folder.glob("*")) if folder.exists() else []:
                if not leftover.is_file() or leftover.is_symlink():
                    continue
                report["temp_files"] += 1
                if not dry_run:
                    leftover.unlink(missing_ok=True)
        report["temp_files"] += _prune_sources(home / "sources", dry_run)
        locks = store.root / "locks"
        if locks.exists() and not dry_run:
            for lock in locks.glob("*.lock"):
                lock.unlink(missing_ok=True)
    return report


def _prune_sources(root: Path, dry_run: bool) -> int:
    """Remote sources' snapshot directories (hard links to blobs: they would keep a deleted
    blob's bytes on disk) and partial downloads; the listings stay, so a source whose blobs
    are still stored is linked again without the network. How many were (or would be)
    removed. Fetches hold the gc lock shared, so none of these is in use."""
    from modelbuild.runtime.files import remove_tree

    if not root.is_dir():
        return 0
    leftovers = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "partial"]
    partial = root / "partial"
    leftovers += [p for p in partial.iterdir() if p.is_file()] if partial.is_dir() else []
    if not dry_run:
        for path in leftovers:
            remove_tree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return len(leftovers)


def run(args: argparse.Namespace) -> int:
    from modelbuild.commands._common import human_size, print_json
    from modelbuild.home import home_dir
    from modelbuild.store import Store

    home = home_dir(args.home)
    store = Store(home / "store")
    if not store.root.exists():
        report: dict[str, Any] = {"blobs": 0, "deleted": 0, "freed": 0, "verified": 0, "corrupt": [], "missing": [],
                                  "temp_files": 0}
    else:
        report = prune(store, home, verify=args.verify, dry_run=args.dry_run)
    if args.json:
        print_json(report)
    else:
        verb = "Would delete" if args.dry_run else "Deleted"
        print(f"{verb} {report['deleted']} unreferenced blobs ({human_size(report['freed'])}), "
              f"{report['temp_files']} temp files")
        if args.verify:
            print(f"Verified {report['verified']} of {report['blobs']} blobs: {len(report['corrupt'])} corrupt")
        for digest in report["corrupt"]:
            print(f"corrupt: {digest}")
        for digest in report["missing"]:
            print(f"missing: {digest} (referenced by a tag)")
    return 1 if report["corrupt"] or report["missing"] else 0
