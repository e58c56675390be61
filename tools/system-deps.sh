#!/usr/bin/env bash
# System packages the test suite needs beyond pyproject.toml: a headless browser for the HTML-report test
# (Debian's chromium + its WebDriver) and a one-node SLURM for the scheduler test (slurm-wlm, munge; the test starts
# and stops its own daemons, tests/test_sweep_slurm.py). Installs them with apt-get when missing and allowed (root,
# or password-less sudo); otherwise names them and fails, so `make test` never runs half its tests.
# `--slow` (make test-slow) adds Debian's Bioconductor GO and gene tables (org.Hs.eg.db, GO.db: SQLite files the
# GO gene-set builder reads; they pull in R, ~800 packages), for the test that rebuilds the shipped GO sets.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
{ command -v slurmctld && command -v slurmd && command -v sbatch; } >/dev/null 2>&1 || missing+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || missing+=(munge)
if [ "${1:-}" = "--slow" ]; then
  [ -f /usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite ] || missing+=(r-bioc-org.hs.eg.db)
  [ -f /usr/lib/R/site-library/GO.db/extdata/GO.sqlite ] || missing+=(r-bioc-go.db)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
  echo "make test needs: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2; exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make test needs ${missing[*]} (no apt-get here: install them your way)" >&2; exit 1
fi
echo "installing ${missing[*]} (apt-get) for the test suite"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
  || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -q "${missing[@]}" >/dev/null; }
