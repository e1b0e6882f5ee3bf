"""How often an app writing alongside tide meets SQLITE_BUSY.

An app does read-then-write transactions (read a balance, write it back one higher) on a
tracked table of replica `app`, in WAL mode with a 5 s busy timeout, while a second
thread keeps tide busy on the same file: 20 rows written on replica `src`, exported for
`app`, imported there, then `tide status`, over and over. The app opens its
transactions either deferred (`BEGIN`, Python's default) or `BEGIN IMMEDIATE`.

    python3 bench/contention.py TIDE_BINARY deferred|immediate SECONDS

Prints the transactions run and how many failed with SQLITE_BUSY. See BENCHMARKS.md.
"""
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

tide, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
d = tempfile.mkdtemp()
env = dict(os.environ, TIDE_HOME=os.path.join(d, "keys"))


def t(*args):
    return subprocess.run([tide, *args], cwd=d, env=env, capture_output=True, text=True)


for n in ("app", "src"):
    t("--db", f"{n}.db", "init", "--name", n)
    c = sqlite3.connect(os.path.join(d, f"{n}.db"))
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER)")
    c.execute("CREATE TABLE log(id TEXT PRIMARY KEY, v)")
    c.executemany("INSERT INTO acct VALUES(?, 0)", [(i,) for i in range(100)])
    c.commit()
    c.close()
    t("--db", f"{n}.db", "track", "acct", "log")
    with open(os.path.join(d, f"{n}.card"), "w") as f:
        f.write(t("--db", f"{n}.db", "id", "--card").stdout)
t("--db", "app.db", "peers", "add", "src.card")
t("--db", "src.db", "peers", "add", "app.card")
stop = time.time() + seconds


def keep_tide_busy():
    src = sqlite3.connect(os.path.join(d, "src.db"), timeout=5)
    k = 0
    while time.time() < stop:
        for _ in range(20):
            k += 1
            src.execute("INSERT INTO log VALUES(?, ?)", (f"s{k}", "x" * 50))
            src.commit()
        t("--db", "src.db", "bundle", "export", "--peer", "app", "-o", "b.tide")
        t("--db", "app.db", "bundle", "import", "b.tide")
        t("--db", "app.db", "status")


threading.Thread(target=keep_tide_busy, daemon=True).start()
app = sqlite3.connect(os.path.join(d, "app.db"), timeout=5, isolation_level=None)
runs = busy = 0
while time.time() < stop:
    runs += 1
    try:
        app.execute("BEGIN IMMEDIATE" if mode == "immediate" else "BEGIN")
        i = random.randrange(100)
        (bal,) = app.execute("SELECT bal FROM acct WHERE id = ?", (i,)).fetchone()
        time.sleep(0.0005)
        app.execute("UPDATE acct SET bal = ? WHERE id = ?", (bal + 1, i))
        app.execute("COMMIT")
    except sqlite3.OperationalError as e:
        if "locked" not in str(e) and "busy" not in str(e):
            raise
        busy += 1
        try:
            app.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass
print(f"{mode}: {runs} transactions, {busy} SQLITE_BUSY ({100.0 * busy / runs:.1f}%)")
