#!/bin/sh
# Installs emogate from this unpacked release folder as a systemd service:
#   /opt/emogate/            binaries, models/, sample/, README.md, LICENSE
#   /etc/emogate/config.toml the config (kept if it already exists), model
#                            paths pointing at /opt/emogate/models/
#   /etc/systemd/system/emogate.service
#   user `emogate` (system user, groups video and audio)
# Run as root from the folder: sudo ./install.sh. It does not start the
# service: edit /etc/emogate/config.toml, then
#   sudo systemctl enable --now emogate
# ROOT=/some/dir ./install.sh stages into a folder instead (no user, no systemctl).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root="${ROOT:-}"
prefix="$root/opt/emogate"
etc="$root/etc/emogate"
unit="$root/etc/systemd/system/emogate.service"

mkdir -p "$prefix" "$etc" "$(dirname "$unit")"
install -m 0755 "$here/emogate" "$here/emogate-convert" "$prefix/"
cp -R "$here/models" "$here/sample" "$prefix/"
install -m 0644 "$here/README.md" "$here/LICENSE" "$here/config.toml" "$prefix/"
if [ -e "$etc/config.toml" ]; then
  echo "keeping the existing $etc/config.toml (new default: $prefix/config.toml)"
else
  sed 's#= "models/#= "/opt/emogate/models/#' "$here/config.toml" >"$etc/config.toml"
  chmod 0644 "$etc/config.toml"
fi
install -m 0644 "$here/emogate.service" "$unit"

if [ -z "$root" ]; then
  if ! id emogate >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/emogate \
      --shell /usr/sbin/nologin --groups video,audio emogate
  else
    usermod -a -G video,audio emogate
  fi
  # What the unit's StateDirectory/CacheDirectory create at start, made now so
  # that a warm-up run as `emogate` (docs/jetson.md) can write its caches.
  install -d -o emogate -g emogate -m 0750 /var/lib/emogate /var/cache/emogate /var/cache/emogate/trt
  systemctl daemon-reload
  echo "installed. Edit $etc/config.toml (camera, microphone, outputs), then: sudo systemctl enable --now emogate"
fi
