#!/bin/sh
# Turn a debootstrap tree into something that boots like a fresh server.
# Run by keelson.lab.images on the controller, as root:
#   customize.sh ROOTFS SUITE MIRROR
# Part of the host image definition: editing this file changes the image
# hash, so the next `keelson lab up` rebuilds the image.
set -eu
rootfs=$1 suite=$2 mirror=$3
here=$(dirname "$0")

cat > "$rootfs/etc/apt/sources.list" <<LIST
deb $mirror $suite main
deb $mirror $suite-updates main
deb $mirror-security $suite-security main
LIST

# Every host made from the image gets its own machine id and SSH host keys
# (generated at first boot by the ssh.service drop-in copied below).
: > "$rootfs/etc/machine-id"
rm -f "$rootfs"/etc/ssh/ssh_host_*
cp -a "$here/rootfs/." "$rootfs/"
install -d -m 0700 "$rootfs/root/.ssh"

# A real server has package lists; fetch them once so that check mode works
# on a fresh host (a real run refreshes them).
chroot "$rootfs" apt-get -q -o Acquire::Languages=none update >/dev/null
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/log/apt/* "$rootfs"/var/cache/apt/*.bin
