# shellcheck shell=bash
# The operating-system contract of DIB: name the distribution and its init system.
export DISTRO_NAME=debian
export DIB_INIT_SYSTEM=systemd
export DIB_RELEASE=${DIB_RELEASE:?hostbuild sets DIB_RELEASE from the profile}
export EFI_BOOT_DIR="EFI/debian"
