#!/usr/bin/env bash
# Prepares the real DNA data of issue 5 (genomics) from Debian packages, unpacked without root (apt-get download +
# dpkg -x into data/cache/.dna-debs; data/debian-tools.sh):
#   human      vt-examples      usr/share/doc/vt/examples/ref/20.fa.gz            GRCh37 chromosome 20 (63,025,520 bp)
#              smalt-examples   usr/share/doc/smalt/test/data/hs37chrXtrunc.fa.gz GRCh37 chromosome X, first 69,999,930 bp
#   apes       maffilter-examples  usr/share/doc/maffilter/examples/Gorilla/Compara.epo_5_catarrhini_hsap-projected.
#                               chr22.subset.nogap.cleaned_aln.maf.gz   Ensembl Compara EPO alignment on human chr22:
#                               9,627 blocks, each with human (Hsap), chimp (Ptro), gorilla (Ggor), orangutan (Ppyg)
#   splice     r-cran-mlbench   mlbench/data/DNA.rda      UCI primate splice junctions, StatLog version: 3,186 x 60 nt
#   promoters  r-cran-kernlab   kernlab/data/promotergene.rda   UCI E. coli promoters: 106 x 57 nt (53 +, 53 -)
#
# Output (default data/cache/dna, git-ignored; read by Ssm.Genomics.DnaDatasets):
#   human/chrX.seq, human/chr20.seq   the chromosome as raw bytes, one per base, only A C G T N (no header, no
#                                     newlines): soft-masked lower case is upper-cased, any other IUPAC code becomes N
#   human/human.json                  files, lengths, N counts, and the split: train = chrX 0-70 Mbp, valid = chr20
#   apes/apes.tsv                     split, block, species, start, sequence: 200-nt windows (see below)
#   splice/splice.tsv                 split, class (EI | IE | N), sequence (60 nt, A C G T)
#   promoters/promoters.tsv           split, class (+ | -), sequence (57 nt, A C G T)
#   */TASK.json                       labels in index order, counts per split and class, the split and window rules
#   SOURCES.txt                       the Debian package versions used
#
# Rules:
#   human      a chromosome-level split (no base of the validation chromosome is seen in training): train on chrX
#              0-70 Mbp, validate on chr20 (there is no test chromosome in these packages).
#   apes       every block's row of each species, gaps ('-') removed and upper-cased, is cut into consecutive
#              non-overlapping 200-nt windows from its first base (the tail shorter than 200 nt is dropped); a window
#              with more than 20 N (10%) is dropped. start = the window's 0-based position on that species' sequence
#              (MAF start + offset; every row is on the + strand). The windows of one block are homologous across the
#              four species, so the split is by block: a block goes to test if SHA-1("apes-block:" + its 0-based index
#              in the file), read as a big-endian integer, mod 100 is < 10, to valid if < 20, else to train.
#   splice     mlbench's DNA is the StatLog encoding: 180 binary factors, 3 per position, A=100 C=010 G=001 T=000
#              (the mlbench help page); decoded back to letters (any other pattern would be N; none occurs). The
#              decoding is checked: >= 95% of EI rows must have GT at positions 31-32 and of IE rows AG at 29-30.
#   splice and promoters: a stratified split: within each class, rows are ordered by SHA-1("TASK:" + 1-based row
#              number); the first round(10%) go to test, the next round(10%) to valid, the rest to train. Rows are
#              written in the data set's own order.
#
# Usage: data/dna.sh [--out DIR] [--what all|human|apes|splice|promoters] [--force]
# Needs bash, python3 (standard library: gzip, bz2, lzma), apt-get, dpkg, dpkg-deb. The .rda files (R XDR
# serialisation, xz/bzip2-compressed) are read by a small python reader below; Ssm.Genomics.RData is the same reader in
# C# (for the ssm-dna CLI and the tests). Idempotent: each part has a .stamp (hash of this script); a complete part is
# left alone and only its summary printed. Each part is built in OUT/.build-PART and moved into place when complete.
# About 30 s on 2 cores the first time (downloads 173 MB of packages, of which ~55 MB are kept).
set -euo pipefail
trap 'echo "dna: failed at line $LINENO" >&2' ERR

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/cache/dna"
what=all force=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --what) what=${2:?--what needs all, human, apes, splice or promoters}; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
case "$what" in
  all) parts=(human apes splice promoters) ;;
  human|apes|splice|promoters) parts=("$what") ;;
  *) echo "error: --what '$what' is not one of all, human, apes, splice, promoters" >&2; exit 2 ;;
esac
for tool in python3 apt-get dpkg dpkg-deb dpkg-query sha256sum; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
script_hash=$(sha256sum "$0" | cut -d' ' -f1)

declare -A PKG=([human]="vt-examples smalt-examples" [apes]=maffilter-examples [splice]=r-cran-mlbench
                [promoters]=r-cran-kernlab)
declare -A FILES=(
  [vt-examples]=usr/share/doc/vt/examples/ref/20.fa.gz
  [smalt-examples]=usr/share/doc/smalt/test/data/hs37chrXtrunc.fa.gz
  [maffilter-examples]=usr/share/doc/maffilter/examples/Gorilla/Compara.epo_5_catarrhini_hsap-projected.chr22.subset.nogap.cleaned_aln.maf.gz
  [r-cran-mlbench]=usr/lib/R/site-library/mlbench/data/DNA.rda
  [r-cran-kernlab]=usr/lib/R/site-library/kernlab/data/promotergene.rda)

summary() {   # summary PART: counts from the prepared files
  python3 - "$out/$1" "$1" <<'PY'
import json, os, sys
d, part = sys.argv[1:3]
info = json.load(open(os.path.join(d, "TASK.json" if part != "human" else "human.json")))
if part == "human":
    for f in info["files"]:
        print(f"  human/{f['file']:10} {f['split']:5} {f['length']:12,} bp  {f['n_count']:10,} N  ({f['source']})")
else:
    for s, by_class in info["counts"].items():
        print(f"  {part}/{s:5} {sum(by_class.values()):8,}  " + "  ".join(f"{k} {v:,}" for k, v in by_class.items()))
PY
}

todo=()
for part in "${parts[@]}"; do
  if [[ $force == 0 && -f "$out/$part/.stamp" && "$(cat "$out/$part/.stamp")" == "$script_hash" ]]; then
    echo "dna/$part is up to date in $out/$part"
    summary "$part"
  else
    todo+=("$part")
  fi
done
[[ ${#todo[@]} == 0 ]] && exit 0
start_time=$SECONDS

# ---- packages: unpacked into data/cache/.dna-debs/root (an installed package is used in place, see find_file)
tools="$here/cache/.dna-debs"
want=()
for part in "${todo[@]}"; do for p in ${PKG[$part]}; do want+=("$p"); done; done
source "$here/debian-tools.sh"
fetch_debs "${want[@]}"
find_file() {   # find_file PKG: the package's data file, unpacked here or installed
  local rel=${FILES[$1]}
  if [[ -f "$tools/root/$rel" ]]; then echo "$tools/root/$rel"
  elif [[ -f "/$rel" ]]; then echo "/$rel"
  else echo "error: $1 is installed but /$rel is missing (dpkg path-exclude of /usr/share/doc?); remove the package or unpack it with dpkg -x into $tools/root" >&2; exit 1
  fi
}
version_of() {
  if [[ -f "$tools/root/.$1.done" ]]; then cat "$tools/root/.$1.done"
  else echo "$1 $(dpkg-query -W -f='${Version}' "$1") (installed)"; fi
}
# the packages' other files (examples of other tools, ~100 MB) are not needed
rm -rf "$tools/root/usr/share/doc/maffilter/examples/"{Ztritici,Umaydis} 2>/dev/null || true
find "$tools/root/usr/share/doc/smalt/test/data" -type f ! -name 'hs37chrXtrunc.fa.gz' -delete 2>/dev/null || true

for part in "${todo[@]}"; do
  build="$out/.build-$part"
  rm -rf "$build" "$out/$part/.stamp"
  mkdir -p "$build"
  inputs=()
  for p in ${PKG[$part]}; do inputs+=("$(find_file "$p")"); done
  echo "dna/$part: converting ${inputs[*]##*/}"
  python3 - "$part" "$build" "${inputs[@]}" <<'PY'
import bz2, collections, gzip, hashlib, json, lzma, os, struct, sys

part, build, inputs = sys.argv[1], sys.argv[2], sys.argv[3:]

def fail(msg):
    sys.exit(f"error: {msg}")

def write_json(name, obj):
    with open(os.path.join(build, name), "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2) + "\n")

def sha1_int(key):
    return int.from_bytes(hashlib.sha1(key.encode()).digest(), "big")

# ACGT stay, acgt are upper-cased, everything else (N, IUPAC codes, '*', ...) becomes N; \r \n are dropped
TO_ACGTN = bytes((c if c in b"ACGT" else c - 32 if c in b"acgt" else ord("N")) for c in range(256))

def fasta_to_seq(path, dst):
    """One-record FASTA (gzip) -> raw A/C/G/T/N bytes. Streams line by line. -> (length, N count, header)."""
    header, n, n_count = None, 0, 0
    with gzip.open(path, "rb") as f, open(dst, "wb") as o:
        for line in f:
            if line.startswith(b">"):
                if header is not None: fail(f"{path}: more than one FASTA record")
                header = line[1:].decode("ascii", "replace").strip()
                continue
            s = line.translate(TO_ACGTN, b"\r\n")
            n += len(s); n_count += s.count(b"N")
            o.write(s)
    if header is None or n == 0: fail(f"{path}: no FASTA record")
    return n, n_count, header

def split_for_rows(task, labels):
    """Stratified: within each class, rows (1-based) in SHA-1 order; round(10%) test, round(10%) valid, rest train."""
    split = {}
    for c in sorted(set(labels)):
        rows = sorted((i for i, l in enumerate(labels, 1) if l == c), key=lambda i: sha1_int(f"{task}:{i}"))
        k = round(0.1 * len(rows))
        for j, i in enumerate(rows):
            split[i] = "test" if j < k else "valid" if j < 2 * k else "train"
    return [split[i] for i in range(1, len(labels) + 1)]

def counts(rows, label_names):
    c = {s: {l: 0 for l in label_names} for s in ("train", "valid", "test")}
    for s, l in rows: c[s][l] += 1
    return c

# ---- R's XDR serialisation (R Internals, "Serialization Formats"): the subset .rda data frames need
class RReader:
    def __init__(self, b, name): self.b, self.p, self.refs, self.name = b, 0, [], name
    def int(self):
        v = struct.unpack_from(">i", self.b, self.p)[0]; self.p += 4; return v
    def length(self):
        n = self.int()
        if n == -1: n = (self.int() << 32) | (self.int() & 0xFFFFFFFF)
        return n
    def item(self):
        flags = self.int(); t = flags & 0xFF
        has_attr, has_tag = flags & 0x200, flags & 0x400
        if t == 254: return None                                        # NILVALUE_SXP
        if t == 255: k = flags >> 8; return self.refs[(k or self.int()) - 1]   # REFSXP
        if t == 1: sym = ("sym", self.item()); self.refs.append(sym); return sym
        if t == 2:                                                      # LISTSXP: attributes, tag, CAR, CDR
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            return ("pairlist", tag[1] if tag else None, self.item(), self.item(), attr)
        if t == 9:                                                      # CHARSXP (length -1: NA_character_)
            n = self.int()
            if n == -1: return None
            s = self.b[self.p:self.p + n]; self.p += n
            return s.decode("latin-1" if flags & (1 << 14) else "utf-8")
        if t in (10, 13):                                               # LGLSXP, INTSXP
            n = self.length(); v = list(struct.unpack_from(f">{n}i", self.b, self.p)); self.p += 4 * n
        elif t == 14:                                                   # REALSXP
            n = self.length(); v = list(struct.unpack_from(f">{n}d", self.b, self.p)); self.p += 8 * n
        elif t in (16, 19, 20): v = [self.item() for _ in range(self.length())]   # STRSXP, VECSXP, EXPRSXP
        else: fail(f"{self.name}: R type {t} is not supported by this reader")
        return ("vec", t, v, attributes(self.item() if has_attr else None))

def attributes(pl):
    d = {}
    while pl is not None:
        _, tag, car, pl, _ = pl
        d[tag] = car
    return d

def read_rda(path):
    """.rda (gzip, bzip2, xz or none) -> {name: object}."""
    b = open(path, "rb").read()
    if b[:2] == b"\x1f\x8b": b = gzip.decompress(b)
    elif b[:3] == b"BZh": b = bz2.decompress(b)
    elif b[:6] == b"\xfd7zXZ\x00": b = lzma.decompress(b)
    if b[:5] not in (b"RDX2\n", b"RDX3\n") or b[5:7] != b"X\n": fail(f"{path}: not an XDR .rda file (R save format 2 or 3)")
    r = RReader(b, path); r.p = 7
    version = r.int(); r.int(); r.int()
    if version == 3: r.p += 4 + r.int()                                 # native encoding name
    out, pl = {}, r.item()
    while pl is not None:
        _, tag, car, pl, _ = pl
        out[tag] = car
    return out

def data_frame(obj, path):
    """data.frame -> {column: list of strings}; factors become their level names."""
    if obj is None or obj[0] != "vec" or obj[1] != 19 or "data.frame" not in (obj[3].get("class") or ("", "", []))[2]:
        fail(f"{path}: expected a data.frame")
    names = obj[3]["names"][2]
    cols = {}
    for name, col in zip(names, obj[2]):
        levels = col[3].get("levels")
        if levels is not None: cols[name] = [None if v == -2147483648 else levels[2][v - 1] for v in col[2]]
        else: cols[name] = [None if v is None else str(v) for v in col[2]]
    return cols

# ---- parts
if part == "human":
    vt, smalt = inputs
    files = []
    for src, pkg, name, split, expect in ((smalt, "smalt-examples", "chrX", "train", "X"),
                                         (vt, "vt-examples", "chr20", "valid", "20")):
        n, n_count, header = fasta_to_seq(src, os.path.join(build, name + ".seq"))
        if header.split()[0] != expect: fail(f"{src}: expected chromosome {expect}, found '{header}'")
        files.append(dict(name=name, file=name + ".seq", split=split, length=n, n_count=n_count,
                          source=f"{pkg}: {os.path.basename(src)} (>{header})"))
        print(f"  {name}: {n:,} bp, {n_count:,} N")
    write_json("human.json", dict(
        name="human-grch37", assembly="GRCh37", alphabet="ACGTN", files=files,
        split_rule="chromosome-level: train = chrX 0-70 Mbp (smalt-examples hs37chrXtrunc), valid = chr20 "
                   "(vt-examples); no test chromosome",
        format="raw bytes, one per base, A C G T N only; soft-masked lower case upper-cased, other IUPAC codes -> N"))

elif part == "apes":
    SPECIES = {"Hsap": "human", "Ptro": "chimp", "Ggor": "gorilla", "Ppyg": "orangutan"}
    LABELS = ["human", "chimp", "gorilla", "orangutan"]
    W, MAX_N = 200, 20
    rows, blocks, dropped = [], collections.Counter(), 0
    block, block_index = [], -1
    def flush(lines, index):
        global dropped
        if not lines: return
        got = {}
        for f in lines:
            sp = SPECIES.get(f[1].split(".")[0])
            if sp is None: fail(f"block {index}: unknown species '{f[1]}'")
            if f[4] != "+": fail(f"block {index}: {f[1]} is on the - strand")
            got[sp] = (int(f[2]), f[6].replace("-", "").upper().translate(TO_ACGTN.decode("latin-1")))
        if sorted(got) != sorted(LABELS): fail(f"block {index}: species {sorted(got)}")
        h = sha1_int(f"apes-block:{index}") % 100
        split = "test" if h < 10 else "valid" if h < 20 else "train"
        blocks[split] += 1
        for sp in LABELS:
            start, seq = got[sp]
            for o in range(0, len(seq) - W + 1, W):
                w = seq[o:o + W]
                if w.count("N") > MAX_N: dropped += 1; continue
                rows.append((split, index, sp, start + o, w))
    with gzip.open(inputs[0], "rt", encoding="ascii") as f:
        for line in f:
            if line.startswith("a"):
                flush(block, block_index); block, block_index = [], block_index + 1
            elif line.startswith("s"):
                block.append(line.split())
    flush(block, block_index)
    with open(os.path.join(build, "apes.tsv"), "w", encoding="ascii", newline="\n") as o:
        o.write("split\tblock\tspecies\tstart\tsequence\n")
        for r in rows: o.write("%s\t%d\t%s\t%d\t%s\n" % r)
    c = counts(((r[0], r[2]) for r in rows), LABELS)
    write_json("TASK.json", dict(
        name="apes", labels=LABELS, window=W, blocks=block_index + 1, blocks_per_split=dict(blocks),
        dropped_windows_with_n=dropped, counts=c,
        source="maffilter-examples: Ensembl Compara EPO 5 catarrhini alignment, human chr22 subset (Hsap, Ptro, Ggor, Ppyg)",
        window_rule=f"per block and species: gaps removed, upper-cased, consecutive {W}-nt windows from the first base, "
                    f"tail dropped; windows with more than {MAX_N} N dropped; start = 0-based position on the species' "
                    "sequence",
        split_rule="by alignment block: SHA-1('apes-block:' + 0-based block index) mod 100 < 10 test, < 20 valid, else train"))
    print(f"  {block_index + 1:,} blocks ({dict(blocks)}), {len(rows):,} windows, {dropped:,} dropped for N")

elif part == "splice":
    path = inputs[0]
    cols = data_frame(read_rda(path).get("DNA"), path)
    if len(cols) != 181 or "Class" not in cols: fail(f"{path}: expected 180 indicator columns and Class, found {len(cols)} columns")
    bits = [cols[f"V{j}"] for j in range(1, 181)]
    n = len(cols["Class"])
    CODE = {("1", "0", "0"): "A", ("0", "1", "0"): "C", ("0", "0", "1"): "G", ("0", "0", "0"): "T"}
    seqs = ["".join(CODE.get((bits[3 * p][i], bits[3 * p + 1][i], bits[3 * p + 2][i]), "N") for p in range(60))
            for i in range(n)]
    labels = [{"ei": "EI", "ie": "IE", "n": "N"}[c] for c in cols["Class"]]
    ei = [s for s, l in zip(seqs, labels) if l == "EI"]; ie = [s for s, l in zip(seqs, labels) if l == "IE"]
    gt = sum(s[30:32] == "GT" for s in ei) / len(ei); ag = sum(s[28:30] == "AG" for s in ie) / len(ie)
    if gt < 0.95 or ag < 0.95: fail(f"{path}: decoding check failed (GT at the donor in {gt:.1%} of EI, AG at the acceptor in {ag:.1%} of IE)")
    split = split_for_rows("splice", labels)
    with open(os.path.join(build, "splice.tsv"), "w", encoding="ascii", newline="\n") as o:
        o.write("split\tclass\tsequence\n")
        for r in zip(split, labels, seqs): o.write("\t".join(r) + "\n")
    write_json("TASK.json", dict(
        name="splice", labels=["EI", "IE", "N"], length=60, rows=n, counts=counts(zip(split, labels), ["EI", "IE", "N"]),
        n_bases=sum(s.count("N") for s in seqs),
        check={"EI with GT at 31-32": round(gt, 4), "IE with AG at 29-30": round(ag, 4)},
        source="r-cran-mlbench: data/DNA.rda (StatLog version of the UCI primate splice-junction data; A=100 C=010 "
               "G=001 T=000 decoded back to letters)",
        split_rule="stratified: per class, rows in SHA-1('splice:' + 1-based row) order, round(10%) test, round(10%) valid, rest train"))
    print(f"  {n:,} rows; EI with GT at the donor {gt:.1%}, IE with AG at the acceptor {ag:.1%}")

elif part == "promoters":
    path = inputs[0]
    cols = data_frame(read_rda(path).get("promotergene"), path)
    if len(cols) != 58 or "Class" not in cols: fail(f"{path}: expected Class and 57 positions, found {len(cols)} columns")
    pos = [c for c in cols if c != "Class"]
    n = len(cols["Class"])
    seqs = ["".join((cols[c][i] or "n") for c in pos).upper().translate(TO_ACGTN.decode("latin-1")) for i in range(n)]
    labels = cols["Class"]
    split = split_for_rows("promoters", labels)
    with open(os.path.join(build, "promoters.tsv"), "w", encoding="ascii", newline="\n") as o:
        o.write("split\tclass\tsequence\n")
        for r in zip(split, labels, seqs): o.write("\t".join(r) + "\n")
    write_json("TASK.json", dict(
        name="promoters", labels=["+", "-"], length=57, rows=n, counts=counts(zip(split, labels), ["+", "-"]),
        source="r-cran-kernlab: data/promotergene.rda (UCI E. coli promoter gene sequences)",
        split_rule="stratified: per class, rows in SHA-1('promoters:' + 1-based row) order, round(10%) test, round(10%) valid, rest train"))
    print(f"  {n:,} rows")
PY
  for p in ${PKG[$part]}; do version_of "$p"; done > "$build/SOURCES.txt"
  rm -rf "$out/$part"
  mv "$build" "$out/$part"
  echo "$script_hash" > "$out/$part/.stamp"
  summary "$part"
done
{ for part in human apes splice promoters; do [[ -f "$out/$part/SOURCES.txt" ]] && cat "$out/$part/SOURCES.txt"; done; } \
  | sort -u > "$out/SOURCES.txt"
echo "dna data in $out ($((SECONDS - start_time)) s)"
