#!/usr/bin/env python3
"""Fails when a dependency of the library declares a `rust-version` above ours.

Walks the normal and build dependencies of every feature on every platform (`cargo metadata
--all-features`), the crates a user of the library compiles; dev-dependencies build only our tests,
examples and benches. Our own code is held to `rust-version` by clippy's `incompatible_msrv` lint in the
clippy gate. Neither builds with an old toolchain.
"""
import json
import subprocess
import sys


def version(v):
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = meta["resolve"]["root"]
ours = packages[root].get("rust_version")
if not ours:
    sys.exit("Cargo.toml has no rust-version")

seen, stack = set(), [root]
while stack:
    node = stack.pop()
    if node in seen:
        continue
    seen.add(node)
    for dep in nodes[node]["deps"]:
        if any(kind["kind"] in (None, "build") for kind in dep["dep_kinds"]):
            stack.append(dep["pkg"])
seen.discard(root)

declared = sorted(
    ((packages[i]["rust_version"], packages[i]["name"], packages[i]["version"]) for i in seen if packages[i].get("rust_version")),
    key=lambda t: version(t[0]),
)
above = [d for d in declared if version(d[0]) > version(ours)]
highest = declared[-1] if declared else ("none", "-", "-")
print(f"rust-version {ours}; {len(seen)} dependencies, {len(declared)} declare one, the highest {highest[1]} "
      f"{highest[2]} ({highest[0]})")
if above:
    for rv, name, ver in above:
        print(f"  {name} {ver} needs Rust {rv}", file=sys.stderr)
    sys.exit(f"{len(above)} dependencies need a newer Rust than rust-version {ours}: raise it in Cargo.toml "
             "and README.md, or hold those dependencies back")
