"""Validates careledger's OpenAPI document (openapi-spec-validator) and its /metrics text
(the Prometheus project's OpenMetrics parser). Usage: check_document.py BASE_URL"""
import json
import sys
import urllib.request

from openapi_spec_validator import validate
from prometheus_client.openmetrics.parser import text_string_to_metric_families

base = sys.argv[1]
doc = json.load(urllib.request.urlopen(f"{base}/v1/openapi.json"))
validate(doc)
reports = [p for p in doc["paths"] if p.startswith("/v1/reports/")]
print(f"openapi: valid OpenAPI {doc['openapi']}; {len(doc['paths'])} paths ({len(reports)} reports), "
      f"{len(doc['components']['schemas'])} schemas")

text = urllib.request.urlopen(f"{base}/metrics").read().decode()
families = {f.name: f for f in text_string_to_metric_families(text)}
for name in ["careledger_http_request_duration_seconds", "careledger_ingest_rows_accepted",
             "careledger_derive_lag_seconds", "careledger_build", "process_resident_memory_bytes"]:
    assert name in families, f"{name} missing from /metrics"
print(f"metrics: valid OpenMetrics; {len(families)} families")
