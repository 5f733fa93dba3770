"""Makes the benchmark's inputs (bench/README.md): a release payload of real
binaries and libraries copied from this machine plus one large file, and a
node's data: a Raft folder laid out as etcd's (WAL segments of 64 MiB and a
bbolt `snap/db`) and a SQLite database in WAL mode.

    python3 make_node.py payload DIR BIN_MIB BIG_MIB
    python3 make_node.py data NODE RAFT_MIB DB_MIB
"""

import os
import sqlite3
import sys

SOURCES = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/bin",
    "/usr/sbin",
    "/usr/libexec",
    "/usr/lib",
    os.path.expanduser("~/.rustup/toolchains"),
]
MIB = 1 << 20


def real_files():
    """Regular files of the machine's binary folders, each once."""
    seen = set()
    for top in SOURCES:
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not os.path.isfile(path) or os.path.islink(path) or st.st_size == 0:
                    continue
                if (st.st_dev, st.st_ino) in seen or not os.access(path, os.R_OK):
                    continue
                seen.add((st.st_dev, st.st_ino))
                yield path, st.st_size


def payload(out, bin_mib, big_mib):
    lib = os.path.join(out, "lib")
    os.makedirs(lib, exist_ok=True)
    total, n, picked = 0, 0, []
    for path, size in real_files():
        if total >= bin_mib * MIB:
            break
        if size > 64 * MIB:
            continue
        # Files keep their name below a folder of their own, so that names
        # from different folders never collide.
        # mender-artifact allows only letters, digits and ".,_-" in names.
        safe = "".join(c if c.isalnum() or c in ".,_-" else "_" for c in os.path.basename(path))
        dst = os.path.join(lib, "d%03d" % (n // 100), "%04d-%s" % (n, safe))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(path, "rb") as src, open(dst, "wb") as f:
            data = src.read()
            f.write(data)
        os.chmod(dst, 0o755)
        total += size
        n += 1
        picked.append(dst)
    # The large file: the binaries again, end to end, so it compresses as
    # they do (a database dump or a container image would be similar).
    big = os.path.join(out, "data")
    os.makedirs(big, exist_ok=True)
    left = big_mib * MIB
    with open(os.path.join(big, "big.bin"), "wb") as f:
        while left > 0:
            for path in picked:
                with open(path, "rb") as src:
                    data = src.read(left)
                f.write(data)
                left -= len(data)
                if left <= 0:
                    break
    print("payload: %d files, %d MiB of binaries, %d MiB large file" % (n, total // MIB, big_mib))


def data(node, raft_mib, db_mib):
    wal = os.path.join(node, "raft", "member", "wal")
    snap = os.path.join(node, "raft", "member", "snap")
    os.makedirs(wal, exist_ok=True)
    os.makedirs(snap, exist_ok=True)
    segment = 64 * MIB
    wal_bytes = raft_mib * MIB // 2
    i = 0
    while wal_bytes > 0:
        size = min(segment, wal_bytes)
        with open(os.path.join(wal, "%016x-%016x.wal" % (i, i * 4096)), "wb") as f:
            f.write(os.urandom(size))
        wal_bytes -= size
        i += 1
    with open(os.path.join(snap, "db"), "wb") as f:
        for _ in range(raft_mib // 2):
            f.write(os.urandom(MIB))
    db = sqlite3.connect(os.path.join(node, "app.db"))
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at INTEGER, body BLOB)")
    rows = db_mib * MIB // 4096
    with db:
        db.executemany(
            "INSERT INTO events (at, body) VALUES (?, ?)",
            ((i, os.urandom(4000)) for i in range(rows)),
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print("node: Raft folder %d MiB in %d WAL segments and snap/db, SQLite %d MiB" % (raft_mib, i, db_mib))


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "payload":
        payload(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif what == "data":
        data(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: make_node.py payload|data ...")
