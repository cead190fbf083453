#!/usr/bin/env bash
# Builds Gantry's sample image "gantry/sample:latest" from the statically linked workload
# (crate gantry-workload) and, when present, Debian's busybox-static, with nothing but bash,
# coreutils, tar, gzip and sha256sum. Writes into OUTDIR (default target/sample-image):
#   gantry-sample.oci.tar     OCI image layout + Docker >= 25 style manifest.json (one gzip layer)
#   gantry-sample.docker.tar  classic `docker save` layout, two uncompressed layers
#   gantry-sample.rootfs.tar  plain rootfs tarball
#   rootfs/                   the unpacked rootfs (for crun/runc bundles)
# Rebuilds only when the workload binary, busybox or this script changed. Archives are
# reproducible (sorted, mtime 0, numeric owners root except /home/app = 1000:1000).
# Prints the OCI archive's path on stdout; progress goes to stderr.
set -euo pipefail

die() { echo "sample-image: error: $*" >&2; exit 1; }
note() { echo "sample-image: $*" >&2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
outdir="${1:-$repo/target/sample-image}"
case "$outdir" in /*) ;; *) outdir="$PWD/$outdir" ;; esac
image_name="gantry/sample"
image_tag="latest"
image_ref="$image_name:$image_tag"
full_ref="docker.io/$image_ref"
busybox_src="${BUSYBOX:-/usr/bin/busybox}"
applets=(sh true false ls cat echo sleep env id hostname ps wget mkdir rm mount mknod head tr
  grep wc kill)
umask 022

for tool in tar gzip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is required but not installed"
done

# 1. The workload, statically linked. `cargo rustc` passes the flag to the final crate only,
# into target/release; the debug build is untouched. A later plain `cargo build --release`
# may relink it dynamically, so we copy the binary out right away and check it.
note "building gantry-workload (release, +crt-static)"
(cd "$repo" && cargo rustc --quiet -p gantry-workload --release --bin gantry-workload \
  -- -C target-feature=+crt-static) >&2 || die "cargo rustc of gantry-workload failed"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
built="$target_dir/release/gantry-workload"
[ -x "$built" ] || die "built binary not found at $built"
if command -v file >/dev/null; then
  file -L "$built" | grep -q 'static' || die "$built is not statically linked: $(file -L "$built")"
elif command -v ldd >/dev/null && ldd "$built" 2>&1 | grep -q '=>'; then
  die "$built is dynamically linked: $(ldd "$built" 2>&1 | head -3)"
fi

busybox_hash="none"
if [ -x "$busybox_src" ]; then
  busybox_hash="$(sha256sum <"$busybox_src" | cut -d' ' -f1)"
else
  note "warning: $busybox_src not found (install busybox-static): building an image WITHOUT a shell"
fi
workload_hash="$(sha256sum <"$built" | cut -d' ' -f1)"
script_hash="$(sha256sum <"$0" | cut -d' ' -f1)"
stamp="workload=$workload_hash busybox=$busybox_hash script=$script_hash"

oci_tar="$outdir/gantry-sample.oci.tar"
docker_tar="$outdir/gantry-sample.docker.tar"
rootfs_tar="$outdir/gantry-sample.rootfs.tar"
rootfs="$outdir/rootfs"
if [ -f "$outdir/.stamp" ] && [ "$(cat "$outdir/.stamp")" = "$stamp" ] \
  && [ -f "$oci_tar" ] && [ -f "$docker_tar" ] && [ -f "$rootfs_tar" ] \
  && [ -x "$rootfs/app/gantry-workload" ]; then
  note "up to date: $outdir"
  echo "$oci_tar"
  exit 0
fi

mkdir -p "$outdir"
work="$(mktemp -d "$outdir/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 2. The rootfs.
note "assembling rootfs"
root="$work/rootfs"
mkdir -p "$root"/{app,bin,etc,dev,proc,sys,root,home/app,tmp,var/tmp}
cp "$built" "$root/app/gantry-workload"
chmod 0755 "$root/app/gantry-workload"
ln -s gantry-workload "$root/app/workload"
if [ "$busybox_hash" != none ]; then
  cp "$busybox_src" "$root/bin/busybox"
  chmod 0755 "$root/bin/busybox"
  for a in "${applets[@]}"; do ln -s busybox "$root/bin/$a"; done
fi
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000::/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
app:x:1000:
nogroup:x:65534:
EOF
echo "gantry-sample" >"$root/etc/hostname"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/hostname"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp" "$root/var/tmp"
if [ "$(id -u)" = 0 ]; then
  chown -R 0:0 "$root"
  chown 1000:1000 "$root/home/app"
else
  note "warning: not root: rootfs/ keeps your ownership (the archives still record root and 1000)"
fi

# Writes a reproducible tar of $root's top-level entries "$@" (relative names) to $out;
# /home/app, when included, is recorded as 1000:1000.
make_tar() {
  local out="$1"; shift
  local common=(--sort=name --mtime=@0 --numeric-owner --format=gnu)
  tar -C "$root" "${common[@]}" --owner=0 --group=0 --exclude=home/app -cf "$out" "$@"
  local e
  for e in "$@"; do
    if [ "$e" = home ]; then
      tar -C "$root" "${common[@]}" --owner=1000 --group=1000 -rf "$out" home/app
    fi
  done
}
sha() { sha256sum <"$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# 3. Layers. The OCI image has one layer holding everything; the docker-save image splits
# the base (busybox, /etc, dirs) from the app so that multi-layer import is exercised.
note "writing layers"
all_entries=(app bin dev etc home proc root sys tmp var)
base_entries=(bin dev etc home proc root sys tmp var)
make_tar "$work/full.tar" "${all_entries[@]}"
make_tar "$work/base.tar" "${base_entries[@]}"
make_tar "$work/app.tar" app
full_diff="$(sha "$work/full.tar")"
base_diff="$(sha "$work/base.tar")"
app_diff="$(sha "$work/app.tar")"
gzip -n -6 -c "$work/full.tar" >"$work/full.tar.gz"
full_gz="$(sha "$work/full.tar.gz")"

# Image config: same runtime config for both archives, different diff_ids.
image_config() {  # diff_ids (JSON list body) created_by_history (JSON list body)
  cat <<EOF
{"architecture":"amd64","os":"linux","created":"2026-11-28T00:00:00Z","config":{"Cmd":["/app/gantry-workload","serve"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/","ExposedPorts":{"8080/tcp":{}},"Labels":{"org.opencontainers.image.title":"gantry-sample"}},"rootfs":{"type":"layers","diff_ids":[$1]},"history":[$2]}
EOF
}

# 4. OCI layout (+ Docker >= 25 manifest.json).
note "writing $oci_tar"
oci="$work/oci"
mkdir -p "$oci/blobs/sha256"
cp "$work/full.tar.gz" "$oci/blobs/sha256/$full_gz"
image_config "\"sha256:$full_diff\"" \
  '{"created":"2026-11-28T00:00:00Z","created_by":"scripts/sample-image.sh: busybox + gantry-workload"}' \
  | tr -d '\n' >"$work/oci-config.json"
cfg_hex="$(sha "$work/oci-config.json")"
cp "$work/oci-config.json" "$oci/blobs/sha256/$cfg_hex"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cfg_hex\",\"size\":$(size "$work/oci-config.json")},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$full_gz\",\"size\":$(size "$work/full.tar.gz")}]}" \
  >"$work/oci-manifest.json"
man_hex="$(sha "$work/oci-manifest.json")"
cp "$work/oci-manifest.json" "$oci/blobs/sha256/$man_hex"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$man_hex\",\"size\":$(size "$work/oci-manifest.json"),\"annotations\":{\"io.containerd.image.name\":\"$full_ref\",\"org.opencontainers.image.ref.name\":\"$image_ref\"}}]}" \
  >"$oci/index.json"
printf '%s' "[{\"Config\":\"blobs/sha256/$cfg_hex\",\"RepoTags\":[\"$image_ref\"],\"Layers\":[\"blobs/sha256/$full_gz\"]}]" \
  >"$oci/manifest.json"
tar -C "$oci" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
  -cf "$work/oci.tar" blobs index.json manifest.json oci-layout

# 5. Classic docker save: <id>/{VERSION,json,layer.tar}, <config>.json, manifest.json,
# repositories. Layer ids are the chain ids, as docker derived them.
note "writing $docker_tar"
dk="$work/docker"
mkdir -p "$dk"
base_id="$base_diff"
app_id="$(printf 'sha256:%s sha256:%s' "$base_diff" "$app_diff" | sha256sum | cut -d' ' -f1)"
image_config "\"sha256:$base_diff\",\"sha256:$app_diff\"" \
  '{"created":"2026-11-28T00:00:00Z","created_by":"busybox, /etc, directories"},{"created":"2026-11-28T00:00:00Z","created_by":"COPY gantry-workload /app/"}' \
  | tr -d '\n' >"$work/docker-config.json"
dcfg_hex="$(sha "$work/docker-config.json")"
cp "$work/docker-config.json" "$dk/$dcfg_hex.json"
for pair in "$base_id:base:" "$app_id:app:$base_id"; do
  IFS=: read -r id name parent <<<"$pair"
  mkdir -p "$dk/$id"
  cp "$work/$name.tar" "$dk/$id/layer.tar"
  printf '1.0' >"$dk/$id/VERSION"
  if [ -n "$parent" ]; then
    printf '{"id":"%s","parent":"%s","created":"2026-11-28T00:00:00Z"}' "$id" "$parent" >"$dk/$id/json"
  else
    printf '{"id":"%s","created":"2026-11-28T00:00:00Z"}' "$id" >"$dk/$id/json"
  fi
done
printf '%s' "[{\"Config\":\"$dcfg_hex.json\",\"RepoTags\":[\"$image_ref\"],\"Layers\":[\"$base_id/layer.tar\",\"$app_id/layer.tar\"]}]" \
  >"$dk/manifest.json"
printf '%s' "{\"$image_name\":{\"$image_tag\":\"$app_id\"}}" >"$dk/repositories"
(cd "$dk" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
  -cf "$work/docker.tar" -- *)

# 6. Validate the OCI archive with independent tools when they are installed.
if command -v skopeo >/dev/null; then
  skopeo inspect --raw "oci-archive:$work/oci.tar" >/dev/null 2>"$work/skopeo.err" \
    || die "skopeo rejects the OCI archive: $(cat "$work/skopeo.err")"
  skopeo inspect "oci-archive:$work/oci.tar" >"$work/skopeo.json" 2>"$work/skopeo.err" \
    || die "skopeo inspect of the OCI archive failed: $(cat "$work/skopeo.err")"
  grep -q "\"sha256:$full_gz\"" "$work/skopeo.json" || die "skopeo does not see the layer"
  note "skopeo inspect: ok"
fi
if command -v umoci >/dev/null; then
  umoci stat --image "$oci:$image_ref" >"$work/umoci.txt" 2>&1 \
    || die "umoci stat rejects the OCI layout: $(cat "$work/umoci.txt")"
  note "umoci stat: ok"
fi

# 7. Publish atomically-ish: files by rename, then the stamp last.
rm -rf "$rootfs.old"
[ -e "$rootfs" ] && mv "$rootfs" "$rootfs.old"
mv "$root" "$rootfs"
rm -rf "$rootfs.old"
mv "$work/full.tar" "$rootfs_tar"
mv "$work/oci.tar" "$oci_tar"
mv "$work/docker.tar" "$docker_tar"
printf '%s' "$stamp" >"$outdir/.stamp"
note "built $image_ref: $oci_tar ($(size "$oci_tar") bytes), $docker_tar, $rootfs_tar, $rootfs/"
echo "$oci_tar"
