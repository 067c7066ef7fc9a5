#!/usr/bin/env bash
# The README's ablation of the default language-model recipe: each row one 290 s run (40 epochs or 290 s),
# one after the other (never two at once on a 2-core machine). Results: OUT/<name>.json (textrnn train --json).
#     bash scripts/ablation.sh [OUT]
set -u
out=${1:-ablation}
mkdir -p "$out"
old=(--dropout 0.3 --dropout-embedding 0 --dropout-layers 0 --dropout-output 0 --weight-drop 0 --average none)
awd=(--dropout-embedding 0.1 --dropout-layers 0.25 --dropout-output 0.4 --weight-drop 0.3 --embedding-dropout 0.05
     --ar-alpha 2 --tar-beta 1 --average asgd)
run() {  # run NAME OPTIONS...
  local name=$1
  shift
  textrnn train --threads 2 --json --out "$out/$name" "$@" >"$out/$name.json" 2>"$out/$name.log" || echo "$name failed"
  echo "$name: $(cat "$out/$name.json")"
}
run new-default
run no-weight-drop --weight-drop 0
run no-dropout-layers --dropout-layers 0
run no-dropout-output --dropout-output 0
run no-dropout-embedding --dropout-embedding 0
run no-average --average none
run old-default "${old[@]}"
run old-default-average "${old[@]}" --average ema --average-decay 0.998
run full-awd "${awd[@]}"
run new-default-none --normalize none
run old-default-none "${old[@]}" --normalize none
