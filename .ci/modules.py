"""The core's modules keep their order: each top-level module of `core/src` uses only
itself and the modules listed before it in `core/src/lib.rs` (its `mod` lines, bottom
layer first). Exits 1 naming, as file:line, every path that points sideways or up.

    python3 .ci/modules.py core/src

What counts as a use of a module: every path that starts at the crate root or climbs
to it, however it is written:

* `crate::x`, `$crate::x` (in macros), with any spacing around `::`, over any lines;
* groups, nested and over several lines: `crate::{a, b::{c, d}}` uses `a` and `b`;
* `super::` and `self::` chains, resolved against the module they are written in (the
  file's module path plus the inline `mod NAME { … }` blocks around them): from
  `a/b.rs` (module `a::b`) `super::super::x` is `crate::x`, and from a top-level file
  `super::x` is `crate::x`;
* names of the crate root itself: `use crate as c;`, `crate::{self as c}`,
  `extern crate self as c;`, a top-level file's `use super::*;`, and any `crate::X`
  where X is not a module `lib.rs` declares (a re-export there may come from any layer).

Comments, string and character literals are blanked first, so prose and SQL text do
not count. Test code may use anything and is skipped: the item after `#[cfg(test)]` (an
inline `mod tests { … }` up to its matching brace, or a `use …;`), files whose first
attribute is `#![cfg(test)]`, and every file of a module declared `#[cfg(test)] mod
NAME;` (with its submodules). A `#[path = …]` attribute is refused: the checker would
not know which file it names.
"""
import pathlib
import re
import sys

ROOTS = {"crate", "$crate", "super", "self"}
IDENT = re.compile(r"\$?[A-Za-z_][A-Za-z0-9_]*")


def lex(text):
    """Tokens of Rust source as (kind, value, line), kind one of ident, punct, lit.
    Comments are dropped; string, char and number literals become one `lit` token."""
    tokens = []
    i, line, n = 0, 1, len(text)
    char_lit = re.compile(
        r"'(?:[^'\\\n]|\\(?:[nrt\\0'\"]|x[0-9a-fA-F]{2}|u\{[0-9a-fA-F_]{1,6}\}))'"
    )
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += text[i] == "\n"
                    i += 1
        elif c == '"':
            start = line
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                line += i < n and text[i] == "\n"
                i += 1
            i += 1
            tokens.append(("lit", '""', start))
        elif c == "'":
            m = char_lit.match(text, i)
            if m:
                tokens.append(("lit", "''", line))
                i = m.end()
            else:  # a lifetime or a label: the quote, then its name as an identifier
                tokens.append(("punct", "'", line))
                i += 1
        elif IDENT.match(text, i):
            m = IDENT.match(text, i)
            word = m.group()
            i = m.end()
            raw = re.compile(r'(#*)"').match(text, i) if word in ("r", "br", "cr") else None
            if raw:  # a raw string: r"…", r#"…"#, …
                close = '"' + raw.group(1)
                end = text.find(close, raw.end())
                end = n if end < 0 else end + len(close)
                tokens.append(("lit", '""', line))
                line += text.count("\n", i, end)
                i = end
            elif word in ("b", "c") and i < n and text[i] in "\"'":
                continue  # a byte or C string/char: the next round reads the literal
            elif word == "r" and text.startswith("#", i):
                m = re.compile(r"#([A-Za-z_][A-Za-z0-9_]*)").match(text, i)
                tokens.append(("ident", m.group(1) if m else "r", line))
                i = m.end() if m else i
            else:
                tokens.append(("ident", word, line))
        elif c.isdigit():
            m = re.compile(r"[0-9][A-Za-z0-9_]*").match(text, i)
            tokens.append(("lit", m.group(), line))
            i = m.end()
        elif text.startswith("::", i):
            tokens.append(("punct", "::", line))
            i += 2
        else:
            tokens.append(("punct", c, line))
            i += 1
    return tokens


def is_(tok, value):
    return tok is not None and tok[1] == value and tok[0] != "lit"


def at(tokens, i):
    return tokens[i] if 0 <= i < len(tokens) else None


def matching(tokens, i):
    """Index of the bracket closing the one at i (or the last token)."""
    opening = tokens[i][1]
    closing = {"{": "}", "[": "]", "(": ")"}[opening]
    depth = 0
    for j in range(i, len(tokens)):
        if is_(tokens[j], opening):
            depth += 1
        elif is_(tokens[j], closing):
            depth -= 1
            if depth == 0:
                return j
    return len(tokens) - 1


def cfg_test_at(tokens, i):
    """Whether tokens[i:] start `#[cfg(test)]` or `#![cfg(test)]`."""
    words = [t[1] if t[0] != "lit" else None for t in tokens[i : i + 8]]
    return words[:7] == ["#", "[", "cfg", "(", "test", ")", "]"] or words[:8] == [
        "#", "!", "[", "cfg", "(", "test", ")", "]"
    ]


# What an item may start with (after its attributes); a `#[cfg(test)]` on anything else
# (a field, a variant, a match arm, a statement) hides only itself.
ITEM = {"pub", "mod", "fn", "impl", "struct", "enum", "union", "use", "const", "static",
        "trait", "type", "unsafe", "extern", "async", "macro_rules"}


def test_spans(tokens, module, mods):
    """Token ranges of test code, and the paths of modules declared under
    `#[cfg(test)]` (`mod NAME;` or `mod NAME { … }`)."""
    spans, declared = [], []
    i = 0
    while i < len(tokens):
        if not (cfg_test_at(tokens, i) and is_(tokens[i + 1], "[")):
            i += 1
            continue
        j = i + 7
        while is_(at(tokens, j), "#") and is_(at(tokens, j + 1), "["):  # more attributes
            j = matching(tokens, j + 1) + 1
        item = j
        if is_(at(tokens, j), "{"):  # a block
            end = matching(tokens, j)
        elif at(tokens, j) is not None and tokens[j][0] == "ident" and tokens[j][1] in ITEM:
            while j < len(tokens) and not any(is_(tokens[j], c) for c in ";{})]"):
                if is_(tokens[j], "(") or is_(tokens[j], "["):
                    j = matching(tokens, j)
                j += 1
            if j < len(tokens) and any(is_(tokens[j], c) for c in "})]"):
                end = i + 6  # the end of what holds it: a field, not an item
            else:
                end = j if j >= len(tokens) or is_(tokens[j], ";") else matching(tokens, j)
        else:
            end = i + 6
        header = [t[1] if t[0] != "lit" else None for t in tokens[item:j]]
        if end > i + 6 and "mod" in header and header.index("mod") + 1 < len(header):
            name = header[header.index("mod") + 1]
            declared.append(module + inline_path(mods, i) + [name])
        spans.append((i, end))
        i = end + 1
    return spans, declared


def inline_modules(tokens):
    """The inline `mod NAME { … }` blocks: (name, first, last token index)."""
    found = []
    for i, tok in enumerate(tokens):
        if (
            tok[0] == "ident"
            and tok[1] == "mod"
            and at(tokens, i + 1) is not None
            and tokens[i + 1][0] == "ident"
            and is_(at(tokens, i + 2), "{")
        ):
            found.append((tokens[i + 1][1], i + 2, matching(tokens, i + 2)))
    return found


def inline_path(mods, i):
    """Names of the inline modules around token i, outermost first."""
    return [name for name, a, b in mods if a < i < b]


def use_tree(tokens, i, prefix, out):
    """Reads the path (or `use` tree) starting at tokens[i], appending each full path
    it names (segments, line of its last segment) to out; returns the index after it."""
    path = list(prefix)
    line = tokens[i][2]
    while i < len(tokens):
        tok = tokens[i]
        if is_(tok, "{"):
            i += 1
            while i < len(tokens) and not is_(tokens[i], "}"):
                if is_(tokens[i], ","):
                    i += 1
                    continue
                i = use_tree(tokens, i, path, out)
            return i + 1
        if tok[0] == "ident" or is_(tok, "*"):
            path.append(tok[1])
            line = tok[2]
            i += 1
            after = at(tokens, i + 1)
            if is_(at(tokens, i), "::") and after is not None and (
                after[0] == "ident" or is_(after, "{") or is_(after, "*")
            ):
                i += 1
                continue
            if is_(at(tokens, i), "as") and at(tokens, i + 1) is not None:
                i += 2  # `… as name`: the path is what it names
        break
    out.append((path, line))
    return i


def resolve(path, module):
    """The absolute path (segments under the crate root) of a path written in module, or
    None when it climbs above the root."""
    head, rest = path[0], path[1:]
    if head in ("crate", "$crate"):
        base = []
    elif head == "self":
        base = list(module)
    elif head == "super":
        if not module:
            return None
        base = list(module[:-1])
    else:
        return None
    for k, seg in enumerate(rest):
        if seg == "super":
            if not base:
                return None
            base.pop()
        elif seg == "self":
            continue
        else:
            return base + [s for s in rest[k:] if s != "self"]
    return base


def module_of(rel):
    parts = list(rel.parts)
    parts[-1] = parts[-1].removesuffix(".rs")
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return parts


def declared_modules(tokens):
    """Names of the crate root's `mod NAME;` items, in order, except test modules."""
    spans, _ = test_spans(tokens, [], inline_modules(tokens))
    skip = {k for a, b in spans for k in range(a, b + 1)}
    names = []
    depth = 0
    for i, tok in enumerate(tokens):
        if is_(tok, "{"):
            depth += 1
        elif is_(tok, "}"):
            depth -= 1
        elif (
            depth == 0
            and i not in skip
            and tok[0] == "ident"
            and tok[1] == "mod"
            and at(tokens, i + 1) is not None
            and tokens[i + 1][0] == "ident"
            and is_(at(tokens, i + 2), ";")
        ):
            names.append(tokens[i + 1][1])
    return names


def check(src):
    """The violations found under src, one line each."""
    src = pathlib.Path(src)
    order = declared_modules(lex((src / "lib.rs").read_text()))
    rank = {name: k for k, name in enumerate(order)}
    bad = []
    files = {}
    test_modules = []
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src)
        tokens = lex(path.read_text())
        module = module_of(rel)
        mods = inline_modules(tokens)
        spans, declared = test_spans(tokens, module, mods)
        test_modules += declared
        files[rel] = (module, tokens, spans, mods)
        for i, tok in enumerate(tokens):
            if is_(tok, "#") and is_(at(tokens, i + 1), "[") and is_(at(tokens, i + 2), "path"):
                bad.append(f"{rel}:{tok[2]}: #[path] names a file this checker does not follow")
    for rel, (module, tokens, spans, mods) in files.items():
        if rel == pathlib.Path("lib.rs"):
            continue
        if any(module[: len(t)] == t for t in test_modules):
            continue  # a test module's file
        if tokens and cfg_test_at(tokens, 0) and is_(tokens[1], "!"):
            continue  # `#![cfg(test)]`
        own = module[0]
        if own not in rank:
            bad.append(f"{rel}: module {own} is not declared in lib.rs")
            continue
        skip = {k for a, b in spans for k in range(a, b + 1)}
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if i in skip:
                i += 1
                continue
            written = None
            if (
                tok[0] == "ident"
                and tok[1] == "extern"
                and is_(at(tokens, i + 1), "crate")
                and is_(at(tokens, i + 2), "self")
            ):
                written, paths, nxt = "extern crate self", [([], tok[2])], i + 3
            elif (
                tok[0] == "ident"
                and tok[1] in ROOTS
                and not is_(at(tokens, i - 1), "::")
                and (
                    is_(at(tokens, i + 1), "::")
                    or (is_(at(tokens, i + 1), "as") and tok[1] != "self")
                )
            ):
                raw = []
                nxt = use_tree(tokens, i, [], raw)
                written = re.sub(r" ?(::|[{}]) ?", r"\1", " ".join(t[1] for t in tokens[i:nxt]))
                written = written.replace(" ,", ",")
                paths = [(resolve(p, module + inline_path(mods, i)), line) for p, line in raw]
            if written is None:
                i += 1
                continue
            for target, line in paths:
                where = f"{rel}:{line}"
                full = "crate" + "".join("::" + s for s in target or [])
                if target is None:
                    bad.append(f"{where}: `{written}` climbs above the crate root")
                elif not target or target[0] == "*":
                    bad.append(f"{where}: {own} uses the crate root itself (written `{written}`)")
                elif target[0] not in rank:
                    bad.append(
                        f"{where}: {own} uses {full} (written `{written}`), "
                        f"but lib.rs declares no module {target[0]}"
                    )
                elif rank[target[0]] > rank[own]:
                    bad.append(
                        f"{where}: {own} uses {full} (written `{written}`), a module above it"
                    )
            i = max(nxt, i + 1)
    return bad


if __name__ == "__main__":
    found = check(sys.argv[1] if len(sys.argv) > 1 else "core/src")
    for line in found:
        print(f"module order: {line}", file=sys.stderr)
    sys.exit(1 if found else 0)
