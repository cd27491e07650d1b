#!/bin/sh
# blastgate: GitHub Actions self-hosted runner job-completed hook.
# Install: ACTIONS_RUNNER_HOOK_JOB_COMPLETED=/usr/share/blastgate/ci/github/job-completed.sh
# in the runner's .env file.
#
# Ends the job: its open sessions are closed and reported, and whatever it
# left running is refused from then on. (The job also ends when the
# runner's Runner.Worker exits, should this hook not run.)
BLASTGATE_BIN=/usr/bin/blastgate
BLASTGATE_CONFIG=/etc/blastgate/blastgate.toml
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset LD_PRELOAD LD_LIBRARY_PATH LD_AUDIT BLASTGATE_JOBS_SOCKET BLASTGATE_LOG

exec "$BLASTGATE_BIN" job end --config "$BLASTGATE_CONFIG"
