#!/usr/bin/env bash
# Train the default recipe and the d2l book's recipe one after the other (never at the same
# time: they would fight over the cores) and print each run's summary as JSON.
# Each takes about 5 minutes on a 2-core CPU. Usage: bash scripts/recipes.sh [extra train options]
set -euo pipefail
out=${OUT:-checkpoints/recipes-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
for recipe in default d2l-gru; do
  if [ "$recipe" = default ]; then config=(); else config=(--config "$recipe"); fi
  printf '%s: ' "$recipe"
  textrnn train "${config[@]}" --out "$out/$recipe" --json "$@" 2>"$out/$recipe.log" || { cat "$out/$recipe.log"; exit 1; }
done
