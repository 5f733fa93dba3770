"""The benchmark's arithmetic (bench/README.md).

    python3 report.py events EVENTS.jsonl   # an apply's --json events -> result lines
    python3 report.py rolling EVENTS.jsonl  # a rolling upgrade's --json events -> result lines
    python3 report.py table RESULTS BIN_MIB BIG_MIB RAFT_MIB DB_MIB ROUNDS

A result line is `NAME SECONDS PEAK_KIB`; the table gives the median of each
name over the rounds, the ratio of airlock's median to its peer's, and the
target bench/README.md sets for it.
"""

import json
import statistics
import sys
from collections import defaultdict


def read_events(path):
    """The events of a `--json` run: every line that is a JSON object with a
    step and a status."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                e = json.loads(line)
                if "step" in e and "status" in e:
                    yield e


def events(path):
    """Seconds each apply step took (steps of one label summed), and the
    service's downtime: from the `stop` step's start to the `health` step's
    end."""
    started, spent = {}, defaultdict(float)
    down_from = down_to = None
    for e in read_events(path):
        step, status, ms = e["step"], e["status"], e["elapsed_ms"]
        if status == "start":
            started[step] = ms
            if step == "stop" and down_from is None:
                down_from = ms
        elif status == "ok" and step in started:
            spent[step] += (ms - started.pop(step)) / 1000
            if step == "health":
                down_to = ms
        elif status == "failed":
            sys.exit("bench: the apply failed at %s: %s" % (step, e.get("detail")))
    for step, secs in spent.items():
        print("step/%s %.3f 0" % (step, secs))
    if down_from is None or down_to is None:
        sys.exit("bench: the apply's events have no stop or health step")
    print("down/airlock %.3f 0" % ((down_to - down_from) / 1000))


def rolling(path):
    """Each member's service downtime in a rolling upgrade, from the `node`
    events the coordinator prints (`service down 0.3s`)."""
    import re

    for e in read_events(path):
        if e["step"] == "node" and e["status"] == "ok":
            m = re.search(r"service down ([0-9.]+)s", e.get("detail", ""))
            if m:
                print("rolling member down/airlock %s 0" % m.group(1))


def table(path, bin_mib, big_mib, raft_mib, db_mib, rounds):
    secs, kib = defaultdict(list), defaultdict(list)
    with open(path) as f:
        for line in f:
            name, s, k = line.rsplit(" ", 2)
            secs[name].append(float(s))
            kib[name].append(int(k))
    med = {name: statistics.median(v) for name, v in secs.items()}

    def steps(*labels):
        found = [med[f"step/{label}"] for label in labels if f"step/{label}" in med]
        return sum(found) if found else None

    airlock_stage = steps("stage")
    raft_copy = steps("pre-copy raft") or steps("backup raft")
    db_copy = steps("pre-copy database") or steps("backup database")
    rows = [
        ("build", med["build/airlock"], "`tar | zstd -3 -T0`", med["build/tar|zstd"], "<= 1.05x"),
        ("build", med["build/airlock"], "`tar | zstd -3 -T0` + fsync of the file", med["build/tar|zstd+fsync"], ""),
        ("build", med["build/airlock"], "sha256sum + minisign + `tar | zstd`", med["build/shell"], "<= 0.5x"),
        ("build", med["build/airlock"], "`mender-artifact write` (signed)", med["build/mender-artifact"], ""),
        ("verify", med["verify/airlock"], "`zstd -dc`", med["verify/zstd -dc"], "<= 1.3x"),
        ("verify", med["verify/airlock"], "`mender-artifact validate`", med["verify/mender-artifact"], ""),
        ("stage (verify + extract)", airlock_stage, "`zstd -dc | tar -x` + sync", med["stage/zstd -dc|tar -x"], "<= 1.3x"),
        ("stage (verify + extract)", airlock_stage, "minisign + `zstd -dc | tar -x` + sha256sum -c", med["stage/shell"], ""),
        ("Raft backup (full copy)", raft_copy, "`cp -a` + sync", med["raft backup/cp -a"], "<= 1.11x (>= 0.9x the speed)"),
        ("SQLite backup (full copy)", db_copy, "`cp` + sync", med["sqlite backup/cp"], "<= 1.25x (>= 0.8x the speed)"),
        ("SQLite backup (full copy)", db_copy, "`sqlite3 .backup`", med["sqlite backup/sqlite3 .backup"], ""),
        ("**service down**", med["down/airlock"], "stop + rsync of what changed + start, by hand", med["down/by hand"], "<= 1.3x"),
        ("rolling, 3-member etcd", med["rolling/airlock"], "the same restarts by hand, same probe commands", med["rolling/by hand"], "<= 1.5x"),
        ("rolling: one member down", med.get("rolling member down/airlock"), "by hand: stop, copy, start, /health", med["rolling member down/by hand"], ""),
    ]
    print()
    print(
        "payload: %d MiB of binaries and a %d MiB file; node: Raft folder %d MiB, SQLite %d MiB; medians of %d rounds"
        % (bin_mib, big_mib, raft_mib, db_mib, rounds)
    )
    print()
    print("| work | airlock | peer, same run | ratio | target |")
    print("|---|---|---|---|---|")
    for work, ours, peer, theirs, target in rows:
        if ours is None:
            print("| %s | (no such step) | %s %.3f s | | %s |" % (work, peer, theirs, target))
            continue
        ratio = "%.2fx" % (ours / theirs) if theirs > 0 else "n/a"
        print("| %s | %.3f s | %s %.3f s | %s | %s |" % (work, ours, peer, theirs, ratio, target))
    print()
    print(
        "Failed writes during the rolling upgrades (etcd, one write every 20 ms; largest of the rounds): airlock %d, by hand %d"
        % (max(secs["rolling writes failed/airlock"]), max(secs["rolling writes failed/by hand"]))
    )
    print()
    print("Where the service's downtime went (airlock, medians):")
    for name in sorted(med):
        if name.startswith("step/"):
            print("  %-22s %7.3f s" % (name[5:], med[name]))
    print()
    print("Peak memory (resident, medians):")
    for name in ["build/airlock", "verify/airlock", "apply/airlock", "rolling/airlock", "build/tar|zstd", "build/mender-artifact", "verify/mender-artifact"]:
        if name in kib:
            print("  %-24s %7.1f MiB" % (name, statistics.median(kib[name]) / 1024))


if __name__ == "__main__":
    if sys.argv[1] == "events":
        events(sys.argv[2])
    elif sys.argv[1] == "rolling":
        rolling(sys.argv[2])
    elif sys.argv[1] == "table":
        table(sys.argv[2], *(int(a) for a in sys.argv[3:8]))
    else:
        sys.exit("usage: report.py events|table ...")
