#!/bin/sh
# pre_stop hook: a real service would stop taking new work here.
echo "draining demo-service before the upgrade from $AIRLOCK_FROM_VERSION to $AIRLOCK_TO_VERSION"
