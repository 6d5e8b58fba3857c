#!/usr/bin/env bash
# Install Triton's perf_analyzer (idempotent) and run it against a running rnnserve over
# KServe v2 gRPC, in stateless mode (<model>) and sequence mode (<model>-stream).
#
#   bench/perf_analyzer.sh --install-only          # just install; prints the binary's path
#   bench/perf_analyzer.sh --model sst2-lstm       # both modes against localhost:8001
#   bench/perf_analyzer.sh --model m --mode sequence --concurrency 1:8:1 -- --percentile=95
#
# Installation (no root needed, nothing goes into the project venv): perf_analyzer comes from
# the tritonclient 2.51.0 wheel (newer wheels need a newer glibc than Debian 12's), libcudart
# from the nvidia-cuda-runtime-cu12 wheel (perf_analyzer links it even on CPU-only hosts) and
# libb64 from Debian's libb64-0d .deb (unpacked with dpkg -x). Everything lands in
# $RNNSERVE_TOOLS_DIR (default .cache/tools, git-ignored); `pip download` and
# `apt-get download` are the only network accesses.
#
# Input data: real sentences from SST-2 dev ($RNNSERVE_SST2_DEV, default
# ../shared/data/sst2/dev.tsv beside the clone) when present, else the shipped bench/perf_data/*.json.
# Stateless mode sends one sentence per row; sequence mode streams each sentence in chunks of
# $CHUNK_WORDS words, one chunk per request, with sequence_start/sequence_end set by
# perf_analyzer.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${RNNSERVE_TOOLS_DIR:-$ROOT/.cache/tools}"
PA_DIR="$TOOLS/perf_analyzer"
PA_BIN="$PA_DIR/bin/perf_analyzer"
TRITONCLIENT_VERSION="2.51.0"
CUDART_VERSION="12.9.79"
SST2_DEV="${RNNSERVE_SST2_DEV:-$ROOT/../shared/data/sst2/dev.tsv}"
DATA_DIR="${RNNSERVE_PERF_DATA_DIR:-$ROOT/.cache/perf_data}"
CHUNK_WORDS="${CHUNK_WORDS:-6}"

URL="localhost:8001"
MODEL=""
MODE="both"
CONCURRENCY="1:16:5"
SEQ_CONCURRENCY=""
BATCH=1
MEASURE_MS=3000
STABILITY=""
OUT=""
INSTALL_ONLY=0
EXTRA=()

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
options: --url HOST:PORT (default $URL)   --model NAME (repository model; required to run)
         --mode stateless|sequence|both   --concurrency A:B:STEP (default $CONCURRENCY)
         --sequence-concurrency A:B:STEP  (default: --concurrency)
         --batch N (stateless -b, default 1)   --measurement-ms N (default $MEASURE_MS)
         --stability PCT (perf_analyzer --stability-percentage)
         --out DIR (write <mode>.csv there)    --install-only    -- ARGS (to perf_analyzer)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --install-only) INSTALL_ONLY=1 ;;
        --url) URL="$2"; shift ;;
        --model) MODEL="$2"; shift ;;
        --mode) MODE="$2"; shift ;;
        --concurrency) CONCURRENCY="$2"; shift ;;
        --sequence-concurrency) SEQ_CONCURRENCY="$2"; shift ;;
        --batch) BATCH="$2"; shift ;;
        --measurement-ms) MEASURE_MS="$2"; shift ;;
        --stability) STABILITY="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

pick_python() {
    if [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"; else echo python3; fi
}

# Directories perf_analyzer needs on LD_LIBRARY_PATH (libcudart, and libb64 unless system-wide).
pa_library_path() {
    local dirs="$PA_DIR/lib"
    [ -d "$PA_DIR/b64" ] && dirs="$dirs:$PA_DIR/b64"
    echo "$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

pa_works() {
    [ -x "$PA_BIN" ] && LD_LIBRARY_PATH="$(pa_library_path)" "$PA_BIN" --version >/dev/null 2>&1
}

install_perf_analyzer() {
    if pa_works; then
        echo "perf_analyzer already installed: $PA_BIN"
        return 0
    fi
    local python wheels
    python="$(pick_python)"
    wheels="$TOOLS/wheels"
    mkdir -p "$PA_DIR/bin" "$PA_DIR/lib" "$wheels"
    if ! ls "$wheels"/tritonclient-"$TRITONCLIENT_VERSION"-*manylinux1_x86_64.whl >/dev/null 2>&1; then
        "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --platform manylinux1_x86_64 --python-version 3.11 \
            -d "$wheels" "tritonclient==$TRITONCLIENT_VERSION"
    fi
    if ! ls "$wheels"/nvidia_cuda_runtime_cu12-"$CUDART_VERSION"-*.whl >/dev/null 2>&1; then
        "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
            -d "$wheels" "nvidia-cuda-runtime-cu12==$CUDART_VERSION"
    fi
    "$python" - "$wheels" "$PA_DIR" "$TRITONCLIENT_VERSION" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, target, version = sys.argv[1:]
members = {
    f"tritonclient-{version}.data/data/bin/perf_analyzer": "bin/perf_analyzer",
    "nvidia/cuda_runtime/lib/libcudart.so.12": "lib/libcudart.so.12",
}
for wheel in glob.glob(os.path.join(wheels, "*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name in members:
                dest = os.path.join(target, members[name])
                with zf.open(name) as src, open(dest + ".tmp", "wb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(dest + ".tmp", 0o755)
                os.replace(dest + ".tmp", dest)
PY
    if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
        local deb_dir
        deb_dir="$(mktemp -d)"
        (cd "$deb_dir" && apt-get download libb64-0d >/dev/null 2>&1) || {
            echo "apt-get download libb64-0d failed; try: apt-get update" >&2
            (cd "$deb_dir" && apt-get update -qq && apt-get download libb64-0d >/dev/null)
        }
        dpkg -x "$deb_dir"/libb64-0d_*.deb "$deb_dir/root"
        mkdir -p "$PA_DIR/b64"
        cp "$deb_dir"/root/usr/lib/*/libb64.so.0d "$PA_DIR/b64/"
        rm -rf "$deb_dir"
    fi
    if ! pa_works; then
        echo "perf_analyzer installed but does not run:" >&2
        LD_LIBRARY_PATH="$(pa_library_path)" "$PA_BIN" --version >&2 || true
        return 1
    fi
    echo "installed: $PA_BIN ($(LD_LIBRARY_PATH="$(pa_library_path)" "$PA_BIN" --version 2>&1 | head -1))"
}

# stateless.json / sequence.json from SST-2 dev, or the shipped copies.
prepare_data() {
    if [ ! -f "$SST2_DEV" ]; then
        STATELESS_JSON="$ROOT/bench/perf_data/stateless.json"
        SEQUENCE_JSON="$ROOT/bench/perf_data/sequence.json"
        return 0
    fi
    mkdir -p "$DATA_DIR"
    STATELESS_JSON="$DATA_DIR/stateless.json"
    SEQUENCE_JSON="$DATA_DIR/sequence.json"
    "$(pick_python)" - "$SST2_DEV" "$STATELESS_JSON" "$SEQUENCE_JSON" "$CHUNK_WORDS" <<'PY'
import csv, json, sys
source, stateless, sequence, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(source, encoding="utf-8", newline="") as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
header = [c.strip().lower() for c in rows[0]]
column = next((header.index(n) for n in ("sentence", "content", "text") if n in header), None)
sentences = [r[column] if column is not None else r[0] for r in rows[1 if column is not None else 0:]]
sentences = [s.strip() for s in sentences if s.strip()]
with open(stateless, "w", encoding="utf-8") as f:
    json.dump({"data": [{"TEXT": [s]} for s in sentences]}, f)
streams = []
for s in sentences[:256]:
    words = s.split()
    pieces = [" ".join(words[i:i + chunk]) for i in range(0, len(words), chunk)]
    streams.append([{"TEXT": [p]} for p in pieces])
with open(sequence, "w", encoding="utf-8") as f:
    json.dump({"data": streams}, f)
print(f"perf data: {len(sentences)} sentences, {len(streams)} streams from {source}")
PY
}

run_pa() {
    local mode="$1"; shift
    local csv_args=()
    if [ -n "$OUT" ]; then mkdir -p "$OUT"; csv_args=(-f "$OUT/$mode.csv"); fi
    local stability_args=()
    if [ -n "$STABILITY" ]; then stability_args=(--stability-percentage "$STABILITY"); fi
    echo "== perf_analyzer $mode: $*"
    LD_LIBRARY_PATH="$(pa_library_path)" "$PA_BIN" -i grpc -u "$URL" \
        --measurement-interval "$MEASURE_MS" "${stability_args[@]}" "${csv_args[@]}" \
        "$@" "${EXTRA[@]}"
}

install_perf_analyzer
if [ "$INSTALL_ONLY" = 1 ]; then exit 0; fi
if [ -z "$MODEL" ]; then echo "--model is required (a repository model name)" >&2; exit 2; fi
prepare_data

if [ "$MODE" = stateless ] || [ "$MODE" = both ]; then
    run_pa stateless -m "$MODEL" -b "$BATCH" --concurrency-range "$CONCURRENCY" \
        --input-data "$STATELESS_JSON"
fi
if [ "$MODE" = sequence ] || [ "$MODE" = both ]; then
    run_pa sequence -m "$MODEL-stream" --concurrency-range "${SEQ_CONCURRENCY:-$CONCURRENCY}" \
        --sequence-id-range 1:1000000 --input-data "$SEQUENCE_JSON"
fi
