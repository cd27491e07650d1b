#!/bin/sh
# blastgate: GitHub Actions self-hosted runner job-started hook.
# Install: ACTIONS_RUNNER_HOOK_JOB_STARTED=/usr/share/blastgate/ci/github/job-started.sh
# in the runner's .env file.
#
# Registers the job the runner is starting with the blastgate daemon, so
# every session of the job carries its repository, workflow, run, actor.
# A failure exits non-zero: the runner then fails the job (and with
# [jobs] require its connections are refused anyway: fail closed).
#
# Absolute paths only, and nothing taken from the environment but the
# job's GITHUB_* identity: a workflow's `env:` reaches this script and may
# set PATH, BLASTGATE*, LD_PRELOAD.
BLASTGATE_BIN=/usr/bin/blastgate
BLASTGATE_CONFIG=/etc/blastgate/blastgate.toml
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset LD_PRELOAD LD_LIBRARY_PATH LD_AUDIT BLASTGATE_JOBS_SOCKET BLASTGATE_LOG
set -u

fail() {
    echo "blastgate: $*; failing the job" >&2
    exit 1
}

"$BLASTGATE_BIN" job start --provider github --config "$BLASTGATE_CONFIG" ||
    fail "the job could not be registered"

# Registered: from here a failure also ends the job, so its processes are
# refused even if the runner went on.
fail() {
    echo "blastgate: $*; failing the job" >&2
    "$BLASTGATE_BIN" job end --config "$BLASTGATE_CONFIG" >&2
    exit 1
}

# With `permissions: id-token: write` the runner can mint the job's OIDC
# token. It is fetched once the job is registered (before, a runner's
# connections are refused) and must agree with what was registered.
if [ -n "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ] && [ -n "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ]; then
    audience=$("$BLASTGATE_BIN" job audience --provider github --config "$BLASTGATE_CONFIG") ||
        fail "no [[oidc.issuers]] with provider = \"github\""
    dir=$(/usr/bin/mktemp -d) || fail "no temporary directory"
    trap '/bin/rm -rf "$dir"' EXIT
    case "$ACTIONS_ID_TOKEN_REQUEST_URL" in
    *\?*) sep='&' ;;
    *) sep='?' ;;
    esac
    /usr/bin/curl -fsS --max-time 30 \
        -H "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" \
        -o "$dir/token.json" "${ACTIONS_ID_TOKEN_REQUEST_URL}${sep}audience=${audience}" ||
        fail "the job's OIDC token could not be fetched"
    "$BLASTGATE_BIN" job start --provider github --config "$BLASTGATE_CONFIG" \
        --oidc-token-file "$dir/token.json" ||
        fail "the job's OIDC token was refused"
fi
exit 0
