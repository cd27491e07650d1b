#!/bin/sh
# blastgate: GitLab Runner post_build_script.
# Install, in the runner's config.toml ([[runners]]):
#   post_build_script = "/usr/share/blastgate/ci/gitlab/post-build.sh"
#
# Ends the job: its open sessions are closed and reported, and whatever it
# left running is refused from then on (after_script runs outside it). The
# job also ends when its shell exits, should this not run.
BLASTGATE_BIN=/usr/bin/blastgate
BLASTGATE_CONFIG=/etc/blastgate/blastgate.toml
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset LD_PRELOAD LD_LIBRARY_PATH LD_AUDIT BLASTGATE_JOBS_SOCKET BLASTGATE_LOG

exec "$BLASTGATE_BIN" job end --config "$BLASTGATE_CONFIG"
