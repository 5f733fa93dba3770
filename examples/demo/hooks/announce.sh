#!/bin/sh
# post_start hook: runs once the new version is healthy.
echo "demo-service $AIRLOCK_TO_VERSION is up"
