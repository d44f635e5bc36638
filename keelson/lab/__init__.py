"""The lab: a fleet of systemd "servers" in containers, reached over SSH."""
