#!/usr/bin/env bash
# What quantizing to Q3_K_S does to each language, with and without an
# importance matrix, measured with the project's own tools:
#
#   scripts/quality-report.sh REF.gguf OUT_DIR [TYPE]
#
# 1. `bittybot imatrix` over tools/data/text/calibration/*.txt → OUT/calibration.imatrix.gguf
# 2. `bittybot quantize --type TYPE` (default Q3_K_S) of REF, without and with it
#    (`--allow-requantize`, since here REF is itself a quantized stand-in)
# 3. `bittybot quality --json` of both against REF on the held-out
#    tools/data/text/evaluation/*.txt (the reference's distributions are saved
#    once in OUT/ref.kld and reused)
# 4. a Markdown table per language, with Latin and non-Latin script averages
#    (OUT/table.md), and each run's JSON (OUT/plain.json, OUT/imatrix.json)
#
# The release engineer runs the same on the real F16:
#   scripts/quality-report.sh tiny-aya-global-f16.gguf /tmp/aya-q3
# CTX (tokens per chunk, default 512) and THREADS (default: every core) can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ $# -ge 2 ] || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
REF=$(realpath "$1")
OUT=$2
TYPE=${3:-Q3_K_S}
CTX=${CTX:-512}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
B=${BITTYBOT:-$ROOT/target/release/bittybot}
[ -x "$B" ] || cargo build --release -p bittybot-tools --bin bittybot
PY=$ROOT/.cache/venv/bin/python
[ -x "$PY" ] || scripts/setup.sh
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
bb() { "$B" --data-dir "$data" "$@"; }
t() { local t0=$SECONDS; "$@"; echo "  ($((SECONDS - t0)) s)" >&2; }

echo "imatrix over the calibration set (ctx $CTX)" >&2
t bb imatrix -m "$REF" --text "$ROOT"/tools/data/text/calibration/*.txt -o "$OUT/calibration.imatrix.gguf" -c "$CTX" "${threads[@]}"
echo "quantize $TYPE without and with the imatrix" >&2
t bb quantize --type "$TYPE" --allow-requantize "${threads[@]}" "$REF" "$OUT/$TYPE-plain.gguf"
t bb quantize --type "$TYPE" --allow-requantize --imatrix "$OUT/calibration.imatrix.gguf" "${threads[@]}" "$REF" "$OUT/$TYPE-imatrix.gguf"
for v in plain imatrix; do
  m=$OUT/$TYPE-$v.gguf
  echo "quality of the $v quant on the evaluation set" >&2
  t bb quality --ref "$REF" -m "$m" --text "$ROOT"/tools/data/text/evaluation/*.txt --base "$OUT/ref.kld" \
    -c "$CTX" "${threads[@]}" --json --manifest "$m.manifest.json" >"$OUT/$v.json"
done

"$PY" - "$OUT" "$TYPE" <<'PY' | tee "$OUT/table.md"
import json, sys
out, qtype = sys.argv[1], sys.argv[2]
plain = json.load(open(f"{out}/plain.json"))
weighted = json.load(open(f"{out}/imatrix.json"))
latin = {"en", "es", "fr", "de", "pt", "tr", "vi", "sw"}
by = lambda r: {t["name"]: t for t in r["texts"]}
p, w = by(plain), by(weighted)
lang = lambda name: name.rsplit("/", 1)[-1].removesuffix(".txt")
print(f"| language | script | tokens | PPL ref | KLD {qtype} | KLD {qtype} + imatrix | same top % | same top % + imatrix |")
print("|---|---|--:|--:|--:|--:|--:|--:|")
rows = []
for name in p:
    a, b = p[name], w[name]
    code = lang(name)
    rows.append((code, a["kld_mean"]["value"], b["kld_mean"]["value"], a["same_top_pct"]["value"], b["same_top_pct"]["value"]))
    script = "Latin" if code in latin else "non-Latin"
    print(f"| {code} | {script} | {a['tokens']} | {a['ppl_reference']['value']:.2f} | "
          f"{a['kld_mean']['value']:.4f} ± {a['kld_mean']['se']:.4f} | {b['kld_mean']['value']:.4f} ± {b['kld_mean']['se']:.4f} | "
          f"{a['same_top_pct']['value']:.1f} | {b['same_top_pct']['value']:.1f} |")
for label, keep in (("Latin average", lambda c: c in latin), ("non-Latin average", lambda c: c not in latin)):
    sel = [r for r in rows if keep(r[0])]
    if sel:
        n = len(sel)
        avg = lambda i: sum(r[i] for r in sel) / n
        print(f"| **{label}** ({n}) | | | | {avg(1):.4f} | {avg(2):.4f} | {avg(3):.1f} | {avg(4):.1f} |")
o, ow = plain["overall"], weighted["overall"]
print(f"| **all tokens** | | {o['tokens']} | {o['ppl_reference']['value']:.2f} | {o['kld_mean']['value']:.4f} ± {o['kld_mean']['se']:.4f} | "
      f"{ow['kld_mean']['value']:.4f} ± {ow['kld_mean']['se']:.4f} | {o['same_top_pct']['value']:.1f} | {ow['same_top_pct']['value']:.1f} |")
print(f"\nmedian KLD {o['kld_median']:.4f} / {ow['kld_median']:.4f}, 99th percentile {o['kld_p99']:.4f} / {ow['kld_p99']:.4f}; "
      f"peak RSS of quality {plain['peak_rss'] / 2**20:.0f} / {weighted['peak_rss'] / 2**20:.0f} MiB")
PY
