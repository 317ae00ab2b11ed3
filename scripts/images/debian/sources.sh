#!/usr/bin/env bash
# The apt sources of the Debian base image, taken from the host's own apt configuration, so
# that containers use the host's mirror (no archive host name is written in the repository).
#
#   sources.sh SUITE            the host's sources for SUITE, SUITE-updates and SUITE-security
#   sources.sh --mirror SUITE   the archive URI the host uses for SUITE (for debootstrap)
#
# deb822 files (/etc/apt/sources.list.d/*.sources, bookworm's default) are printed stanza by
# stanza, verbatim; the one-line format (/etc/apt/sources.list, *.list) line by line. Fails when
# the host has no source for SUITE.
set -euo pipefail

mode=sources
if [[ ${1:-} == --mirror ]]; then
    mode=mirror
    shift
fi
suite=${1:?usage: sources.sh [--mirror] SUITE}
shopt -s nullglob

deb822() {
    # $1: "sources" or "mirror"; the files follow.
    awk -v s="$suite" -v mode="$1" '
        BEGIN { RS = ""; ORS = "\n\n" }
        {
            keep = 0; exact = 0; uri = ""; enabled = 1
            n = split($0, lines, "\n")
            for (i = 1; i <= n; i++) {
                if (lines[i] ~ /^Suites:/) {
                    m = split(lines[i], w, /[ \t]+/)
                    for (j = 2; j <= m; j++) {
                        if (w[j] == s) exact = 1
                        if (w[j] == s || w[j] == s "-updates" || w[j] == s "-security") keep = 1
                    }
                }
                if (lines[i] ~ /^URIs:/ && uri == "") { split(lines[i], u, /[ \t]+/); uri = u[2] }
                if (lines[i] ~ /^Enabled:[ \t]*no/) enabled = 0
            }
            if (!enabled) next
            if (mode == "sources" && keep) print
            if (mode == "mirror" && exact && uri != "") { ORS = "\n"; print uri; exit }
        }' "${@:2}"
}

one_line() {
    awk -v s="$suite" -v mode="$1" '$1 == "deb" {
        i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        uri = $i; d = $(i + 1)
        if (mode == "sources" && (d == s || d == s "-updates" || d == s "-security")) print
        if (mode == "mirror" && d == s) { print uri; exit }
    }' "${@:2}"
}

files_822=(/etc/apt/sources.list.d/*.sources)
files_list=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] && files_list+=("$f")
done

out=""
if ((${#files_822[@]})); then
    out=$(deb822 "$mode" "${files_822[@]}")
fi
if [[ -z $out ]] && ((${#files_list[@]})); then
    out=$(one_line "$mode" "${files_list[@]}")
fi
if [[ -z $out ]]; then
    echo "sources.sh: the host's apt configuration has no source for '$suite'" >&2
    exit 1
fi
if [[ $mode == mirror ]]; then
    printf '%s\n' "${out%%$'\n'*}"
else
    printf '%s\n' "$out"
fi
