"""Fault-injection calibration suite: training scenarios with known faults (and healthy controls).

``scenarios.SCENARIOS`` lists them; ``runner`` runs one scenario, replays the Advisor over the
growing history and scores the outcome (detection, named cause, delay, false alarms).
"""
