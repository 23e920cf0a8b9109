#!/bin/sh
# Debian's Chromium for the browser tests (Playwright's own download cannot work here).
set -e
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ]; then run=""; elif command -v sudo >/dev/null; then run="sudo -n"; else
  echo "chromium is missing and this user cannot install it: apt-get install chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$run apt-get install -y -q chromium >/dev/null || { $run apt-get update -q >/dev/null && $run apt-get install -y -q chromium >/dev/null; }
