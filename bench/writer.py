"""The benchmark node's writes while its service runs (bench/README.md):
every 20 ms a row into the SQLite database, a record appended to the newest
Raft WAL segment (fsynced) and a 4 KiB page rewritten in `snap/db`, as a
busy etcd member and its application would. Stops on SIGTERM.

    python3 writer.py NODE
"""

import glob
import os
import random
import signal
import sqlite3
import sys
import time

node = sys.argv[1]
running = True


def stop(*_):
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
db = sqlite3.connect(os.path.join(node, "app.db"), timeout=10)
db.execute("PRAGMA journal_mode = WAL")
wal = sorted(glob.glob(os.path.join(node, "raft", "member", "wal", "*.wal")))[-1]
snap = os.path.join(node, "raft", "member", "snap", "db")
pages = max(1, os.path.getsize(snap) // 4096)
with open(wal, "ab") as log, open(snap, "r+b") as bolt:
    while running:
        with db:
            db.execute(
                "INSERT INTO events (at, body) VALUES (?, ?)",
                (int(time.time() * 1000), os.urandom(1000)),
            )
        log.write(os.urandom(512))
        log.flush()
        os.fsync(log.fileno())
        bolt.seek(random.randrange(pages) * 4096)
        bolt.write(os.urandom(4096))
        bolt.flush()
        time.sleep(0.02)
db.close()
