# Sourced by the data scripts that run Debian programs without root (spoken-digits.sh, piano.sh):
#   tools=DIR; source data/debian-tools.sh; fetch_debs PKG...; export_tool_libs; x=$(bin NAME); check_bins "$x" ...
# Packages are fetched with `apt-get download` and unpacked with `dpkg -x` into $tools/root; packages already
# installed on the system are used as they are.

fetch_debs() {   # fetch_debs PKG...: download + unpack every package that is neither installed nor unpacked yet
  local want=() p
  mkdir -p "$tools/root" "$tools/debs"
  for p in "$@"; do
    [[ -f "$tools/root/.$p.done" ]] && continue
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
    want+=("$p")
  done
  [[ ${#want[@]} == 0 ]] && return 0
  echo "apt-get download ${want[*]}"
  if ! (cd "$tools/debs" && apt-get download "${want[@]}" >/dev/null 2>&1); then
    echo "apt-get could not fetch them all; running apt-get update" >&2
    apt-get update >/dev/null 2>&1 || true
    (cd "$tools/debs" && apt-get download "${want[@]}" >/dev/null 2>&1) \
      || { echo "error: apt-get download ${want[*]} failed (is the Debian mirror reachable? apt-get update needs root once)" >&2; exit 1; }
  fi
  for p in "${want[@]}"; do
    local deb; deb=$(ls "$tools/debs/${p}_"*.deb | head -n 1)
    dpkg -x "$deb" "$tools/root"
    echo "$p $(dpkg-deb -f "$deb" Version)" > "$tools/root/.$p.done"
    rm -f "$deb"
  done
}

export_tool_libs() {   # the unpacked libraries first on the loader path
  export LD_LIBRARY_PATH="$tools/root/usr/lib/x86_64-linux-gnu:$tools/root/usr/lib/x86_64-linux-gnu/pulseaudio:$tools/root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

bin() { if [[ -x "$tools/root/usr/bin/$1" ]]; then echo "$tools/root/usr/bin/$1"; else command -v "$1" || echo "/usr/bin/$1"; fi; }

check_bins() {   # check_bins PATH...: each exists and finds all its libraries
  local b missing
  for b in "$@"; do
    [[ -x "$b" ]] || { echo "error: $b is missing after unpacking the packages" >&2; exit 1; }
    missing=$(ldd "$b" | awk '/not found/ { print $1 }' | tr '\n' ' ')
    [[ -z "$missing" ]] || { echo "error: $b needs libraries that are neither installed nor unpacked: $missing(apt-get install the packages that provide them)" >&2; exit 1; }
  done
}
