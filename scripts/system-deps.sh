#!/usr/bin/env bash
# Debian packages the project uses, installed when missing and apt is there:
#   data     Fashion-MNIST (dataset-fashion-mnist); without it `prepare` falls back to a download
#   browser  headless Chromium for the viewer's browser tests
#   postgres PostgreSQL's server binaries, which the tests start on a local port (sweep workers, team MLflow)
set -euo pipefail
want=()
for what in "$@"; do
  case "$what" in
    data) [ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist) ;;
    browser) command -v chromium >/dev/null || want+=(chromium) ;;
    postgres) compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || want+=(postgresql) ;;
    *) echo "system-deps: unknown group '$what' (allowed: data, browser, postgres)" >&2; exit 2 ;;
  esac
done
[ ${#want[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system-deps: apt-get not found; install ${want[*]} yourself (or set data.fashion_mnist_dir)" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "system-deps: installing ${want[*]}"
$sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null \
  || echo "system-deps: could not install ${want[*]}; see README" >&2
