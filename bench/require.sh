# Sourced by the bench scripts. `require COMMAND:PACKAGE ...` installs with apt-get the Debian
# packages of the commands that are not on PATH (one apt-get run for all of them).
require() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    ((${#missing[@]})) || return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
    printf '[bench] installing %s with apt-get\n' "${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
