#!/bin/sh
# Build the container base of the Java inference service once, and print its image tag.
#
# There is no image registry to pull from, so the base is a minimal Debian made with
# debootstrap (--variant=minbase) from the machine's own apt mirror, plus the two shared
# libraries the JNI shim links besides TensorFlow (libsqlite3-0, libpq5), imported with
# `docker import`. The Java runtime is not in the base: the image gets a jlink'd runtime
# of the build machine's JDK (see the Dockerfile). The tag carries this script's hash, the
# suite and the architecture, so an edit rebuilds and an unchanged script reuses the cache.
#
#   serving/java/docker/build-base.sh        # prints e.g. autotl-serving-base:bookworm-amd64-1a2b3c4d
#
# Needs root, debootstrap and a running Docker daemon.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
suite=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")}
arch=$(dpkg --print-architecture)
key=$( (cat "$0"; echo "$suite $arch") | sha256sum | cut -c1-8)
tag="autotl-serving-base:$suite-$arch-$key"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi

# The Debian mirror this machine's apt uses for $suite (deb822 .sources, then one-line .list files).
mirror=${MIRROR:-$(
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && awk -v suite="$suite" '
            function flush() { if (uris != "" && (" " suites " ") ~ (" " suite " ") && types ~ /(^| )deb( |$)/) { split(uris, u, " "); print u[1]; found = 1; exit } }
            /^[ \t]*$/ { flush(); uris = ""; suites = ""; types = ""; next }
            /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
            END { if (!found) flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && awk -v suite="$suite" '
            $1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ } if ($(i + 1) == suite) { print $i; exit } }' "$f"
    done
    true
)}
mirror=$(echo "$mirror" | head -n 1)
if [ -z "$mirror" ]; then
    echo "build-base.sh: no apt source for $suite in /etc/apt; set MIRROR=http://.../debian" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/autotl-serving-base.XXXXXX")
trap 'umount "$work/root/proc" "$work/root/sys" 2>/dev/null || true; rm -rf "$work"' EXIT INT TERM
echo "build-base.sh: debootstrap $suite ($arch, minbase) from $mirror" >&2
debootstrap --variant=minbase --arch="$arch" --components=main --include=libsqlite3-0,libpq5 \
    "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    echo "build-base.sh: debootstrap failed (log above)" >&2
    exit 1
}
# What a runtime image never reads.
rm -rf "$work/root/usr/share/doc/"* "$work/root/usr/share/man/"* "$work/root/usr/share/info/"* \
    "$work/root/usr/share/locale/"* "$work/root/var/cache/apt/"* "$work/root/var/lib/apt/lists/"* \
    "$work/root/var/log/"* "$work/root/var/cache/debconf/"*-old
tar -C "$work/root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --message "autotl-serving base: debootstrap --variant=minbase $suite + libsqlite3-0 libpq5" \
    - "$tag" >/dev/null
echo "$tag"
