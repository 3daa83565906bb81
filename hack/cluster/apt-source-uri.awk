# Prints the URI of the first enabled apt source that serves the given suite
# (the Debian archive itself, not -security/-updates), from deb822 `.sources`
# files and one-line `.list` files alike. Usage:
#   awk -v suite=bookworm -f apt-source-uri.awk /etc/apt/sources.list.d/*.sources ...
# We read the URI at run time so that no registry host name is ever written
# into the repository.

function flush() {
    if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "" && !found) {
        n = split(suites, s, " ")
        for (i = 1; i <= n; i++) if (s[i] == suite) { split(uris, u, " "); print u[1]; found = 1; exit }
    }
    types = ""; suites = ""; uris = ""; enabled = ""
}

FNR == 1 { flush() }
FILENAME ~ /\.sources$/ {
    if ($0 ~ /^[ \t]*$/) { flush(); next }
    if ($0 ~ /^#/) next
    key = tolower($1); sub(/:$/, "", key)
    val = $0; sub(/^[^:]*:[ \t]*/, "", val)
    if (key == "types") types = val
    else if (key == "uris") uris = val
    else if (key == "suites") suites = val
    else if (key == "enabled") enabled = tolower(val)
    next
}
FILENAME ~ /\.list$/ && $1 == "deb" {
    # deb [options] URI suite components...
    f = 2
    if ($2 ~ /^\[/) { while (f <= NF && $f !~ /\]$/) f++; f++ }
    if ($(f + 1) == suite) { print $f; found = 1; exit }
}
END { if (!found) flush() }
