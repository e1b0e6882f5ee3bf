"""Self-test of `.ci/modules.py`: builds small crates in a temporary directory, each a
`lib.rs` declaring `low`, `mid` and `high` (in that order) plus the files of one case,
and checks the checker's verdict on each. Exits 1 naming every case it gets wrong.

    python3 .ci/test_modules.py
"""
import importlib.util
import pathlib
import subprocess
import sys
import tempfile
import textwrap

HERE = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("modules", HERE / "modules.py")
modules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(modules)

LIB = """\
// The layers, bottom first.
mod low;

mod mid;

mod high;

pub use high::Thing;
"""

PLAIN = {"low.rs": "pub fn f() {}\n", "mid.rs": "pub fn f() {}\n", "high.rs": "pub struct Thing;\n"}

# (name, files over the plain crate, expected violations as (file, line, target module))
FLAGGED = [
    (
        "a file with `#[cfg(test)] mod tests;` near its top is still checked after it",
        {
            "low.rs": None,
            "low/mod.rs": """\
                #[cfg(test)]
                mod tests;

                use crate::high::Thing;
                """,
            "low/tests.rs": "use crate::high::Thing;\n",
        },
        [("low/mod.rs", 4, "high")],
    ),
    (
        "a group of one",
        {"low.rs": "use crate::{high::Thing};\n"},
        [("low.rs", 1, "high")],
    ),
    (
        "a group of modules",
        {"mid.rs": "use crate::{low, high};\n"},
        [("mid.rs", 1, "high")],
    ),
    (
        "a nested group over several lines",
        {
            "low.rs": """\
                use crate::{
                    low::{self, f},
                    mid::{
                        f as g,
                    },
                };
                """
        },
        [("low.rs", 4, "mid")],
    ),
    (
        "super::super from a file in a folder",
        {"mid.rs": None, "mid/mod.rs": "mod rows;\n", "mid/rows.rs": "use super::super::high::Thing;\n"},
        [("mid/rows.rs", 1, "high")],
    ),
    (
        "super from a top-level file",
        {"low.rs": "use super::high::Thing;\n"},
        [("low.rs", 1, "high")],
    ),
    (
        "super inside a group",
        {"mid.rs": None, "mid/mod.rs": "mod rows;\n", "mid/rows.rs": "use super::{f, super::high::Thing};\n"},
        [("mid/rows.rs", 1, "high")],
    ),
    (
        "super from an inline module climbs from that module",
        {"low.rs": "mod inner {\n    use super::super::high::Thing;\n}\n"},
        [("low.rs", 2, "high")],
    ),
    (
        "spaces and line breaks around ::",
        {"low.rs": "use crate :: high :: Thing;\nuse crate\n    ::mid\n    ::f;\n"},
        [("low.rs", 1, "high"), ("low.rs", 4, "mid")],
    ),
    (
        "$crate in a macro",
        {"low.rs": "macro_rules! make {\n    () => {\n        $crate::high::Thing\n    };\n}\n"},
        [("low.rs", 3, "high")],
    ),
    (
        "a path in an expression",
        {"low.rs": "pub fn f() {\n    let _ = crate::high::Thing;\n}\n"},
        [("low.rs", 2, "high")],
    ),
    (
        "a re-export of the crate root",
        {"low.rs": "use crate::Thing;\n"},
        [("low.rs", 1, "Thing")],
    ),
    (
        "the crate root under another name",
        {"low.rs": "use crate as root;\nuse crate::{self as again};\nextern crate self as tide;\n"},
        [("low.rs", 1, ""), ("low.rs", 2, ""), ("low.rs", 3, "")],
    ),
    (
        "a glob of the crate root from a top-level file",
        {"low.rs": "use super::*;\n"},
        [("low.rs", 1, "*")],
    ),
    (
        "code after comments, strings and literals that look like paths",
        {
            "low.rs": """\
                /* a /* nested */ comment */ use crate::high::Thing;
                const Q: char = '"'; const S: &str = "crate::high \\" still a string"; use crate::mid::f;
                fn g<'a>(x: &'a str) -> &'a str { x } const R: &str = r#"crate::high "quoted""#;
                use crate::high::Thing as T;
                """
        },
        [("low.rs", 1, "high"), ("low.rs", 2, "mid"), ("low.rs", 4, "high")],
    ),
    (
        "code after an inline test module",
        {
            "low.rs": """\
                #[cfg(test)]
                mod tests {
                    use crate::high::Thing;
                }

                use crate::high::Thing;
                """
        },
        [("low.rs", 6, "high")],
    ),
    (
        "a test-only field hides only itself",
        {
            "low.rs": """\
                struct S {
                    #[cfg(test)]
                    a: crate::high::Thing,
                }
                fn f() -> crate::mid::Other {}
                struct T(#[cfg(test)] pub u8, crate::high::Thing);
                """
        },
        [("low.rs", 3, "high"), ("low.rs", 5, "mid"), ("low.rs", 6, "high")],
    ),
]

ALLOWED = [
    ("using a lower module", {"mid.rs": "use crate::low::f;\nuse crate::{low, mid::f as g};\n"}),
    ("using itself", {"mid.rs": "use crate::mid::f as g;\nuse self::f as h;\n"}),
    (
        "super within a folder",
        {
            "mid.rs": None,
            "mid/mod.rs": "mod a;\nmod b;\npub fn f() {}\n",
            "mid/a.rs": "use super::b::g;\nuse super::*;\nuse super::super::low::f;\n",
            "mid/b.rs": "pub fn g() {}\n",
        },
    ),
    (
        "test modules use anything",
        {
            "low.rs": None,
            "low/mod.rs": """\
                #[cfg(test)]
                mod tests;

                #[cfg(test)]
                mod inline {
                    use crate::high::Thing;
                    use super::super::high::*;
                }

                #[cfg(test)]
                use crate::high::Thing;
                """,
            "low/tests.rs": "mod deep;\nuse crate::high::Thing;\nuse crate::{mid, high};\n",
            "low/tests/deep.rs": "use super::super::super::high::Thing;\n",
            "mid.rs": "#![cfg(test)]\nuse crate::high::Thing;\n",
        },
    ),
    (
        "strings and comments that mention higher modules",
        {
            "low.rs": """\
                //! Unlike crate::high, this module
                /// names crate::high only in docs.
                // crate::high
                /* crate::high */
                const A: &str = "SELECT 'crate::high' FROM t";
                const B: &str = r#"crate::{high, mid}"#;
                const C: &[u8] = b"super::high";
                const D: char = '"';
                const E: &str = "crate::high";
                #[doc = "crate::high"]
                pub fn f() {}
                """
        },
    ),
]


def build(root, files):
    tree = {"lib.rs": LIB, **PLAIN, **files}
    for name, text in tree.items():
        if text is None:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def verdict(files):
    with tempfile.TemporaryDirectory() as tmp:
        build(pathlib.Path(tmp), files)
        return modules.check(tmp)


def matches(line, expected):
    file, n, target = expected
    if not line.startswith(f"{file}:{n}:"):
        return False
    if target in ("", "*"):
        return "the crate root" in line
    return f"crate::{target}" in line


failures = []
for name, files, expected in FLAGGED:
    found = verdict(files)
    missing = [e for e in expected if not any(matches(line, e) for line in found)]
    extra = [line for line in found if not any(matches(line, e) for e in expected)]
    if missing or extra:
        failures.append(f"{name}: missed {missing}, also flagged {extra}")
for name, files in ALLOWED:
    found = verdict(files)
    if found:
        failures.append(f"{name}: flagged {found}")

# The command line: exit 1 and file:line on a violation, exit 0 on a clean crate.
def command_line(files):
    with tempfile.TemporaryDirectory() as tmp:
        build(pathlib.Path(tmp), files)
        checker = [sys.executable, HERE / "modules.py", tmp]
        return subprocess.run(checker, capture_output=True, text=True)


run = command_line({"low.rs": "use crate::{mid, high::Thing};\n"})
if run.returncode != 1 or "low.rs:1:" not in run.stderr or "crate::high::Thing" not in run.stderr:
    failures.append(f"command line on a violation: exit {run.returncode}, {run.stderr!r}")
run = command_line({})
if run.returncode != 0 or run.stderr:
    failures.append(f"command line on a clean crate: exit {run.returncode}, {run.stderr!r}")

cases = len(FLAGGED) + len(ALLOWED) + 2
for line in failures:
    print(f"modules.py self-test: {line}", file=sys.stderr)
print(f"modules.py self-test: {cases - len(failures)} of {cases} cases pass")
sys.exit(1 if failures else 0)
