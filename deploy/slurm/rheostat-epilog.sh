#!/bin/sh
# EpilogSlurmctld: withdraw the finished job's report (an empty retained message). Always exits 0.
# slurm.conf: EpilogSlurmctld=/etc/rheostat/rheostat-epilog.sh
exec "${RHEOSTAT:-/usr/local/bin/rheostat}" slurm-job end \
    --config "${RHEOSTAT_SLURM_CONFIG:-/etc/rheostat/slurm.yaml}" --job "${SLURM_JOB_ID:-}"
