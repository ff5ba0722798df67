"""What evaluate measures: metrics and thresholds, shifts, scoring as the endpoint answers, the
gate's fit and report, figures."""
