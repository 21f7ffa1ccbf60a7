#!/bin/sh
# PrologSlurmctld: publish the starting job's report (its GPUs, tier, synchronous or not) to
# Rheostat. Runs on the slurmctld host once per job; always exits 0 (a failed report is logged,
# the job still starts). slurm.conf: PrologSlurmctld=/etc/rheostat/rheostat-prolog.sh
exec "${RHEOSTAT:-/usr/local/bin/rheostat}" slurm-job start \
    --config "${RHEOSTAT_SLURM_CONFIG:-/etc/rheostat/slurm.yaml}" --job "${SLURM_JOB_ID:-}"
