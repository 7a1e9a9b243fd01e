#!/usr/bin/env bash
# Build Dockerfile.gpu for real and run it on CPU, then the same through docker-compose.yml,
# on a machine that has no Docker engine and cannot pull pytorch/pytorch (docs/DEPLOY.md,
# "Checking the image"). Debian 12, as root:
#
#   deploy/check-image.sh            # reuses the stand-in base when it was built before
#   deploy/check-image.sh --fresh    # rebuilds everything, from mmdebstrap on
#   deploy/check-image.sh --plan     # prints the images it would build, builds nothing
#
# Steps: (1) a Debian bookworm root filesystem from Debian's packages (mmdebstrap), imported
# as an image; (2) the stand-in base on it (deploy/standin-base.Containerfile: python, pip and
# the torch of Dockerfile.gpu's base tag); (3) Dockerfile.gpu, unchanged, with that base as
# BASE_IMAGE; (4) the image run with `podman run`: /healthz over the published port, a session
# streaming frames to a websocket client and a REST match (deploy/smoke.py), recordings in the
# mounted volume owned by the image's user, the image's HEALTHCHECK, a clean stop on SIGTERM;
# (5) docker-compose.yml with podman-compose: the server (the same checks), `parse` on the
# bundled sample replays and a two-step CPU training run in the `train` service.
# Prints each step's time and the image's size; exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

FRESH=0
PLAN=0
case "${1:-}" in
    --fresh) FRESH=1 ;;
    --plan) PLAN=1 ;;
    "") ;;
    *) echo "usage: $0 [--fresh | --plan]" >&2; exit 2 ;;
esac
STATE="${CHECK_IMAGE_STATE:-/var/tmp/playmodel-check-image}"  # outside the repository
PORT="${CHECK_IMAGE_PORT:-18000}"
OS_IMAGE=localhost/playmodel-standin-os:bookworm
IMAGE=localhost/playmodel:gpu  # the tag docker-compose.yml names (playmodel:gpu)
NAME=playmodel-check
PROJECT=playmodel-check
KEY="check-$(date +%s)"

START=$(date +%s)
step_start=$START
say() { echo "check-image: $*"; }
die() { echo "check-image: FAILED: $*" >&2; exit 1; }
step() {
    local now
    now=$(date +%s)
    say "--- $* (previous step $((now - step_start)) s, total $((now - START)) s)"
    step_start=$now
}

# The torch of the real base, read from Dockerfile.gpu's default BASE_IMAGE.
real_base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile.gpu)
torch_version=$(sed -n 's/^pytorch\/pytorch:\([0-9.]*\)-.*/\1/p' <<< "$real_base")
[ -n "$torch_version" ] || die "no torch version in Dockerfile.gpu's BASE_IMAGE ($real_base)"
BASE=localhost/playmodel-standin:torch$torch_version
if [ "$PLAN" = 1 ]; then
    echo "os $OS_IMAGE"
    echo "base $BASE"
    echo "torch $torch_version"
    echo "image $IMAGE"
    exit 0
fi

# The tools, from Debian's packages. runc: on a cgroup v1 host (as in a Firecracker VM) crun
# refuses to start containers ("cgroups in hybrid mode not supported"); runc does not.
tools=(podman buildah mmdebstrap podman-compose runc)
missing=()
for tool in "${tools[@]}"; do command -v "$tool" > /dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman buildah mmdebstrap podman-compose runc uidmap slirp4netns > /dev/null
fi
mkdir -p "$STATE"

cleanup() {
    podman rm -f "$NAME" > /dev/null 2>&1 || true
    podman-compose -p "$PROJECT" -f docker-compose.yml down > /dev/null 2>&1 || true
}
trap cleanup EXIT


if [ "$FRESH" = 1 ]; then
    podman rmi -f "$IMAGE" "$BASE" "$OS_IMAGE" > /dev/null 2>&1 || true
fi

step "1. Debian bookworm root filesystem (mmdebstrap) as $OS_IMAGE"
if ! podman image exists "$OS_IMAGE"; then
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$STATE/os.tar"
    podman import --quiet "$STATE/os.tar" "$OS_IMAGE" > /dev/null
    rm -f "$STATE/os.tar"
else
    say "$OS_IMAGE exists (--fresh rebuilds it)"
fi

# RUN steps use the host's certificate store, so that pip trusts whatever TLS proxy the host
# trusts; the images keep their own. --isolation=chroot: the OCI runtimes cannot run build
# steps on a cgroup v1 host.
build=(podman build --isolation=chroot --volume /etc/ssl/certs:/etc/ssl/certs:ro)

step "2. the stand-in base $BASE (torch $torch_version from PyPI, as in $real_base)"
"${build[@]}" --quiet -f deploy/standin-base.Containerfile --build-arg OS_IMAGE="$OS_IMAGE" \
    --build-arg TORCH_VERSION="$torch_version" -t "$BASE" deploy > /dev/null

step "3. Dockerfile.gpu with BASE_IMAGE=$BASE"
"${build[@]}" -f Dockerfile.gpu --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" . \
    > "$STATE/build.log" 2>&1 || { tail -n 40 "$STATE/build.log"; die "podman build"; }
grep -E '^torch==|^Successfully installed' "$STATE/build.log" | cut -c1-400
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image $IMAGE: $((size / 1000000)) MB ($(podman image inspect --format '{{.Size}}' "$BASE" \
    | awk '{printf "%d", $1 / 1000000}') MB of it the stand-in base)"

# Containers: the default ulimits of podman (nofile 1048576) exceed what a process without
# CAP_SYS_RESOURCE may set; these fit under the usual hard limits.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] || [ "$nofile" -gt 16384 ] && nofile=16384
conf="$STATE/containers.conf"
printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=32768:32768"]\n' \
    "$nofile" "$nofile" > "$conf"
export CONTAINERS_CONF="$conf"
if ! podman run --rm "$OS_IMAGE" true 2> /dev/null; then
    podman --runtime runc run --rm "$OS_IMAGE" true \
        || die "podman run fails with the default runtime and with runc"
    printf '[engine]\nruntime = "runc"\n' >> "$conf"
    say "podman run: using runc (the default runtime fails here)"
fi

image_uid=$(podman run --rm "$IMAGE" id -u)
wait_healthz() {  # $1: host port; the host's python3 stands in for a client outside
    python3 - "$1" << 'EOF'
import sys, time, urllib.request
for _ in range(300):
    try:
        print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=5).read().decode())
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit("no answer from /healthz in 300 s")
EOF
}
check_recordings() {  # $1: volume; every file under recordings/ belongs to the image's user
    local mount
    mount=$(podman volume inspect --format '{{.Mountpoint}}' "$1")
    find "$mount/recordings" -name game.parquet | grep -q . || die "no recordings in $1"
    if find "$mount/recordings" ! -uid "$image_uid" | grep .; then
        die "files above in $1 are not owned by uid $image_uid"
    fi
    say "recordings in volume $1, all owned by uid $image_uid:"
    (cd "$mount" && find recordings -name game.parquet -printf '  %u:%g %s bytes %p\n')
}
stop_cleanly() {  # $1: container; SIGTERM must end it well before podman's SIGKILL
    local t0 code
    t0=$(date +%s)
    podman stop -t 30 "$1" > /dev/null
    code=$(podman inspect --format '{{.State.ExitCode}}' "$1")
    say "$1 stopped in $(($(date +%s) - t0)) s, exit code $code"
    [ "$code" = 0 ] || die "$1 did not exit cleanly on SIGTERM"
}

step "4. podman run $IMAGE on CPU"
podman rm -f "$NAME" > /dev/null 2>&1 || true
podman volume rm -f "$NAME-data" > /dev/null 2>&1 || true
podman volume create "$NAME-data" > /dev/null
podman run -d --name "$NAME" -p "$PORT:8000" -v "$NAME-data:/data" \
    -e PLAYMODEL_API_KEY="$KEY" -e PLAYMODEL_DEVICE=cpu -e PLAYMODEL_RECORDINGS_DIR=/data/recordings \
    "$IMAGE" > /dev/null
wait_healthz "$PORT" || { podman logs "$NAME" | tail -n 30; die "healthz"; }
podman exec -i "$NAME" python - http://127.0.0.1:8000 --api-key "$KEY" < deploy/smoke.py \
    || { podman logs "$NAME" | tail -n 30; die "smoke test in the container"; }
stop_cleanly "$NAME"
check_recordings "$NAME-data"
podman rm "$NAME" > /dev/null
podman volume rm "$NAME-data" > /dev/null

step "5. docker-compose.yml with podman-compose"
compose() { podman-compose -p "$PROJECT" -f docker-compose.yml "$@"; }
export PORT PLAYMODEL_API_KEY="$KEY" PLAYMODEL_DEVICE=cpu
volume="${PROJECT}_playmodel-data"
compose down -v > /dev/null 2>&1 || true
podman volume rm -f "$volume" > /dev/null 2>&1 || true
# Named: podman-compose 1.0.3 (Debian 12) ignores `profiles`, so a bare `up` would start
# parse and train as well.
compose up -d --no-build server > "$STATE/compose.log" 2>&1 \
    || { cat "$STATE/compose.log"; die "podman-compose up server"; }
server="${PROJECT}_server_1"
wait_healthz "$PORT" || { podman logs "$server" | tail -n 30; die "healthz (compose)"; }
podman exec -i "$server" python - http://127.0.0.1:8000 --api-key "$KEY" < deploy/smoke.py \
    || die "smoke test in the compose server"
podman exec "$server" sh -c 'mkdir -p /data/replays && cp /app/assets/sample_replays/*.slp /data/replays/'
stop_cleanly "$server"
check_recordings "$volume"

say "service parse (profile parse) on the bundled sample replays:"
compose run --rm parse 2>&1 | grep -v -E '^(podman|\[|using|\*\*)' | tail -n 5
mount=$(podman volume inspect --format '{{.Mountpoint}}' "$volume")
ls "$mount/dataset" | head -n 5
say "service train (profile train), two CPU steps with playmodel train (its command needs GPUs):"
compose run --rm train playmodel train --config demo-small --data /data/dataset \
    --out /data/runs/check --max-steps 2 2>&1 | grep -v -E '^(podman|\[|using|\*\*)' | tail -n 5
[ -f "$mount/runs/check/last.safetensors" ] || die "the train service wrote no checkpoint"
say "service train with its own command (torchrun over every GPU), on this CPU:"
# podman-compose 1.0.3 answers 0 whatever the container's exit code (it prints "exit code: 1"),
# so the log says how it ended.
compose run --rm train > "$STATE/train.log" 2>&1 || true
grep -E 'Cuda is not available' "$STATE/train.log" | tail -n 1 \
    || { tail -n 20 "$STATE/train.log"; die "train did not stop for want of a GPU"; }
compose down -v > /dev/null 2>&1
podman ps -a --filter "name=$PROJECT" --format '{{.Names}}' | grep . && die "containers left"

step "done"
say "all checks passed in $(($(date +%s) - START)) s; image $IMAGE $((size / 1000000)) MB"
