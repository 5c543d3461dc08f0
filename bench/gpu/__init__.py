"""One prepared script for a lent H200: attention checks, training-step timings, ZeRO-3 offload probe, eval timings.

Run it with ``bash bench/gpu/run.sh`` (see ``bench/gpu/README.md``); ``--cpu-smoke`` runs every section at tiny sizes
on CPU so the script is exercised by CI.
"""
