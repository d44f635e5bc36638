#!/usr/bin/env bash
# Make this machine able to run the lab: a Docker engine that answers, and
# debootstrap for the host images.  Installs what is missing when run as
# root on Debian/Ubuntu; otherwise says what to do.  Safe to run again.
set -euo pipefail

log() { printf 'prereqs: %s\n' "$*" >&2; }
die() { printf 'prereqs: error: %s\n' "$*" >&2; exit 1; }

need_install=()
command -v dockerd >/dev/null 2>&1 || need_install+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_install+=(debootstrap)
command -v ssh-keygen >/dev/null 2>&1 || need_install+=(openssh-client)
command -v nft >/dev/null 2>&1 || need_install+=(nftables)   # unit tests of the firewall module (in a netns)
command -v ip >/dev/null 2>&1 || need_install+=(iproute2)
command -v restic >/dev/null 2>&1 || need_install+=(restic)  # unit tests of the backup jobs

if ((${#need_install[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    die "missing ${need_install[*]}: run this as root (sudo $0), or install them yourself"
  fi
  command -v apt-get >/dev/null 2>&1 || die "missing ${need_install[*]} and no apt-get to install them"
  log "installing ${need_install[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_install[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] || die "no Docker engine answers: start it (sudo systemctl start docker) or run this as root"
  if [[ -d /run/systemd/system ]] && systemctl list-unit-files docker.service >/dev/null 2>&1; then
    log "starting docker.service"
    systemctl start docker
  else
    log "starting dockerd (log: /var/log/keelson-dockerd.log)"
    nohup dockerd >/var/log/keelson-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s; see /var/log/keelson-dockerd.log"
fi
log "docker engine $(docker info --format '{{.ServerVersion}}') answers; debootstrap present"
