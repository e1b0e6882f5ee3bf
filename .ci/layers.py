"""The workspace's crates depend on each other one way only: cli -> transports -> bundle
-> core, with the benchmark and the cross-crate tests on top of the libraries and nothing depending
on them. Reads `cargo metadata` on stdin; exits 1 naming every dependency (normal, dev
or build) that points sideways or back up.

    cargo metadata --format-version 1 --no-deps | python3 .ci/layers.py
"""
import json
import sys

# A crate may depend only on crates of a lower rank.
RANK = {
    "tide-core": 0,
    "tide-bundle": 1,
    "tide-transports": 2,
    "tide-cli": 3,
    "tide-bench": 4,
    "tide-tests": 4,
}

meta = json.load(sys.stdin)
bad = []
for package in meta["packages"]:
    name = package["name"]
    if name not in RANK:
        bad.append(f"{name} is not placed in a layer: add it to .ci/layers.py")
        continue
    for dep in package["dependencies"]:
        if not dep.get("path"):
            continue  # a crate from the registry
        if dep["name"] not in RANK:
            bad.append(f"{name} depends on {dep['name']}, which is not placed in a layer")
        elif RANK[dep["name"]] >= RANK[name]:
            kind = dep.get("kind") or "normal"
            bad.append(f"{name} depends on {dep['name']} ({kind}): dependencies point down only")
for line in bad:
    print(f"layering: {line}", file=sys.stderr)
sys.exit(1 if bad else 0)
