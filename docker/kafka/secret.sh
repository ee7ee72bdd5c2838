# shellcheck shell=bash
# Sourced by sasl-broker.sh and sasl-setup.sh, which define die().
#
# read_secret FILE: the password in FILE (one line of letters, digits and . _ ~ -, as
# `openssl rand -hex 32` writes), so that it needs no quoting in JAAS, the format tool or a
# client properties file
read_secret() {
    local file="$1" value
    [[ -f "$file" ]] || die "$file: no such file (create the secret: docker/README.md)"
    [[ -r "$file" ]] || die "$file: not readable by $(id -un 2>/dev/null || id -u)"
    value="$(head -c 4097 "$file")"
    value="${value%$'\n'}"
    [[ -n "$value" ]] || die "$file: empty"
    ((${#value} <= 4096)) || die "$file: over 4096 bytes"
    [[ "$value" =~ ^[A-Za-z0-9._~-]+$ ]] ||
        die "$file: use letters, digits and . _ ~ - only (e.g. openssl rand -hex 32)"
    printf '%s' "$value"
}
