#!/bin/sh
# blastgate: GitLab Runner pre_build_script.
# Install, in the runner's config.toml ([[runners]]):
#   pre_build_script = "/usr/share/blastgate/ci/gitlab/pre-build.sh"
#
# Registers the job with the blastgate daemon. The job shell that runs the
# build script (pre_build_script, script, post_build_script) is the job's
# root. With an ID token in BLASTGATE_ID_TOKEN (the job's `id_tokens:`,
# `aud` set to blastgate's audience), its claims must agree with the job's
# CI_* variables. A failure exits non-zero and fails the job.
#
# Absolute paths only: a job's `variables:` reach this script and may set
# PATH, BLASTGATE*, LD_PRELOAD.
BLASTGATE_BIN=/usr/bin/blastgate
BLASTGATE_CONFIG=/etc/blastgate/blastgate.toml
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset LD_PRELOAD LD_LIBRARY_PATH LD_AUDIT BLASTGATE_JOBS_SOCKET BLASTGATE_LOG

if [ -n "${BLASTGATE_ID_TOKEN:-}" ]; then
    "$BLASTGATE_BIN" job start --provider gitlab --config "$BLASTGATE_CONFIG" \
        --oidc-token-env BLASTGATE_ID_TOKEN
else
    "$BLASTGATE_BIN" job start --provider gitlab --config "$BLASTGATE_CONFIG"
fi || {
    echo "blastgate: the job could not be registered; failing the job" >&2
    exit 1
}
