# shellcheck shell=bash
# Sourced by the install scripts (not run): stage_source SRC prints the directory pip
# should build the project from.
#
# pip builds a local project in place, leaving build/ and *.egg-info in it (and stale files
# in build/ end up in later wheels). In a checkout, copy just what .dockerignore lets into
# the image to a temporary directory (the caller removes it); in the image's /src, which
# holds nothing else and has no .dockerignore, build in place.
stage_source() {
    local src="$1" stage entry line
    if [ ! -f "$src/.dockerignore" ]; then
        printf '%s\n' "$src"
        return
    fi
    stage="$(mktemp -d)"
    while read -r line; do
        case "$line" in
            '!'*) entry="${line#!}"; cp -R "$src/${entry%/}" "$stage/" ;;
        esac
    done <"$src/.dockerignore"
    printf '%s\n' "$stage"
}
