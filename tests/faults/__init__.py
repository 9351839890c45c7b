"""Fault injection: kills, full disks, rotten files, races and hostile input (issue 8).

`make faults` runs this folder and writes reports/reliability.md; `make test` runs it too.
"""
