"""Parses OpenMetrics text from stdin with the official Prometheus client's
parser (prometheus_client.openmetrics.parser) and prints every sample as JSON:
[{"name": ..., "labels": {...}, "value": ...}]. A text the parser rejects
makes it exit non-zero with the parser's error."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = sys.stdin.read()
samples = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples.append({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type})
json.dump(samples, sys.stdout)
