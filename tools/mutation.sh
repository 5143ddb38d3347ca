#!/usr/bin/env bash
# Mutation testing of the core modules (configured in pyproject.toml [tool.mutmut]); not run by CI.
#   bash tools/mutation.sh                      # every configured module
#   bash tools/mutation.sh "raydigits.optim*"   # mutant-name globs
# Needs `pip install mutmut==3.8.1` and a prepared data/mnist (copied into mutants/). Prints the score
# per module and the survivors; TESTING.md records the last run and the reason for each survivor kept.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYDIGITS_NO_PROGRESS=1
mkdir -p mutants  # the log below is written before mutmut makes the folder
nice -n 10 python -m mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@" > mutants/run.log 2>&1 || true
python - <<'PY'
import collections, subprocess
out = subprocess.run(["python", "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True).stdout
per = collections.defaultdict(collections.Counter)
survivors = []
for line in out.splitlines():
    name, _, status = line.strip().rpartition(": ")
    if not name:
        continue
    module = name.split(".x")[0].split("__mutmut")[0].rsplit(".", 1)[0] if ".x" in name else name.rsplit(".", 1)[0]
    per[module][status] += 1
    if status == "survived":
        survivors.append(name)
for module, c in sorted(per.items()):
    total = sum(v for k, v in c.items() if k in ("killed", "survived", "timeout"))
    print(f"{module}: killed {c['killed']}, survived {c['survived']}, timeout {c['timeout']}, "
          f"other {sum(c.values()) - total}; score {c['killed'] / max(total, 1):.1%}")
print("survivors:", *survivors, sep="\n  ")
PY
