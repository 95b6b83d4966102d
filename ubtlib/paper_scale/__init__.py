"""The papers' own scale: real data read by path (data), published weights offline (weights),
and the paper-profile commands of `python -m ubtlib paper` (runs)."""
