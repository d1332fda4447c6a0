#!/usr/bin/env bash
# Rebuild quakescan's shipped models from the shipped training data.
#   bash training/reproduce.sh            # uses training/data/default_templates.h5
#   REBUILD_TEMPLATES=1 bash training/reproduce.sh   # also rebuild that file from ../shared/data
# Deterministic on a given machine (seeded split, crops, augmentation, init);
# the numbers in the README came from this script.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
TEMPLATES=training/data/default_templates.h5
if [ "${REBUILD_TEMPLATES:-0}" = 1 ]; then
  "$BIN/python" -m quakescan.training.default_data --shared ../shared/data --out "$TEMPLATES"
fi

# ConvNetQuake: three members (seeds 0, 1, 2; one split), exported as one ensemble graph.
# The trigger threshold is the lowest that keeps validation false positives <= 0.5 %.
for seed in 0 1 2; do
  "$BIN/quakescan" train convnetquake --templates "$TEMPLATES" --out "runs/default_s$seed" \
    --config training/configs/convnetquake.toml --seed "$seed" --split-seed 0
done
"$BIN/quakescan" export runs/default_s0 runs/default_s1 runs/default_s2 \
  --out detector/models/convnetquake.onnx --target-fpr 0.005 \
  --name convnetquake --version 2 \
  --description "ConvNetQuake (Perol et al. 2018) event detector for local earthquakes, 3-component or vertical-only, 100 Hz, 10 s windows: the mean of three ConvNetQuake networks (seeds 0, 1, 2) behind one in-graph window preparation." \
  --trained-on "204 local earthquakes (154 NCEDC records of Northern California networks from the PhaseNet set, 50 STEAD traces of TA.109C); 547 real noise windows: 250 from the same ncal records' pre-event data, 297 from 12 h of a volcano station (YA.UV06, Piton de la Fournaise); augmented with dead channels and short noise bursts. Held-out metrics are on stations never trained on."

"$BIN/quakescan" train slow-earthquake --templates "$TEMPLATES" --out runs/slow \
  --config training/configs/slow_earthquake.toml
"$BIN/quakescan" export runs/slow --out detector/models/slow_earthquake.onnx \
  --name slow-earthquake --version 1 \
  --description "The slow-earthquake CNN architecture of Rouet-Leduc et al. (2020) on in-graph spectrograms. NOT a tremor detector: no recorded tremor was available, so it was trained on local earthquakes vs noise. Retrain it on tremor templates before using it for slow earthquakes." \
  --trained-on "local earthquakes vs noise (the same data as convnetquake: NCEDC/PhaseNet and STEAD); no tremor."

"$BIN/quakescan" evaluate detector/models/convnetquake.onnx --run runs/default_s0 --json runs/default_s0/test_metrics.json
"$BIN/quakescan" evaluate detector/models/slow_earthquake.onnx --run runs/slow --json runs/slow/test_metrics.json
