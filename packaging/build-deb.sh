#!/bin/sh
# Builds the binary package: dpkg-buildpackage -us -uc -b (debian/rules runs
# packaging/build-static.sh, so the static binary is built once and cached
# in target/static; --post-clean leaves no build debris in debian/). The
# .deb, .buildinfo and .changes that dpkg-buildpackage
# leaves in the parent folder are moved to target/debian/.
set -eu
cd "$(dirname "$0")/.."

out=target/debian
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)

dpkg-buildpackage -us -uc -b --post-clean

mkdir -p "$out"
for f in "ams-agent_${version}_${arch}.deb" "ams-agent_${version}_${arch}.buildinfo" "ams-agent_${version}_${arch}.changes"; do
	mv -f "../$f" "$out/$f"
done
echo "build-deb.sh: $out/ams-agent_${version}_${arch}.deb"
