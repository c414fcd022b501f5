#!/usr/bin/env bash
# Build the wheel once and try it in a fresh venv of every supported Python on this
# machine (scripts/pythons.sh): first the core install alone, then with the
# [cloud,cluster] extras, at the versions of constraints.txt. Needs no Docker engine,
# no credentials and no cluster. One line per interpreter, and one more for the
# oldest with the lower bounds of the ranges (constraints-lowest.txt); then a
# summary. Exits 1 if any failed (the end of its log is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

builder="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] && builder=.venv/bin/python
if ! "$builder" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" . >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    echo "install matrix: the wheel did not build" >&2
    exit 1
fi
wheel="$(ls "$work"/dist/caliban_async-*.whl)"

# A tiny project, a sweep config and a kubeconfig naming a server nobody needs to reach.
project="$work/project"
mkdir -p "$project"
echo 'print("hello")' >"$project/train.py"
echo '{"lr": [0.01, 0.1], "layers": [2, 3], "wide": true}' >"$project/sweep.json"
cat >"$project/kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: unused}}]
contexts: [{name: lab, context: {cluster: c, user: u}}]
current-context: lab
EOF

# Every check a shell line, run in the project with the venv's bin first on PATH and
# no credentials anywhere. $py is the venv's python (json/yaml checks of piped output).
CORE=(
    'caliban --help >/dev/null'
    'caliban --version'
    'expansion sweep.json | py -c "import json,sys; assert len(json.load(sys.stdin)) == 4"'
    'expansion --print_flags sweep.json | grep -c -- "^--lr .* --wide$" | grep -qx 4'
    'caliban run --nogpu --dry_run --experiment_config sweep.json train.py 2>/dev/null | grep -c "^job ./4: docker run" | grep -qx 4'
    'py -c "import caliban; caliban.Session"'
    # Without the extras: one line naming the extra, exit 2, nothing recorded.
    'out=$(caliban cloud --dry_run --project_id my-project train.py 2>&1); rc=$?; test $rc = 2 && grep -q "pip install .caliban-async\[cloud\]." <<<"$out" && test "$(wc -l <<<"$out")" = 1'
    'out=$(caliban cluster job submit --kubeconfig kubeconfig --dry_run train.py 2>&1); rc=$?; test $rc = 2 && grep -q "caliban-async\[cluster\]" <<<"$out"'
    'test ! -e "$CALIBAN_HOME"'
)
EXTRAS=(
    'caliban cloud --dry_run --project_id my-project --experiment_config sweep.json train.py 2>/dev/null | py -c "import json,sys; assert len(json.load(sys.stdin)) == 4"'
    'caliban cluster job submit --kubeconfig kubeconfig --dry_run --experiment_config sweep.json train.py 2>/dev/null | py -c "import sys,yaml; assert [d[\"kind\"] for d in yaml.safe_load_all(sys.stdin)] == [\"Job\"] * 4"'
    'test ! -e "$CALIBAN_HOME"'
)

pip_install() {
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@"
}

checks() {
    local check
    for check in "$@"; do
        echo "+ $check"
        (
            cd "$project"
            export PATH="$venv/bin:$PATH" HOME="$work/home" CALIBAN_HOME="$work/home/.caliban"
            unset GOOGLE_APPLICATION_CREDENTIALS CLOUDSDK_CONFIG KUBECONFIG COLUMNS
            py() { "$venv/bin/python" "$@"; }
            set +e
            eval "$check"
        ) || return 1
    done
}

# try_python PYTHON CONSTRAINTS LABEL: one line saying how the wheel fared there.
try_python() {
    local python="$1" label="$3" version start step gcloud
    constraints="$2"
    version="$("$python" -c 'import platform; print(platform.python_version())')"
    venv="$work/venv-$version"
    log="$work/log-$version"
    start=$SECONDS
    step=venv
    rm -rf "$venv" "$work/home"
    if "$python" -m venv "$venv" >"$log" 2>&1 &&
        step="core install" && pip_install "$wheel" >>"$log" 2>&1 &&
        step="core checks" && checks "${CORE[@]}" >>"$log" 2>&1 &&
        step="[cloud,cluster] install" && pip_install "$wheel[cloud,cluster]" >>"$log" 2>&1 &&
        step="[cloud,cluster] checks" && checks "${EXTRAS[@]}" >>"$log" 2>&1; then
        gcloud="$("$venv/bin/python" -m pip show gcloud-aio-auth 2>/dev/null | sed -n 's/^Version: //p')"
        printf 'ok    Python %-8s %-40s %3ds  %s (gcloud-aio-auth %s)\n' \
            "$version" "$python" $((SECONDS - start)) "$label" "$gcloud"
        passed=$((passed + 1))
    else
        printf 'FAIL  Python %-8s %-40s %s: at %s\n' "$version" "$python" "$label" "$step"
        grep -v "^WARNING: Location" "$log" | tail -n 25 | sed 's/^/      /'
        failed=$((failed + 1))
    fi
    rm -rf "$venv" "$work/home"
}

passed=0
failed=0
mapfile -t pythons < <(scripts/pythons.sh)
for python in "${pythons[@]}"; do
    try_python "$python" "$root/constraints.txt" "constraints.txt"
done
# The lower bounds of the ranges, on the oldest interpreter.
oldest="$(for p in "${pythons[@]}"; do
    echo "$("$p" -c 'import sys; print("%05d%05d%05d" % sys.version_info[:3])') $p"
done | sort | head -n 1 | cut -d' ' -f2-)"
[[ -n "$oldest" ]] && try_python "$oldest" "$root/constraints-lowest.txt" "lowest bounds"

echo "install matrix: $passed passed, $failed failed ($(basename "$wheel"))"
[[ $failed -eq 0 && $passed -gt 0 ]]
