"""The core's modules keep their order: each top-level module of `core/src` uses only
modules listed before it in `core/src/lib.rs` (its `mod` lines, bottom layer first).
Exits 1 naming every `crate::…` path that points sideways or up.

    python3 .ci/modules.py core/src
"""
import pathlib
import re
import sys

src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "core/src")
order = re.findall(r"^(?:pub(?:\(crate\))? )?mod (\w+);", (src / "lib.rs").read_text(), re.M)
rank = {name: i for i, name in enumerate(order)}
bad = []
for path in sorted(src.rglob("*.rs")):
    rel = path.relative_to(src)
    if rel.name == "lib.rs":
        continue
    module = rel.parts[0].removesuffix(".rs")
    if module not in rank:
        bad.append(f"{rel}: module {module} is not declared in lib.rs")
        continue
    code = path.read_text()
    # Whatever a `#[cfg(test)]` module of the file uses is test scaffolding, not a
    # dependency of the engine: cut the file at its first one.
    code = code.split("#[cfg(test)]", 1)[0] if rel.name != "tests.rs" else ""
    for n, line in enumerate(code.splitlines(), 1):
        if line.lstrip().startswith("//"):
            continue
        for used in re.findall(r"\bcrate::(\w+)", line):
            if used not in rank:
                bad.append(f"{rel}:{n}: uses crate::{used}, which lib.rs does not declare")
            elif rank[used] > rank[module]:
                bad.append(f"{rel}:{n}: {module} uses crate::{used}, a module above it")
for line in bad:
    print(f"module order: {line}", file=sys.stderr)
sys.exit(1 if bad else 0)
