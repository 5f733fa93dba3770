"""Writes to a real etcd cluster while a rolling upgrade runs (bench/README.md):
one key every 20 ms through etcd's JSON gateway (`POST /v3/kv/put`), tried
against each member in turn, 2 s each, until one accepts it; a write no
member accepts is a failed write. Stops on SIGTERM and prints
`OK FAILED RETRIED` (writes accepted, failed, accepted by another member than
the first tried).

    python3 etcd_writer.py PREFIX URL [URL ...]
"""

import base64
import json
import signal
import sys
import time
import urllib.request

prefix, endpoints = sys.argv[1], sys.argv[2:]
running = True


def stop(*_):
    global running
    running = False


def b64(text):
    return base64.b64encode(text.encode()).decode()


signal.signal(signal.SIGTERM, stop)
ok = failed = retried = 0
i = 0
while running:
    body = json.dumps({"key": b64("%s/%06d" % (prefix, i)), "value": b64("v%d" % i)}).encode()
    done = False
    for k in range(len(endpoints)):
        url = endpoints[(i + k) % len(endpoints)] + "/v3/kv/put"
        request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                response.read()
            done = True
            retried += k > 0
            break
        except OSError:
            continue
    if done:
        ok += 1
    else:
        failed += 1
    i += 1
    time.sleep(0.02)
print(ok, failed, retried)
